"""Behaviour policies: one per rule id, the primitives of enforcement.md, and evidence handling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from cdr_policy.errors import ConfigError
from cdr_policy.models import Sighting
from cdr_policy.policy.behaviours import CATALOGUE
from cdr_policy.policy.channel import Action, ChannelSettings, KernelCapabilities
from cdr_policy.policy.checker import SchemaSet, check_object, errors_of
from cdr_policy.rules import RULES

from .factories import behaviour, by_file, cdr_set, render, sighting

ACTIONS: tuple[Action, ...] = ("Post", "Sigkill", "Override")
HOOKS = ("tcp_connect", "security_socket_connect")


def _policy(rule: str, channel: ChannelSettings | None = None, processes: Sequence[str] = ()) -> dict[str, Any]:
    result = render([cdr_set(behaviours=[behaviour(rule, processes)])], channel)
    [obj] = [f.obj for f in result.files]
    return obj


def _hooks(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {kp["call"]: kp for kp in obj["spec"]["kprobes"]}


def _actions(obj: dict[str, Any]) -> set[str]:
    return {a["action"] for kp in obj["spec"]["kprobes"] for s in kp["selectors"] for a in s["matchActions"]}


def _options(obj: dict[str, Any]) -> dict[str, str]:
    return {o["name"]: o["value"] for o in obj["spec"]["options"]}


def test_every_rule_id_has_a_compiler() -> None:
    assert set(CATALOGUE) == set(RULES)


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("hook", HOOKS)
def test_every_rule_compiles_to_a_valid_safe_policy(schemas: SchemaSet, rule: str, action: Action, hook: str) -> None:
    channel = ChannelSettings(name="prod", action=action, tetragon_network_hook=hook)
    obj = _policy(rule, channel)
    assert errors_of(check_object(obj, schemas)) == []
    spec = obj["spec"]
    assert spec["podSelector"] is not None and "hostSelector" not in spec  # never the host by accident
    assert obj["metadata"]["labels"]["cdr-policy.io/rule"] == rule
    for kp in spec["kprobes"]:
        assert kp["call"] not in ("sys_execve", "sys_execveat")
        assert kp["message"].startswith(f"cdr-policy {rule} ({RULES[rule][0]})")
        assert 1 <= len(kp["selectors"]) <= 5
    calls = [kp["call"] for kp in spec["kprobes"]]
    assert len(calls) == len(set(calls))


@pytest.mark.parametrize("rule", sorted(RULES))
def test_audit_channels_only_post_and_monitor(rule: str) -> None:
    obj = _policy(rule, ChannelSettings(name="staging", action="Post"))
    assert _actions(obj) == {"Post"}
    assert _options(obj)["policy-mode"] == "monitor"
    assert all(
        a.get("rateLimit") == "1m" for kp in obj["spec"]["kprobes"] for s in kp["selectors"] for a in s["matchActions"]
    )


def test_exec_blocking_uses_linux_binprm_on_security_bprm_check() -> None:
    obj = _policy("network_scanning", ChannelSettings(name="prod", action="Override"))
    exec_hook = _hooks(obj)["security_bprm_check"]
    assert exec_hook["syscall"] is False
    assert exec_hook["args"] == [{"index": 0, "type": "linux_binprm"}]
    [sel] = exec_hook["selectors"]
    assert sel["matchArgs"][0]["operator"] == "Postfix"
    assert "/nmap" in sel["matchArgs"][0]["values"] and "/masscan" in sel["matchArgs"][0]["values"]
    assert sel["matchActions"] == [{"action": "Override", "argError": -1}]
    assert _options(obj)["disable-kprobe-multi"] == "1"  # Override on a security_* kprobe
    raw = _hooks(obj)["security_socket_create"]
    assert raw["selectors"][0]["matchArgs"] == [
        {"index": 1, "operator": "Equal", "values": ["3"]},
        {"index": 3, "operator": "Equal", "values": ["0"]},
    ]


def test_sigkill_channels_need_no_kprobe_multi_option() -> None:
    obj = _policy("network_scanning", ChannelSettings(name="prod", action="Sigkill"))
    assert _actions(obj) == {"Sigkill"}
    assert _options(obj) == {"policy-mode": "enforce"}


def test_cloud_credentials_restricts_network_utilities_from_the_metadata_service() -> None:
    obj = _policy("cloud_credentials", ChannelSettings(name="prod", action="Override"))
    hook = _hooks(obj)["tcp_connect"]
    [sel] = hook["selectors"]
    assert sel["matchArgs"] == [
        {
            "index": 0,
            "operator": "DAddr",
            "values": ["169.254.169.254/32", "fd00:ec2::254/128", "::ffff:169.254.169.254/128"],
        }
    ]
    assert {"/curl", "/wget"} <= set(sel["matchBinaries"][0]["values"])
    assert sel["matchActions"] == [{"action": "Sigkill"}]  # tcp_connect cannot Override
    lsm = _hooks(
        _policy(
            "cloud_credentials",
            ChannelSettings(name="p", action="Override", tetragon_network_hook="security_socket_connect"),
        )
    )
    [sel] = lsm["security_socket_connect"]["selectors"]
    assert sel["matchArgs"][0]["operator"] == "SAddr" and sel["matchArgs"][0]["index"] == 1
    assert sel["matchActions"] == [{"action": "Override", "argError": -1}]


def test_container_escape_starts_in_monitor_and_spares_kube_system() -> None:
    channel = ChannelSettings(name="prod", action="Sigkill")
    obj = _policy("container_escape", channel)
    assert _options(obj)["policy-mode"] == "monitor"
    assert obj["spec"]["podSelector"]["matchExpressions"] == [
        {"key": "k8s:io.kubernetes.pod.namespace", "operator": "NotIn", "values": ["kube-system"]}
    ]
    hooks = _hooks(obj)
    assert hooks["sys_unshare"]["selectors"][0]["matchArgs"] == [
        {"index": 0, "operator": "Mask", "values": ["0x10000000", "0x40000000", "0x20000"]}
    ]
    assert hooks["sys_setns"]["syscall"] is True and hooks["create_user_ns"]["syscall"] is False
    promoted = _policy(
        "container_escape",
        ChannelSettings(name="prod", action="Sigkill", promoted_rules=("container_escape",)),
    )
    assert _options(promoted)["policy-mode"] == "enforce"
    namespaced = render(
        [cdr_set(behaviours=[behaviour("container_escape")])],
        ChannelSettings(name="prod", namespaces=("payments",)),
    )
    assert all("matchExpressions" not in f.obj["spec"]["podSelector"] for f in namespaced.files)
    with pytest.raises(ConfigError, match="namespace kube-system is one of the cluster's own"):
        ChannelSettings(name="prod", namespaces=("kube-system",))


def test_discovery_is_audit_only_on_enforcing_channels() -> None:
    obj = _policy("discovery", ChannelSettings(name="prod", action="Override"))
    assert _actions(obj) == {"Post"} and _options(obj) == {"policy-mode": "monitor"}


def test_mining_and_reverse_shell_ports_use_dport() -> None:
    mining = _hooks(_policy("crypto_mining", ChannelSettings(name="prod", action="Sigkill")))["tcp_connect"]
    assert mining["selectors"][0]["matchArgs"][0]["operator"] == "DPort"
    assert "3333" in mining["selectors"][0]["matchArgs"][0]["values"]
    shell = _hooks(_policy("reverse_shell", ChannelSettings(name="prod", action="Sigkill")))["tcp_connect"]
    assert shell["selectors"][0]["matchArgs"][0] == {
        "index": 0,
        "operator": "DPort",
        "values": ["1337", "4444", "4445"],
    }
    assert "/bash" in shell["selectors"][1]["matchBinaries"][0]["values"]


def test_webshell_restricts_the_caller_and_matches_the_target() -> None:
    [sel] = _hooks(_policy("webshell"))["security_bprm_check"]["selectors"]
    assert "/nginx" in sel["matchBinaries"][0]["values"]
    assert "/sh" in sel["matchArgs"][0]["values"]


def _syscall_hooks(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [kp for kp in obj["spec"]["kprobes"] if kp["syscall"]]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_override_channels_put_no_override_on_a_syscall_unless_the_kernel_helper_is_declared(
    schemas: SchemaSet, rule: str
) -> None:
    channel = ChannelSettings(name="prod", action="Override", promoted_rules=("container_escape",))
    assert channel.kernel.override_helper is False  # the default
    obj = _policy(rule, channel)
    for kp in _syscall_hooks(obj):
        assert {a["action"] for s in kp["selectors"] for a in s["matchActions"]} <= {"Sigkill", "Post"}, kp["call"]
    assert "cdr-policy.io/kernel-override-helper" not in obj["metadata"]["annotations"]
    for kp in obj["spec"]["kprobes"]:  # Override stays where fmod_ret does it: security_* hooks
        if kp["call"].startswith("security_") and not CATALOGUE[rule].audit_only:
            assert kp["selectors"][0]["matchActions"] == [{"action": "Override", "argError": -1}]
    assert errors_of(check_object(obj, schemas)) == []


def test_override_on_syscalls_when_the_channel_declares_the_helper(schemas: SchemaSet) -> None:
    channel = ChannelSettings(
        name="prod",
        action="Override",
        promoted_rules=("container_escape",),
        kernel=KernelCapabilities(override_helper=True),
    )
    obj = _policy("container_escape", channel)
    hooks = _hooks(obj)
    assert hooks["sys_setns"]["selectors"][0]["matchActions"] == [{"action": "Override", "argError": -1}]
    assert hooks["create_user_ns"]["selectors"][0]["matchActions"] == [{"action": "Sigkill"}]
    assert "disable-kprobe-multi" not in _options(obj)  # no security_* override in this policy
    assert obj["metadata"]["annotations"]["cdr-policy.io/kernel-override-helper"] == "true"
    assert errors_of(check_object(obj, schemas)) == []
    # the checker refuses the same object without the declaration
    del obj["metadata"]["annotations"]["cdr-policy.io/kernel-override-helper"]
    codes = {p.code for p in errors_of(check_object(obj, schemas))}
    assert codes == {"tetragon.override-helper"}


def test_kernel_capabilities_are_validated_channel_settings() -> None:
    channel = ChannelSettings.from_dict({"name": "prod", "kernel": {"override_helper": True}})
    assert channel.kernel.override_helper is True
    assert channel.to_dict()["kernel"] == {"override_helper": True}
    assert ChannelSettings.from_dict(channel.to_dict()) == channel
    for bad in ({"override_helper": "yes"}, {"lsm": True}, ["override_helper"]):
        with pytest.raises(ConfigError):
            ChannelSettings.from_dict({"name": "prod", "kernel": bad})


def _corroborated(name: str, workloads: int = 3) -> list[Sighting]:
    return [sighting(name, f"team-{i}", {"app": f"a{i}"}) for i in range(workloads)]


def test_evidence_joins_the_rule_only_when_corroborated_and_never_for_spared_names() -> None:
    seen = [*_corroborated("fscan"), *_corroborated("naabu"), sighting("bash"), sighting("python3.11")]
    obj = by_file(
        render(
            [
                cdr_set(
                    behaviours=[behaviour("network_scanning", ["/usr/bin/fscan", "nmap -sS x", "../x"], sightings=seen)]
                )
            ]
        )
    )["cdr-block-network-scan-20260109.yaml"]
    values = _hooks(obj)["security_bprm_check"]["selectors"][0]["matchArgs"][0]["values"]
    assert "/fscan" in values and "/naabu" in values
    assert not {"/bash", "/python3.11"} & set(values)
    assert obj["metadata"]["annotations"]["cdr-policy.io/evidence"] == "fscan"
    result = render([cdr_set(behaviours=[behaviour("network_scanning", ["bash"], sightings=_corroborated("fscan"))])])
    [entry] = result.report["behaviours"]
    assert entry["evidence_added"] == ["fscan"]
    rows = {r["process"]: r for r in entry["evidence"]}
    assert rows["bash"]["placement"] == "refused" and rows["fscan"]["placement"] == "cluster-wide"
    assert rows["fscan"]["reason"] == "corroborated: seen in 3 workloads"


def test_evidence_for_callers_and_rules_without_evidence() -> None:
    obj = _policy_named(
        "cloud_credentials",
        "cdr-block-cloud-creds-20260109.yaml",
        sightings=[*_corroborated("aws-probe"), sighting("python3")],
    )
    callers = _hooks(obj)["tcp_connect"]["selectors"][0]["matchBinaries"][0]["values"]
    assert "/aws-probe" in callers and "/python3" not in callers  # AWS SDK apps keep their credentials
    obj = _policy("credential_access", processes=["weird-tool"])
    assert "weird-tool" not in str(obj["spec"])


def _policy_named(rule: str, filename: str, **kwargs: Any) -> dict[str, Any]:
    return by_file(render([cdr_set(behaviours=[behaviour(rule, **kwargs)])]))[filename]


def test_behaviour_file_names_and_annotations() -> None:
    result = render(
        [
            cdr_set(
                behaviours=[
                    behaviour("cloud_credentials", first_seen="2026-01-10T01:00:00Z"),
                    behaviour("network_scanning"),
                ]
            )
        ]
    )
    files = by_file(result)
    assert sorted(files) == ["cdr-block-cloud-creds-20260110.yaml", "cdr-block-network-scan-20260109.yaml"]
    meta = files["cdr-block-cloud-creds-20260110.yaml"]["metadata"]
    assert meta["annotations"]["cdr-policy.io/expires-at"] == "2026-01-17T12:00:00Z"
    assert meta["annotations"]["cdr-policy.io/mitre"] == "T1552.005"
    assert meta["annotations"]["cdr-policy.io/refs"] == "uuid-cloud_credentials-1,uuid-cloud_credentials-2"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "cdr-policy"
    assert meta["labels"]["cdr-policy.io/channel"] == "prod"
    assert meta["name"].startswith("tp-cloud-creds-") and len(meta["name"]) <= 63


def test_namespaces_give_one_namespaced_policy_each(schemas: SchemaSet) -> None:
    channel = ChannelSettings(
        name="prod", action="Sigkill", namespaces=("payments", "web"), pod_labels={"tier": "front"}
    )
    result = render([cdr_set(behaviours=[behaviour("crypto_mining")])], channel, schemas)
    assert [(f.filename, f.kind, f.obj["metadata"]["namespace"]) for f in result.files] == [
        ("cdr-block-crypto-mining-20260109-payments.yaml", "TracingPolicyNamespaced", "payments"),
        ("cdr-block-crypto-mining-20260109-web.yaml", "TracingPolicyNamespaced", "web"),
    ]
    assert result.files[0].obj["spec"]["podSelector"] == {"matchLabels": {"tier": "front"}}
    assert result.files[0].name != result.files[1].name

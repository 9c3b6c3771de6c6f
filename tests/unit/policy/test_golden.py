"""Golden files: the policy of every rule id (and the network blocklists) for a fixed input,
byte for byte. Regenerate with ``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/policy/test_golden.py``
and review the diff. The shapes are also compared with the upstream example policies."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet, check_object, errors_of
from cdr_policy.policy.output import PolicyFile
from cdr_policy.policy.serialize import load_yaml_documents
from cdr_policy.rules import RULES

from .factories import behaviour, cdr_set, feed_set, indicator, render

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
CHANNEL = ChannelSettings(name="prod", action="Sigkill")


def _compare(name: str, data: bytes) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_bytes(data)
    assert path.exists(), f"missing golden file {path}: run with UPDATE_GOLDEN=1"
    assert data == path.read_bytes(), f"{name} differs from its golden file (UPDATE_GOLDEN=1 to accept)"


def _rule_policy(rule: str, channel: ChannelSettings = CHANNEL) -> PolicyFile:
    [f] = render([cdr_set(behaviours=[behaviour(rule)])], channel).files
    return f


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_golden(schemas: SchemaSet, rule: str) -> None:
    f = _rule_policy(rule)
    assert errors_of(check_object(f.obj, schemas)) == []
    _compare(f"{rule}.yaml", f.to_bytes())


def test_network_golden(schemas: SchemaSet) -> None:
    sets = [
        cdr_set([indicator("45.33.32.0/24"), indicator("2a00:1450:4001::/48"), indicator("tcp/4444", "port")]),
        feed_set("feodo-c2", ["91.92.93.0/24", "185.220.101.4/32"]),
    ]
    result = render(sets, CHANNEL, schemas)
    data = b"".join(b"---\n# " + f.filename.encode() + b"\n" + f.to_bytes() for f in result.files)
    _compare("network.yaml", data)


def test_no_stale_golden_files() -> None:
    expected = {f"{rule}.yaml" for rule in RULES} | {"network.yaml"}
    assert {p.name for p in GOLDEN.glob("*.yaml")} == expected


# --- shapes compared with the upstream examples (../shared/crds/examples) -------------------------


def _example(crds_dir: Path, name: str) -> dict[str, Any]:
    [obj] = load_yaml_documents((crds_dir / "examples" / name).read_bytes())
    assert isinstance(obj, dict)
    return obj


def _hook(obj: dict[str, Any], call: str) -> dict[str, Any]:
    return next(k for k in obj["spec"]["kprobes"] if k["call"] == call)


def test_exec_block_matches_the_upstream_bprm_example(crds_dir: Path) -> None:
    upstream = _example(crds_dir, "lsm_bprm_check.yaml")["spec"]["lsmhooks"][0]
    ours = _hook(_rule_policy("crypto_mining").obj, "security_bprm_check")
    assert ours["args"] == upstream["args"]  # [{index: 0, type: linux_binprm}]
    assert ours["selectors"][0]["matchArgs"][0]["operator"] == upstream["selectors"][0]["matchArgs"][0]["operator"]
    assert ours["syscall"] is False  # the kernel function, not an LSM hook: no BPF LSM needed


def test_network_hook_matches_the_upstream_tcp_connect_example(crds_dir: Path) -> None:
    upstream = _example(crds_dir, "tcp-connect-only-private-addrs.yaml")["spec"]["kprobes"][0]
    ours = _hook(_rule_policy("cloud_credentials").obj, "tcp_connect")
    assert {k: ours[k] for k in ("call", "syscall", "args")} == {k: upstream[k] for k in ("call", "syscall", "args")}
    # but a blocklist (DAddr) instead of the fail-open allowlist (NotDAddr) of the example
    assert ours["selectors"][0]["matchArgs"][0]["operator"] == "DAddr"
    assert upstream["selectors"][0]["matchArgs"][0]["operator"] == "NotDAddr"


def test_socket_connect_variant_matches_the_upstream_example(crds_dir: Path) -> None:
    upstream = _example(crds_dir, "security-socket-connect-block-others.yaml")
    channel = ChannelSettings(name="prod", action="Override", tetragon_network_hook="security_socket_connect")
    obj = _rule_policy("cloud_credentials", channel).obj
    ours = _hook(obj, "security_socket_connect")
    assert ours["args"] == upstream["spec"]["kprobes"][0]["args"][:2]  # socket, sockaddr
    assert ours["selectors"][0]["matchArgs"][0]["operator"] == "SAddr"  # as upstream: no DAddr on sockaddr
    # unlike the example, the Override carries the option it needs (enforcement.md §1.9)
    assert {"name": "disable-kprobe-multi", "value": "1"} in obj["spec"]["options"]
    assert "options" not in upstream["spec"]


def test_user_namespace_rule_matches_the_upstream_example_but_scoped(crds_dir: Path) -> None:
    upstream = _example(crds_dir, "kill_unprivileged_user_namespace.yaml")
    obj = _rule_policy("container_escape").obj
    ours = _hook(obj, "create_user_ns")
    theirs = upstream["spec"]["kprobes"][0]
    assert ours["selectors"][0]["matchCapabilities"] == theirs["selectors"][0]["matchCapabilities"]
    assert ours["args"] == theirs["args"]
    assert "podSelector" not in upstream["spec"] and "podSelector" in obj["spec"]  # never the host's browsers

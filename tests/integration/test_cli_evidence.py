"""Tried as a new user: miners that masquerade as the servers a cluster runs, through
``cdr-policy --once --action Sigkill`` against a gateway serving copies of the sample crypto-mining
finding. No cluster-wide kill of those names; the report says why, and where they are enforced."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cdr_policy import schemas
from cdr_policy.policy.binaries import COMMON_PROGRAM, refuse_cluster_wide
from cdr_policy.timeutil import utcnow
from demo.runner import FINDINGS
from fakes.qualys import FakeQualysGateway, load_findings
from tests.integration.support import objects, run
from tests.unit.policy.factories import exec_targets

MASQUERADES = ("nginx", "envoy", "postgres")


def _miners(pod_labels: dict[str, str] | None = None) -> list[Any]:
    [sample] = [f for f in load_findings(FINDINGS) if isinstance(f, dict) and f.get("processName") == "xmrig"][:1]
    out: list[Any] = []
    for i, name in enumerate(MASQUERADES):
        finding = copy.deepcopy(sample)
        finding.update(uuid=f"masquerade-{i}", processName=name)
        if pod_labels is not None:
            finding["podLabels"] = pod_labels
        out.append(finding)
    return out


def _scoped(obj: dict[str, Any]) -> bool:
    """A policy for one workload (its selector names the workload's namespace and labels)."""
    return bool(obj["metadata"]["labels"].get("cdr-policy.io/scope") == "workload")


def _kills(obj: dict[str, Any]) -> set[str]:
    actions = {a["action"] for h in obj["spec"]["kprobes"] for s in h["selectors"] for a in s["matchActions"]}
    if not actions & {"Sigkill", "Override"}:
        return set()
    return {v.removeprefix("/") for v in exec_targets(obj)}


@pytest.fixture
def miner_env(env: dict[str, str]) -> tuple[dict[str, str], Callable[..., FakeQualysGateway]]:
    def serve(pod_labels: dict[str, str] | None = None) -> FakeQualysGateway:
        return FakeQualysGateway(_miners(pod_labels), rebase_to=utcnow())

    return env, serve


def _report_rows(out_dir: Path) -> dict[str, dict[str, Any]]:
    report = json.loads((out_dir / "report.json").read_text())
    schemas.validate(report, "report.schema.json")
    [entry] = [b for b in report["behaviours"] if b["rule"] == "crypto_mining"]
    return {r["process"]: r for r in entry["evidence"]}


def test_masquerading_miners_get_no_cluster_wide_kill_and_the_report_says_why(
    miner_env: tuple[dict[str, str], Callable[..., FakeQualysGateway]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env, serve = miner_env
    out_dir = tmp_path / "policies"
    with serve() as gateway:
        code, out, err = run(
            ["--once", "--action", "Sigkill", f"--gateway={gateway.url}", f"--output={out_dir}"], env, capsys
        )
    assert code == 0, err
    files = objects(out_dir)
    cluster_wide = {n: o for n, o in files.items() if o["kind"] == "TracingPolicy" and not _scoped(o)}
    for name, obj in cluster_wide.items():
        assert not _kills(obj) & set(MASQUERADES), name
        assert {k for k in _kills(obj) if refuse_cluster_wide(k)} == set(), name
    assert any("/xmrig" in json.dumps(o) and _kills(o) for o in cluster_wide.values())  # the real miner still dies
    [audit] = [o for n, o in files.items() if n.startswith("cdr-audit-crypto-mining-")]
    assert (
        "Sigkill" not in json.dumps(audit) and {"name": "policy-mode", "value": "monitor"} in audit["spec"]["options"]
    )
    rows = _report_rows(out_dir)
    for name in MASQUERADES:
        assert rows[name]["placement"] == "audit"
        assert rows[name]["reason"] == COMMON_PROGRAM
        assert rows[name]["audited"] == "a finding names no namespace with valid pod labels (podLabels)"


def test_with_pod_labels_the_masquerades_are_killed_in_their_workload_only(
    miner_env: tuple[dict[str, str], Callable[..., FakeQualysGateway]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env, serve = miner_env
    out_dir = tmp_path / "policies"
    labels = {"io.kubernetes.pod.namespace": "shop", "app": "web", "pod-template-hash": "7c9d8f6b5"}
    with serve(labels) as gateway:
        code, _, err = run(
            ["--once", "--action", "Sigkill", f"--gateway={gateway.url}", f"--output={out_dir}"], env, capsys
        )
    assert code == 0, err
    files = objects(out_dir)
    [scoped] = [o for o in files.values() if _scoped(o)]
    assert scoped["spec"]["podSelector"] == {
        "matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["shop"]}],
    }
    assert _kills(scoped) == set(MASQUERADES)
    tracing = [o for o in files.values() if o["kind"] == "TracingPolicy"]
    assert not any(_kills(o) & set(MASQUERADES) for o in tracing if not _scoped(o))
    rows = _report_rows(out_dir)
    assert {rows[n]["placement"] for n in MASQUERADES} == {"workloads"}
    assert rows["nginx"]["scopes"] == [
        {"namespace": "shop", "workload": scoped["metadata"]["annotations"]["cdr-policy.io/workload"]}
    ]

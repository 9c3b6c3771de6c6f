"""The agent's Prometheus metrics and probes, derived from the status documents its syncs produce,
served over loopback."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from cdr_policy.agent.observe import AgentMetrics, ObservabilityServer
from cdr_policy.agent.status import AgentStatus
from cdr_policy.timeutil import parse_iso
from tests.unit.agent.test_status import GOOD

DIGEST = "ab" * 32
NOW = parse_iso("2026-03-01T12:00:00Z").timestamp()


def status(result: str, **extra: Any) -> AgentStatus:
    doc: dict[str, Any] = {
        **GOOD,
        "channel": "prod",
        "applied_digest": DIGEST if result in ("applied", "unchanged", "repaired") else None,
        "applied_generation": 7,
        "applied_at": "2026-03-01T11:00:00Z",
        "applied_expires_at": "2026-03-04T11:00:00Z",
        "last_poll": {"at": "2026-03-01T12:00:00Z", "result": result, "detail": "..."},
        "verification": {
            **GOOD["verification"],
            "ok": result != "refused",
            "code": "bad_signature" if result == "refused" else None,
        },
        "objects": {"applied": 17, "deleted": 0},
        "apply_errors": [],
        "drift": None,
    }
    return AgentStatus.from_json(doc | extra)


@pytest.fixture
def clock() -> list[float]:
    now = [NOW]
    return now


@pytest.fixture
def metrics(clock: list[float]) -> AgentMetrics:
    return AgentMetrics(channel="prod", interval_s=60, clock=lambda: clock[0])


def test_metrics_follow_the_status_documents(metrics: AgentMetrics) -> None:
    metrics.observe(status("applied"))
    metrics.observe(status("refused"))
    metrics.observe(
        status(
            "unchanged",
            drift={"checked_at": GOOD["applied_at"], "repaired": True, "missing": ["x"], "changed": [], "extra": []},
        )
    )
    metrics.observe(status("apply_failed", apply_errors=GOOD["apply_errors"]))
    text = metrics.exposition()
    assert "# TYPE cdr_policy_agent_polls_total counter" in text
    for line in (
        'cdr_policy_agent_polls_total{channel="prod",result="applied"} 1',
        'cdr_policy_agent_polls_total{channel="prod",result="refused"} 1',
        'cdr_policy_agent_verification_refusals_total{channel="prod",code="bad_signature"} 1',
        'cdr_policy_agent_drift_repairs_total{channel="prod"} 1',
        'cdr_policy_agent_apply_errors_total{channel="prod"} 1',
        'cdr_policy_agent_last_poll_result{channel="prod",result="apply_failed"} 1',
        'cdr_policy_agent_bundle_age_seconds{channel="prod"} 3600',
        'cdr_policy_agent_objects_applied{channel="prod"} 17',
    ):
        assert line in text, line


def test_the_bundle_in_force_is_labelled_with_its_digest_and_generation(metrics: AgentMetrics) -> None:
    metrics.observe(status("applied"))
    assert f'cdr_policy_agent_bundle_applied_info{{channel="prod",digest="{DIGEST}",generation="7"}} 1' in (
        metrics.exposition()
    )


def test_probes(metrics: AgentMetrics, clock: list[float]) -> None:
    assert metrics.alive() and not metrics.ready()  # starting: alive, not ready
    metrics.observe(status("unreachable"))
    assert metrics.alive() and not metrics.ready()
    metrics.observe(status("applied"))
    assert metrics.ready()
    metrics.observe(status("unreachable"))  # the last good state stays in force
    assert metrics.ready()
    clock[0] += 3 * 60 + 31
    assert not metrics.alive()


def test_served_over_http(metrics: AgentMetrics) -> None:
    server = ObservabilityServer(metrics, host="127.0.0.1", port=0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/readyz").status_code == 503
        assert httpx.get(f"{base}/healthz").status_code == 200
        metrics.observe(status("applied"))
        assert httpx.get(f"{base}/readyz").status_code == 200
        response = httpx.get(f"{base}/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'cdr_policy_agent_polls_total{channel="prod",result="applied"} 1' in response.text
        assert httpx.get(f"{base}/nothing").status_code == 404
    finally:
        server.stop()

"""``make bench``'s fleet simulation (f) with a small fleet: 24 real sync agents in two worker
processes against a moto server, polling every half second (120x the real 60 s). The 1,000-agent run
and its timings are ``make bench``'s; this checks what must hold at any size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks.__main__ as bench
from cdr_policy.agent.sync import DEFAULT_INTERVAL_S, DEFAULT_STATUS_HEARTBEAT_S
from demo.costs import S3_PRICE_PER_1000

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AGENTS = 24


def test_a_small_fleet_polls_once_per_agent_converges_and_is_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--only", "f"]
    fleet = ["--fleet", str(AGENTS), "--fleet-interval", "0.5", "--fleet-update-interval", "1"]
    code = bench.main([*args, *fleet, "--workdir", str(tmp_path / "w"), "--results", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads((tmp_path / "r" / "latest.json").read_text())["fleet"]
    assert (result["agents"], result["processes"], result["compression"]) == (AGENTS, 2, 120)

    # Nothing changing: one conditional GET per agent and poll, answered 304 without a body, and the
    # status rewritten only by its heartbeat (about once per agent in one heartbeat period).
    steady = result["steady"]
    ops = steady["operations"]
    assert set(ops) == {"s3:GetObject", "s3:PutObject"}
    get = ops["s3:GetObject"]
    assert get["status_304"] == get["requests"] and get["response_bytes"] == 0
    assert steady["polls"] >= 5 * AGENTS  # about ten polls each in the window
    assert abs(steady["get_per_poll"] - 1) < 0.05  # a poll in flight at the window's ends counts on one side
    assert 0.5 <= steady["put_per_agent"] <= 1.1
    assert steady["results"] == {}  # no agent reported anything but "unchanged"

    # A new bundle on both channels: every agent applies its channel's, and fleet status lists them all.
    conv = result["convergence"]
    assert conv["converged"] == AGENTS and conv["p100_s"] is not None
    assert 0 < conv["p50_s"] <= conv["p99_s"] <= conv["p100_s"]
    assert set(result["results"]) <= {"applied", "unchanged"}
    view = result["fleet_status"]
    assert (view["rows"], view["reporting_new"], view["behind"]) == (AGENTS, AGENTS, 0)
    assert view["operations"]["s3:GetObject"]["requests"] >= AGENTS  # each status object read

    # The cost: a conditional GET every minute and a heartbeat PUT every 10 minutes per cluster.
    month = 30 * 86_400
    expected = (month / DEFAULT_INTERVAL_S) * S3_PRICE_PER_1000["GET"] / 1000
    expected += (month / DEFAULT_STATUS_HEARTBEAT_S) * S3_PRICE_PER_1000["PUT"] / 1000
    cost = result["cost"]
    assert cost["usd_per_cluster_month"] == pytest.approx(expected, rel=0.15)
    assert cost["usd_per_month"]["10000"] == pytest.approx(10_000 * cost["usd_per_cluster_month"])

    table = (tmp_path / "r" / "latest.md").read_text()
    assert f"# (f) A fleet of {AGENTS} agents" in table
    assert sum(line.startswith("| (f) |") for line in table.splitlines()) == 5
    assert "99% <= 2 intervals" in table and "100 / 1,000 / 10,000 clusters" in table

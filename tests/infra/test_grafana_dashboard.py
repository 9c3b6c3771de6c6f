"""deploy/monitoring/grafana-dashboard.json: every metric a panel queries is one the agents or the
node readers expose (their expositions, fed a status with hits and a reader that has counted), and
every panel filters on the channel variable."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from cdr_policy.agent.observe import AgentMetrics
from cdr_policy.agent.status import AgentStatus
from cdr_policy.hits.metrics import ReaderMetrics
from tests.infra.manifests import DEPLOY
from tests.unit.agent.test_status import GOOD
from tests.unit.hits.conftest import NOW
from tests.unit.hits.test_collect import _table

pytestmark = pytest.mark.infra

DASHBOARD = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())


def _reader() -> SimpleNamespace:
    """What ReaderMetrics reads of a reader that has counted and reported."""
    return SimpleNamespace(
        table=_table(1, 3),
        tails={"tetragon": SimpleNamespace(rotations=1), "cilium": SimpleNamespace(rotations=0)},
        follower=SimpleNamespace(digest="c" * 64),
        last_report=NOW,
        clock=lambda: NOW,
        behind=lambda: {"tetragon": 10, "cilium": 0},
    )


def _exposed() -> set[str]:
    agent = AgentMetrics(channel="prod", interval_s=60)
    agent.observe(AgentStatus.from_json({**GOOD, "hits": {**_table(1, 3).to_section(NOW).to_json(), "nodes": 1}}))
    reader = ReaderMetrics(channel="prod", interval_s=60)
    reader.observe(_reader())  # type: ignore[arg-type]  # a stand-in with what observe() reads of a Reader
    text = agent.exposition() + reader.exposition()
    return set(re.findall(r"^# TYPE (\w+) ", text, re.M))


def test_every_query_names_metrics_that_exist_and_filters_on_the_channel() -> None:
    exposed = _exposed()
    queries = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]
    assert queries
    for expr in queries:
        names = set(re.findall(r"\b(cdr_policy_\w+)\b", expr))
        assert names and names <= exposed, expr
        assert 'channel=~"$channel"' in expr, expr
    assert {"cdr_policy_agent_hits_total", "cdr_policy_hits_reader_behind_bytes"} <= {
        n for e in queries for n in re.findall(r"\b(cdr_policy_\w+)\b", e)
    }


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine

"""The agent's side: the node reports of its channel summed into ``status.hits`` (bounded to the
status's size, valid against its schema), shown as Prometheus hit counters; reports of another
channel, or that fail their checks, left out; ConfigMaps through the Kubernetes API."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cdr_policy import jsonio
from cdr_policy.agent.kube import KubeApplier
from cdr_policy.agent.observe import AgentMetrics
from cdr_policy.agent.status import AgentStatus
from cdr_policy.hits.aggregate import MAX_CLUSTER_ROWS, MAX_NODE_ROWS, HitTable, Row
from cdr_policy.hits.collect import HitsCollector
from cdr_policy.hits.reports import ConfigMapReports, DirectoryReports, NodeReport, ReportStore, read_report
from cdr_policy.timeutil import iso
from fakes.kube import FakeKubeAPI
from tests.unit.agent.test_status import GOOD
from tests.unit.hits.conftest import NOW

DIGEST = "c" * 64


def _table(node: int, rows: int, *, channel_rows: int = 0) -> HitTable:
    table = HitTable(since=iso(NOW - timedelta(days=1)))
    for i in range(rows):
        row = Row(
            hour=iso((NOW - timedelta(hours=i % 100)).replace(minute=0)),
            engine="tetragon",
            object="tp-threat-intel-blocklist-5d41c0aa",
            kind="prefix",
            indicator="185.100.0.0/24",
            address=f"185.100.{node}.{i % 250}",
            action="SIGKILL",
            namespace=f"ns-{i % 7}",
            workload=f"w-{i % 13}",
            pod=f"w-{i}",
            bundle=DIGEST,
        )
        table.rows[row] += 2
    table.bundles = [DIGEST]
    table.totals.read, table.totals.ours = rows * 3, rows * 2
    table.trim(MAX_NODE_ROWS, NOW)
    return table


def _write(reports: ReportStore, node: str, table: HitTable, channel: str = "prod") -> None:
    reports.write(node, jsonio.dumps(NodeReport(node, channel, table.to_section(NOW)).to_json()))


def test_node_reports_are_summed_into_a_bounded_valid_status(tmp_path: Path) -> None:
    reports = DirectoryReports(tmp_path)
    for node in range(3):
        _write(reports, f"worker-{node}", _table(node, 3_000))
    _write(reports, "other-channel", _table(9, 10), channel="staging")
    (tmp_path / "forged.json").write_text('{"schema_version": 1, "node": "x", "channel": "prod", "hits": {}}')
    collected = HitsCollector(reports, "prod")(NOW)
    assert collected is not None
    section = collected.to_json()
    assert section["nodes"] == 3
    assert section["totals"]["ours"] == 3 * 3_000 * 2
    assert len(section["rows"]) <= MAX_CLUSTER_ROWS
    assert sum(r["count"] for r in section["rows"]) + section["dropped"]["events"] == 3 * 3_000 * 2
    status = {**copy.deepcopy(GOOD), "hits": section}
    data = jsonio.dumps_pretty(status)
    assert AgentStatus.parse(data).to_json()["hits"] == section
    assert len(data) < 1 << 20  # the status document's bound (fleet commands read no more)


def test_reports_are_read_at_most_every_interval_and_kept_through_an_outage() -> None:
    ticks = [0.0]
    with FakeKubeAPI() as kube:
        client = KubeApplier(kube.url, kube.token, attempts=1)
        reports = ConfigMapReports(client, "cdr-policy-hits")
        collector = HitsCollector(reports, "prod", interval_s=300, clock=lambda: ticks[0])
        assert collector(NOW) is None
        _write(reports, "worker-1", _table(1, 10))
        assert collector(NOW) is None  # not looked at again before the interval
        ticks[0] = 301
        first = collector(NOW)
        assert first is not None and first.nodes == 1
        kube.fail("configmap-list", 503, times=5)  # the API server is out: the last section stays
        ticks[0] = 700
        assert collector(NOW) == first
        client.close()


def test_the_agent_metrics_show_hits_by_engine_action_category_and_source() -> None:
    section = {
        **_table(1, 1).to_section(NOW).to_json(),
        "counters": [{"engine": "cilium", "action": "DROPPED", "category": "c2", "source": "feed", "count": 7}],
        "nodes": 2,
    }
    metrics = AgentMetrics(channel="prod", interval_s=60)
    metrics.observe(AgentStatus.from_json({**GOOD, "hits": section}))
    text = metrics.exposition()
    assert (
        'cdr_policy_agent_hits_total{channel="prod",engine="cilium",action="DROPPED",category="c2",source="feed"} 7'
        in text
    )
    assert 'cdr_policy_agent_hit_reporting_nodes{channel="prod"} 2' in text
    assert 'cdr_policy_agent_hit_events_total{channel="prod",result="ours"} 2' in text


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["hits"]["rows"][0].update(bundle=3),
        lambda d: d["hits"].update(bundles=["x" * 64]),
        lambda d: d["hits"]["rows"][0].update(hour="2027-01-01T00:00:00Z"),
        lambda d: d["hits"]["rows"][0].update(count=10**12),
        lambda d: d["hits"]["rows"][0].update(namespace="../x"),
    ],
)
def test_a_report_that_lies_is_refused(tamper: Callable[[dict[str, Any]], object]) -> None:
    doc = NodeReport("worker-1", "prod", _table(1, 3).to_section(NOW)).to_json()
    tamper(doc)
    with pytest.raises(Exception, match="worker-1"):
        read_report(json.dumps(doc).encode(), "worker-1")


def test_reports_travel_as_configmaps_of_their_own_namespace() -> None:
    with FakeKubeAPI() as kube:
        client = KubeApplier(kube.url, kube.token)
        reports = ConfigMapReports(client, "cdr-policy-hits")
        _write(reports, "worker-1", _table(1, 5))
        _write(reports, "worker-1", _table(1, 6))  # replaced, not added
        _write(reports, "worker-2", _table(2, 5))
        section = HitsCollector(reports, "prod")(NOW)
        assert section is not None and section.nodes == 2 and section.totals.ours == (6 + 5) * 2
        assert {op.verb for op in kube.operations} >= {"configmap-create", "configmap-update", "configmap-list"}
        client.close()

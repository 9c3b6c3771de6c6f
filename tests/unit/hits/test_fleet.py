"""Across the fleet: every cluster's status checked against its own channel's bundles and summed
per feed (per thousand prefixes held), finding, category and cluster, with what never fired and
the top offenders; a status that lies (an address its channel was not sent, another channel's
bundle, more detail than allowed, a future hour, another cluster's key) is refused and cannot make
anything fire; HitsRollup writes what fired for Render."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cdr_policy import jsonio, layout
from cdr_policy.bundle.provenance import ProvenanceIndex
from cdr_policy.bundle.signing import LocalSigner, Verifier
from cdr_policy.cli import main
from cdr_policy.errors import StorageError
from cdr_policy.hits.aggregate import HitTable, Row, hour_of
from cdr_policy.hits.fleet import FleetHitsReport, fleet_report, read_fired, read_fleet
from cdr_policy.stages.hits_rollup import run_hits_rollup
from cdr_policy.storage import LocalStore, Store, StoredObject
from cdr_policy.timeutil import iso, utcnow
from tests.unit.agent.test_status import GOOD
from tests.unit.hits.conftest import (
    CCNP_CDR,
    CCNP_TI,
    FINDING_C2,
    NOW,
    TP_CDR,
    TP_MINING,
    fixture_index,
    publish_index,
)


def _row(
    obj: str,
    kind: str,
    indicator: str,
    address: str | None = None,
    *,
    engine: str = "tetragon",
    action: str = "SIGKILL",
    ns: str = "shop",
    wl: str = "web",
    pod: str | None = None,
) -> Row:
    return Row("", engine, obj, kind, indicator, address, action, ns, wl, pod, "")


def _status(
    dist: Store,
    cluster: str,
    channel: str,
    digest: str,
    rows: dict[Row, int],
    *,
    now: datetime = NOW,
    key: str | None = None,
) -> None:
    """A cluster's status whose hits are ``rows`` (counts), all in the hour four hours before ``now``."""
    table = HitTable(since=iso(now - timedelta(days=1)))
    for row, count in rows.items():
        table.rows[row._replace(bundle=digest, hour=hour_of(now - timedelta(hours=4)))] += count
    table.bundles = [digest]
    table.totals.read = table.totals.ours = sum(rows.values())
    doc = {
        **copy.deepcopy(GOOD),
        "cluster_id": cluster,
        "channel": channel,
        "hits": {**table.to_section(now).to_json(), "nodes": 2},
    }
    dist.put(layout.status_key(key or cluster), jsonio.dumps(doc))


HONEST = {
    _row(TP_CDR, "prefix", "45.33.32.156/32", "45.33.32.156"): 3,
    _row(CCNP_TI, "prefix", "185.220.101.0/24", "185.220.101.33", engine="cilium", action="AUDIT"): 1,
    _row(TP_MINING, "rule", "crypto_mining"): 1,
    _row(TP_CDR, "port", "tcp/4444", action="POST"): 1,
}


def _fleet(dist: LocalStore, signer: LocalSigner, now: datetime) -> LocalStore:
    prod = publish_index(dist, signer, fixture_index(), now=now)
    staging = publish_index(dist, signer, _staging_index(), now=now)
    _status(dist, "eks-prod-1", "prod", prod, HONEST, now=now)
    cdr_drop = _row(CCNP_CDR, "prefix", "45.33.32.156/32", "45.33.32.156", engine="cilium", action="DROPPED")
    _status(dist, "eks-prod-2", "prod", prod, {cdr_drop: 2}, now=now)
    lies = {
        _row(TP_CDR, "prefix", "8.8.8.0/24", "8.8.8.8"): 1000,  # an address its channel was not sent
        _row(TP_CDR, "prefix", "45.33.32.156/32", "8.8.8.8"): 1000,  # an address outside the prefix
        _row("tp-not-ours", "prefix", "45.33.32.156/32", "45.33.32.156"): 1000,  # an object not in the bundle
        _row(TP_CDR, "prefix", "45.33.32.156/32", "45.33.32.156", pod="web-1"): 1000,  # more detail than allowed
        _row(TP_CDR, "rule", "crypto_mining"): 1000,  # a rule the object does not have
    }
    _status(dist, "eks-hostile", "prod", prod, lies, now=now)
    kill = _row(TP_CDR, "prefix", "45.33.32.156/32", "45.33.32.156")
    _status(dist, "eks-other-bundle", "prod", staging, {kill: 1000}, now=now)
    _status(dist, "eks-impostor", "prod", prod, HONEST, now=now, key="eks-prod-3")  # under another cluster's key
    return dist


@pytest.fixture
def fleet_dist(tmp_path: Path, key_pair: tuple[LocalSigner, Verifier]) -> LocalStore:
    return _fleet(LocalStore(tmp_path / "dist"), key_pair[0], NOW)


def _staging_index() -> ProvenanceIndex:
    index = fixture_index()
    return type(index)("staging", index.detail, index.classes, index.blocklists, index.ports, index.rules)


def test_the_fleet_report_sums_what_each_cluster_may_report(fleet_dist: LocalStore) -> None:
    dist = fleet_dist
    typed = fleet_report(read_fleet(dist, now=NOW, window=timedelta(days=7)))
    report = typed.to_json()
    assert FleetHitsReport.from_json(report) == typed
    clusters = {c["cluster_id"]: c for c in report["clusters"]}
    assert clusters["eks-prod-1"]["hits"] == 6 and clusters["eks-prod-1"]["refused"] == {}
    assert clusters["eks-prod-2"]["hits"] == 2 and clusters["eks-prod-2"]["nodes"] == 2
    assert clusters["eks-hostile"]["hits"] == 0
    assert clusters["eks-hostile"]["refused"] == {
        "more detail than the channel allows": 1,
        "not an indicator of the bundle's object": 4,
    }
    assert clusters["eks-other-bundle"]["refused"] == {"bundle not published for the cluster's channel": 1}
    assert "eks-prod-3" not in clusters and "eks-impostor" not in clusters and report["unreadable_statuses"] == 1
    assert report["hits"] == 8 == sum(c["hits"] for c in report["clusters"])  # agrees with the clusters
    feeds = {f["feed"]: f for f in report["feeds"]}
    assert feeds["feodo"]["hits"] == 5 and feeds["feodo"]["prefixes_held"] == 2
    assert feeds["feodo"]["hits_per_thousand_prefixes"] == 2500
    assert feeds["tor"]["hits"] == 1 and feeds["tor"]["prefixes_held"] == 2
    assert {f["finding"]: f["hits"] for f in report["findings"]}[FINDING_C2] == 5
    never = report["never_fired"]
    assert never["prefixes"] == 2 and never["by_feed"] == {"feodo": 1, "tor": 1} and never["rules"] == []
    assert report["top_indicators"][0] == {
        "channel": "prod",
        "kind": "prefix",
        "indicator": "45.33.32.156/32",
        "hits": 5,
    }
    assert report["top_workloads"][0] == {"cluster_id": "eks-prod-1", "namespace": "shop", "workload": "web", "hits": 6}


def test_the_window_leaves_older_hours_out(fleet_dist: LocalStore) -> None:
    dist = fleet_dist
    report = fleet_report(read_fleet(dist, now=NOW + timedelta(hours=10), window=timedelta(hours=2)))
    assert report.hits == 0


def test_hits_rollup_writes_only_what_fired_where_it_was_sent(fleet_dist: LocalStore, tmp_path: Path) -> None:
    dist = fleet_dist
    state = LocalStore(tmp_path / "state")
    summary = run_hits_rollup(state, dist, now=NOW)
    assert summary.hits == 8 and summary.refused == 6
    fired = read_fired(state.get(layout.FLEET_HITS).data, "fleet.json")
    addresses = {str(a) for a in fired.v4.strings()}
    assert addresses == {"45.33.32.156/32", "185.220.101.33/32"}  # never 8.8.8.8
    assert fired.rules == ("crypto_mining",) and fired.ports == ("tcp/4444",)


@pytest.mark.parametrize("unreadable", ["status/", "provenance.json", "manifest.json"])
def test_a_store_that_refuses_to_read_fails_the_rollup_rather_than_report_nothing_fired(
    fleet_dist: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unreadable: str
) -> None:
    """Access denied on a status, an index or a manifest (a role without its grant, as
    tests/integration/test_roles.py removes them) is an error of the run, never a quiet "nothing fired";
    a status that is gone, too large or not one is still counted unreadable (above)."""
    real_get = LocalStore.get

    def denied(self: LocalStore, key: str, *, max_bytes: int | None = None) -> StoredObject:
        if unreadable in key:
            raise StorageError(f"{key}: AccessDenied: Access Denied")
        return real_get(self, key, max_bytes=max_bytes)

    monkeypatch.setattr(LocalStore, "get", denied)
    state = LocalStore(tmp_path / "state")
    with pytest.raises(StorageError, match="AccessDenied"):
        run_hits_rollup(state, fleet_dist, now=NOW)
    assert not state.list("hits/")


def test_fleet_hits_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, key_pair: tuple[LocalSigner, Verifier]
) -> None:
    _fleet(LocalStore(tmp_path / "dist"), key_pair[0], utcnow())
    assert main(["fleet", "hits", "--dist", str(tmp_path / "dist"), "--json", "--since", "24h"]) == 0
    report = FleetHitsReport.from_json(json.loads(capsys.readouterr().out))
    assert report.hits == 8 and len(report.clusters) == 4
    assert main(["fleet", "hits", "--dist", str(tmp_path / "dist"), "--since", "1h"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Hits from") and ": 0 in 4 cluster(s)" in out
    assert main(["fleet", "hits", "--dist", str(tmp_path / "dist"), "--since", "30d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cdr-policy: error: argument --since: ") and "is out of range: use 1h..7d" in err

"""The node reader: follows the exports, attributes with the channel's signed bundle, keeps its
positions and counts together across restarts and rotations (no counted event lost or counted
twice), reports to the agent, and outlives what it talks to."""

from __future__ import annotations

import gzip
import shutil
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from cdr_policy.bundle.signing import LocalSigner, Verifier, generate_local_key
from cdr_policy.errors import StorageError
from cdr_policy.hits.reader import STATE, IndexFollower, Reader
from cdr_policy.hits.reports import DirectoryReports, NodeReport, read_report
from cdr_policy.storage import LocalStore
from fakes.exports import Workload, tetragon_connect
from fakes.stores import RecordingStore
from tests.unit.hits.conftest import EXPORTS, NOW, TP_CDR, fixture_index, publish_index

WEB = Workload("shop", "web", "web-7c9d8f6b5-x2k4q")


@pytest.fixture
def dist(tmp_path: Path) -> RecordingStore:
    return RecordingStore(LocalStore(tmp_path / "dist"))


def _reader(tmp_path: Path, dist: RecordingStore, verifier: Verifier, node: str = "worker-1") -> Reader:
    state = tmp_path / "state" / node
    follower = IndexFollower(dist, "prod", verifier, LocalStore(state))
    exports = {"tetragon": tmp_path / "tetragon.log", "cilium": tmp_path / "hubble.log"}
    reports = DirectoryReports(tmp_path / "reports")
    return Reader(follower, exports, state_dir=state, reports=reports, node=node, clock=lambda: NOW)


def _report(tmp_path: Path, node: str = "worker-1") -> NodeReport:
    return read_report((tmp_path / "reports" / f"{node}.json").read_bytes(), node)


def _copy(tmp_path: Path) -> None:
    for name in ("tetragon.log", "hubble.log"):
        shutil.copy(EXPORTS / name, tmp_path / name)


def test_a_node_report_counts_each_event_once_with_its_workload(
    tmp_path: Path, dist: RecordingStore, key_pair: tuple[LocalSigner, Verifier]
) -> None:
    signer, verifier = key_pair
    digest = publish_index(dist, signer, fixture_index())
    _copy(tmp_path)
    reader = _reader(tmp_path, dist, verifier)
    reader.drain()
    report = _report(tmp_path)
    assert report.node == "worker-1" and report.channel == "prod"
    table = report.table
    assert table.totals.to_dict() == {"read": 20, "ours": 8, "unattributed": 7, "malformed": 5}
    assert sum(table.rows.values()) == 8 and table.bundles == [digest]
    kill = [r for r in table.rows if r.engine == "tetragon" and r.object == TP_CDR and r.kind == "prefix"]
    assert len(kill) == 1 and table.rows[kill[0]] == 2
    assert (kill[0].namespace, kill[0].workload, kill[0].pod, kill[0].hour) == (
        "shop",
        "web",
        None,
        "2026-01-10T03:00:00Z",
    )
    assert {c.category for c in table.counters} == {
        "C2_Communication",
        "c2",
        "tor",
        "Reverse_Shell",
        "CryptoMiner_Execution",
    }
    # a second pass over the same files counts nothing more
    reader.drain()
    assert _report(tmp_path).table.totals.read == 20


def test_no_counted_event_is_lost_or_counted_twice_across_a_restart_and_a_rotation(
    tmp_path: Path, dist: RecordingStore, key_pair: tuple[LocalSigner, Verifier]
) -> None:
    signer, verifier = key_pair
    publish_index(dist, signer, fixture_index())
    lines = (EXPORTS / "tetragon.log").read_bytes().splitlines(keepends=True)
    active = tmp_path / "tetragon.log"
    active.write_bytes(b"".join(lines[:4]))
    reader = _reader(tmp_path, dist, verifier)
    reader.batch_lines = 3
    reader.poll_bundle()
    assert reader.step() == 3  # three lines counted, the fourth not yet: then the pod is killed
    # while it is down: the file is completed, rotated and compressed; a new one is started
    active.write_bytes(b"".join(lines[:8]))
    with gzip.open(tmp_path / "tetragon-2026-01-10T05-00-00.000.log.gz", "wb") as gz:
        gz.write(active.read_bytes())
    active.unlink()
    active.write_bytes(b"".join(lines[8:]) + (EXPORTS / "tetragon-rotated.log").read_bytes())
    again = _reader(tmp_path, dist, verifier)
    again.drain()
    table = _report(tmp_path).table
    assert table.totals.read == len(lines) + 2 and table.gaps == 0
    assert table.totals.ours == 5 + 2 and table.totals.malformed == 3


def test_the_saved_bundle_is_used_when_the_bucket_is_unreachable(
    tmp_path: Path, dist: RecordingStore, key_pair: tuple[LocalSigner, Verifier]
) -> None:
    signer, verifier = key_pair
    digest = publish_index(dist, signer, fixture_index())
    _copy(tmp_path)
    _reader(tmp_path, dist, verifier).poll_bundle()
    dist.down = StorageError("the bucket is unreachable")
    reader = _reader(tmp_path, dist, verifier)
    reader.drain()
    assert reader.follower.digest == digest and _report(tmp_path).table.totals.ours == 8


def test_nothing_is_read_before_a_bundle_is_known(
    tmp_path: Path, dist: RecordingStore, key_pair: tuple[LocalSigner, Verifier]
) -> None:
    _copy(tmp_path)
    reader = _reader(tmp_path, dist, key_pair[1])
    reader.drain()
    assert reader.step() == 0 and reader.tails["tetragon"].position.offset == 0


def test_a_forged_bundle_is_refused_and_the_last_one_kept(
    tmp_path: Path, dist: RecordingStore, key_pair: tuple[LocalSigner, Verifier]
) -> None:
    signer, verifier = key_pair
    digest = publish_index(dist, signer, fixture_index())
    reader = _reader(tmp_path, dist, verifier)
    reader.poll_bundle()
    generate_local_key(tmp_path / "other.pem")
    publish_index(dist, LocalSigner.from_file(tmp_path / "other.pem"), fixture_index("pod"), generation=2)
    reader.poll_bundle()
    index = reader.follower.index
    assert reader.follower.digest == digest and index is not None and index.detail == "workload"


@pytest.mark.parametrize("detail, kept", [("namespace", ("shop", None)), ("off", None)])
def test_the_channel_decides_what_is_reported_of_the_workloads(
    tmp_path: Path,
    dist: RecordingStore,
    key_pair: tuple[LocalSigner, Verifier],
    detail: str,
    kept: tuple[str, None] | None,
) -> None:
    signer, verifier = key_pair
    publish_index(dist, signer, fixture_index(detail))
    _copy(tmp_path)
    _reader(tmp_path, dist, verifier).drain()
    table = _report(tmp_path).table
    assert table.totals.ours == 8  # counted all the same
    if kept is None:
        assert not table.rows and not table.counters
    else:
        assert {(r.namespace, r.workload) for r in table.rows if r.namespace == "shop"} == {kept}
        assert all(r.pod is None for r in table.rows)


def test_rows_move_to_a_new_bundle_that_still_has_their_object(
    tmp_path: Path, dist: RecordingStore, key_pair: tuple[LocalSigner, Verifier]
) -> None:
    signer, verifier = key_pair
    first = publish_index(dist, signer, fixture_index())
    _copy(tmp_path)
    reader = _reader(tmp_path, dist, verifier)
    reader.drain()
    second = publish_index(dist, signer, fixture_index("pod"), generation=2)
    assert second != first
    reader.poll_bundle()
    assert reader.table.bundles == [second] and {r.bundle for r in reader.table.rows} == {second}


def test_a_changed_bundle_counts_from_its_first_event_and_the_one_before_until_it_is_replaced(
    tmp_path: Path, dist: RecordingStore, key_pair: tuple[LocalSigner, Verifier]
) -> None:
    signer, verifier = key_pair
    first = publish_index(dist, signer, fixture_index())
    reader = _reader(tmp_path, dist, verifier)
    reader.poll_bundle()
    polls = dist.polls
    renamed = "tp-cdr-blocklist-99999999"  # what the object became: a name is the object's content
    second = publish_index(dist, signer, fixture_index(tp_cdr=renamed), generation=2)
    at = NOW - timedelta(hours=1)
    lines = [
        tetragon_connect(policy=renamed, action="Sigkill", daddr="45.33.32.156", dport=443, w=WEB, node="w", at=at),
        tetragon_connect(policy=TP_CDR, action="Sigkill", daddr="45.33.32.156", dport=443, w=WEB, node="w", at=at),
        # not ours, whatever their names: a name we could have given looks once, the others never
        tetragon_connect(policy="tp-other-0badc0de", action="Post", daddr="1.1.1.1", dport=53, w=WEB, node="w", at=at),
        tetragon_connect(policy="tp-other-0badc0de", action="Post", daddr="1.1.1.1", dport=53, w=WEB, node="w", at=at),
        tetragon_connect(policy="observe-egress", action="Post", daddr="1.1.1.1", dport=53, w=WEB, node="w", at=at),
    ]
    (tmp_path / "tetragon.log").write_bytes(b"".join(lines))
    while reader.step():
        pass
    # the new object's first event found the new bundle (one poll); the old object's event, fired
    # before the agent replaced it, counts with the bundle before; the other names cost no poll
    assert dist.polls == polls + 1 and reader.follower.digest == second
    assert {(r.object, r.bundle): c for r, c in reader.table.rows.items()} == {(renamed, second): 1, (TP_CDR, first): 1}
    assert reader.table.totals.to_dict() == {"read": 5, "ours": 2, "unattributed": 3, "malformed": 0}


def test_an_unreadable_state_starts_at_the_files_ends(
    tmp_path: Path, dist: RecordingStore, key_pair: tuple[LocalSigner, Verifier]
) -> None:
    signer, verifier = key_pair
    publish_index(dist, signer, fixture_index())
    _copy(tmp_path)
    (tmp_path / "state" / "worker-1").mkdir(parents=True)
    (tmp_path / "state" / "worker-1" / STATE).write_text("{not json")
    reader = _reader(tmp_path, dist, verifier)
    reader.drain()
    table = _report(tmp_path).table
    assert table.totals.read == 0 and table.gaps == 2  # nothing counted twice; the gap is reported


def test_the_loop_outlives_outages_and_stops_on_a_signal(
    tmp_path: Path, dist: RecordingStore, key_pair: tuple[LocalSigner, Verifier]
) -> None:
    signer, verifier = key_pair
    publish_index(dist, signer, fixture_index())
    _copy(tmp_path)
    reader = _reader(tmp_path, dist, verifier)
    reader.reports = DirectoryReports(tmp_path / "reports" / "file-not-folder")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "file-not-folder").write_text("x")  # the report cannot be written
    stop = threading.Event()
    seen = []

    def observe(r: Reader) -> None:
        seen.append(r.table.totals.read)
        if r.table.totals.read == 20:
            stop.set()

    worker = threading.Thread(target=reader.run, args=(0.05, stop), kwargs={"observe": observe})
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive() and seen[-1] == 20 and reader.last_report is None

"""The CdrFetch stage end to end against the fake gateway: counts, storage, resumption, crash safety."""

from __future__ import annotations

import gzip
import ipaddress
import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
from moto import mock_aws

from cdr_policy import layout
from cdr_policy.errors import QualysError, StorageError
from cdr_policy.guards import NeverBlock
from cdr_policy.jsonio import loads
from cdr_policy.qualys.categories import CategoryMapping
from cdr_policy.qualys.client import QualysClient
from cdr_policy.qualys.findings import Finding, parse_finding
from cdr_policy.qualys.state import read_current, read_seen
from cdr_policy.stages.cdr_fetch import CdrFetchResult, load_cdr_set, run_cdr_fetch
from cdr_policy.storage import LocalStore, S3Store, Store
from fakes.clock import FakeClock
from fakes.qualys import FakeQualysGateway, Fault, load_findings, synthetic_findings
from tests.unit.qualys.conftest import SAMPLES, SAMPLES_NOW

NOW = SAMPLES_NOW
SCHEMA = json.loads(
    (Path(__file__).resolve().parents[3] / "layers/shared/cdr_policy/schemas/indicator-set.schema.json").read_text()
)


def fetch(
    store: Store, client: QualysClient, guard: NeverBlock, mapping: CategoryMapping, now: datetime = NOW, **kwargs: Any
) -> CdrFetchResult:
    kwargs.setdefault("lookback_hours", 24)
    kwargs.setdefault("overlap_minutes", 10)
    kwargs.setdefault("ttl_hours", 24 * 7)
    return run_cdr_fetch(store, client, now=now, guard=guard, mapping=mapping, **kwargs)


def state(store: Store) -> dict[str, Any]:
    """What must be identical after an interrupted run and its rerun as after one clean run."""
    current = read_current(store)
    assert current is not None
    d = current.to_dict()
    return {
        "entries": d["entries"],
        "behaviours": d["behaviours"],
        "rejected": d["rejected"],
        "seen": sorted(read_seen(store, current).uuids),
        "checkpoint": loads(store.get(layout.CDR_CHECKPOINT).data)["window_end"],
    }


class CrashingStore:
    """A store whose ``crash_at``-th write raises, as a Lambda killed between two writes would."""

    def __init__(self, inner: Store, crash_at: int | None = None, on_put: Callable[[str], None] | None = None) -> None:
        self.inner = inner
        self.crash_at = crash_at
        self.on_put = on_put
        self.puts = 0

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.puts += 1
        if self.crash_at is not None and self.puts == self.crash_at:
            raise RuntimeError(f"simulated crash at write {self.puts} ({key})")
        etag = self.inner.put(key, data, content_type)
        if self.on_put is not None:
            self.on_put(key)
        return etag

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# -- the sample pages ---------------------------------------------------------------------------
def test_samples_exact_report(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    store = LocalStore(tmp_path)
    result = fetch(store, make_client(samples_gateway), guard, mapping)
    report = result.summary().to_json()
    assert report["complete"] is True
    counts = ("fetched", "unique", "new", "duplicates", "malformed_count")
    assert {k: report[k] for k in counts} == dict(zip(counts, (20, 18, 18, 1, 1), strict=True))
    assert report["by_category"] == {
        "Clear_System_Logs_T1070_002": 1,
        "Cloud_Credentials_Accessed_By_Network_Utility": 3,
        "Container_escape_via_cgroup_T1611": 1,
        "CryptoMiner_Execution": 2,
        "Find_AWS_Credentials_T1552_001": 1,
        "Insmod_Executed_In_Container_T1014": 1,
        "Launch_Ingress_Remote_File_Copy_Tools_in_Container_T1105": 1,
        "Netcat_Reverse_Shell_Execution": 1,
        "Network_Scanning_Utility": 2,
        "Networking_C2_Communication": 1,
        "Networking_Suspicious_Communication": 2,
        "Schedule_Cron_Jobs_T1053_003": 1,
        "Suspicious_Unlisted_Activity": 1,
    }
    assert list(report["by_category"]) == sorted(report["by_category"])
    assert report["unmapped_categories"] == {"Suspicious_Unlisted_Activity": 1}
    assert report["by_rule"] == {
        "cloud_credentials": 3,
        "container_escape": 1,
        "credential_access": 1,
        "crypto_mining": 2,
        "ingress_tool_transfer": 1,
        "kernel_module": 1,
        "log_tampering": 1,
        "network_scanning": 2,
        "persistence_cron": 1,
        "reverse_shell": 1,
        "suspicious_communication": 3,
    }
    assert report["indicators"] == {"ips": 5, "domains": 4, "ports": 4}
    assert report["indicators_total"] == {"ips": 5, "domains": 4, "ports": 4, "behaviours": 11}
    assert [m["reason"] for m in report["malformed"]] == ["missing uuid"]
    assert {r["value"] for r in report["rejected"]} == {
        "10.20.3.4/32",
        "100.64.12.7/32",
        "169.254.169.254/32",
        "172.16.5.9/32",
        "192.0.2.10/32",
        "8.8.8.8/32",
        "fd00:ec2::254/128",
        "metadata.google.internal",
        "tcp/443",
        "tcp/53",
        "tcp/80",
    }
    assert report["rejected"] == sorted(report["rejected"], key=lambda r: (r["value"], r["reason"]))
    json.dumps(report)  # serialisable as it is

    current = load_cdr_set(store)
    assert current is not None and current.status == "ok"
    jsonschema.validate(current.to_dict(), SCHEMA)
    by_kind: dict[str, list[str]] = {}
    for e in current.entries:
        by_kind.setdefault(e.kind, []).append(e.value)
    assert by_kind == {
        "domain": ["c2.beacon.example", "payloads.example", "xmr.pool.example", "xn--bcher-pool-9db.example"],
        "ip": ["2a0b:f000::15/128", "45.153.160.2/32", "45.61.136.7/32", "45.9.20.100/32", "45.95.169.12/32"],
        "port": ["tcp/14444", "tcp/3333", "tcp/4444", "tcp/8443"],
    }
    scan = next(b for b in current.behaviours if b.rule == "network_scanning")
    assert scan.processes == ["masscan", "nmap"] and scan.categories == {"Network_Scanning_Utility": 2}
    creds = next(b for b in current.behaviours if b.rule == "cloud_credentials")
    assert creds.processes == ["curl", "wget"]
    # the C2 finding's IPv4-mapped address joined the scan finding's indicator
    shared = next(e for e in current.entries if e.value == "45.61.136.7/32")
    assert shared.refs == ["7f1c0a52-0004-4a8e-9c11-000000000004", "7f1c0a52-0012-4a8e-9c11-000000000012"]
    assert (
        result.indicator_set is not None and result.indicator_set.to_dict()["entries"] == current.to_dict()["entries"]
    )


def test_raw_pages_are_kept_exactly_and_malformed_ones_can_be_found(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    store = LocalStore(tmp_path)
    result = fetch(store, make_client(samples_gateway), guard, mapping)
    keys = store.list("raw/cdr/")
    assert keys == [
        "raw/cdr/2026/01/10/20260110T000000.000Z-00001.json.gz",
        "raw/cdr/2026/01/10/20260110T060000.000Z-00001.json.gz",
        "raw/cdr/2026/01/10/20260110T120000.000Z-00001.json.gz",
        "raw/cdr/2026/01/10/20260110T180000.000Z-00001.json.gz",
    ]
    served = [item for key in keys for item in json.loads(gzip.decompress(store.get(key).data))["content"]]
    assert served == samples_gateway.findings  # every finding, as sent, including the malformed and the duplicate
    (bad,) = result.summary().to_json()["malformed"]
    assert "uuid" not in json.loads(gzip.decompress(store.get(bad["raw"]).data))["content"][bad["index"]]


def test_sample_pages_are_in_the_documented_shape(guard: NeverBlock) -> None:
    for page in sorted(SAMPLES.glob("*.json")):
        doc = json.loads(page.read_text())
        assert set(doc) == {"content", "totalElements"} and doc["totalElements"] == len(doc["content"])
    items = load_findings(SAMPLES)
    parsed = [parse_finding(i) for i in items]
    findings = [f for f in parsed if isinstance(f, Finding)]
    categories = {f.category for f in findings}
    assert {
        "Cloud_Credentials_Accessed_By_Network_Utility",
        "Network_Scanning_Utility",
        "CryptoMiner_Execution",
        "Container_escape_via_cgroup_T1611",
    } <= categories
    assert {"curl", "wget"} <= {f.process_name for f in findings if f.category.startswith("Cloud_Credentials")}
    assert len(parsed) - len({f.uuid for f in findings}) == 2  # one duplicate, one malformed
    # public addresses are outside every never-block range; the others are refused by it
    for item in items:
        ip = item.get("destinationIp") if isinstance(item, dict) else None
        if ip and ip.startswith(("45.", "[2a0b", "::ffff:45.")):
            assert (
                guard.check_network(ipaddress.ip_network(ip.strip("[]").split("]")[0].replace("::ffff:", ""))) is None
            )


# -- scale, token expiry, rate limits ----------------------------------------------------------------
def test_more_than_1000_findings_across_windows_and_pages(
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
    clock: FakeClock,
) -> None:
    start = NOW - timedelta(hours=24)
    items = synthetic_findings(1500, start=start, end=NOW, malformed_every=40)
    duplicates = [dict(item) for item in items[100:120] if isinstance(item, dict) and "uuid" in item]
    items = items + duplicates
    valid = [f for f in map(parse_finding, items) if isinstance(f, Finding)]
    unique = {f.uuid: f for f in valid}
    malformed = len(items) - len(valid)

    with FakeQualysGateway(items, rate_limit_every=5, rate_limit_wait_s=3) as gw:
        pages_stored: list[str] = []

        def expire_midway(key: str) -> None:  # the token runs out after the 5th page is stored
            if key.startswith("raw/"):
                pages_stored.append(key)
                if len(pages_stored) == 5:
                    gw.expire_tokens()

        store = CrashingStore(LocalStore(tmp_path), on_put=expire_midway)
        client = make_client(gw)
        result = fetch(store, client, guard, mapping)

    report = result.summary().to_json()
    assert report["fetched"] == len(items) == 1500 + len(duplicates)
    assert report["unique"] == report["new"] == len(unique) > 1000
    assert report["duplicates"] == len(duplicates) > 0
    assert report["malformed_count"] == malformed == 1500 // 40
    assert report["by_category"] == dict(sorted(Counter(f.category for f in unique.values()).items()))
    assert report["unmapped_categories"] == {
        "Suspicious_Unlisted_Activity": report["by_category"]["Suspicious_Unlisted_Activity"]
    }
    assert report["windows"] == {"planned": 4, "done": 4}
    assert report["pages"] == len(pages_stored) >= 16
    statuses = [r.status for r in gw.findings_requests()]
    assert statuses.count(429) >= 3 and 3.0 in clock.sleeps
    assert statuses.count(401) == 1 and client.authentications == 2
    assert report["authentications"] == 2 and report["retries"] == statuses.count(429)

    current = load_cdr_set(LocalStore(tmp_path))
    assert current is not None
    ips = {e.value for e in current.entries if e.kind == "ip"}
    public = {
        str(ipaddress.ip_network(f.raw["destinationIp"]))
        for f in unique.values()
        if f.raw.get("destinationIp", "").startswith(("45.", "2a0b:"))
    }
    assert ips == public and len(public) > 300
    refused = {r["value"] for r in report["rejected"]}
    assert {
        str(ipaddress.ip_network(f.raw["destinationIp"]))
        for f in unique.values()
        if f.raw.get("destinationIp", "").startswith("10.")
    } <= refused
    behaviours = {b.rule: sum(b.categories.values()) for b in current.behaviours}
    assert behaviours == report["by_rule"]
    jsonschema.validate(current.to_dict(), SCHEMA)


# -- runs that follow each other ---------------------------------------------------------------------
def test_next_run_resumes_from_the_checkpoint_with_overlap(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    store = LocalStore(tmp_path)
    first_now = NOW - timedelta(hours=7, minutes=10)  # 16:50: finding 0016 (16:45) is in, 0017/0018 are not
    fetch(store, make_client(samples_gateway), guard, mapping, now=first_now)
    first = state(store)
    assert "7f1c0a52-0016-4a8e-9c11-000000000016" in first["seen"]
    later = fetch(store, make_client(samples_gateway), guard, mapping)
    assert later.range_start == first_now - timedelta(minutes=10)
    assert later.windows_planned == 2
    # 0016 again (inside the overlap: reported once, not merged twice), 0017 and 0018 new
    assert (later.fetched, later.unique, later.new, later.duplicates, len(later.malformed)) == (3, 3, 2, 0, 0)
    assert len(state(store)["seen"]) == len(first["seen"]) + 2


def test_overlap_and_reruns_count_nothing_twice(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    store = LocalStore(tmp_path)
    fetch(store, make_client(samples_gateway), guard, mapping)
    reference = state(store)
    again = fetch(store, make_client(samples_gateway), guard, mapping, now=NOW + timedelta(minutes=15), resume=False)
    assert again.range_start == NOW + timedelta(minutes=15) - timedelta(hours=24)
    # the range holds everything but 0001 (00:12): each reported once, none new
    assert (again.fetched, again.unique, again.new, again.duplicates) == (19, 17, 0, 1)
    assert sum(again.by_category.values()) == 17
    # the report still describes the range (what its findings yield), though nothing was merged again
    assert again.summary().to_json()["indicators"] == {"ips": 5, "domains": 4, "ports": 4}
    assert len(again.rejected) == 11
    assert len(again.malformed) == 1
    after = state(store)
    assert after["behaviours"] == reference["behaviours"] and after["entries"] == reference["entries"]


def test_unchanged_run_does_not_rewrite_the_indicator_set(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    store = LocalStore(tmp_path)
    fetch(store, make_client(samples_gateway), guard, mapping)
    before = store.get(layout.CDR_SET)
    counting = CrashingStore(store)
    fetch(counting, make_client(samples_gateway), guard, mapping, now=NOW + timedelta(minutes=15))
    assert store.get(layout.CDR_SET) == before  # no new S3 notification, no needless render
    # two writes: the checkpoint and the run summary (state/cdr/, outside the notified prefix)
    assert counting.puts == 2 and store.get(layout.CDR_CHECKPOINT).data.count(b"00:15:00.000Z") == 1


def test_expired_indicators_are_dropped_and_the_ledger_pruned(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    store = LocalStore(tmp_path)
    first = fetch(store, make_client(samples_gateway), guard, mapping, ttl_hours=24)
    assert first.indicator_set is not None
    total = len(first.indicator_set.entries) + len(first.indicator_set.behaviours)
    later = fetch(store, make_client(samples_gateway), guard, mapping, ttl_hours=24, now=NOW + timedelta(days=2))
    assert later.expired == total
    current = load_cdr_set(store)
    assert current is not None
    assert current.status == "empty" and current.entries == [] and current.behaviours == [] and current.rejected == []
    assert read_seen(store, current).uuids == {}


def test_future_checkpoint_fetches_nothing(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    store = LocalStore(tmp_path)
    fetch(store, make_client(samples_gateway), guard, mapping, now=NOW + timedelta(hours=1))
    result = fetch(store, make_client(samples_gateway), guard, mapping)
    assert result.windows_planned == 0 and result.fetched == 0
    assert loads(store.get(layout.CDR_CHECKPOINT).data)["window_end"] == "2026-01-11T01:00:00.000Z"


# -- failures half-way ----------------------------------------------------------------------------
def test_crash_at_any_write_then_rerun_loses_and_doubles_nothing(
    make_client: Callable[..., QualysClient], tmp_path: Path, guard: NeverBlock, mapping: CategoryMapping
) -> None:
    with FakeQualysGateway(SAMPLES, rate_limit_every=4) as gw:
        clean = CrashingStore(LocalStore(tmp_path / "clean"))
        fetch(clean, make_client(gw), guard, mapping)
        reference = state(clean.inner)
        assert clean.puts >= 16
        for crash_at in range(1, clean.puts + 1):
            store = CrashingStore(LocalStore(tmp_path / f"crash-{crash_at}"), crash_at=crash_at)
            with pytest.raises(RuntimeError, match="simulated crash"):
                fetch(store, make_client(gw), guard, mapping)
            store.crash_at = None
            rerun = fetch(store, make_client(gw), guard, mapping)
            assert rerun.complete
            assert state(store.inner) == reference, f"state differs after a crash at write {crash_at}"


def test_gateway_dying_between_two_pages_then_rerun(
    make_client: Callable[..., QualysClient], tmp_path: Path, guard: NeverBlock, mapping: CategoryMapping
) -> None:
    items = synthetic_findings(1200, start=NOW - timedelta(hours=24), end=NOW, malformed_every=50)
    with FakeQualysGateway(items) as gw:
        clean = LocalStore(tmp_path / "clean")
        fetch(clean, make_client(gw), guard, mapping)
        reference = state(clean)

        gw.crash_after_pages = gw.pages_served + 4  # 3 pages per window: dies after page 1 of window 2
        store = LocalStore(tmp_path / "run")
        with pytest.raises(QualysError, match="giving up after 6 attempts, last: transport error"):
            fetch(store, make_client(gw), guard, mapping)
        partial = state(store)
        assert partial["checkpoint"] == "2026-01-10T06:00:00.000Z"  # window 1 stored, window 2 not
        assert len(store.list("raw/")) == 4  # window 2's first page is kept all the same
        gw.crash_after_pages = None
        rerun = fetch(store, make_client(gw), guard, mapping)
    assert state(store) == reference
    lo, hi = "2026-01-10T05:50:00.000Z", "2026-01-10T06:00:00.000Z"
    in_overlap = [
        i for i in items if isinstance(i, dict) and {"uuid", "threatCategory"} <= set(i) and lo <= i["timestamp"] <= hi
    ]
    assert rerun.unique - rerun.new == len(in_overlap) > 0  # only the overlap repeats; it is not merged twice


def test_time_budget_stops_cleanly_and_the_next_run_resumes(
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
    clock: FakeClock,
) -> None:
    items = synthetic_findings(1000, start=NOW - timedelta(hours=24), end=NOW)
    with FakeQualysGateway(items, rate_limit_every=3, rate_limit_wait_s=100) as gw:
        clean = LocalStore(tmp_path / "clean")
        fetch(clean, make_client(gw, sleep=lambda s: None), guard, mapping)
        reference = state(clean)

        store = LocalStore(tmp_path / "run")
        gw.findings_calls = 0
        short = fetch(store, make_client(gw, deadline=clock() + 250), guard, mapping)
        assert short.complete is False and "time budget" in (short.stopped_reason or "")
        assert (short.windows_done, short.windows_planned) == (2, 4)
        assert short.summary().to_json()["range"]["checkpoint"] == "2026-01-10T12:00:00.000Z"
        assert short.unique == 500
        rest = fetch(store, make_client(gw), guard, mapping)
    assert rest.complete and rest.new == 500
    assert state(store) == reference


def test_permission_error_propagates_and_stores_no_checkpoint(
    make_client: Callable[..., QualysClient], tmp_path: Path, guard: NeverBlock, mapping: CategoryMapping
) -> None:
    with FakeQualysGateway(SAMPLES) as gw:
        gw.inject(Fault(status=403))
        store = LocalStore(tmp_path)
        with pytest.raises(QualysError, match="user lacks CDR API permission"):
            fetch(store, make_client(gw), guard, mapping)
    assert store.list("") == []


# -- stored state that is damaged ------------------------------------------------------------------
def test_unreadable_checkpoint_falls_back_to_the_lookback(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    store = LocalStore(tmp_path)
    fetch(store, make_client(samples_gateway), guard, mapping)
    store.put(layout.CDR_CHECKPOINT, b"{not json")
    result = fetch(store, make_client(samples_gateway), guard, mapping)
    assert result.range_start == NOW - timedelta(hours=24)
    assert (result.unique, result.new, result.duplicates) == (18, 0, 1)


@pytest.mark.parametrize(
    "key, data, message",
    [
        (layout.CDR_SET, b"{not json", "is not valid JSON"),
        (layout.CDR_SET, b'{"schema_version": 9}', "is not a valid indicator set"),
        (layout.CDR_SET, b"[]", "is not a valid indicator set"),
        (layout.CDR_SEEN, b'{"schema_version": 1, "uuids": {"a": "yesterday"}}', "is not a valid uuid ledger"),
        (layout.CDR_SEEN, b'{"schema_version": 1}', "is not a valid uuid ledger"),
    ],
)
def test_damaged_state_is_an_error_not_a_silent_reset(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
    key: str,
    data: bytes,
    message: str,
) -> None:
    store = LocalStore(tmp_path)
    store.put(key, data)
    with pytest.raises(StorageError, match=message):
        fetch(store, make_client(samples_gateway), guard, mapping)


def test_indicator_set_of_another_source_is_refused(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    store = LocalStore(tmp_path)
    fetch(store, make_client(samples_gateway), guard, mapping)
    doc = json.loads(store.get(layout.CDR_SET).data)
    store.put(layout.CDR_SET, json.dumps({**doc, "source": "feed:tor-exit"}).encode())
    with pytest.raises(StorageError, match="expected 'cdr'"):
        fetch(store, make_client(samples_gateway), guard, mapping)


def test_invalid_arguments(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    with pytest.raises(ValueError):
        fetch(LocalStore(tmp_path), make_client(samples_gateway), guard, mapping, lookback_hours=0)


# -- S3 -----------------------------------------------------------------------------------------
def test_s3_store(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="state")
        store = S3Store(s3, "state")
        result = fetch(store, make_client(samples_gateway), guard, mapping)
        keys = store.list("")
        assert layout.CDR_SET in keys and layout.CDR_CHECKPOINT in keys and layout.CDR_SEEN in keys
        assert len([k for k in keys if k.startswith("raw/cdr/2026/01/10/")]) == 4
        head = s3.head_object(
            Bucket="state",
            Key=keys[-1] if keys[-1].startswith("raw/") else next(k for k in keys if k.startswith("raw/")),
        )
        assert head["ContentType"] == "application/gzip"
        stored = load_cdr_set(store)
        assert stored is not None and result.indicator_set is not None
        assert stored.to_dict()["entries"] == result.indicator_set.to_dict()["entries"]


def test_a_finding_sent_again_later_is_remembered_longer(
    make_client: Callable[..., QualysClient], tmp_path: Path, guard: NeverBlock, mapping: CategoryMapping
) -> None:
    items = load_findings(SAMPLES)
    resent = {**items[3], "timestamp": "2026-01-11T02:30:00.000Z"}  # 0004, updated and sent again
    with FakeQualysGateway([*items, resent]) as gw:
        store = LocalStore(tmp_path)
        fetch(store, make_client(gw), guard, mapping)
        uuid = resent["uuid"]
        assert read_seen(store, read_current(store)).uuids[uuid] == "2026-01-10T06:00:00Z"
        later = fetch(store, make_client(gw), guard, mapping, now=NOW + timedelta(hours=3))
    assert (later.unique, later.new) == (1, 0)
    assert read_seen(store, read_current(store)).uuids[uuid] == "2026-01-11T03:00:00Z"


def test_one_metric_value_per_run(
    samples_gateway: FakeQualysGateway,
    make_client: Callable[..., QualysClient],
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    from cdr_policy.observability import metrics

    fetch(LocalStore(tmp_path), make_client(samples_gateway), guard, mapping)
    values = {name: m["Value"] for name, m in metrics.metric_set.items()}
    assert values["CdrFindingsFetched"] == [20.0] and values["CdrFindingsNew"] == [18.0]
    assert values["CdrFindingsMalformed"] == [1.0] and values["CdrFindingsUnmapped"] == [1.0]
    assert values["CdrFetchIncomplete"] == [0.0]

"""The FeedSync stage end to end: the real samples served over loopback HTTP into a state store.

Every broken-feed scenario first lets a good copy in, then breaks the feed and checks that the
good copy stays in force, marked stale with the reason (set, report, state, metric, log line)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto import mock_aws

from cdr_policy import jsonio, layout
from cdr_policy.feeds.abuseipdb import AbuseIPDB
from cdr_policy.feeds.config import FeedConfig
from cdr_policy.feeds.parse import fingerprint
from cdr_policy.feeds.persist import parse_set
from cdr_policy.guards import NeverBlock
from cdr_policy.models import IndicatorSet
from cdr_policy.observability import metrics
from cdr_policy.stages.feed_sync import MAX_LISTED_GUARD_REJECTIONS, FeedSyncResult, run_feed_sync
from cdr_policy.storage import LocalStore, S3Store, Store
from cdr_policy.summaries import FeedSummary
from cdr_policy.timeutil import iso
from fakes.feeds import FeedServer
from tests.unit.feeds.conftest import feed_for

SAMPLES = {
    "blocklist-de": ("blocklist_de_all.txt", "attacker", "plain"),
    "tor-exit": ("tor_torbulkexitlist.txt", "tor", "plain"),
    "emerging-threats": ("et_compromised-ips.txt", "compromised", "plain"),
    "feodo-c2": ("feodo_ipblocklist.csv", "c2", "auto"),
}


@pytest.fixture
def feeds(www: Path, server: FeedServer, shared_feeds_dir: Path) -> list[FeedConfig]:
    out = []
    for name, (file, category, fmt) in SAMPLES.items():
        shutil.copyfile(shared_feeds_dir / file, www / file)
        out.append(feed_for(server, f"/{file}", name, category, format=fmt, can_be_empty=name == "feodo-c2"))
    return out


@pytest.fixture
def small(feeds: list[FeedConfig]) -> list[FeedConfig]:
    """The samples without the 26,000-line blocklist.de (for tests that do not need its size)."""
    return [f for f in feeds if f.name != "blocklist-de"]


def sync(store: Store, feeds: list[FeedConfig], now: datetime, http: httpx.Client, **kw: Any) -> FeedSyncResult:
    return run_feed_sync(store, feeds, now=now, guard=NeverBlock(), http=http, **kw)


def stored(store: Store, name: str) -> IndicatorSet:
    """The stored set, read as Render reads it (schema and compact payload checked)."""
    return parse_set(store.get(layout.feed_set_key(name)).data, name)


def values(s: IndicatorSet) -> list[str]:
    """Every entry of a set in the compact form, as canonical text (IPv4 first)."""
    assert s.prefixes is not None and s.entries == []
    return s.prefixes.ipv4.strings() + s.prefixes.ipv6.strings()


def state(store: Store, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = jsonio.loads(store.get(layout.feed_state_key(name)).data)
    return doc


def test_first_sync_counts_match_the_files(
    store: LocalStore, feeds: list[FeedConfig], now: datetime, http: httpx.Client, www: Path
) -> None:
    result = sync(store, feeds, now, http)
    outcomes = result.outcomes
    assert {n: o.status for n, o in outcomes.items()} == dict.fromkeys(SAMPLES, "ok")
    bl = outcomes["blocklist-de"]
    assert (bl.stats["lines"], bl.stats["ipv4"], bl.stats["ipv6"]) == (25_961, 25_490, 471)
    assert bl.entries == 15_763 + 471 and bl.error is None and bl.changed
    assert outcomes["tor-exit"].stats["ipv4"] == 1_396
    assert outcomes["emerging-threats"].stats["ipv4"] == 539
    assert result.summary().feeds["tor-exit"] == FeedSummary("ok", 951)
    feodo = outcomes["feodo-c2"].stats
    assert (feodo["format"], feodo["ipv4"], feodo["trailer"]) == ("feodo-csv", 28, 28)
    assert result.written == sorted(layout.feed_set_key(n) for n in SAMPLES)

    s = stored(store, "blocklist-de")
    assert (s.source, s.status, s.fetched_at, s.size) == ("feed:blocklist-de", "ok", iso(now), 16_234)
    assert s.prefixes is not None and (len(s.prefixes.ipv4), len(s.prefixes.ipv6)) == (15_763, 471)
    assert (s.prefixes.category, s.prefixes.last_seen, s.prefixes.expires_at) == (
        "attacker",
        iso(now),
        iso(now + timedelta(hours=48)),
    )
    assert len(store.get(layout.feed_set_key("blocklist-de")).data) < 200_000  # 16,234 prefixes, compact
    assert store.get(layout.feed_last_good_key("blocklist-de")).data == (www / "blocklist_de_all.txt").read_bytes()
    st = state(store, "blocklist-de")
    assert st["etag"] and st["last_modified"] and st["last_good_count"] == 25_961
    assert (st["last_status"], st["failures"], st["url"]) == ("ok", 0, feeds[0].url)


def test_second_sync_uses_conditional_get_and_writes_nothing(
    store: LocalStore, feeds: list[FeedConfig], now: datetime, http: httpx.Client, server: FeedServer
) -> None:
    sync(store, feeds, now, http)
    before = {n: store.get(layout.feed_set_key(n)).etag for n in SAMPLES}
    result = sync(store, feeds, now + timedelta(hours=1), http)
    assert result.written == []
    for name, outcome in result.feeds.items():
        assert (outcome.status, outcome.changed, outcome.stats["not_modified"]) == ("ok", False, True)
        assert store.get(layout.feed_set_key(name)).etag == before[name]
    last = server.requests_for("/blocklist_de_all.txt")[-1]
    assert last.headers["If-None-Match"] == state(store, "blocklist-de")["etag"]
    assert result.feeds["blocklist-de"].entries == 16_234


def _rows(path: Path) -> list[bytes]:
    return path.read_bytes().rstrip(b"\n").split(b"\n")


ET = "/et_compromised-ips.txt"


def _write(www: Path, lines: Iterable[bytes]) -> None:
    (www / ET[1:]).write_bytes(b"\n".join(lines) + b"\n")


# scenario -> (how to break the emerging-threats feed, gate check, words of the reason)
# scenario -> (break the served feed(server, www), the gate's check, words of its reason)
BROKEN: dict[str, tuple[Callable[[FeedServer, Path], object], str, str]] = {
    "html": (lambda srv, www: srv.route(ET, html=True), "html", "HTML page"),
    "empty": (lambda srv, www: srv.route(ET, empty=True), "empty", "body is empty"),
    "json": (
        lambda srv, www: srv.route(ET, content_type="application/json", etag=False, last_modified=False),
        "content_type",
        "unexpected content type 'application/json'",
    ),
    "collapse": (lambda srv, www: _write(www, _rows(www / ET[1:])[::3]), "collapse", "collapsed from 539 to 180"),
    "explosion": (
        lambda srv, www: _write(www, (f"11.{i >> 8}.{i & 255}.1".encode() for i in range(539 * 6))),
        "explosion",
        "exploded from 539 to 3234",
    ),
    "error-ratio": (
        lambda srv, www: _write(www, (r if i % 5 else b"0" + r for i, r in enumerate(_rows(www / ET[1:])))),
        "error_ratio",
        "108 of 539 data lines are not addresses",
    ),
    "http-500": (lambda srv, www: srv.route(ET, status=500, body=b"oops"), "download", "HTTP 500"),
    "short-read": (
        lambda srv, www: srv.route(ET, short_read=True, etag=False, last_modified=False),
        "download",
        "download failed",
    ),
}


@pytest.mark.parametrize("scenario", sorted(BROKEN))
def test_a_broken_feed_keeps_its_last_good_copy_and_says_why(
    scenario: str,
    store: LocalStore,
    small: list[FeedConfig],
    now: datetime,
    http: httpx.Client,
    server: FeedServer,
    www: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    break_it, check, words = BROKEN[scenario]
    sync(store, small, now, http)
    good = stored(store, "emerging-threats")
    raw = store.get(layout.feed_last_good_key("emerging-threats")).data
    caplog.clear()
    metrics.clear_metrics()

    break_it(server, www)
    later = now + timedelta(hours=1)
    result = sync(store, small, later, http)

    outcome = result.feeds["emerging-threats"]
    assert outcome.status == "stale" and words in (outcome.error or "") and outcome.changed
    assert outcome.entries == good.size == 538
    kept = stored(store, "emerging-threats")
    assert (kept.status, kept.stats["gate"], kept.fetched_at) == ("stale", check, good.fetched_at)
    assert values(kept) == values(good)
    assert words in (kept.error or "")
    assert store.get(layout.feed_last_good_key("emerging-threats")).data == raw
    st = state(store, "emerging-threats")
    assert (st["failures"], st["stale_since"], st["last_status"]) == (1, iso(later), "stale")
    assert words in st["last_error"] and st["last_good_count"] == 539
    assert "FeedStale" in metrics.metric_set
    warning = [r for r in caplog.records if r.levelname == "WARNING" and getattr(r, "feed", None) == "emerging-threats"]
    assert warning and words in getattr(warning[0], "reason") and getattr(warning[0], "check") == check  # noqa: B009 (extra fields)
    assert {n: o.status for n, o in result.feeds.items() if n != "emerging-threats"} == {
        "feodo-c2": "ok",
        "tor-exit": "ok",
    }
    et = result.outcomes["emerging-threats"]
    assert et.status == "stale" and et.entries == 538 and words in (et.error or "")

    # The same failure again changes nothing that rendering depends on: no rewrite.
    again = sync(store, small, later + timedelta(hours=1), http)
    assert not again.feeds["emerging-threats"].changed and state(store, "emerging-threats")["failures"] == 2


def test_a_truncated_abusech_download_keeps_the_last_good_copy(
    store: LocalStore, small: list[FeedConfig], now: datetime, http: httpx.Client, server: FeedServer, www: Path
) -> None:
    sync(store, small, now, http)
    size = (www / "feodo_ipblocklist.csv").stat().st_size
    server.route("/feodo_ipblocklist.csv", truncate=size - 40)  # the "# END 28 entries" trailer is cut off
    result = sync(store, small, now + timedelta(hours=1), http)
    outcome = result.feeds["feodo-c2"]
    assert outcome.status == "stale" and "trailer is missing" in (outcome.error or "") and outcome.entries == 27
    assert stored(store, "feodo-c2").stats["gate"] == "truncated"


def test_recovery_after_a_failure(
    store: LocalStore, small: list[FeedConfig], now: datetime, http: httpx.Client, server: FeedServer
) -> None:
    sync(store, small, now, http)
    server.route("/tor_torbulkexitlist.txt", html=True)
    sync(store, small, now + timedelta(hours=1), http)
    server.reset("/tor_torbulkexitlist.txt")
    result = sync(store, small, now + timedelta(hours=2), http)
    assert result.feeds["tor-exit"].status == "ok" and result.feeds["tor-exit"].changed
    st = state(store, "tor-exit")
    assert (st["failures"], st["stale_since"], st["last_error"]) == (0, None, None)


def test_a_slow_feed_is_cut_at_the_fetch_deadline_and_keeps_its_last_good_copy(
    store: LocalStore, small: list[FeedConfig], now: datetime, http: httpx.Client, server: FeedServer
) -> None:
    import time

    sync(store, small, now, http)
    server.route("/tor_torbulkexitlist.txt", delay=3.0)
    started = time.monotonic()
    result = sync(store, small, now + timedelta(hours=1), http, deadline_s=2.0)
    assert time.monotonic() - started < 2.9, "the sync did not wait for the slow feed"
    outcome = result.feeds["tor-exit"]
    assert outcome.status == "stale" and outcome.entries > 0
    assert result.feeds["emerging-threats"].status == "ok"


def test_feodo_can_legitimately_be_empty(
    store: LocalStore, small: list[FeedConfig], now: datetime, http: httpx.Client, www: Path
) -> None:
    csv = (www / "feodo_ipblocklist.csv").read_text().splitlines()
    empty = [line for line in csv if not line.startswith('"20')]
    (www / "feodo_ipblocklist.csv").write_text("\n".join(empty[:-1] + ["# END 0 entries"]))
    result = sync(store, small, now, http)
    assert (result.feeds["feodo-c2"].status, result.feeds["feodo-c2"].entries, result.feeds["feodo-c2"].error) == (
        "empty",
        0,
        None,
    )
    assert stored(store, "feodo-c2").status == "empty"


def test_a_failed_first_download_is_an_error_without_entries(
    store: LocalStore, small: list[FeedConfig], now: datetime, http: httpx.Client, server: FeedServer
) -> None:
    server.route("/tor_torbulkexitlist.txt", html=True)
    result = sync(store, small, now, http)
    outcome = result.feeds["tor-exit"]
    assert outcome.status == "error" and "no earlier good copy" in (outcome.error or "") and outcome.entries == 0
    assert stored(store, "tor-exit").status == "error"


def test_poisoned_entries_are_rejected_with_reasons(
    store: LocalStore, small: list[FeedConfig], now: datetime, http: httpx.Client, www: Path
) -> None:
    path = www / "et_compromised-ips.txt"
    path.write_bytes(path.read_bytes() + b"8.8.8.8\n10.0.0.0/8\n0.0.0.0/0\n192.168.1.1\n010.0.0.1\n")
    octal_line = len(path.read_bytes().splitlines())
    result = sync(store, small, now, http)
    rejected = {(r.value, r.reason) for r in result.rejected if r.source == "emerging-threats"}
    assert rejected == {
        ("8.8.8.8/32", "inside never-block range: public DNS resolver (Google)"),
        ("10.0.0.0/8", "inside never-block range: private range (RFC 1918)"),
        ("0.0.0.0/0", "over-broad prefix (shorter than /8)"),
        ("192.168.1.1/32", "inside never-block range: private range (RFC 1918)"),
        (fingerprint(octal_line, "010.0.0.1"), "ambiguous: leading zero in an IPv4 octet (octal or decimal?)"),
    }
    s = stored(store, "emerging-threats")
    assert not {"8.8.8.8/32", "10.0.0.0/8", "0.0.0.0/0", "192.168.1.1/32"} & set(values(s))
    assert (s.stats["rejected_guard"], s.stats["rejected_parse"], s.stats["ipv4"]) == (4, 1, 543)
    assert len(s.rejected) == 5


def test_a_feed_set_is_one_provenance_for_its_aggregated_prefixes(
    store: LocalStore, now: datetime, http: httpx.Client, server: FeedServer, www: Path
) -> None:
    (www / "l.txt").write_text("93.184.216.34\n93.184.216.40\n198.51.100.200\n")
    feed = [feed_for(server, "/l.txt", "list", ttl_hours=24)]
    sync(store, feed, now, http)
    later = now + timedelta(hours=3)
    # .35 joins .34 into a /31; .40 stays; a new address appears.
    (www / "l.txt").write_text("93.184.216.34\n93.184.216.35\n93.184.216.40\n203.0.114.9\n")
    sync(store, feed, later, http)
    s = stored(store, "list")
    assert values(s) == ["93.184.216.34/31", "93.184.216.40/32", "203.0.114.9/32"]
    assert s.prefixes is not None
    assert (s.prefixes.last_seen, s.prefixes.expires_at) == (iso(later), iso(later + timedelta(hours=24)))


def test_stale_entries_age_out_after_their_ttl(
    store: LocalStore, now: datetime, http: httpx.Client, server: FeedServer, www: Path
) -> None:
    (www / "l.txt").write_text("93.184.216.34\n")
    feed = [feed_for(server, "/l.txt", "list", ttl_hours=2)]
    sync(store, feed, now, http)
    server.route("/l.txt", html=True)
    assert sync(store, feed, now + timedelta(hours=1), http).feeds["list"].entries == 1
    late = sync(store, feed, now + timedelta(hours=3), http)
    assert (late.feeds["list"].status, late.feeds["list"].entries, late.feeds["list"].changed) == ("stale", 0, True)
    assert stored(store, "list").size == 0


def test_unchanged_feed_is_rewritten_only_when_its_expiry_needs_refreshing(
    store: LocalStore, now: datetime, http: httpx.Client, server: FeedServer, www: Path
) -> None:
    (www / "l.txt").write_text("93.184.216.34\n")
    feed = [feed_for(server, "/l.txt", "list", ttl_hours=10)]
    sync(store, feed, now, http)
    assert not sync(store, feed, now + timedelta(hours=4), http).feeds["list"].changed
    refreshed = sync(store, feed, now + timedelta(hours=6), http)
    assert refreshed.feeds["list"].changed
    s = stored(store, "list")
    assert values(s) == ["93.184.216.34/32"] and s.prefixes is not None
    assert s.prefixes.expires_at == iso(now + timedelta(hours=16))


def test_disabled_and_removed_feeds_withdraw_their_entries(
    store: LocalStore, small: list[FeedConfig], now: datetime, http: httpx.Client
) -> None:
    sync(store, small, now, http)
    remaining = [f if f.name != "tor-exit" else FeedConfig(**{**f.to_dict(), "enabled": False}) for f in small]
    remaining = [f for f in remaining if f.name != "emerging-threats"]
    result = sync(store, remaining, now + timedelta(hours=1), http)
    assert result.feeds["tor-exit"].status == "disabled" and result.feeds["tor-exit"].changed
    assert result.feeds["emerging-threats"].error == "no longer in the feed configuration"
    for name in ("tor-exit", "emerging-threats"):
        s = stored(store, name)
        assert (s.status, s.entries, s.prefixes) == ("disabled", [], None)
    assert layout.feed_set_key("tor-exit") in result.written
    assert not sync(store, remaining, now + timedelta(hours=2), http).feeds["tor-exit"].changed


def test_304_without_a_stored_copy_downloads_again(
    store: LocalStore, small: list[FeedConfig], now: datetime, http: httpx.Client
) -> None:
    sync(store, small, now, http)
    store.delete(layout.feed_last_good_key("tor-exit"))
    result = sync(store, small, now + timedelta(hours=1), http)
    assert result.feeds["tor-exit"].status == "ok"
    assert store.get(layout.feed_last_good_key("tor-exit")).data


def test_file_url_feed(
    store: LocalStore, now: datetime, http: httpx.Client, shared_feeds_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "et.txt"
    shutil.copyfile(shared_feeds_dir / "et_compromised-ips.txt", copy)
    feed = [FeedConfig(name="et", url=copy.as_uri(), category="compromised")]
    assert sync(store, feed, now, http).feeds["et"].stats["ipv4"] == 539


def test_works_against_s3(feeds: list[FeedConfig], now: datetime, http: httpx.Client) -> None:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="state")
        s3 = S3Store(client, "state")
        result = sync(s3, feeds, now, http)
        assert all(o.status == "ok" for o in result.feeds.values())
        assert stored(s3, "blocklist-de").size == 16_234
        assert not sync(s3, feeds, now + timedelta(minutes=30), http).written


def test_reputation_is_reported_and_names_must_be_unique(
    store: LocalStore, small: list[FeedConfig], now: datetime, http: httpx.Client
) -> None:
    result = sync(store, small[:1], now, http, reputation=AbuseIPDB(None))
    assert result.outcomes["abuseipdb"].status == "disabled"
    with pytest.raises(ValueError, match="unique"):
        sync(store, [small[0], small[0]], now, http)


def test_a_local_directory_store_is_what_the_cli_uses(
    tmp_path: Path, small: list[FeedConfig], now: datetime, http: httpx.Client
) -> None:
    store = LocalStore(tmp_path / "cli-state")
    sync(store, small, now, http)
    assert sorted(store.list("indicators/")) == sorted(layout.feed_set_key(n) for n in SAMPLES if n != "blocklist-de")


def test_a_flood_of_refused_entries_is_counted_and_listed_only_in_part(
    store: LocalStore, now: datetime, http: httpx.Client, server: FeedServer, www: Path
) -> None:
    private = [f"10.{i // 256}.{i % 256}.1" for i in range(1_500)]
    (www / "l.txt").write_text("\n".join(["93.184.216.34", *private]) + "\n")
    result = sync(store, [feed_for(server, "/l.txt", "list")], now, http)
    stats = result.outcomes["list"].stats
    assert (stats["rejected_guard"], stats["rejected_guard_not_listed"], stats["entries"]) == (1_500, 500, 1)
    assert result.refused == result.summary().rejected == 1_500  # listed or only counted
    s = stored(store, "list")
    assert len(s.rejected) == MAX_LISTED_GUARD_REJECTIONS
    assert {r.reason for r in s.rejected} == {"inside never-block range: private range (RFC 1918)"}

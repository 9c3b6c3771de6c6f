"""AbuseIPDB reputation against a loopback fake serving the real example bodies."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cdr_policy import jsonio, layout, schemas
from cdr_policy.errors import ConfigError
from cdr_policy.feeds.abuseipdb import MISSING_KEY, AbuseIPDB
from cdr_policy.guards import NeverBlock
from cdr_policy.models import IndicatorSet
from cdr_policy.observability import metrics
from cdr_policy.storage import LocalStore
from cdr_policy.timeutil import iso
from fakes.abuseipdb import FakeAbuseIPDB

BAD = "118.25.6.39"  # the docs' example address
MILD = "93.184.216.34"
OTHER = "45.33.32.156"


@pytest.fixture
def api(shared_feeds_dir: Path) -> Iterator[FakeAbuseIPDB]:
    with FakeAbuseIPDB(shared_feeds_dir / "abuseipdb") as fake:
        fake.scores = {BAD: 100, MILD: 20, OTHER: 75}
        yield fake


def client(api: FakeAbuseIPDB, key: str = "test-key", **kw: Any) -> AbuseIPDB:
    return AbuseIPDB(key, base_url=api.api_url, **kw)


def stored(store: LocalStore, name: str = "abuseipdb") -> IndicatorSet:
    doc = jsonio.loads(store.get(layout.reputation_set_key(name)).data)
    schemas.validate(doc, "indicator-set.schema.json")
    return IndicatorSet.from_dict(doc)


def cache(store: LocalStore) -> dict[str, Any]:
    doc: dict[str, Any] = jsonio.loads(store.get(layout.ABUSEIPDB_CACHE).data)
    return doc


def test_missing_key_disables_it_with_one_clear_line(
    store: LocalStore, guard: NeverBlock, now: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    (outcome,) = AbuseIPDB(None).refresh(store, [BAD], now=now, guard=guard)
    assert (outcome.name, outcome.status, outcome.entries, outcome.error) == ("abuseipdb", "disabled", 0, MISSING_KEY)
    assert [r.getMessage() for r in caplog.records] == [MISSING_KEY]
    # a disabled set is stored once, so that every report says the list is off; nothing else is written
    assert outcome.changed and store.list("") == [layout.reputation_set_key("abuseipdb")]
    again = AbuseIPDB(None).refresh(store, [BAD], now=now, guard=guard)
    assert not again[0].changed
    both = AbuseIPDB("  ", blacklist=True).refresh(store, [BAD], now=now, guard=guard)
    assert [o.status for o in both] == ["disabled", "disabled"]


def test_scores_at_or_above_the_threshold_are_blocked(
    store: LocalStore, guard: NeverBlock, now: datetime, api: FakeAbuseIPDB
) -> None:
    ips = [BAD, MILD, OTHER, "8.8.8.8", "10.1.2.3", f"{BAD}/32", "::ffff:118.25.6.39", "2001:db8::/64"]
    (outcome,) = client(api, threshold=75).refresh(store, ips, now=now, guard=guard)
    assert sorted(api.checked()) == sorted([BAD, MILD, OTHER])  # protected IPs are never sent out
    req = api.requests[0]
    assert req["headers"]["Key"] == "test-key" and req["headers"]["Accept"] == "application/json"
    assert req["query"]["maxAgeInDays"] == ["30"]
    assert (outcome.status, outcome.entries, outcome.error, outcome.changed) == ("ok", 2, None, True)
    assert outcome.stats == {
        "asked": 3,
        "checked": 3,
        "cached": 0,
        "not_checked": 0,
        "below_threshold": 1,
        "entries": 2,
        "threshold": 75,
    }
    s = stored(store)
    assert (s.source, s.status) == ("abuseipdb", "ok")
    assert [(e.value, e.score, e.category, e.sources) for e in s.entries] == [
        ("45.33.32.156/32", 75, "reputation", ["abuseipdb"]),
        ("118.25.6.39/32", 100, "reputation", ["abuseipdb"]),
    ]
    assert s.entries[0].expires_at == iso(now + timedelta(days=7))
    assert {(r.value, r.reason) for r in s.rejected} == {
        ("8.8.8.8/32", "inside never-block range: public DNS resolver (Google)"),
        ("10.1.2.3/32", "inside never-block range: private range (RFC 1918)"),
    }


def test_scores_are_cached_per_ip_for_their_ttl(
    store: LocalStore, guard: NeverBlock, now: datetime, api: FakeAbuseIPDB
) -> None:
    abuse = client(api, cache_ttl_hours=24)
    abuse.refresh(store, [BAD, MILD], now=now, guard=guard)
    assert len(api.checked()) == 2
    (again,) = abuse.refresh(store, [BAD, MILD], now=now + timedelta(hours=23), guard=guard)
    assert len(api.checked()) == 2 and again.stats["cached"] == 2 and not again.changed
    api.scores[BAD] = 90
    (later,) = abuse.refresh(store, [BAD, MILD, OTHER], now=now + timedelta(hours=25), guard=guard)
    assert len(api.checked()) == 5 and later.stats["checked"] == 3 and later.changed
    entry = next(e for e in stored(store).entries if e.value == f"{BAD}/32")
    assert (entry.score, entry.first_seen, entry.last_seen) == (90, iso(now), iso(now + timedelta(hours=25)))
    assert cache(store)["scores"][BAD]["first_checked_at"] == iso(now)


def test_quota_exhausted_header_stops_asking_and_keeps_using_the_cache(
    store: LocalStore, guard: NeverBlock, now: datetime, api: FakeAbuseIPDB
) -> None:
    abuse = client(api)
    abuse.refresh(store, [BAD], now=now, guard=guard)
    api.remaining = 0
    (outcome,) = abuse.refresh(store, [BAD, MILD, OTHER], now=now + timedelta(days=1, hours=1), guard=guard)
    # IPs go in address order: OTHER is asked and its answer says the quota is used up.
    assert api.checked() == [BAD, OTHER]
    assert outcome.status == "stale" and "quota used up" in (outcome.error or "") and outcome.stats["not_checked"] == 2
    assert outcome.entries == 2  # OTHER's fresh score and BAD's cached one (a day old) both count
    assert cache(store)["paused_until"]["check"] == iso(datetime.fromtimestamp(api.reset_epoch, tz=UTC))
    api.remaining = None
    (paused,) = abuse.refresh(store, [MILD], now=now + timedelta(days=1, hours=2), guard=guard)
    assert len(api.checked()) == 2 and paused.status == "stale"


def test_429_with_retry_after_pauses_and_reports(
    store: LocalStore, guard: NeverBlock, now: datetime, api: FakeAbuseIPDB
) -> None:
    abuse = client(api)
    abuse.refresh(store, [BAD], now=now, guard=guard)
    api.rate_limited = True
    later = now + timedelta(days=2)
    (outcome,) = abuse.refresh(store, [BAD, MILD], now=later, guard=guard)
    assert len(api.checked()) == 2  # one attempt, then no more asking
    assert outcome.status == "stale"
    assert "429: Daily rate limit of 1000 requests exceeded" in (outcome.error or "")
    assert cache(store)["paused_until"]["check"] == iso(later + timedelta(seconds=3600))
    assert outcome.entries == 1 and "ReputationRateLimited" in metrics.metric_set
    api.rate_limited = False
    abuse.refresh(store, [MILD], now=later + timedelta(minutes=30), guard=guard)
    assert len(api.checked()) == 2  # still paused
    (resumed,) = abuse.refresh(store, [MILD], now=later + timedelta(hours=2), guard=guard)
    assert len(api.checked()) == 3 and resumed.status == "ok"


def test_429_without_retry_after_uses_the_reset_time(
    store: LocalStore, guard: NeverBlock, now: datetime, api: FakeAbuseIPDB
) -> None:
    api.rate_limited, api.retry_after = True, None
    client(api).refresh(store, [BAD], now=now, guard=guard)
    assert cache(store)["paused_until"]["check"] == "2030-03-17T17:46:40Z"


def test_a_refused_key_is_reported(store: LocalStore, guard: NeverBlock, now: datetime, api: FakeAbuseIPDB) -> None:
    (outcome,) = client(api, key="wrong").refresh(store, [BAD, MILD], now=now, guard=guard)
    assert outcome.status == "stale" and "refused the API key (401: Authentication failed" in (outcome.error or "")
    assert len(api.requests) == 1 and outcome.entries == 0


def test_an_address_abuseipdb_refuses_is_reported_and_the_rest_go_on(
    store: LocalStore, guard: NeverBlock, now: datetime, api: FakeAbuseIPDB
) -> None:
    api.invalid = {MILD}
    (outcome,) = client(api).refresh(store, [BAD, MILD, OTHER], now=now, guard=guard)
    assert outcome.status == "ok" and outcome.entries == 2
    (rejection,) = outcome.rejected
    assert rejection.value == f"{MILD}/32" and "must be a valid IPv4 or IPv6 address" in rejection.reason


def test_whitelisted_addresses_are_never_blocked(
    store: LocalStore, guard: NeverBlock, now: datetime, api: FakeAbuseIPDB
) -> None:
    api.whitelisted = {BAD}
    (outcome,) = client(api).refresh(store, [BAD], now=now, guard=guard)
    assert outcome.entries == 0 and outcome.rejected[0].reason == "whitelisted by AbuseIPDB"


def test_per_run_check_limit(store: LocalStore, guard: NeverBlock, now: datetime, api: FakeAbuseIPDB) -> None:
    (outcome,) = client(api, max_checks=1).refresh(store, [BAD, MILD, OTHER], now=now, guard=guard)
    assert len(api.checked()) == 1 and outcome.status == "stale" and "per-run limit of 1" in (outcome.error or "")


def test_old_scores_are_pruned_after_the_keep_window(
    store: LocalStore, guard: NeverBlock, now: datetime, api: FakeAbuseIPDB
) -> None:
    abuse = client(api, keep_hours=48)
    abuse.refresh(store, [BAD], now=now, guard=guard)
    api.rate_limited = True
    (outcome,) = abuse.refresh(store, [BAD], now=now + timedelta(hours=49), guard=guard)
    assert outcome.entries == 0 and cache(store)["scores"] == {}


def test_blacklist_is_an_extra_feed_fetched_once_a_day(
    store: LocalStore, guard: NeverBlock, now: datetime, api: FakeAbuseIPDB
) -> None:
    abuse = client(api, blacklist=True)
    check, blacklist = abuse.refresh(store, [], now=now, guard=guard)
    assert (check.status, blacklist.name, blacklist.status, blacklist.entries) == ("ok", "abuseipdb-blacklist", "ok", 3)
    s = stored(store, "abuseipdb-blacklist")
    assert s.source == "feed:abuseipdb-blacklist"
    assert [(e.value, e.score) for e in s.entries] == [
        ("5.188.10.179/32", 100),
        ("185.222.209.14/32", 100),
        ("191.96.249.183/32", 100),
    ]
    assert s.entries[0].last_seen == "2020-09-24T19:17:02Z"

    def blacklist_calls() -> list[dict[str, Any]]:
        return [r for r in api.requests if r["path"] == "/api/v2/blacklist"]

    assert blacklist_calls()[0]["query"] == {"confidenceMinimum": ["100"], "limit": ["10000"]}
    _, again = abuse.refresh(store, [], now=now + timedelta(hours=20), guard=guard)
    assert len(blacklist_calls()) == 1 and again.entries == 3 and not again.stats["downloaded"]
    abuse.refresh(store, [], now=now + timedelta(hours=25), guard=guard)
    assert len(blacklist_calls()) == 2


def test_the_key_never_reaches_the_logs(
    store: LocalStore, guard: NeverBlock, now: datetime, api: FakeAbuseIPDB, caplog: pytest.LogCaptureFixture
) -> None:
    api.rate_limited = True
    client(api, key="test-key").refresh(store, [BAD], now=now, guard=guard)
    assert "test-key" not in caplog.text and "test-key" not in store.get(layout.ABUSEIPDB_CACHE).data.decode()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 101}, "threshold"),
        ({"max_age_days": 0}, "maxAgeInDays"),
        ({"blacklist_confidence": 10}, "confidenceMinimum"),
        ({"base_url": "http://api.abuseipdb.com/api/v2"}, "must be https"),
        ({"keep_hours": 1, "cache_ttl_hours": 24}, "keep_hours"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AbuseIPDB("k", **kwargs)

"""Feed state and indicator-set persistence: round trips, damaged objects, and when to rewrite."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from cdr_policy import jsonio, layout
from cdr_policy.feeds.persist import (
    FeedState,
    load_set,
    load_state,
    needs_refresh,
    render_fingerprint,
    save_set_if_changed,
    save_state,
)
from cdr_policy.models import Indicator, IndicatorSet, Rejection, SetStatus
from cdr_policy.storage import LocalStore
from cdr_policy.timeutil import iso


def _set(now: datetime, status: SetStatus = "ok", expires_h: int = 10, **stats: object) -> IndicatorSet:
    entry = Indicator(
        value="198.18.0.1/32",
        kind="ip",
        category="c2",
        sources=["f"],
        first_seen=iso(now),
        last_seen=iso(now),
        expires_at=iso(now + timedelta(hours=expires_h)),
        refs=["f"],
    )
    return IndicatorSet(
        source="feed:f",
        fetched_at=iso(now),
        status=status,
        entries=[entry],
        rejected=[Rejection("10.0.0.1/32", "f", "private")],
        stats={"lines": 2, **stats},
    )


def test_state_round_trip_and_damaged_state(store: LocalStore, caplog: pytest.LogCaptureFixture) -> None:
    state = FeedState(url="https://e.org/x", etag='"a"', last_good_count=5, failures=2)
    save_state(store, "f", state)
    assert load_state(store, "f") == state
    assert load_state(store, "missing") == FeedState()
    store.put(layout.feed_state_key("f"), b"{not json")
    assert load_state(store, "f") == FeedState() and "starting afresh" in caplog.text
    store.put(layout.feed_state_key("f"), jsonio.dumps({"schema_version": 99}))
    assert load_state(store, "f") == FeedState()


def test_damaged_set_is_treated_as_absent(store: LocalStore, caplog: pytest.LogCaptureFixture) -> None:
    store.put(layout.feed_set_key("f"), b'{"schema_version": 1}')
    assert load_set(store, layout.feed_set_key("f")).indicator_set is None and "will be replaced" in caplog.text


def test_fingerprint_ignores_what_moves_on_every_run(now: datetime) -> None:
    a = _set(now, feed_updated="x", bytes=10, sha256="1")
    later = now + timedelta(hours=1)
    b = _set(later, feed_updated="y", bytes=11, sha256="2")
    b.entries[0].first_seen = a.entries[0].first_seen
    b.error = "different words"
    assert render_fingerprint(a) == render_fingerprint(b)
    assert render_fingerprint(a) != render_fingerprint(_set(now, status="stale"))
    c = _set(now)
    c.entries[0].category = "tor"
    assert render_fingerprint(a) != render_fingerprint(c)


def test_write_only_when_changed_or_expiry_due(store: LocalStore, now: datetime) -> None:
    key = layout.feed_set_key("f")
    assert save_set_if_changed(store, load_set(store, key), _set(now), now=now, ttl=timedelta(hours=10))
    same = _set(now + timedelta(hours=2), expires_h=10)
    same.entries[0].first_seen = iso(now)
    assert not save_set_if_changed(
        store, load_set(store, key), same, now=now + timedelta(hours=2), ttl=timedelta(hours=10)
    )
    late = now + timedelta(hours=6)  # stored entries expire in 4 h, under half the TTL
    stored = load_set(store, key).indicator_set
    assert stored is not None and needs_refresh(stored, late, timedelta(hours=10))
    assert save_set_if_changed(store, load_set(store, key), same, now=late, ttl=timedelta(hours=10))
    assert not needs_refresh(IndicatorSet("feed:f", iso(now), "empty"), now, timedelta(hours=1))

"""Where FeedSync keeps things in the state store, and how it decides whether to write.

- ``indicators/feeds/<name>.json`` / ``indicators/reputation/<name>.json``: the indicator sets.
  Every write there raises an S3 notification and a render, so a set is written only when what
  rendering depends on changed (``render_fingerprint``) or when its entries need their expiry
  pushed out (``needs_refresh``).
- ``state/feeds/<name>.json``: conditional-GET validators and the last good download's facts.
- ``raw/feeds/<name>/last-good``: the last body that passed the gate.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from cdr_policy import jsonio, layout
from cdr_policy.models import IndicatorSet, Rejection
from cdr_policy.observability import logger
from cdr_policy.storage import NotFound, Store
from cdr_policy.timeutil import parse_iso

STATE_SCHEMA_VERSION = 1
# Informational stats that change without the entries changing (Feodo's banner time, sizes,
# what one run had to download or ask).
_VOLATILE_STATS = (
    "feed_updated",
    "bytes",
    "sha256",
    "stale_since",
    "not_modified",
    "asked",
    "checked",
    "cached",
    "not_checked",
    "downloaded",
)


@dataclass
class FeedState:
    url: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    last_good_at: str | None = None
    last_good_sha256: str | None = None
    last_good_count: int | None = None
    last_status: str | None = None
    last_error: str | None = None
    last_attempt_at: str | None = None
    failures: int = 0
    stale_since: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": STATE_SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeedState:
        if d.get("schema_version") != STATE_SCHEMA_VERSION:
            raise ValueError(f"unsupported feed state schema_version {d.get('schema_version')!r}")
        return cls(**{f.name: d.get(f.name, f.default) for f in fields(cls)})


def load_state(store: Store, name: str) -> FeedState:
    key = layout.feed_state_key(name)
    try:
        return FeedState.from_dict(jsonio.loads(store.get(key).data))
    except NotFound:
        return FeedState()
    except (ValueError, TypeError, KeyError) as exc:
        logger.warning("feed state unreadable, starting afresh", extra={"key": key, "error": str(exc)})
        return FeedState()


def save_state(store: Store, name: str, state: FeedState) -> None:
    store.put(layout.feed_state_key(name), jsonio.dumps_pretty(state.to_dict()), "application/json")


@dataclass
class StoredSet:
    """An indicator set as read from the store (``None`` fields when absent or unreadable)."""

    key: str
    indicator_set: IndicatorSet | None


def load_set(store: Store, key: str) -> StoredSet:
    try:
        raw = store.get(key).data
    except NotFound:
        return StoredSet(key, None)
    try:
        return StoredSet(key, IndicatorSet.from_dict(jsonio.loads(raw)))
    except (ValueError, TypeError, KeyError) as exc:
        logger.warning("stored indicator set unreadable, it will be replaced", extra={"key": key, "error": str(exc)})
        return StoredSet(key, None)


def render_fingerprint(s: IndicatorSet) -> bytes:
    """The part of a set that rendering and the run report depend on. Timestamps that move on
    every run (``fetched_at``, each entry's ``last_seen``/``expires_at``), the wording of the error
    and informational stats are left out; the gate check that made a set stale is in
    (``stats.gate``)."""
    entries = [(e.value, e.kind, e.category, e.sources, e.refs, e.first_seen, e.score) for e in s.entries]
    rejected = [(r.value, r.source, r.reason) for r in s.rejected]
    stats = {k: v for k, v in s.stats.items() if k not in _VOLATILE_STATS}
    behaviours = [b.to_dict() for b in s.behaviours]
    return jsonio.dumps([s.source, s.status, stats, entries, behaviours, rejected])


def needs_refresh(s: IndicatorSet, now: datetime, ttl: timedelta) -> bool:
    """True when the earliest expiry of the stored entries is less than half a TTL away.
    (Stored timestamps are canonical ``timeutil.iso`` strings, which sort chronologically.)"""
    if not s.entries:
        return False
    return parse_iso(min(e.expires_at for e in s.entries)) - now < ttl / 2


def save_set_if_changed(
    store: Store, previous: StoredSet, new: IndicatorSet, *, now: datetime, ttl: timedelta | None
) -> bool:
    """Write ``new`` unless the stored set renders the same and does not need its expiry refreshed.
    Returns whether it wrote."""
    old = previous.indicator_set
    if old is not None and render_fingerprint(old) == render_fingerprint(new):
        if ttl is None or not needs_refresh(old, now, ttl):
            return False
    store.put(previous.key, jsonio.dumps(new.to_dict()), "application/json")
    return True


@dataclass
class FeedOutcome:
    """What happened to one source in a run (one line of the report's ``feeds`` section)."""

    name: str
    status: str
    entries: int
    error: str | None = None
    changed: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    key: str | None = None  # the indicator set's key in the state store

    @classmethod
    def of_set(cls, name: str, indicators: IndicatorSet, *, changed: bool, key: str | None) -> FeedOutcome:
        """The outcome that reports ``indicators`` as the source's set in force."""
        return cls(
            name=name,
            status=indicators.status,
            entries=len(indicators.entries),
            error=indicators.error,
            changed=changed,
            stats=dict(indicators.stats),
            rejected=list(indicators.rejected),
            key=key,
        )

    def to_report(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "entries": self.entries,
            "error": self.error,
            "changed": self.changed,
            "stats": copy.deepcopy(self.stats),
        }

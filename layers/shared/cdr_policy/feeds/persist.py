"""Where FeedSync keeps things in the state store, and how it decides whether to write.

- ``indicators/feeds/<name>.json`` / ``indicators/reputation/<name>.json``: the indicator sets.
  Every write there raises an S3 notification and a render, so a set is written only when what
  rendering depends on changed (``render_fingerprint``) or when its entries need their expiry
  pushed out (``needs_refresh``).
- ``state/feeds/<name>.json``: conditional-GET validators and the last good download's facts.
- ``raw/feeds/<name>/last-good``: the last body that passed the gate.

Indicator sets are JSON documents (schema ``indicator-set.schema.json``). A feed set carries its
entries in the compact form (``models.FeedPrefixes``) under ``prefixes``: the set-level provenance,
the prefix counts per family, the SHA-256 of the payload and the payload itself (``format``
``planes-zlib-v1``: ``netprefix.vector.pack``, base64). Reading one (``parse_set``) checks the
document against the schema and the payload as a whole: size, digest, order and canonical form;
one bad byte refuses the set. A million prefixes take about 3 MB and a fraction of a second.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from cdr_policy import jsonio, layout, schemas
from cdr_policy.errors import CdrPolicyError
from cdr_policy.models import FeedPrefixes, IndicatorSet, Rejection
from cdr_policy.netprefix import vector
from cdr_policy.observability import logger
from cdr_policy.storage import NotFound, Store
from cdr_policy.timeutil import parse_iso

# A feed download is at most 64 MiB (``feeds.download.MAX_BYTES``) and every entry takes at least
# eight bytes (``a.b.c.d`` and a newline): a set claiming more prefixes is refused before its
# payload is inflated.
MAX_FEED_PREFIXES = 64 * 1024 * 1024 // 8

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
        return StoredSet(key, parse_set(raw, key))
    except CdrPolicyError as exc:
        logger.warning("stored indicator set unreadable, it will be replaced", extra={"key": key, "error": str(exc)})
        return StoredSet(key, None)


def dump_set(s: IndicatorSet) -> bytes:
    """The stored JSON of a set, in either form."""
    if s.prefixes is None:
        return jsonio.dumps(s.to_dict())
    fp = s.prefixes
    if fp.held_back:
        raise ValueError(f"{s.source}: a set a render held back prefixes of is not stored")
    doc = IndicatorSet(s.source, s.fetched_at, s.status, [], s.behaviours, s.rejected, s.stats, s.error).to_dict()
    doc["prefixes"] = {
        "category": fp.category,
        "last_seen": fp.last_seen,
        "expires_at": fp.expires_at,
        **vector.to_fields(fp.ipv4, fp.ipv6),
    }
    return jsonio.dumps(doc)


def parse_set(raw: bytes, where: str) -> IndicatorSet:
    """A stored set, checked against its schema and, in the compact form, its payload as a whole
    (see the module docstring). ``CdrPolicyError`` says what is wrong, never quoting the content."""
    try:
        doc = jsonio.loads(raw)
    except ValueError as exc:
        raise CdrPolicyError(f"{where} is not JSON: {exc}") from exc
    try:
        schemas.validate(doc, "indicator-set.schema.json")
    except CdrPolicyError as exc:
        raise CdrPolicyError(f"{where}: {exc}") from exc
    s = IndicatorSet.from_dict(doc)
    compact = doc.get("prefixes")
    if compact is not None:
        if compact["ipv4"] + compact["ipv6"] > MAX_FEED_PREFIXES:
            raise CdrPolicyError(f"{where}: compact prefixes refused: more than {MAX_FEED_PREFIXES} prefixes")
        try:
            v4, v6 = vector.from_fields(compact)
        except vector.PackError as exc:
            raise CdrPolicyError(f"{where}: compact prefixes refused: {exc}") from exc
        s.prefixes = FeedPrefixes(compact["category"], compact["last_seen"], compact["expires_at"], v4, v6)
    return s


def render_fingerprint(s: IndicatorSet) -> bytes:
    """The part of a set that rendering and the run report depend on. Timestamps that move on
    every run (``fetched_at``, each entry's ``last_seen``/``expires_at``), the wording of the error
    and informational stats are left out; the gate check that made a set stale is in
    (``stats.gate``)."""
    entries = [(e.value, e.kind, e.category, e.sources, e.refs, e.first_seen, e.score) for e in s.entries]
    rejected = [(r.value, r.source, r.reason) for r in s.rejected]
    stats = {k: v for k, v in s.stats.items() if k not in _VOLATILE_STATS}
    behaviours = [b.to_dict() for b in s.behaviours]
    fp = s.prefixes
    prefixes = None if fp is None else [fp.category, vector.digest(fp.ipv4, fp.ipv6)]
    return jsonio.dumps([s.source, s.status, stats, entries, behaviours, rejected, prefixes])


def needs_refresh(s: IndicatorSet, now: datetime, ttl: timedelta) -> bool:
    """True when the earliest expiry of the stored entries is less than half a TTL away.
    (Stored timestamps are canonical ``timeutil.iso`` strings, which sort chronologically.)"""
    expiries = [e.expires_at for e in s.entries] + ([s.prefixes.expires_at] if s.prefixes is not None else [])
    if not expiries:
        return False
    return parse_iso(min(expiries)) - now < ttl / 2


def save_set_if_changed(
    store: Store, previous: StoredSet, new: IndicatorSet, *, now: datetime, ttl: timedelta | None
) -> bool:
    """Write ``new`` unless the stored set renders the same and does not need its expiry refreshed.
    Returns whether it wrote."""
    old = previous.indicator_set
    if old is not None and render_fingerprint(old) == render_fingerprint(new):
        if ttl is None or not needs_refresh(old, now, ttl):
            return False
    store.put(previous.key, dump_set(new), "application/json")
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
            entries=indicators.size,
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

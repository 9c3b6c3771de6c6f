"""How Render reads the indicator sets: every set under ``indicators/``, each checked whole, and for
a set that cannot be read, its last good copy (docs/ARCHITECTURE.md, "Keep-last-good").

One unreadable set (truncated, corrupt, refused by its schema) must not stop every render: the
channels would never be re-signed and every agent would drop its enforcement when its bundle
expires. So:

- each set that reads back whole (``feeds.persist.parse_set``: schema and, in the compact form,
  the whole payload) is copied byte for byte to ``last-good/<its key>`` when its content changed
  since the last copy; ``last-good/index.json`` records each copy's SHA-256 and when it was made.
  What is copied is what was read, so a set a render held back prefixes of
  (``policy.ranked.hold_to_room``) is never what gets stored;
- a set that cannot be read is replaced by its last good copy, checked the same way (and against
  the SHA-256 the index recorded), for at most ``MAX_UNREADABLE_DAYS`` after the first render that
  found it unreadable; its entries still expire at their own ``expires_at``. Without a usable copy
  the set is left out. Either way the set is named in ``LoadedSets.unreadable`` (the run report's
  ``unreadable_sets`` and the ``IndicatorSetUnreadable`` metric, ``stages.render``).

The index changes only when a copy is made, a set first fails or recovers: a render of unchanged,
readable sets writes nothing. Errors name the key and what is wrong, never the content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cdr_policy import jsonio, layout
from cdr_policy.errors import CdrPolicyError
from cdr_policy.feeds.persist import parse_set
from cdr_policy.models import IndicatorSet
from cdr_policy.observability import logger
from cdr_policy.storage import NotFound, Store
from cdr_policy.timeutil import iso, parse_iso

INDEX_SCHEMA_VERSION = 1
# How long a set may stay unreadable while Render uses its last good copy. After that the set is
# left out: a feed or CDR fetch that has not been repaired in a week is a problem to see, not hide.
MAX_UNREADABLE_DAYS = 7


@dataclass(frozen=True)
class Unreadable:
    """A set that could not be read: its key, what is wrong, and the copy used instead (None: left out)."""

    key: str
    error: str
    kept: dict[str, str] | None

    def to_report(self) -> dict[str, Any]:
        return {"key": self.key, "error": self.error, "kept": self.kept}


@dataclass
class LoadedSets:
    sets: list[IndicatorSet] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    index_changed: bool = False


def load_indicator_sets(store: Store, after_each: Callable[[list[IndicatorSet]], None], *, now: datetime) -> LoadedSets:
    """Every current indicator set under ``indicators/``, in key order (see the module docstring).
    ``after_each`` is called with the sets loaded so far after each one (Render lets go there of
    what it cannot rank, so that a set is held whole only while it loads)."""
    index = _read_index(store)
    entries: dict[str, dict[str, str]] = {}
    loaded = LoadedSets()
    for key in store.list(layout.INDICATORS):
        if not key.endswith(".json"):
            continue
        raw = store.get(key).data
        previous = index.get(key)
        try:
            indicator_set = parse_set(raw, f"{store.describe()}/{key}")
        except CdrPolicyError as exc:
            since = previous.get("unreadable_since", iso(now)) if previous else iso(now)
            if previous is not None:
                entries[key] = {**previous, "unreadable_since": since}
            kept, why = _copy(store, key, previous, since, now)
            loaded.unreadable.append(Unreadable(key, str(exc), None if kept is None else _kept(previous)))
            logger.error(
                "indicator set unreadable: " + ("rendering from its last good copy" if kept else "left out"),
                extra={"key": key, "error": str(exc), "last_good": why or _kept(previous)},
            )
            if kept is None:
                continue
            indicator_set = kept
        else:
            entries[key] = _copied(store, key, raw, previous, now)
        loaded.sets.append(indicator_set)
        after_each(loaded.sets)
    loaded.index_changed = entries != index
    if loaded.index_changed:
        doc = {"schema_version": INDEX_SCHEMA_VERSION, "sets": dict(sorted(entries.items()))}
        store.put(layout.LAST_GOOD_INDEX, jsonio.dumps_pretty(doc), "application/json")
    return loaded


def _kept(entry: dict[str, str] | None) -> dict[str, str]:
    assert entry is not None
    return {"copied_at": entry["copied_at"], "sha256": entry["sha256"]}


def _copied(store: Store, key: str, raw: bytes, previous: dict[str, str] | None, now: datetime) -> dict[str, str]:
    """The index entry of a set that read back whole, after its copy is stored (when it changed)."""
    sha = hashlib.sha256(raw).hexdigest()
    if previous is not None and previous.get("sha256") == sha:
        return {"sha256": sha, "copied_at": previous["copied_at"]}
    store.put(layout.last_good_set_key(key), raw, "application/json")
    return {"sha256": sha, "copied_at": iso(now)}


def _copy(
    store: Store, key: str, entry: dict[str, str] | None, since: str, now: datetime
) -> tuple[IndicatorSet | None, str | None]:
    """The last good copy of ``key`` when it may stand in for it, else None and why not."""
    if entry is None:
        return None, "no last good copy"
    if now - parse_iso(since) > timedelta(days=MAX_UNREADABLE_DAYS):
        return None, f"unreadable for more than {MAX_UNREADABLE_DAYS} days: the last good copy is no longer used"
    try:
        raw = store.get(layout.last_good_set_key(key)).data
    except NotFound:
        return None, "the last good copy is missing"
    if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
        return None, "the last good copy does not match its recorded SHA-256"
    try:
        return parse_set(raw, f"{store.describe()}/{layout.last_good_set_key(key)}"), None
    except CdrPolicyError as exc:
        return None, f"the last good copy is unreadable too: {exc}"


def _read_index(store: Store) -> dict[str, dict[str, str]]:
    """The copies' index; empty (every copy made again) when absent or unreadable."""
    try:
        doc = jsonio.loads(store.get(layout.LAST_GOOD_INDEX).data)
    except NotFound:
        return {}
    except ValueError as exc:
        logger.warning("last-good index unreadable: copies are made again", extra={"error": str(exc)})
        return {}
    sets = doc.get("sets") if isinstance(doc, dict) and doc.get("schema_version") == INDEX_SCHEMA_VERSION else None
    if not isinstance(sets, dict) or not all(_is_entry(v) for v in sets.values()):
        logger.warning("last-good index malformed: copies are made again")
        return {}
    return {str(k): dict(v) for k, v in sets.items()}


def _is_entry(value: Any) -> bool:
    if not (isinstance(value, dict) and set(value) <= {"sha256", "copied_at", "unreadable_since"}):
        return False
    if not isinstance(value.get("sha256"), str) or not all(isinstance(v, str) for v in value.values()):
        return False
    try:
        return all(parse_iso(value[k]) is not None for k in ("copied_at", "unreadable_since") if k in value)
    except (KeyError, ValueError):
        return False

"""The merge of indicator sets across sources, before ranking and rendering."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from cdr_policy.evidence import category_weight
from cdr_policy.models import MAX_REFS, Indicator, IndicatorSet
from cdr_policy.netprefix import sort_key
from cdr_policy.timeutil import iso, parse_iso


def merge_indicators(sets: Iterable[IndicatorSet], now: datetime) -> list[Indicator]:
    """De-duplicate indicators of several ``IndicatorSet``s by value, keeping the provenance of each.

    Per value: union of ``sources`` and ``refs`` (refs capped at ``MAX_REFS``), earliest
    ``first_seen``, latest ``last_seen`` and ``expires_at``, highest ``score``. The category is the
    one of a CDR detection when there is one, else the heaviest feed category (``evidence``).
    Entries already expired at ``now`` are dropped. Output is sorted (kind, then numeric value).
    Timestamps are compared as canonical ``timeutil.iso`` strings (which sort chronologically);
    any other ISO spelling is normalised first.
    """
    now_s = iso(now)
    merged: dict[tuple[str, str], Indicator] = {}
    from_cdr: set[tuple[str, str]] = set()
    for ind_set in sets:
        for e in ind_set.entries:
            expires = _canonical(e.expires_at)
            if expires <= now_s:
                continue
            first, last = _canonical(e.first_seen), _canonical(e.last_seen)
            key = (e.kind, e.value)
            cur = merged.get(key)
            is_cdr = "cdr" in e.sources
            if cur is None:
                merged[key] = Indicator(
                    value=e.value,
                    kind=e.kind,
                    category=e.category,
                    sources=sorted(set(e.sources)),
                    first_seen=first,
                    last_seen=last,
                    expires_at=expires,
                    refs=sorted(set(e.refs))[:MAX_REFS],
                    score=e.score,
                )
                if is_cdr:
                    from_cdr.add(key)
                continue
            cur.sources = sorted(set(cur.sources) | set(e.sources))
            cur.refs = sorted(set(cur.refs) | set(e.refs))[:MAX_REFS]
            cur.first_seen = min(cur.first_seen, first)
            cur.last_seen = max(cur.last_seen, last)
            cur.expires_at = max(cur.expires_at, expires)
            if e.score is not None:
                cur.score = e.score if cur.score is None else max(cur.score, e.score)
            cur.category = _pick_category(cur.category, key in from_cdr, e.category, is_cdr)
            if is_cdr:
                from_cdr.add(key)
    return sorted(merged.values(), key=_value_order)


def _canonical(ts: str) -> str:
    if len(ts) == 20 and ts[10] == "T" and ts[19] == "Z":
        return ts
    return iso(parse_iso(ts))


def _pick_category(current: str, current_cdr: bool, other: str, other_cdr: bool) -> str:
    if current_cdr != other_cdr:
        return current if current_cdr else other
    return min(current, other, key=lambda c: (-category_weight(c), c))


def _value_order(ind: Indicator) -> tuple[str, tuple[int, int, int], str]:
    if ind.kind == "ip":
        try:
            return (ind.kind, sort_key(ind.value), ind.value)
        except ValueError:
            pass
    return (ind.kind, (99, 0, 0), ind.value)

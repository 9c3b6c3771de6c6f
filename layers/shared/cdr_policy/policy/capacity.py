"""Capacity budget: how many prefixes a channel's Tetragon and Cilium blocklists may hold.

The indicators arrive ranked best evidence first (``cdr_policy.feeds.ranking``: CDR detections,
then agreement between feeds, reputation score, category, recency). The cut keeps the longest
prefix of that ranking whose *aggregated* size (``cdr_policy.feeds.aggregate.collapse``, per
blocklist and family) fits the limit: the top ``limit`` entries always fit (aggregation never
adds prefixes), and a binary search extends the cut while it still fits. Entries below the cut
that a kept prefix (of either blocklist) already covers are blocked all the same and counted as
``covered``; every other one is reported as left out with its value, rank and reason. Nothing is
ever dropped at random.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdr_policy.feeds.aggregate import collapse
from cdr_policy.feeds.prefix import BITS, Prefixes, last_address
from cdr_policy.models import Indicator
from cdr_policy.policy.prefixes import parse_explicit

OVER_BUDGET = "over budget"


@dataclass(frozen=True)
class Ranked:
    """One indicator at its rank (1 = strongest), in the blocklist ``group`` it belongs to."""

    rank: int
    group: str
    indicator: Indicator
    version: int
    network: int
    length: int


@dataclass
class Cut:
    limit: int
    kept: dict[str, list[str]] = field(default_factory=dict)  # group -> aggregated prefixes, sorted
    kept_indicators: dict[str, list[Indicator]] = field(default_factory=dict)
    # Below the cut but inside a kept prefix (of either blocklist): blocked all the same.
    covered: list[Indicator] = field(default_factory=list)
    left_out: list[dict[str, Any]] = field(default_factory=list)

    @property
    def used(self) -> int:
        return sum(len(p) for p in self.kept.values())

    def report(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "used": self.used,
            "covered": len(self.covered),
            "left_out": len(self.left_out),
        }


def rank_entries(ranked: Sequence[Indicator], group_of: Callable[[Indicator], str]) -> list[Ranked]:
    """Number the ranked indicators (canonical prefixes: the render stage has checked them)."""
    out = []
    for position, indicator in enumerate(ranked, start=1):
        prefix, reason = parse_explicit(indicator.value)
        if prefix is None or reason:
            raise ValueError(f"not a canonical prefix: {reason}")
        out.append(Ranked(position, group_of(indicator), indicator, *prefix))
    return out


def _collapsed(entries: Sequence[Ranked]) -> dict[tuple[str, int], Prefixes]:
    """Per (group, family): the collapsed prefixes of ``entries``."""
    by_group: dict[tuple[str, int], tuple[list[int], list[tuple[int, int]]]] = {}
    for e in entries:
        singles, networks = by_group.setdefault((e.group, e.version), ([], []))
        if e.length == BITS[e.version]:
            singles.append(e.network)
        else:
            networks.append((e.network, e.length))
    return {key: collapse(key[1], singles, networks) for key, (singles, networks) in sorted(by_group.items())}


def _aggregate(entries: Sequence[Ranked]) -> dict[str, list[str]]:
    """Per group: the collapsed prefixes as sorted strings (IPv4 first)."""
    out: dict[str, list[str]] = {}
    for (group, _), prefixes in _collapsed(entries).items():
        out.setdefault(group, []).extend(prefixes.strings())
    return out


def _size(entries: Sequence[Ranked]) -> int:
    return sum(len(p) for p in _collapsed(entries).values())


def cut(entries: Sequence[Ranked], limit: int) -> Cut:
    """Keep the best-ranked entries whose aggregate fits ``limit`` (see the module docstring)."""
    if limit < 0:
        raise ValueError("limit must not be negative")
    n = len(entries)
    if _size(entries) <= limit:
        keep = n
    else:
        lo, hi = min(limit, n), n  # entries[:lo] fits, entries[:hi] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _size(entries[:mid]) <= limit:
                lo = mid
            else:
                hi = mid
        keep = lo
    result = Cut(limit=limit, kept=_aggregate(entries[:keep]))
    for e in entries[:keep]:
        result.kept_indicators.setdefault(e.group, []).append(e.indicator)
    coverage = _Coverage(result.kept)
    for e in entries[keep:]:
        if coverage.contains(e):
            result.covered.append(e.indicator)
        else:
            result.left_out.append(
                {"value": e.indicator.value, "group": e.group, "rank": e.rank, "reason": OVER_BUDGET}
            )
    return result


class _Coverage:
    """Is a prefix inside a kept prefix (any blocklist)? Sorted intervals per family + bisect."""

    def __init__(self, kept: dict[str, list[str]]) -> None:
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for prefixes in kept.values():
            for text in prefixes:
                prefix, _ = parse_explicit(text)
                assert prefix is not None  # produced by collapse
                spans[prefix.version].append((prefix.network, prefix.last))
        self._intervals = {}
        for version, pairs in spans.items():
            merged: list[list[int]] = []
            for first, last in sorted(pairs):
                if merged and first <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], last)
                else:
                    merged.append([first, last])
            self._intervals[version] = ([m[0] for m in merged], [m[1] for m in merged])

    def contains(self, e: Ranked) -> bool:
        starts, ends = self._intervals[e.version]
        i = bisect_right(starts, e.network) - 1
        return i >= 0 and ends[i] >= last_address(e.version, e.network, e.length)

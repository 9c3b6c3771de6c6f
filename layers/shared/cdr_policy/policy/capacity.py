"""Capacity budget: how many prefixes a channel's Tetragon and Cilium blocklists may hold.

The IP indicators arrive ranked best evidence first (``policy.ranked``: CDR detections, then
agreement between sources, reputation score, category, recency). The cut keeps the longest prefix
of that ranking whose *aggregated* size (per blocklist and family, ``netprefix.vector``) fits the
limit: the top ``limit`` entries always fit (aggregation never adds prefixes), so the search
doubles from there until it no longer fits and then bisects. Entries below the cut that a kept
prefix (of either blocklist) already covers are blocked all the same and counted as ``covered``;
every other one is left out, counted, and the best-ranked ``MAX_LISTED_LEFT_OUT`` of them are
listed with their value, rank and reason. Nothing is ever dropped at random.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cdr_policy.netprefix import BITS, Prefixes, last_address
from cdr_policy.netprefix.aggregate import collapse
from cdr_policy.netprefix.vector import V4, V6, collapse_v4, collapsed_size_v4, covered_v4
from cdr_policy.policy.ranked import CDR, THREAT_INTEL, RankedTable

OVER_BUDGET = "over budget"
# Left-out entries listed by value in the report; all of them are counted.
MAX_LISTED_LEFT_OUT = 1000
GROUPS = (CDR, THREAT_INTEL)


@dataclass
class Cut:
    limit: int
    table: RankedTable
    keep: int = 0  # rows [0, keep) of the table are kept
    kept: dict[str, list[str]] = field(default_factory=dict)  # group -> aggregated prefixes, sorted
    kept_arrays: dict[str, tuple[V4, V6]] = field(default_factory=dict)  # the same, as arrays
    # Below the cut: inside a kept prefix (of either blocklist, blocked all the same) or left out.
    covered: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    left_out: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def used(self) -> int:
        return sum(len(p) for p in self.kept.values())

    def kept_rows(self, group: str) -> npt.NDArray[np.int64]:
        return np.flatnonzero(self.table.cdr[: self.keep] == (group == CDR))

    def report(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "used": self.used,
            "covered": int(self.covered.sum()),
            "left_out": int(self.left_out.sum()),
            "kept_by_hits": self.kept_by_hits,
        }

    @property
    def kept_by_hits(self) -> int:
        """Entries the cut keeps that it would have left out had nothing fired in the fleet."""
        without = self.table.rank_without_hits
        return 0 if without is None else int((without[: self.keep] >= self.keep).sum())


def _group_masks(table: RankedTable, upto: int) -> list[npt.NDArray[np.bool_]]:
    head = np.zeros(len(table), dtype=bool)
    head[:upto] = True
    return [head & table.cdr, head & ~table.cdr]


def _size(table: RankedTable, upto: int) -> int:
    """Aggregated size of rows ``[0, upto)``: per group and family."""
    total = 0
    for mask in _group_masks(table, upto):
        total += collapsed_size_v4(*table.intervals_v4(mask))
        total += len(_collapse_v6(table.prefixes_v6(mask)))
    return total


def _collapse_v6(prefixes: list[tuple[int, int]]) -> Prefixes:
    """IPv6 prefixes collapsed, the /128s as addresses (the aggregation's fast path for them)."""
    singles = [n for n, length in prefixes if length == BITS[6]]
    networks = [(n, length) for n, length in prefixes if length != BITS[6]]
    return collapse(6, singles, networks)


def cut(table: RankedTable, limit: int) -> Cut:
    """Keep the best-ranked entries whose aggregate fits ``limit`` (see the module docstring)."""
    if limit < 0:
        raise ValueError("limit must not be negative")
    n = len(table)
    lo = min(limit, n)  # rows[:lo] fit: a row adds at most one prefix to the aggregate
    hi = lo
    # Gallop from there (the cut is usually near the limit: two million rows and a limit of 50,000
    # aggregate a few hundred thousand rows, not all of them), then bisect; all rows fit when the
    # gallop reaches n.
    while hi < n:
        hi = min(n, max(2 * hi, 1))
        if _size(table, hi) > limit:
            break
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _size(table, mid) <= limit:
            lo = mid
        else:
            hi = mid
    keep = lo
    result = Cut(limit=limit, table=table, keep=keep)
    for group, mask in zip(GROUPS, _group_masks(table, keep), strict=True):
        v4 = collapse_v4(*table.intervals_v4(mask))
        v6 = _collapse_v6(table.prefixes_v6(mask))
        if len(v4) or len(v6):
            result.kept[group] = v4.strings() + v6.strings()
            result.kept_arrays[group] = (v4, V6(list(v6.networks), bytes(v6.lengths)))
    below = np.zeros(n, dtype=bool)
    below[keep:] = True
    result.covered = _covered(table, keep, below)
    result.left_out = below & ~result.covered
    return result


def _covered(table: RankedTable, keep: int, below: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Rows below the cut inside a kept prefix of either group."""
    kept = ~below
    covered = np.zeros(len(table), dtype=bool)
    below_v4 = below & (table.version == 4)
    covered[below_v4] = covered_v4(*table.intervals_v4(below), *table.intervals_v4(kept))
    union = _collapse_v6(table.prefixes_v6(kept))
    starts = list(union.networks)
    ends = [last_address(6, n, length) for n, length in union]
    for row in np.flatnonzero(below & (table.version == 6)).tolist():
        network = int(table.hi[row]) << 64 | int(table.lo[row])
        i = bisect_right(starts, network) - 1
        covered[row] = i >= 0 and ends[i] >= last_address(6, network, int(table.length[row]))
    return covered


def listed_left_out(cuts: dict[str, Cut]) -> tuple[list[dict[str, Any]], int]:
    """What the budgets of several engines left out: the best-ranked ``MAX_LISTED_LEFT_OUT`` entries
    by value (with the engines that left each out) and how many there are in all."""
    engines = list(cuts)
    table = cuts[engines[0]].table
    any_left = np.zeros(len(table), dtype=bool)
    for c in cuts.values():
        any_left |= c.left_out
    rows = np.flatnonzero(any_left)
    listed = []
    for row in rows[:MAX_LISTED_LEFT_OUT].tolist():
        listed.append(
            {
                "value": table.value(row),
                "rank": row + 1,
                "group": table.group(row),
                "reason": OVER_BUDGET,
                "engines": [e for e in engines if cuts[e].left_out[row]],
            }
        )
    return listed, len(rows)

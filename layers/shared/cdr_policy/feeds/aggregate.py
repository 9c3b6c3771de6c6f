"""The per-feed pipeline after parsing: sort, filter every entry through the never-block guard (each
dropped entry reported with the guard's reason), then aggregate (``netprefix.aggregate``).

The guard is asked about a few nodes of the address trie per protected range, never once per
address, so a million addresses are filtered in a fraction of a second.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import numpy as np

from cdr_policy.feeds.parse import ParsedFeed
from cdr_policy.guards import NeverBlock
from cdr_policy.models import Rejection
from cdr_policy.netprefix import BITS, Prefixes, last_address, to_string
from cdr_policy.netprefix.aggregate import Sorted, collapse_sorted, sort_addresses

# The guard's wording for a prefix that lies wholly inside one protected range: every address of
# such a block is refused for the same reason, so the filter need not look at them one by one.
_INSIDE = "inside never-block range"


@dataclass
class Ingested:
    """One feed after filtering and aggregation."""

    prefixes: dict[int, Prefixes]
    rejected: list[Rejection]

    @property
    def entries(self) -> int:
        return sum(len(p) for p in self.prefixes.values())


def ingest(parsed: ParsedFeed, guard: NeverBlock | None, source: str) -> Ingested:
    """Filter a parsed feed through the guard and aggregate it, per family."""
    prefixes: dict[int, Prefixes] = {}
    refused: dict[tuple[int, int, int], str] = {}
    for version in (4, 6):
        srt = sort_addresses(version, parsed.singles[version])
        nets = parsed.networks[version]
        if guard is not None:
            srt = _filter_singles(version, srt, guard, refused)
            nets = _filter_networks(version, nets, guard, refused)
        prefixes[version] = collapse_sorted(version, srt, nets)
    rejected = [
        Rejection(value=to_string(v, n, plen), source=source, reason=reason)
        for (v, n, plen), reason in sorted(refused.items())
    ]
    return Ingested(prefixes=prefixes, rejected=rejected)


# --- never-block filter -------------------------------------------------------------------------


def _filter_singles(version: int, srt: Sorted, guard: NeverBlock, refused: dict[tuple[int, int, int], str]) -> Sorted:
    """Drop the sorted addresses the guard refuses, walking the binary trie of the address space
    from the root: a block with no protected range in it is kept whole, a block wholly inside one
    is dropped whole (the same reason for each address), and only mixed blocks are split in two.
    So the guard is asked about a few nodes per protected range, not once per address.

    Each question is about the block's addresses, which are host prefixes: the guard is given the
    host prefix length, so that its minimum-length rule (for broad entries) does not apply."""
    bits = BITS[version]
    keep: list[tuple[int, int]] = []

    def visit(lo: int, hi: int, first: int, length: int) -> None:
        reason = guard.check_interval(version, first, last_address(version, first, length), bits)
        if reason is None:
            keep.append((lo, hi))
        elif length == bits or reason.startswith(_INSIDE):
            for value in dict.fromkeys(_ints(srt[lo:hi])):
                refused[(version, value, bits)] = reason
        else:
            mid_value = first + (1 << (bits - length - 1))
            mid = bisect_left(srt, mid_value, lo, hi)
            if lo < mid:
                visit(lo, mid, first, length + 1)
            if mid < hi:
                visit(mid, hi, mid_value, length + 1)

    n = len(srt)
    if n:
        visit(0, n, 0, 0)
    if len(keep) == 1 and keep[0] == (0, n):
        return srt
    if isinstance(srt, np.ndarray):
        return np.concatenate([srt[lo:hi] for lo, hi in keep]) if keep else srt[:0]
    return [value for lo, hi in keep for value in srt[lo:hi]]


def _ints(values: Sorted) -> list[int]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _filter_networks(
    version: int,
    nets: list[tuple[int, int]],
    guard: NeverBlock,
    refused: dict[tuple[int, int, int], str],
) -> list[tuple[int, int]]:
    kept = []
    for net, length in nets:
        reason = guard.check_interval(version, net, last_address(version, net, length), length)
        if reason is None:
            kept.append((net, length))
        else:
            refused[(version, net, length)] = reason
    return kept


# --- aggregation --------------------------------------------------------------------------------

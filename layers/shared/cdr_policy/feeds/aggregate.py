"""The per-feed pipeline after parsing: sort, filter every entry through the never-block guard (each
dropped entry reported with the guard's reason), then aggregate (``netprefix.aggregate``).

The guard is asked about a few nodes of the address trie per protected range, never once per
address, and about IPv4 CIDRs only where an array screen finds them over-broad or touching a
protected range, so a million entries are filtered in a fraction of a second.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cdr_policy.feeds.parse import ParsedFeed
from cdr_policy.guards import NeverBlock
from cdr_policy.models import Rejection
from cdr_policy.netprefix import BITS, Prefixes, last_address, to_string
from cdr_policy.netprefix.aggregate import Sorted, collapse_v4, collapse_v6, sort_addresses
from cdr_policy.netprefix.vector import overlaps_v4

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
    refused: dict[tuple[int, int, int], str] = {}
    srt4 = sort_addresses(4, parsed.singles[4])
    networks4 = np.frombuffer(parsed.networks[4].networks, dtype=np.uint32)
    lengths4 = np.frombuffer(parsed.networks[4].lengths, dtype=np.uint8)
    srt6 = sort_addresses(6, parsed.singles[6])
    nets6 = parsed.networks[6].pairs()
    if guard is not None:
        srt4 = _filter_singles(4, srt4, guard, refused)
        networks4, lengths4 = _filter_networks_v4(networks4, lengths4, guard, refused)
        srt6 = _filter_singles(6, srt6, guard, refused)
        nets6 = _filter_networks(6, nets6, guard, refused)
    prefixes = {
        4: collapse_v4(srt4, networks4, lengths4),  # type: ignore[arg-type]
        6: collapse_v6(srt6, nets6),  # type: ignore[arg-type]
    }
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


def _filter_networks_v4(
    networks: npt.NDArray[np.uint32],
    lengths: npt.NDArray[np.uint8],
    guard: NeverBlock,
    refused: dict[tuple[int, int, int], str],
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
    """``_filter_networks`` for a million IPv4 CIDRs: the guard is asked only about the prefixes
    that are over-broad or share an address with a protected range (all others it lets through)."""
    if not len(networks):
        return networks, lengths
    first = networks.astype(np.int64)
    last = first + (np.int64(1) << (32 - lengths.astype(np.int64))) - 1
    protected = np.array(guard.protected_ranges(4), dtype=np.int64).reshape(-1, 2)
    suspect = (lengths < guard.min_prefix_length(4)) | overlaps_v4(first, last, protected[:, 0], protected[:, 1])
    keep = ~suspect
    for i in np.flatnonzero(suspect).tolist():
        net, length = int(networks[i]), int(lengths[i])
        reason = guard.check_interval(4, net, int(last[i]), length)
        if reason is None:
            keep[i] = True
        else:
            refused[(4, net, length)] = reason
    return networks[keep], lengths[keep]

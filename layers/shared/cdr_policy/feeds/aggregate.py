"""The per-feed pipeline after parsing: sort, filter every entry through the never-block guard (each
dropped entry reported with the guard's reason), then aggregate (``netprefix.aggregate``).

The guard is asked about a few nodes of the address trie per protected range, never once per
address, and about IPv4 CIDRs only where an array screen finds them over-broad or touching a
protected range, so a million entries are filtered in a fraction of a second.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cdr_policy.feeds.parse import ParsedFeed
from cdr_policy.guards import NeverBlock
from cdr_policy.models import Rejection
from cdr_policy.netprefix import BITS, Prefixes, last_address, to_string
from cdr_policy.netprefix.aggregate import Sorted, collapse_v4, collapse_v6, sort_addresses
from cdr_policy.netprefix.vector import intervals_v4, overlaps

# The guard's wording for a prefix that lies wholly inside one protected range: every address of
# such a block is refused for the same reason, so the filter need not look at them one by one.
_INSIDE = "inside never-block range"


@dataclass
class Ingested:
    """One feed after filtering and aggregation."""

    prefixes: dict[int, Prefixes]
    rejected: list[Rejection]  # the first ``listed`` refused entries, in address order
    refused: int  # how many distinct entries the guard refused

    @property
    def entries(self) -> int:
        return sum(len(p) for p in self.prefixes.values())


def ingest(parsed: ParsedFeed, guard: NeverBlock | None, source: str, listed: int | None = None) -> Ingested:
    """Filter a parsed feed through the guard and aggregate it, per family. Of the refused
    entries, the first ``listed`` (all when None) become rejection records."""
    refused = _Refused()
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
        for v, n, plen, reason in refused.first(listed, guard)
    ]
    return Ingested(prefixes=prefixes, rejected=rejected, refused=refused.count())


@dataclass
class _Refused:
    """What the guard refused, kept as compact as it was found (a feed of a million private
    addresses must not become a million records): runs of sorted addresses that share a reason,
    refused IPv4 CIDRs as arrays (the guard is asked for their reasons only when they are listed),
    and single entries with their reasons."""

    runs: list[tuple[int, Sorted, str]] = field(default_factory=list)  # distinct addresses, sorted
    # Distinct and sorted, as keys ``network << 6 | length``.
    cidrs: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    entries: dict[tuple[int, int, int], str] = field(default_factory=dict)

    def add_run(self, version: int, srt: Sorted, reason: str) -> None:
        distinct: Sorted
        if isinstance(srt, np.ndarray):
            distinct = srt[np.concatenate(([True], srt[1:] != srt[:-1]))] if len(srt) else srt
        else:
            distinct = list(dict.fromkeys(srt))
        self.runs.append((version, distinct, reason))

    def count(self) -> int:
        return sum(len(run) for _, run, _ in self.runs) + len(self.cidrs) + len(self.entries)

    def first(self, limit: int | None, guard: NeverBlock | None) -> list[tuple[int, int, int, str]]:
        """The first ``limit`` refusals in address order, as ``(version, network, length, reason)``."""
        found: list[tuple[int, int, int, str | None]] = [(*key, reason) for key, reason in self.entries.items()]
        for version, run, reason in self.runs:
            found += [(version, value, BITS[version], reason) for value in _ints(run[:limit])]
        found += [(4, key >> 6, key & 63, None) for key in self.cidrs[:limit].tolist()]
        found.sort(key=lambda f: f[:3])
        out = []
        for version, network, length, known in found[:limit]:
            answer = known
            if answer is None and guard is not None:  # an IPv4 CIDR the array screen refused: the guard's words
                answer = guard.check_interval(version, network, last_address(version, network, length), length)
            if answer is None:
                raise RuntimeError("the CIDR screen refused a prefix the never-block guard lets through")
            out.append((version, network, length, answer))
        return out


# --- never-block filter -------------------------------------------------------------------------


def _filter_singles(version: int, srt: Sorted, guard: NeverBlock, refused: _Refused) -> Sorted:
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
            refused.add_run(version, srt[lo:hi], reason)
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
    refused: _Refused,
) -> list[tuple[int, int]]:
    kept = []
    for net, length in nets:
        reason = guard.check_interval(version, net, last_address(version, net, length), length)
        if reason is None:
            kept.append((net, length))
        else:
            refused.entries[(version, net, length)] = reason
    return kept


def _filter_networks_v4(
    networks: npt.NDArray[np.uint32],
    lengths: npt.NDArray[np.uint8],
    guard: NeverBlock,
    refused: _Refused,
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
    """``_filter_networks`` for a million IPv4 CIDRs, as arrays: the guard refuses exactly the
    prefixes that are over-broad or share an address with a protected range (its reason for each
    is asked only when it is listed; a property test holds the screen to the guard)."""
    if not len(networks):
        return networks, lengths
    first, last = intervals_v4(networks, lengths)
    suspect = (lengths < guard.min_prefix_length(4)) | overlaps(first, last, guard.protected_ranges(4))
    if suspect.any():
        refused.cidrs = np.unique(first[suspect] << 6 | lengths[suspect])
    return networks[~suspect], lengths[~suspect]

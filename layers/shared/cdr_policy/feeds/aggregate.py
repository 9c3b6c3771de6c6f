"""Normalisation: never-block filter, aggregation into the minimal prefix set, and the merge of
indicator sets across sources.

``collapse`` returns the minimal list of prefixes that covers exactly the union of its input
(the same result as ``ipaddress.collapse_addresses``; tests check it on random inputs).
``ingest`` is the per-feed pipeline after parsing: sort, filter every entry through the
never-block guard (each dropped entry reported with the guard's reason), then collapse.

Speed (a million addresses in a fraction of a second): IPv4 addresses go from the parser's
``array('I')`` into numpy (sort, never-block filter by slices, ``netprefix.vector.collapse_v4``)
without a Python object per address. IPv6 addresses (few in real feeds) are Python integers whose
per-address steps still run in C (the adjacency flags of ``lanes``, ``compress``, ``bytes.find``);
Python loops run only once per place where something merges or per protected range.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, compress

import numpy as np
import numpy.typing as npt

from cdr_policy.feeds.lanes import adjacency_flags, pack_ipv6
from cdr_policy.feeds.parse import ParsedFeed
from cdr_policy.feeds.ranking import category_weight
from cdr_policy.guards import NeverBlock
from cdr_policy.models import Indicator, IndicatorSet, Rejection
from cdr_policy.netprefix import BITS, Prefixes, last_address, sort_key, to_string
from cdr_policy.netprefix.vector import collapse_v4
from cdr_policy.timeutil import iso, parse_iso

# The guard's wording for a prefix that lies wholly inside one protected range: every address of
# such a block is refused for the same reason, so the filter need not look at them one by one.
_INSIDE = "inside never-block range"
MAX_REFS = 20

# Sorted addresses of one family: a numpy ``uint32`` array for IPv4, a list of integers for IPv6.
Sorted = npt.NDArray[np.uint32] | list[int]


@dataclass
class Ingested:
    """One feed after filtering and aggregation."""

    prefixes: dict[int, Prefixes]
    rejected: list[Rejection]

    @property
    def entries(self) -> int:
        return sum(len(p) for p in self.prefixes.values())


def sort_addresses(version: int, addresses: Iterable[int]) -> Sorted:
    """Sorted copy, duplicates kept."""
    if version == 4:
        if isinstance(addresses, array) and addresses.typecode == "I":
            return np.sort(np.frombuffer(addresses, dtype=np.uint32))
        return np.sort(np.fromiter(addresses, dtype=np.uint32))
    return sorted(addresses)


def collapse(version: int, addresses: Iterable[int] = (), networks: Iterable[tuple[int, int]] = ()) -> Prefixes:
    """Minimal sorted prefix list covering exactly the given addresses and ``(network, length)`` prefixes."""
    return _collapse_sorted(version, sort_addresses(version, addresses), list(networks))


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
        prefixes[version] = _collapse_sorted(version, srt, nets)
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


def _collapse_sorted(version: int, srt: Sorted, nets: list[tuple[int, int]]) -> Prefixes:
    """Aggregate sorted addresses (duplicates allowed) and prefixes.

    After de-duplication into ``u``, ``adj[i]`` is 1 where ``u[i + 1] == u[i] + 1`` (both from
    ``lanes.adjacency_flags``). The "special" stretches are the runs of adjacent addresses (blocks
    of 1s in ``adj``, found with ``bytes.find``) and the prefix intervals (each absorbing the
    addresses inside or next to it, found by bisection). Walking the specials in address order
    merges those that overlap or touch and splits each into prefixes; the isolated addresses
    between them are copied as slices, each a host prefix."""
    bits = BITS[version]
    if version == 4:
        return _collapse_v4(srt, nets)  # type: ignore[arg-type]
    u, adj = _unique_and_adjacent(version, srt)
    n = len(u)
    intervals = _merge_networks(version, nets) if nets else []
    if not intervals and 1 not in adj:
        return Prefixes(version, u, bytearray([bits]) * n)
    merged: list[list[int]] = []  # [first, last, lo, hi]: a special and its span in u
    for special in _specials(u, adj, intervals):
        if merged and special[0] <= merged[-1][1] + 1:
            cur = merged[-1]
            cur[1] = max(cur[1], special[1])
            cur[2] = min(cur[2], special[2])
            cur[3] = max(cur[3], special[3])
        else:
            merged.append(list(special))
    out_nets: list[int] = []
    out_lens = bytearray()
    host = bytes([bits])
    done = 0  # addresses u[:done] are emitted
    for first, last, lo, hi in merged:
        out_nets.extend(u[done:lo])
        out_lens += host * (lo - done)
        _range_to_prefixes(first, last, bits, out_nets, out_lens)
        done = hi
    out_nets.extend(u[done:])
    out_lens += host * (n - done)
    return Prefixes(version, out_nets, out_lens)


def _collapse_v4(srt: np.ndarray, nets: list[tuple[int, int]]) -> Prefixes:
    first = srt.astype(np.int64)
    last = first
    if nets:
        net_first = np.array([n for n, _ in nets], dtype=np.int64)
        net_last = net_first + (np.int64(1) << (32 - np.array([plen for _, plen in nets], dtype=np.int64))) - 1
        first, last = np.concatenate((first, net_first)), np.concatenate((last, net_last))
    out = collapse_v4(first, last)
    return Prefixes(4, out.networks, out.lengths)


def _unique_and_adjacent(version: int, srt: Sorted) -> tuple[Sorted, bytes]:
    """The distinct IPv6 addresses, and for each consecutive pair of them whether they are adjacent."""
    if len(srt) < 2:
        return srt, b""
    differs, adjacent = adjacency_flags(pack_ipv6(srt), BITS[version] // 8)  # type: ignore[arg-type]
    if 0 not in differs:
        return srt, adjacent
    # A pair of distinct neighbours in ``srt`` is a pair of consecutive addresses in ``u``.
    return list(compress(srt, chain(b"\x01", differs))), bytes(compress(adjacent, differs))


def _specials(u: Sorted, adj: bytes, intervals: list[tuple[int, int]]) -> Iterator[tuple[int, int, int, int]]:
    """Runs of adjacent addresses and prefix intervals, in address order, as
    ``(first, last, lo, hi)`` with ``u[lo:hi]`` the addresses they cover or touch."""
    runs = _adjacent_runs(u, adj)
    run = next(runs, None)
    for a, b in intervals:
        while run is not None and run[0] < a:
            yield run
            run = next(runs, None)
        lo = bisect_left(u, a - 1)
        hi = bisect_right(u, b + 1, lo)
        if hi > lo:
            yield min(a, u[lo]), max(b, u[hi - 1]), lo, hi
        else:
            yield a, b, lo, lo
    while run is not None:
        yield run
        run = next(runs, None)


def _adjacent_runs(u: Sorted, adj: bytes) -> Iterator[tuple[int, int, int, int]]:
    i = adj.find(1)
    while i != -1:
        j = adj.find(0, i)
        if j == -1:
            j = len(adj)
        yield u[i], u[j], i, j + 1
        i = adj.find(1, j)


def _merge_networks(version: int, nets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Prefixes as merged, sorted, non-touching intervals."""
    merged: list[list[int]] = []
    for a, b in sorted((n, last_address(version, n, length)) for n, length in nets):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _range_to_prefixes(first: int, last: int, bits: int, nets: list[int], lengths: bytearray) -> None:
    """The minimal prefixes covering ``first..last``: at each step the largest aligned block that fits."""
    size = last - first + 1
    if size & (size - 1) == 0 and first & (size - 1) == 0:  # already one prefix (a CIDR entry)
        nets.append(first)
        lengths.append(bits - size.bit_length() + 1)
        return
    while first <= last:
        align = (first & -first).bit_length() - 1 if first else bits
        fit = (last - first + 1).bit_length() - 1
        size = min(align, fit)
        nets.append(first)
        lengths.append(bits - size)
        first += 1 << size


# --- merge across sources -----------------------------------------------------------------------


def merge_indicators(sets: Iterable[IndicatorSet], now: datetime) -> list[Indicator]:
    """De-duplicate indicators of several ``IndicatorSet``s by value, keeping the provenance of each.

    Per value: union of ``sources`` and ``refs`` (refs capped at ``MAX_REFS``), earliest
    ``first_seen``, latest ``last_seen`` and ``expires_at``, highest ``score``. The category is the
    one of a CDR detection when there is one, else the heaviest feed category (``ranking``).
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

"""Address sets for promotion: what a bundle blocks, what a publish promoted, and the prefix
changes being judged (``Spans``), with the few set operations the gate needs: does a set hold a
change whole (``covers``), does it touch it (``touches``), which changes hold an address
(``holding``). IPv4 as numpy intervals (``netprefix.vector``), IPv6 as Python integers (feeds list
few). Stored as ``planes-zlib-v1`` fields of the collapsed prefix list (``to_fields``)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from cdr_policy.netprefix import BITS, last_address, parse_canonical
from cdr_policy.netprefix.aggregate import collapse
from cdr_policy.netprefix.vector import I64, V4, V6, collapse_v4, covered_v4, from_fields, merge_intervals, to_fields

Mask = npt.NDArray[np.bool_]
_NONE = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Spans:
    """Prefix changes in a fixed order (``values``, canonical text), with their intervals per
    family: ``v4``/``v6`` the positions of each family's changes."""

    values: tuple[str, ...]
    v4: npt.NDArray[np.int64] = field(default_factory=lambda: _NONE)
    first4: I64 = field(default_factory=lambda: _NONE)
    last4: I64 = field(default_factory=lambda: _NONE)
    v6: tuple[int, ...] = ()
    first6: tuple[int, ...] = ()
    last6: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def of(cls, values: Sequence[str]) -> Spans:
        """Canonical prefix texts (ValueError for anything else)."""
        v4, first4, last4, v6, first6, last6 = [], [], [], [], [], []
        for i, value in enumerate(values):
            p = parse_canonical(value)
            if p.version == 4:
                v4.append(i)
                first4.append(p.network)
                last4.append(p.last)
            else:
                v6.append(i)
                first6.append(p.network)
                last6.append(p.last)
        return cls(
            tuple(values),
            np.array(v4, dtype=np.int64),
            np.array(first4, dtype=np.int64),
            np.array(last4, dtype=np.int64),
            tuple(v6),
            tuple(first6),
            tuple(last6),
        )

    def subset(self, keep: Mask) -> Spans:
        """The changes where ``keep`` is true, in the same order."""
        return Spans.of([v for v, k in zip(self.values, keep.tolist(), strict=True) if k])

    def holding(self, version: int, first: int, last: int) -> list[int]:
        """The positions of the changes that share an address with ``[first, last]``: those that
        start inside it, and those that hold its first address (prefixes nest or are apart)."""
        if version == 4:
            starts, positions, lengths = self._v4_lookup
            lo, hi = np.searchsorted(starts, [first, last + 1])
            found = set(positions[lo:hi].tolist())
            for length, (networks, at) in lengths.items():
                network = first & ~((1 << (32 - length)) - 1)
                j = int(np.searchsorted(networks, network))
                if j < len(networks) and int(networks[j]) == network:
                    found.add(int(at[j]))
            return sorted(found)
        return [i for i, f, la in zip(self.v6, self.first6, self.last6, strict=True) if f <= last and la >= first]

    @cached_property
    def _v4_lookup(self) -> tuple[I64, I64, dict[int, tuple[I64, I64]]]:
        """The IPv4 changes sorted by first address, and per prefix length by network."""
        order = np.argsort(self.first4, kind="stable")
        starts, positions = self.first4[order], self.v4[order]
        lengths = 32 - np.log2((self.last4 - self.first4 + 1).astype(np.float64)).astype(np.int64)
        by_length = {}
        for length in np.unique(lengths).tolist():
            picked = np.flatnonzero(lengths == length)
            inner = np.argsort(self.first4[picked], kind="stable")
            by_length[int(length)] = (self.first4[picked][inner], self.v4[picked][inner])
        return starts, positions, by_length


@dataclass(frozen=True)
class AddressSet:
    """A union of prefixes: IPv4 as merged intervals, IPv6 as a collapsed prefix list."""

    first4: I64
    last4: I64
    v6: V6

    @classmethod
    def empty(cls) -> AddressSet:
        return cls(_NONE, _NONE, V6([], b""))

    @classmethod
    def of(cls, v4: V4, v6: V6) -> AddressSet:
        first, last = merge_intervals(*v4.intervals())
        six = collapse(6, networks=zip(v6.networks, v6.lengths, strict=True))
        return cls(first, last, V6(list(six.networks), bytes(six.lengths)))

    @classmethod
    def of_spans(cls, spans: Spans) -> AddressSet:
        first, last = merge_intervals(*_sorted(spans.first4, spans.last4))
        nets = [(f, BITS[6] - (la - f + 1).bit_length() + 1) for f, la in zip(spans.first6, spans.last6, strict=True)]
        six = collapse(6, networks=nets)
        return cls(first, last, V6(list(six.networks), bytes(six.lengths)))

    @classmethod
    def from_fields(cls, doc: dict[str, Any]) -> AddressSet:
        """From stored ``planes-zlib-v1`` fields (``PackError`` when they are not a prefix list)."""
        return cls.of(*from_fields(doc))

    def __bool__(self) -> bool:
        return bool(len(self.first4) or len(self.v6))

    def union(self, other: AddressSet) -> AddressSet:
        first, last = merge_intervals(*_sorted(np.concatenate([self.first4, other.first4]),
                                                np.concatenate([self.last4, other.last4])))  # fmt: skip
        pairs = list(zip(self.v6.networks, self.v6.lengths, strict=True))
        pairs += zip(other.v6.networks, other.v6.lengths, strict=True)
        six = collapse(6, networks=pairs)
        return AddressSet(first, last, V6(list(six.networks), bytes(six.lengths)))

    def to_fields(self) -> dict[str, Any]:
        return to_fields(collapse_v4(self.first4, self.last4), self.v6)

    def prefixes(self) -> list[str]:
        """The collapsed prefix list, IPv4 first."""
        return collapse_v4(self.first4, self.last4).strings() + self.v6.strings()

    def covers(self, spans: Spans) -> Mask:
        """Per change: does the set hold all of it?"""
        out = np.zeros(len(spans), dtype=bool)
        out[spans.v4] = self.covers4(spans.first4, spans.last4)
        out[list(spans.v6)] = self.covers6(spans.first6, spans.last6)
        return out

    def touches(self, spans: Spans) -> Mask:
        """Per change: does the set hold any of its addresses?"""
        out = np.zeros(len(spans), dtype=bool)
        out[spans.v4] = self.touches4(spans.first4, spans.last4)
        out[list(spans.v6)] = self.touches6(spans.first6, spans.last6)
        return out

    def covers4(self, first: I64, last: I64) -> Mask:
        """Per IPv4 interval: inside the set?"""
        return covered_v4(first, last, self.first4, self.last4) if len(first) else np.zeros(0, dtype=bool)

    def touches4(self, first: I64, last: I64) -> Mask:
        """Per IPv4 interval: sharing an address with the set?"""
        if not len(self.first4):
            return np.zeros(len(first), dtype=bool)
        at = np.searchsorted(self.first4, last, side="right") - 1
        return (at >= 0) & (self.last4[np.maximum(at, 0)] >= first)

    def covers6(self, firsts: Sequence[int], lasts: Sequence[int]) -> list[bool]:
        """Per IPv6 interval: inside the set?"""
        return self._v6(firsts, lasts, whole=True)

    def touches6(self, firsts: Sequence[int], lasts: Sequence[int]) -> list[bool]:
        """Per IPv6 interval: sharing an address with the set?"""
        return self._v6(firsts, lasts, whole=False)

    def _v6(self, firsts: Sequence[int], lasts: Sequence[int], *, whole: bool) -> list[bool]:
        """Per IPv6 interval: does the set's interval holding its first address (``whole``) or last
        address reach its other end?"""
        starts, ends = self._v6_intervals()
        out = []
        for f, la in zip(firsts, lasts, strict=True):
            j = bisect.bisect_right(starts, f if whole else la) - 1
            out.append(j >= 0 and ends[j] >= (la if whole else f))
        return out

    def holds(self, version: int, address: int) -> bool:
        if version == 4:
            j = int(np.searchsorted(self.first4, address, side="right")) - 1
            return j >= 0 and int(self.last4[j]) >= address
        starts, ends = self._v6_intervals()
        j = bisect.bisect_right(starts, address) - 1
        return j >= 0 and ends[j] >= address

    def outside(self, other: AddressSet, limit: int = 5) -> list[str]:
        """Up to ``limit`` of this set's prefixes that ``other`` does not hold whole."""
        mine = Spans.of(self.prefixes())
        return [v for v, inside in zip(mine.values, other.covers(mine).tolist(), strict=True) if not inside][:limit]

    def _v6_intervals(self) -> tuple[list[int], list[int]]:
        starts = list(self.v6.networks)
        ends = [last_address(6, n, length) for n, length in zip(self.v6.networks, self.v6.lengths, strict=True)]
        return starts, ends


def _sorted(first: I64, last: I64) -> tuple[I64, I64]:
    order = np.argsort(first, kind="stable")
    return first[order], last[order]

"""Bulk operations on IPv6 address sequences without a Python object per step (IPv4 uses numpy:
``cdr_policy.netprefix.vector``).

``adjacency_flags``: a sorted sequence of fixed-width unsigned integers, read as one big integer,
minus itself shifted by one element gives every consecutive difference at once (lane by lane: the
sequence is sorted, so no lane borrows). Per-lane tests (is the difference 0? is it 1?) are then a
few shift/or/and steps on that big integer (SWAR), and one flag byte per pair is picked out of the
result with a strided slice.
"""

from __future__ import annotations


def pack_ipv6(values: list[int]) -> bytes:
    return b"".join(v.to_bytes(16, "big") for v in values)


def adjacency_flags(packed: bytes, width: int) -> tuple[bytes, bytes]:
    """For sorted big-endian unsigned integers of ``width`` bytes (at least two): per consecutive
    pair ``(x[i], x[i + 1])``, the flags ``x[i + 1] != x[i]`` and ``x[i + 1] == x[i] + 1``, one
    byte (0 or 1) each. Works through ``_LANES_PER_STEP`` pairs at a time, so that the big
    integers stay small enough for the CPU caches."""
    pairs = len(packed) // width - 1
    if pairs < 1:
        return b"", b""
    differs: list[bytes] = []
    adjacent: list[bytes] = []
    masks = _Masks(width)
    for first in range(0, pairs, _LANES_PER_STEP):
        count = min(_LANES_PER_STEP, pairs - first)
        chunk = packed[first * width : (first + count + 1) * width]
        diff = int.from_bytes(chunk[width:], "big") - int.from_bytes(chunk[:-width], "big")
        nonzero, above_one = masks.any_bit(diff, count), masks.any_bit(diff & masks.above_one(count), count)
        size = width * count
        differs.append(nonzero.to_bytes(size, "big")[width - 1 :: width])
        adjacent.append((nonzero ^ above_one).to_bytes(size, "big")[width - 1 :: width])
    return b"".join(differs), b"".join(adjacent)


_LANES_PER_STEP = 1 << 14


class _Masks:
    """Repeated lane masks for a lane width, built once per lane count."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._cache: dict[tuple[bytes, int], int] = {}

    def lanes(self, pattern: bytes, count: int) -> int:
        key = (pattern, count)
        if key not in self._cache:
            self._cache[key] = int.from_bytes(pattern * count, "big")
        return self._cache[key]

    def above_one(self, count: int) -> int:
        return self.lanes(b"\xff" * (self.width - 1) + b"\xfe", count)

    def any_bit(self, x: int, count: int) -> int:
        """Bit 0 of each lane set when any bit of that lane is: OR-fold each lane onto its low
        bit (half a lane, a quarter, ... one bit), masking after every step so that no lane leaks
        into its neighbour."""
        shift = self.width * 4
        while shift >= 1:
            x = (x | (x >> shift)) & self.lanes(((1 << shift) - 1).to_bytes(self.width, "big"), count)
            shift //= 2
        return x

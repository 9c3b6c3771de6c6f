"""Bulk operations on address sequences without a Python object per address.

Two tricks keep a million-address ingest in C:

- ``sort_ipv4``: CPython sorts floats much faster than integers of 2**30 and above, and a float
  ``2**52 + x`` holds the 32-bit ``x`` verbatim in the low half of its IEEE 754 bit pattern. So the
  addresses are turned into such doubles and back by interleaving raw bytes (extended-slice
  assignment), with only the sort itself creating objects; it sorts cache-sized blocks first.
- ``adjacency_flags``: a sorted sequence of fixed-width unsigned integers, read as one big integer,
  minus itself shifted by one element gives every consecutive difference at once (lane by lane:
  the sequence is sorted, so no lane borrows). Per-lane tests (is the difference 0? is it 1?)
  are then a few shift/or/and steps on that big integer (SWAR), and one flag byte per pair is
  picked out of the result with a strided slice.
"""

from __future__ import annotations

import sys
from array import array

# The little-endian upper half of the double 2**52: exponent 1075, mantissa bits 32-51 zero.
_DOUBLE_2_52_HIGH = b"\x00\x00\x30\x43"
_SORT_BLOCK = 1 << 14


def sort_ipv4(values: array) -> array:
    """Sorted copy of an ``array('I')`` of IPv4 addresses (duplicates kept)."""
    n = len(values)
    if n < 2:
        return array("I", values)
    if sys.byteorder != "little":  # the byte layout below is little-endian's
        return array("I", map(int, sorted(map(float, values))))
    raw = values.tobytes()
    doubles = bytearray((b"\x00" * 4 + _DOUBLE_2_52_HIGH) * n)
    for k in range(4):
        doubles[k::8] = raw[k::4]
    del raw
    unsorted = array("d")
    unsorted.frombytes(doubles)
    del doubles
    # Sort cache-sized blocks first (each block's floats are then re-created in order), so that
    # the final sort only merges sorted runs whose objects lie in memory in sorted order.
    runs = array("d")
    for start in range(0, n, _SORT_BLOCK):
        runs.extend(array("d", sorted(unsorted[start : start + _SORT_BLOCK])))
    del unsorted
    ordered = array("d", sorted(runs))
    del runs
    packed = ordered.tobytes()
    del ordered
    out = bytearray(4 * n)
    for k in range(4):
        out[k::4] = packed[k::8]
    result = array("I")
    result.frombytes(out)
    return result


def pack_ipv4(values: array) -> bytes:
    """Big-endian 4-byte records of an ``array('I')``."""
    be = array("I", values)
    if sys.byteorder == "little":
        be.byteswap()
    return be.tobytes()


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

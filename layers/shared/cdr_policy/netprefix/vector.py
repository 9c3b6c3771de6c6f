"""Bulk operations on a million prefixes at once, as numpy array operations.

IPv4 prefixes are two parallel arrays: networks (``uint32``) and lengths (``uint8``); an interval
is ``[first, last]`` in ``int64`` (so that ``last + 1`` never overflows). IPv6 prefixes stay Python
integers (``cdr_policy.feeds.aggregate.collapse``): feeds list few of them.

- ``pack``/``unpack``: the compact byte form of a sorted prefix list (``cdr_policy.feeds.persist``):
  each family's networks big-endian and split into byte planes (all first bytes, then all second
  bytes, ...: sorted addresses make the leading planes long runs), then the lengths; zlib on top.
  ``unpack`` refuses anything but a sorted, non-overlapping list of canonical prefixes.
  ``to_fields``/``from_fields``: the same as the JSON fields the stored documents carry (format
  ``planes-zlib-v1``, the counts, the digest and the base64 payload).
- ``collapse_v4``: the minimal prefix list covering a union of intervals (``ipaddress.collapse_addresses``'
  result), and ``collapsed_size_v4`` its length without building it.
- ``covered_v4``: which prefixes lie inside a union of intervals; ``overlaps``: which share an
  address with one of a few ranges (the never-block screens).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cdr_policy.netprefix import BITS, to_string

U32 = npt.NDArray[np.uint32]
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
_ZLIB_LEVEL = 1  # level 6 saves 3 % of the size for half again the time
FORMAT = "planes-zlib-v1"


class PackError(ValueError):
    """The bytes are not a valid packed prefix list (wrong size, digest, order or form)."""


@dataclass(frozen=True)
class V4:
    """Sorted, non-overlapping IPv4 prefixes."""

    networks: U32
    lengths: U8

    def __len__(self) -> int:
        return len(self.networks)

    def intervals(self) -> tuple[I64, I64]:
        return intervals_v4(self.networks, self.lengths)

    def strings(self) -> list[str]:
        """Canonical texts, in order."""
        return [
            f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/{length}"
            for n, length in zip(self.networks.tolist(), self.lengths.tolist(), strict=True)
        ]


@dataclass(frozen=True)
class V6:
    """Sorted, non-overlapping IPv6 prefixes (Python integers)."""

    networks: list[int]
    lengths: bytes

    def __len__(self) -> int:
        return len(self.networks)

    def strings(self) -> list[str]:
        """Canonical texts, in order."""
        return [to_string(6, n, length) for n, length in zip(self.networks, self.lengths, strict=True)]


@dataclass(frozen=True)
class Packed:
    """The compressed bytes, with what is needed to check them: counts and the SHA-256 of the
    uncompressed payload."""

    data: bytes
    ipv4: int
    ipv6: int
    sha256: str


def intervals_v4(networks: npt.NDArray[np.integer[Any]], lengths: npt.NDArray[np.integer[Any]]) -> tuple[I64, I64]:
    """``[first, last]`` of IPv4 prefixes (networks and lengths of any integer dtype)."""
    first = networks.astype(np.int64)
    return first, first + (np.int64(1) << (32 - lengths.astype(np.int64))) - 1


def _planes(records: bytes, width: int) -> bytes:
    return b"".join(records[k::width] for k in range(width))


def _records(planes: bytes, width: int) -> bytes:
    n = len(planes) // width
    out = bytearray(len(planes))
    for k in range(width):
        out[k::width] = planes[k * n : (k + 1) * n]
    return bytes(out)


def payload(v4: V4, v6: V6) -> bytes:
    """The uncompressed byte form (what ``Packed.sha256`` is the digest of)."""
    be = v4.networks.astype(">u4").tobytes()
    v6_records = b"".join(n.to_bytes(16, "big") for n in v6.networks)
    return b"".join((_planes(be, 4), v4.lengths.astype(np.uint8).tobytes(), _planes(v6_records, 16), bytes(v6.lengths)))


def digest(v4: V4, v6: V6) -> str:
    return hashlib.sha256(payload(v4, v6)).hexdigest()


def pack(v4: V4, v6: V6) -> Packed:
    payload_bytes = payload(v4, v6)
    return Packed(
        data=zlib.compress(payload_bytes, _ZLIB_LEVEL),
        ipv4=len(v4),
        ipv6=len(v6),
        sha256=hashlib.sha256(payload_bytes).hexdigest(),
    )


def unpack(packed: Packed) -> tuple[V4, V6]:
    """The prefixes, after checking size, digest, order and form; ``PackError`` says what is wrong."""
    n4, n6 = packed.ipv4, packed.ipv6
    if n4 < 0 or n6 < 0:
        raise PackError("negative count")
    size = 5 * n4 + 17 * n6
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(packed.data, size + 1)
    except zlib.error as exc:
        raise PackError(f"not zlib data: {exc}") from exc
    if len(raw) != size or not inflater.eof or inflater.unconsumed_tail:
        raise PackError(f"payload holds {len(raw)}{'+' if not inflater.eof else ''} bytes, the counts say {size}")
    if hashlib.sha256(raw).hexdigest() != packed.sha256:
        raise PackError("SHA-256 of the payload does not match")
    # the four byte planes, transposed into big-endian records in one copy, then native order
    planes4 = np.frombuffer(raw, dtype=np.uint8, count=4 * n4).reshape(4, n4)
    nets4 = planes4.T.copy().view(">u4").reshape(n4).astype(np.uint32)
    lens4 = np.frombuffer(raw, dtype=np.uint8, count=n4, offset=4 * n4).copy()
    start6 = 5 * n4
    records6 = _records(raw[start6 : start6 + 16 * n6], 16)
    nets6 = [int.from_bytes(records6[i : i + 16], "big") for i in range(0, 16 * n6, 16)]
    lens6 = raw[start6 + 16 * n6 :]
    v4, v6 = V4(nets4, lens4), V6(nets6, lens6)
    _check_v4(v4)
    _check_v6(v6)
    return v4, v6


def to_fields(v4: V4, v6: V6) -> dict[str, Any]:
    """The packed prefixes as the JSON fields of a stored document: ``format`` (``FORMAT``),
    ``ipv4``/``ipv6`` (the counts), ``sha256`` (of the payload) and ``data`` (base64)."""
    packed = pack(v4, v6)
    return {
        "format": FORMAT,
        "ipv4": packed.ipv4,
        "ipv6": packed.ipv6,
        "sha256": packed.sha256,
        "data": base64.b64encode(packed.data).decode("ascii"),
    }


def from_fields(doc: dict[str, Any]) -> tuple[V4, V6]:
    """``to_fields``' fields back (already checked against their document's schema), after the
    checks of ``unpack``; ``PackError`` says what is wrong."""
    try:
        data = base64.b64decode(doc["data"], validate=True)
    except binascii.Error as exc:
        raise PackError(f"not base64: {exc}") from exc
    return unpack(Packed(data, doc["ipv4"], doc["ipv6"], doc["sha256"]))


def _check_v4(v4: V4) -> None:
    n = len(v4)
    if not n:
        return
    if int(np.max(v4.lengths)) > 32:
        raise PackError("an IPv4 prefix length is over 32")
    for start in range(0, n, _CHECK_STEP):
        # from the prefix before the step: the order is checked across the seam too
        rows = slice(max(start - 1, 0), start + _CHECK_STEP)
        first, last = intervals_v4(v4.networks[rows], v4.lengths[rows])
        if np.any(first & (last - first)):
            raise PackError("an IPv4 prefix has host bits set")
        if np.any(first[1:] <= last[:-1]):
            raise PackError("IPv4 prefixes are not sorted and disjoint")


# IPv4 prefixes per step of the checks: their 64-bit temporaries stay at a few MB, where a
# set at the download cap's count (8M prefixes) would need a few hundred at once.
_CHECK_STEP = 1 << 18


def _check_v6(v6: V6) -> None:
    bits = BITS[6]
    previous_last = -1
    for network, length in zip(v6.networks, v6.lengths, strict=True):
        if length > bits:
            raise PackError("an IPv6 prefix length is over 128")
        host = (1 << (bits - length)) - 1
        if network & host:
            raise PackError("an IPv6 prefix has host bits set")
        if network <= previous_last:
            raise PackError("IPv6 prefixes are not sorted and disjoint")
        previous_last = network | host


def merge_intervals(first: I64, last: I64) -> tuple[I64, I64]:
    """The union of intervals as sorted, disjoint, non-touching intervals."""
    if not len(first):
        return first, last
    if np.any(first[1:] < first[:-1]):
        order = np.argsort(first, kind="stable")
        first, last = first[order], last[order]
    reach = np.maximum.accumulate(last)
    head = np.empty(len(first), dtype=bool)  # the first interval of each merged one
    head[0] = True
    np.greater(first[1:], reach[:-1] + 1, out=head[1:])
    if head.all():  # nothing overlaps or touches (typical of a list of addresses)
        return first, last
    tail = np.empty_like(head)  # the last interval of each merged one
    tail[:-1] = head[1:]
    tail[-1] = True
    return first[head], reach[tail]


def _blocks(first: I64, last: I64) -> tuple[I64, I64, I64]:
    """One step of cutting intervals into the largest aligned blocks that fit: the block at each
    interval's start (``first``, ``size``) and the rest of the interval's new start."""
    align = np.where(first == 0, np.int64(1 << 32), first & -first)
    room = last - first + 1
    fit = np.left_shift(np.int64(1), np.floor(np.log2(room.astype(np.float64))).astype(np.int64))
    fit = np.where(fit > room, fit >> 1, fit)  # guard against rounding in log2
    size = np.minimum(align, fit)
    return first, size, first + size


def _block_counts(first: I64, last: I64) -> I64:
    """How many blocks each interval (of more than one address) is cut into, all at once."""
    counts = np.zeros(len(first), dtype=np.int64)
    current = first.copy()
    active = np.arange(len(first))
    while len(active):
        counts[active] += 1
        _, _, nxt = _blocks(current[active], last[active])
        current[active] = nxt
        active = active[nxt <= last[active]]
    return counts


def collapse_v4(first: I64, last: I64) -> V4:
    """The minimal sorted prefix list covering the union of the intervals ``[first, last]``.
    Single addresses (most of a feed) are copied as they are; only the wider intervals are cut,
    so that a few million addresses cost a few arrays of their size."""
    merged_first, merged_last = merge_intervals(first, last)
    single = merged_first == merged_last
    if single.all():
        return V4(merged_first.astype(np.uint32), np.full(len(merged_first), 32, dtype=np.uint8))
    wide = np.flatnonzero(~single)
    wide_first, wide_last = merged_first[wide], merged_last[wide]
    counts = np.ones(len(merged_first), dtype=np.int64)
    counts[wide] = _block_counts(wide_first, wide_last)
    total = int(counts.sum())
    offsets = np.cumsum(counts) - counts
    del counts
    starts = np.empty(total, dtype=np.uint32)
    lengths = np.empty(total, dtype=np.uint8)
    starts[offsets[single]] = merged_first[single]
    lengths[offsets[single]] = 32
    position = offsets[wide]
    del offsets, single
    current, active, step = wide_first.copy(), np.arange(len(wide)), 0
    while len(active):
        block, size, nxt = _blocks(current[active], wide_last[active])
        starts[position[active] + step] = block
        lengths[position[active] + step] = 32 - np.log2(size.astype(np.float64)).astype(np.int64)
        current[active] = nxt
        active = active[nxt <= wide_last[active]]
        step += 1
    return V4(starts, lengths)


def collapsed_size_v4(first: I64, last: I64) -> int:
    """``len(collapse_v4(first, last))``, without building the list."""
    merged_first, merged_last = merge_intervals(first, last)
    wide = merged_first != merged_last
    return int(len(merged_first) - wide.sum() + _block_counts(merged_first[wide], merged_last[wide]).sum())


def covered_v4(first: I64, last: I64, by_first: I64, by_last: I64) -> npt.NDArray[np.bool_]:
    """For each interval ``[first, last]``: is it inside the union of ``[by_first, by_last]``?"""
    union_first, union_last = merge_intervals(by_first, by_last)
    i = np.searchsorted(union_first, first, side="right") - 1
    inside = i >= 0
    safe = np.where(inside, i, 0)
    return inside & (union_last[safe] >= last) if len(union_first) else np.zeros(len(first), dtype=bool)


def overlaps(first: npt.NDArray[Any], last: npt.NDArray[Any], ranges: list[tuple[int, int]]) -> npt.NDArray[np.bool_]:
    """For each interval ``[first, last]`` (``int64`` arrays, or object arrays of Python integers
    for IPv6): does it share an address with one of ``ranges``? The last range starting at or
    before ``last`` decides, with the running maximum of the ends (so an earlier, wider range
    counts)."""
    if not ranges:
        return np.zeros(len(first), dtype=bool)
    ordered = sorted(ranges)
    starts = np.array([a for a, _ in ordered], dtype=first.dtype)
    reach = np.maximum.accumulate(np.array([b for _, b in ordered], dtype=first.dtype))
    i = np.searchsorted(starts, last, side="right") - 1
    hit: npt.NDArray[np.bool_] = ((i >= 0) & (reach[np.maximum(i, 0)] >= first)).astype(bool)
    return hit

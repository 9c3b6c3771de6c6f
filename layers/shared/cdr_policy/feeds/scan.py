"""The vectorised fast path of ``parse.py``: which lines of a body are exactly one IPv4 address or
CIDR, and their values, found with numpy array operations over the raw bytes.

A line is taken here when it is digits and exactly three dots, each octet one to three digits
without a leading zero and at most 255 (exactly the texts ``inet_pton(AF_INET)`` accepts),
optionally followed by ``/`` and a prefix length of one or two digits without a leading zero, at
most 32, with the address's host bits clear; a CR before its LF is allowed. Every other line
(comments, IPv6, padded lines, inline comments, host bits set, junk) is handed back by number and
text to the per-line path of ``parse.py``, which says what it is or why it is refused. So the fast
path decides nothing the strict parser would decide otherwise (``tests/unit/feeds/test_scan.py``
checks it against ``parse_token`` and ``str.splitlines`` on random and adversarial bodies).

Lines are cut at LF here; ``str.splitlines`` also cuts at a lone CR, VT, FF, FS, GS, RS, NEL, LS
and PS. Those can only be in the lines handed back (the others are digits, dots and a slash), so a
block whose handed-back lines hold one is refused as a whole (``None``) and takes the text path.

How, per block of half a megabyte cut after a LF (``blocks``: the temporaries stay in the cache,
and a million junk lines are never held at once):

1. the LFs give each line's start and length (a CR before the LF is not counted);
2. the 3 bytes before each line's start and the 24 from it are copied into one 27-byte row per
   line (a gather of ``V27`` items; the block is padded with LFs in front and NULs behind);
3. per row, the positions of non-digits and of dots in the line become 24-bit masks (eight 0/1
   bytes times ``_GATHER`` have their bits side by side in the top byte): the line qualifies when
   its only non-digits are its dots and at most one slash, the dots are one of the 27 layouts of
   three dots between octets of one to three digits (``_DOT_LAYOUT``), and one to three digits
   follow the last dot, then the end of the line or the slash and one or two digits;
4. each octet is read from the three bytes before the separator that ends it (a dot, the slash or
   the line break; for a short octet the first of them is a dot or the LF before the line): their
   low nibbles index ``_OCTET``, 4,096 entries giving the octet's value or ``_BAD`` (leading zero,
   over 255), placed at the octet's place in the address (``_PLACED``; a bad octet sets bit 32);
5. the prefix length, its leading zero and the host bits are checked on the CIDR rows only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_BLOCK = 1 << 19  # bytes per block, then up to the next LF
_BEFORE = 3  # bytes of each row before the line's first byte
_WIDTH = 24  # bytes of each row from the line's first byte (the longest line taken has 18)
_ROW = _BEFORE + _WIDTH
_SHORTEST = 7  # 1.2.3.4
_LAST_OCTET_END = 15  # the column after the last octet is at most 15 (255.255.255.255)
_BAD = 256
_GATHER = np.uint64(0x0102_0408_1020_4080)
_OTHER_BREAKS = (b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e")
_UTF8_BREAKS = (b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")  # NEL, LS, PS


@dataclass
class Scanned:
    """What a body's IPv4 lines hold, and every other line by 1-based number and text."""

    addresses: bytes  # single addresses (no length, or /32): native-endian uint32, in line order
    networks: bytes  # CIDRs shorter than /32: native-endian uint32, in line order
    lengths: bytes  # their prefix lengths, one byte each
    numbers: list[int]
    texts: list[str]  # without the line break; bytes that are not UTF-8 become U+FFFD
    lines: int


def _dot_layouts() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """Per mask of dots in the first 16 columns: the columns of its three dots (one table per dot),
    and whether they are a valid layout."""
    layouts = np.array(
        [(a, b, c) for a in (1, 2, 3) for b in (a + 2, a + 3, a + 4) for c in (b + 2, b + 3, b + 4)], dtype=np.uint8
    )
    masks = (1 << layouts.astype(np.intp)).sum(axis=1)
    columns = np.zeros((3, 1 << 16), np.uint8)  # the last dot is at most in column 11
    columns[:, masks] = layouts.T
    valid = np.zeros(1 << 16, np.bool_)
    valid[masks] = True
    return columns, valid


def _octets() -> npt.NDArray[np.uint16]:
    """The value of the octet whose last three bytes have the low nibbles ``h``, ``t``, ``u``
    (index ``h | t << 4 | u << 8``), or ``_BAD``. A dot (0x2E) or a LF (0x0A) before the digits
    ends the octet; digits are 0x30 to 0x39."""
    index = np.arange(1 << 12)
    h, t, u = index & 0xF, index >> 4 & 0xF, index >> 8
    t_ends, h_ends = (t == 0x0E) | (t == 0x0A), (h == 0x0E) | (h == 0x0A)
    one = t_ends  # "u"
    two = ~t_ends & (t <= 9) & h_ends & (t > 0)  # "tu", no leading zero
    three = ~t_ends & (t <= 9) & ~h_ends & (h >= 1) & (h <= 9)  # "htu", no leading zero
    value = np.select([one, two, three], [u, 10 * t + u, 100 * h + 10 * t + u], _BAD)
    return np.where(u <= 9, np.minimum(value, _BAD), _BAD).astype(np.uint16)


_DOT_LAYOUT, _DOT_VALID = _dot_layouts()
_OCTET = _octets()
_PLACED = [
    np.where(_OCTET == _BAD, np.uint64(1 << 32), _OCTET.astype(np.uint64) << np.uint64(24 - 8 * k)) for k in range(4)
]
_BIT_POSITION = np.full(1 << 16, 255, np.intp)  # the position of a mask's one bit (255: not one bit)
_BIT_POSITION[1 << np.arange(16)] = np.arange(16)


def blocks(data: bytes) -> Iterator[bytes]:
    """``data`` in blocks of whole lines, each about ``_BLOCK`` bytes and ending with a LF (one is
    added to an unterminated last line). A block ends after a LF, so a CRLF is never cut, and the
    lines ``str.splitlines`` sees in ``data`` are those it sees in the blocks, one after another."""
    start, size = 0, len(data)
    while start < size:
        end = data.find(b"\n", start + _BLOCK)
        end = size if end == -1 else end + 1
        block = data[start:end]
        yield block if block.endswith(b"\n") else block + b"\n"
        start = end


def scan_block(block: bytes, first_line: int = 0) -> Scanned | None:
    """Split a block of whole lines, each ending with a LF, into the lines that are one IPv4
    address or CIDR and the others (numbered from ``first_line + 1``); ``None`` when the other
    lines hold a line break that ``str.splitlines`` honours and LF does not."""
    buf = np.frombuffer(b"\n" * _BEFORE + block + b"\0" * _ROW, np.uint8)
    breaks = np.flatnonzero(buf == 0x0A)  # the padding's LFs first: the one before each line
    starts = breaks[_BEFORE - 1 : -1] + 1
    ends = breaks[_BEFORE:]
    ends -= buf[ends - 1] == 0x0D
    lengths = np.minimum(ends - starts, _WIDTH)

    rows = _windows(buf, _ROW)[starts - _BEFORE].view(np.uint8).reshape(-1, _ROW)
    digits = rows - np.uint8(0x30)  # the line's bytes are its columns from _BEFORE on
    in_line = (1 << lengths) - 1
    non_digit = _mask(digits > 9) & in_line
    dots = _mask(digits == np.uint8(0x2E - 0x30 + 256)) & in_line
    # A slash: the one non-digit that is not a dot (checked to be a "/").
    flat = rows.reshape(-1)
    row_base = np.arange(0, len(flat), _ROW, dtype=np.intp)
    slash = non_digit & ~dots
    has_slash = slash != 0
    slash_at = _BIT_POSITION[slash & 0xFFFF]  # 255 unless exactly one, in the first 16 columns
    check = np.flatnonzero(has_slash)
    found = flat[row_base[check] + _BEFORE + np.minimum(slash_at[check], _WIDTH - 1)] == 0x2F
    slash_at[check[~found]] = 255
    address_end = np.where(has_slash, slash_at, lengths)  # the slash or the end of the line
    length_digits = np.where(has_slash, lengths - address_end - 1, 0)
    after = address_end - _DOT_LAYOUT[2][dots & 0xFFFF]  # the last octet's digits, plus one
    fast = (dots < 1 << 16) & _DOT_VALID[dots & 0xFFFF] & (after >= 2) & (after <= 4) & (lengths >= _SHORTEST)
    fast &= (length_digits >= 0) & (length_digits <= 2) & (~has_slash | (length_digits > 0))

    # Each octet from the three bytes before its separator (at body column e: row columns e .. e + 2),
    # looked up in its place of the address (``_PLACED``).
    address = np.zeros(len(starts), np.uint64)
    last_end = np.minimum(address_end, _LAST_OCTET_END)  # a row refused above still reads inside itself
    for placed, column in zip(_PLACED, (*(layout[dots & 0xFFFF] for layout in _DOT_LAYOUT), last_end), strict=True):
        at = row_base + column
        nibbles = (flat[at] & np.uint8(0x0F)).astype(np.uint16)
        nibbles |= (flat[at + 1] & np.uint8(0x0F)).astype(np.uint16) << 4
        nibbles |= (flat[at + 2] & np.uint8(0x0F)).astype(np.uint16) << 8
        address |= placed[nibbles]
    fast &= address < np.uint64(1 << 32)  # no octet was _BAD

    # The prefix length: the one or two digits after the slash (body columns e + 1, e + 2).
    prefix = np.full(len(starts), 32, np.intp)
    cidr = np.flatnonzero(fast & has_slash)
    at = row_base[cidr] + _BEFORE + address_end[cidr]
    tens, units = flat[at + 1].astype(np.intp) - 0x30, flat[at + 2].astype(np.intp) - 0x30
    two = length_digits[cidr] == 2
    prefix[cidr] = np.where(two, 10 * tens + units, tens)
    host_bits = (np.uint64(1) << (32 - np.minimum(prefix[cidr], 32)).astype(np.uint64)) - np.uint64(1)
    fast[cidr] = (prefix[cidr] <= 32) & (~two | (tens > 0)) & ((address[cidr] & host_bits) == 0)
    address = address.astype(np.uint32)

    single = fast & (prefix == 32)
    network = fast & (prefix < 32)
    other = np.flatnonzero(~fast)
    spans = zip((starts[other] - _BEFORE).tolist(), (ends[other] - _BEFORE).tolist(), strict=True)
    raw = [block[s:e] for s, e in spans]
    joined = b"\n".join(raw)
    if any(b in joined for b in _OTHER_BREAKS) or (not joined.isascii() and any(b in joined for b in _UTF8_BREAKS)):
        return None
    return Scanned(
        addresses=address[single].tobytes(),
        networks=address[network].tobytes(),
        lengths=prefix[network].astype(np.uint8).tobytes(),
        numbers=(other + first_line + 1).tolist(),
        texts=[line.decode("utf-8", errors="replace") for line in raw],
        lines=len(starts),
    )


def _windows(buf: npt.NDArray[np.uint8], width: int) -> npt.NDArray[np.void]:
    """The ``width`` bytes from each position of ``buf``, as one item each (no copy)."""
    return np.ndarray((len(buf) - width + 1,), np.dtype(f"V{width}"), buf.data, strides=(1,))


def _mask(flags: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """The flags of each row's line (columns ``_BEFORE`` to ``_ROW``) as one integer, bit ``i`` =
    the line's column ``i``."""
    eights: npt.NDArray[np.uint64] = (flags[:, _BEFORE:].view(np.uint64) * _GATHER) >> np.uint64(56)
    mask: npt.NDArray[np.intp] = (eights[:, 0] | eights[:, 1] << np.uint64(8) | eights[:, 2] << np.uint64(16)).astype(
        np.intp
    )
    return mask

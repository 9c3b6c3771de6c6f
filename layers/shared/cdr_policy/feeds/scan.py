"""The vectorised fast path of ``parse.py``: which lines of a body are exactly one dotted-quad IPv4
address, and their values, found with numpy array operations over the raw bytes.

A line is taken here when it is 7 to 15 characters, digits and exactly three dots, each octet one
to three digits without a leading zero and at most 255 (a CR before its LF is allowed): exactly
the texts ``inet_pton(AF_INET)`` accepts. Every other line (comments, CIDRs, IPv6, padded lines,
junk) is handed back by number and text to the per-line path of ``parse.py``, which says what it
is or why it is refused. So the fast path decides nothing the strict parser would decide otherwise
(``tests/unit/feeds/test_scan.py`` checks it against ``inet_pton`` and ``str.splitlines`` on
random and adversarial bodies).

Lines are cut at LF here; ``str.splitlines`` also cuts at a lone CR, VT, FF, FS, GS, RS, NEL, LS
and PS. Those can only be in the lines handed back (the others are digits and dots), so a body
whose handed-back lines hold one is refused as a whole (``None``) and takes the text path.

How, per block of half a megabyte cut after a LF (so that the temporaries stay in the cache):

1. the LFs give each line's start and length (a CR before the LF is not counted);
2. the 3 bytes before each line's start and the 16 from it are copied into one 19-byte row per
   line (a gather of ``V19`` items; the block is padded with LFs in front and NULs behind);
3. per row, the positions of non-digits and of dots in the line become two 16-bit masks (eight
   0/1 bytes times ``_GATHER`` have their bits side by side in the top byte): the line qualifies
   when its only non-digits are dots, in one of the 27 layouts of three dots between octets of one
   to three digits (``_DOT_LAYOUT``), and its length leaves one to three digits after the last;
4. each octet is read from the three bytes before the separator that ends it (a dot, or the line
   break; for a short octet the first of them is a dot or the LF before the line): their low
   nibbles index ``_OCTET``, 4,096 entries giving the octet's value or ``_BAD`` (leading zero,
   over 255). The four octets of a row side by side are the address, big-endian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_BLOCK = 1 << 19  # bytes per block, then up to the next LF
_BEFORE = 3  # bytes of each row before the line's first byte
_WIDTH = 16  # bytes of each row from the line's first byte
_ROW = _BEFORE + _WIDTH
_SHORTEST, _LONGEST = 7, 15
_BAD = 256
_GATHER = np.uint64(0x0102_0408_1020_4080)
_OTHER_BREAKS = (b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e")
_UTF8_BREAKS = (b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")  # NEL, LS, PS


@dataclass
class Scanned:
    """The addresses of the IPv4 lines, and every other line by 1-based number and text."""

    packed: bytes  # 4 bytes per address, big-endian, in line order
    numbers: list[int]
    texts: list[str]  # without the line break; bytes that are not UTF-8 become U+FFFD
    lines: int


def _dot_layouts() -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """Per 16-bit dot mask: the columns of its three dots (one table per dot), and whether they
    are a valid layout."""
    columns = np.zeros((3, 1 << _WIDTH), np.intp)
    valid = np.zeros(1 << _WIDTH, np.bool_)
    for a in (1, 2, 3):
        for b in (a + 2, a + 3, a + 4):
            for c in (b + 2, b + 3, b + 4):
                mask = 1 << a | 1 << b | 1 << c
                columns[:, mask] = (a, b, c)
                valid[mask] = True
    return columns, valid


def _octets() -> npt.NDArray[np.uint16]:
    """The value of the octet whose last three bytes have the low nibbles ``h``, ``t``, ``u``
    (index ``h | t << 4 | u << 8``), or ``_BAD``. A dot (0x2E) or a LF (0x0A) before the digits
    ends the octet; digits are 0x30 to 0x39."""
    table = np.full(1 << 12, _BAD, np.uint16)
    separators = (0x0E, 0x0A)
    for h in range(16):
        for t in range(16):
            for u in range(10):
                if t in separators:
                    value = u
                elif t > 9:
                    continue
                elif h in separators:
                    value = 10 * t + u if t else _BAD
                elif 0 < h <= 9:
                    value = 100 * h + 10 * t + u
                else:
                    continue
                table[h | t << 4 | u << 8] = min(value, _BAD)
    return table


_DOT_LAYOUT, _DOT_VALID = _dot_layouts()
_OCTET = _octets()


def scan_ipv4(data: bytes) -> Scanned | None:
    """Split ``data`` into the lines that are one IPv4 address and the others; ``None`` when the
    other lines hold a line break that ``str.splitlines`` honours and LF does not."""
    packed: list[bytes] = []
    numbers: list[int] = []
    texts: list[str] = []
    lines = 0
    start, size = 0, len(data)
    while start < size:
        end = data.find(b"\n", start + _BLOCK)
        end = size if end == -1 else end + 1
        block = data[start:end]
        found = _scan_block(block if block.endswith(b"\n") else block + b"\n", lines)
        if found is None:
            return None
        packed.append(found[0])
        numbers.extend(found[1])
        texts.extend(found[2])
        lines += found[3]
        start = end
    return Scanned(b"".join(packed), numbers, texts, lines)


def _scan_block(block: bytes, first_line: int) -> tuple[bytes, list[int], list[str], int] | None:
    """One block of whole lines, each ending with a LF."""
    buf = np.frombuffer(b"\n" * _BEFORE + block + b"\0" * _ROW, np.uint8)
    breaks = np.flatnonzero(buf == 0x0A)  # the padding's LFs first: the one before each line
    starts = breaks[_BEFORE - 1 : -1] + 1
    ends = breaks[_BEFORE:]
    ends -= buf[ends - 1] == 0x0D
    lengths = np.minimum(ends - starts, _WIDTH)

    rows = _windows(buf, _ROW)[starts - _BEFORE].view(np.uint8).reshape(-1, _ROW)
    body = rows[:, _BEFORE:] - np.uint8(0x30)
    in_line = (1 << lengths) - 1
    non_digit = _mask16(body > 9) & in_line
    dots = _mask16(body == np.uint8(0x2E - 0x30 + 256)) & in_line
    after = lengths - _DOT_LAYOUT[2][dots]  # the last octet's digits, plus one
    fast = (non_digit == dots) & _DOT_VALID[dots] & (after >= 2) & (after <= 4) & (lengths >= _SHORTEST)

    # The octet ending at body column e has its three bytes at row columns e .. e + 2.
    flat = rows.reshape(-1)
    row_base = np.arange(0, len(flat), _ROW, dtype=np.intp)
    octets = np.empty((len(starts), 4), np.uint16)
    for k, column in enumerate((*(layout[dots] for layout in _DOT_LAYOUT), np.minimum(lengths, _LONGEST))):
        at = row_base + column
        nibbles = (flat[at] & np.uint8(0x0F)).astype(np.uint16)
        nibbles |= (flat[at + 1] & np.uint8(0x0F)).astype(np.uint16) << 4
        nibbles |= (flat[at + 2] & np.uint8(0x0F)).astype(np.uint16) << 8
        octets[:, k] = _OCTET[nibbles]
    quads = octets.view("<u8")[:, 0]  # a row's four octets, 16 bits each
    fast &= (quads & np.uint64(0xFF00_FF00_FF00_FF00)) == 0  # none is _BAD
    packed = quads[fast].view(np.uint16).astype(np.uint8).tobytes()

    other = np.flatnonzero(~fast)
    spans = zip((starts[other] - _BEFORE).tolist(), (ends[other] - _BEFORE).tolist(), strict=True)
    raw = [block[s:e] for s, e in spans]
    joined = b"\n".join(raw)
    if any(b in joined for b in _OTHER_BREAKS) or (not joined.isascii() and any(b in joined for b in _UTF8_BREAKS)):
        return None
    texts = [line.decode("utf-8", errors="replace") for line in raw]
    return packed, (other + first_line + 1).tolist(), texts, len(starts)


def _windows(buf: npt.NDArray[np.uint8], width: int) -> npt.NDArray[np.void]:
    """The ``width`` bytes from each position of ``buf``, as one item each (no copy)."""
    return np.ndarray((len(buf) - width + 1,), np.dtype(f"V{width}"), buf.data, strides=(1,))


def _mask16(flags: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """Each row of 16 flags as one integer, bit ``i`` = column ``i``."""
    eights = (flags.view(np.uint64) * _GATHER) >> np.uint64(56)
    return (eights[:, 0] | eights[:, 1] << np.uint64(8)).astype(np.intp)

"""Strict parsers for the real feed formats, with every quirk seen in the published lists.

Formats:
- ``plain``: one address or CIDR per line; ``#`` and ``;`` comment lines; an inline comment after
  whitespace (``1.2.3.0/24 ; SBL123``); CRLF or LF; a missing final newline; a UTF-8 BOM; IPv4 and
  IPv6 mixed; blank lines; leading and trailing whitespace.
- ``abusech``: ``plain`` plus the abuse.ch banner (``# Last updated: ...``), the ``# DstIP`` column
  line and the ``# END N entries`` trailer, whose N is checked by the gate (``gate.py``).
- ``feodo-csv``: the Feodo Tracker CSV since 2021: ``#`` banner, an uncommented, double-quoted
  header naming ``dst_ip``, quoted rows, the same trailer. The pre-2021 layouts (commented header,
  four or five unquoted columns) are refused as a format change, never half-parsed.
- ``tor-exit-addresses``: TorDNSEL ``exit-addresses`` (``ExitAddress <ip> <date> <time>``).
- ``auto``: one of the above, decided from the first lines (``detect_format``).

Nothing is guessed: an ambiguous token (``010.0.0.1`` could be octal, ``10.1`` is abbreviated,
``1.2.3.4-1.2.3.9`` is a range, ``1.2.3.4/24`` has host bits set, ``evil.example`` needs DNS)
is rejected with its reason and counted, and referred to by its line number and a short fingerprint
(``line 12 sha256:0f1e2d3c4b5a``), never by its text: a line that is not an address may be anything,
a secret included (a ``file://`` feed pointed at a ``.env``). IPv4 addresses are read as ``inet_pton`` reads
them (the bulk path in ``scan.py`` takes exactly the same texts): four decimal octets without
leading zeros.

Speed: the lines that are one IPv4 address or CIDR are found and converted as numpy array
operations over the raw bytes (``scan.py``), a block at a time; bare IPv6 lines go through
``inet_pton`` in C via ``map`` over chunks; only the lines left (comments, IPv6 CIDRs, junk) take
the per-line path. IPv4 entries end up in ``array('I')`` buffers, never as ``ipaddress`` objects
or strings.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import re
import socket
import sys
from array import array
from dataclasses import dataclass, field
from itertools import repeat

from cdr_policy.feeds.scan import Scanned, blocks, scan_block
from cdr_policy.netprefix import BITS, MAPPED_V4_BASE

FORMATS = ("auto", "plain", "abusech", "feodo-csv", "tor-exit-addresses")

# Rejection reasons (stable: they end up in report.json).
R_LEADING_ZERO = "ambiguous: leading zero in an IPv4 octet (octal or decimal?)"
R_ABBREVIATED = "ambiguous: abbreviated IPv4 address (fewer than four octets)"
R_RANGE = "ambiguous: address range (not expanded)"
R_HOST_BITS = "ambiguous: CIDR with host bits set"
R_HOSTNAME = "hostname, not an address (not resolved)"
R_OCTET = "IPv4 octet out of range"
R_PREFIXLEN = "invalid prefix length"
R_ZONE = "IPv6 zone index is not allowed"
R_TRAILING = "unexpected text after the address"
R_MARKUP = "markup, not an address"
R_NOT_IP = "not an IP address or CIDR"
R_CSV_ROW = "malformed CSV row"
R_NUL = "NUL byte in line"

FINGERPRINT_CHARS = 12  # hex digits of a rejected line's sha256 in reports
LISTED_REJECTIONS = 1000  # rejected lines listed per body (all are counted)

_BOM = b"\xef\xbb\xbf"
_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_CHUNK = 512  # lines per inet_pton batch
_TAIL = 4096  # bytes from the end in which to look for the last line
_TRAILER = re.compile(r"^#\s*END\s+(\d+)\s+entries\s*$", re.IGNORECASE)
_UPDATED = re.compile(r"^#\s*Last updated:\s*(.+?)\s*#?\s*$", re.IGNORECASE)
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.*[A-Za-z]){_LABEL}(\.{_LABEL})*\.?$")
_DOTTED_DIGITS = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_HTML_MARKERS = (b"<!doctype", b"<html", b"<head", b"<body", b"<script", b"<title", b"<meta")
FEODO_CSV_COLUMN = "dst_ip"
_TOR_META = ("ExitNode", "Published", "LastStatus")


@dataclass
class Cidrs:
    """CIDR entries of one family as two parallel sequences: networks (IPv4 in an ``array('I')``,
    so that a million of them are one flat buffer) and prefix lengths."""

    networks: list[int] | array[int]
    lengths: bytearray = field(default_factory=bytearray)

    def __len__(self) -> int:
        return len(self.lengths)

    def append(self, network: int, length: int) -> None:
        self.networks.append(network)
        self.lengths.append(length)

    def pairs(self) -> list[tuple[int, int]]:
        """``(network, length)`` per entry."""
        return list(zip(self.networks, self.lengths, strict=True))


@dataclass
class ParsedFeed:
    """What a body contained. Counts are of lines and entries as they appear (duplicates included)."""

    format: str
    lines: int = 0
    comments: int = 0
    blank: int = 0
    # Single addresses per family (IPv4 in an ``array('I')``), unsorted, duplicates kept.
    singles: dict[int, list[int] | array[int]] = field(default_factory=lambda: {4: array("I"), 6: []})
    # CIDR entries shorter than a host prefix, per family (not in line order).
    networks: dict[int, Cidrs] = field(default_factory=lambda: {4: Cidrs(array("I")), 6: Cidrs([])})
    # (``line N sha256:…``, reason) of the first ``LISTED_REJECTIONS`` data lines that are not a
    # valid address or CIDR, and how many there are in all (a million junk lines stay a count).
    rejected: list[tuple[str, str]] = field(default_factory=list)
    rejected_count: int = 0
    # N of an ``# END N entries`` trailer, and whether that trailer is the last non-blank line.
    trailer: int | None = None
    trailer_is_last: bool = False
    feed_updated: str | None = None
    html: bool = False
    format_error: str | None = None

    def count(self, version: int) -> int:
        return len(self.singles[version]) + len(self.networks[version])

    @property
    def entries(self) -> int:
        """Valid entries (addresses and CIDRs), duplicates included."""
        return self.count(4) + self.count(6)

    @property
    def data_lines(self) -> int:
        """Lines that carried data, valid or not (what an ``# END N entries`` trailer counts)."""
        return self.entries + self.rejected_count

    def stats(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {
            "format": self.format,
            "lines": self.lines,
            "comments": self.comments,
            "blank": self.blank,
            "ipv4": self.count(4),
            "ipv6": self.count(6),
            "cidr": len(self.networks[4]) + len(self.networks[6]),
            "rejected_parse": self.rejected_count,
        }
        if self.trailer is not None:
            out["trailer"] = self.trailer
        if self.feed_updated:
            out["feed_updated"] = self.feed_updated
        return out


def looks_like_html(data: bytes) -> bool:
    """True when a body is an HTML page (a portal, an error or a "moved" page served with 200)."""
    head = data[:4096].removeprefix(_BOM).lstrip().lower()
    return head.startswith(b"<") or any(m in head for m in _HTML_MARKERS)


def decode(data: bytes) -> str:
    """The body as text: BOM dropped; bytes that are not UTF-8 become U+FFFD (and their lines junk)."""
    data = data.removeprefix(_BOM)
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace")


def detect_format(data: bytes) -> str:
    """Pick a concrete format from the first meaningful lines (and the last one)."""
    head = decode(data[:16384]).splitlines()[:64]
    for line in head:
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            if "abuse.ch" in s.lower():
                for later in head:
                    if later.lstrip().startswith('"'):
                        return "feodo-csv"
                return "abusech"
            continue
        if s.startswith('"'):
            return "feodo-csv"
        if s.split(" ", 1)[0] in _TOR_META or s.startswith("ExitAddress "):
            return "tor-exit-addresses"
        break
    if _TRAILER.match(_last_nonblank(data)):
        return "abusech"
    return "plain"


def parse_feed(data: bytes, fmt: str = "auto") -> ParsedFeed:
    """Parse a downloaded body. Never raises on bad content: problems are recorded on the result."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown feed format {fmt!r} (one of {', '.join(FORMATS)})")
    if looks_like_html(data):
        return ParsedFeed(format=fmt, html=True)
    data = data.removeprefix(_BOM)
    if fmt == "auto":
        fmt = detect_format(data)
    result = ParsedFeed(format=fmt)
    if fmt in ("feodo-csv", "tor-exit-addresses"):  # small lists: all lines at once
        lines = decode(data).splitlines()
        result.lines = len(lines)
        (_parse_feodo_csv if fmt == "feodo-csv" else _parse_tor_exits)(lines, result)
    else:
        _parse_lines(data, result)
    if result.trailer is not None:
        result.trailer_is_last = bool(_TRAILER.match(_last_nonblank(data)))
    return result


def parse_token(token: str) -> tuple[int, int, int] | str:
    """``(version, network, length)`` for a valid address or CIDR, else the rejection reason."""
    addr, slash, plen_text = token.partition("/")
    parsed = _parse_address(addr)
    if isinstance(parsed, str):
        return R_RANGE if "-" in token and _is_range(token) else parsed
    version, value = parsed
    bits = BITS[version]
    if not slash:
        return version, value, bits
    if not (plen_text.isascii() and plen_text.isdigit()) or (len(plen_text) > 1 and plen_text[0] == "0"):
        return R_PREFIXLEN
    length = int(plen_text)
    if addr.count(":") and version == 4:
        # IPv4-mapped IPv6 CIDR (``::ffff:1.2.3.0/120``): the length counts from the IPv6 side.
        if length < 96:
            return R_NOT_IP
        length -= 96
    if length > bits:
        return R_PREFIXLEN
    if value & ((1 << (bits - length)) - 1):
        return R_HOST_BITS
    return version, value, length


def _parse_address(text: str) -> tuple[int, int] | str:
    if ":" not in text:
        try:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        except (OSError, ValueError):
            return _ipv4_diagnosis(text)
    if "%" in text:
        return R_ZONE
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        return R_NOT_IP
    if value >> 32 == MAPPED_V4_BASE >> 32:
        return 4, value & 0xFFFFFFFF
    return 6, value


def _ipv4_diagnosis(text: str) -> str:
    if "\x00" in text:
        return R_NUL
    if _DOTTED_DIGITS.match(text) and text.isascii():
        octets = text.split(".")
        if len(octets) < 4:
            return R_ABBREVIATED
        if len(octets) > 4:
            return R_NOT_IP
        if any(len(o) > 1 and o[0] == "0" for o in octets):
            return R_LEADING_ZERO
        return R_OCTET
    if text.startswith("<"):
        return R_MARKUP
    if _HOSTNAME.match(text):
        return R_HOSTNAME
    return R_NOT_IP


def _is_range(token: str) -> bool:
    left, _, right = token.partition("-")
    left, right = left.strip(), right.strip()
    return (
        bool(left and right)
        and not isinstance(_parse_address(left), str)
        and (not isinstance(_parse_address(right), str) or right.isdigit())
    )


def _last_nonblank(data: bytes) -> str:
    """The last line of the body that is not blank, stripped (decoding only the end of the body,
    unless that line is longer)."""
    for size in (_TAIL, len(data)):
        text = decode(data[-size:]) if size < len(data) else decode(data)
        end = len(text)
        while end and text[end - 1].isspace():
            end -= 1
        start = max(text.rfind("\n", 0, end), text.rfind("\r", 0, end)) + 1
        if start or size >= len(data):
            return text[start:end].strip()
    return ""


def fingerprint(number: int, line: str) -> str:
    """How a rejected line is named in reports and stored sets: its 1-based number and a short hash."""
    digest = hashlib.sha256(line.encode("utf-8", "surrogatepass")).hexdigest()[:FINGERPRINT_CHARS]
    return f"line {number} sha256:{digest}"


def _reject(result: ParsedFeed, number: int, line: str, reason: str) -> None:
    result.rejected_count += 1
    if len(result.rejected) < LISTED_REJECTIONS:
        result.rejected.append((fingerprint(number, line), reason))


def _note_comment(line: str, result: ParsedFeed) -> None:
    result.comments += 1
    m = _TRAILER.match(line)
    if m:
        result.trailer = int(m.group(1))
        return
    if result.feed_updated is None:
        u = _UPDATED.match(line)
        if u:
            result.feed_updated = u.group(1)


def _add_token(token: str, result: ParsedFeed, number: int, line: str) -> None:
    parsed = parse_token(token)
    if isinstance(parsed, str):
        _reject(result, number, line, parsed)
        return
    version, value, length = parsed
    if length == BITS[version]:
        result.singles[version].append(value)
    else:
        result.networks[version].append(value, length)


def _parse_lines(data: bytes, result: ParsedFeed) -> None:
    """``plain`` and ``abusech``, a block of lines at a time (``scan.blocks``): the lines that are
    one IPv4 address or CIDR are found and converted in bulk (``scan.scan_block``; in a block with
    line breaks other than LF and CRLF, its bare IPv4 lines go through ``inet_pton`` instead), then
    the block's other lines (``_parse_rest``)."""
    for block in blocks(data):
        scanned = scan_block(block, result.lines)
        if scanned is not None:
            _take(scanned, result)
            result.lines += scanned.lines
            _parse_rest(scanned.texts, scanned.numbers, result)
            continue
        lines = block.decode("utf-8", errors="replace").splitlines()
        packed, other = _pton_batch(socket.AF_INET, lines)
        addresses = array("I", packed)
        if sys.byteorder == "little":
            addresses.byteswap()
        result.singles[4].extend(addresses)
        numbers = [result.lines + i + 1 for i in other]
        result.lines += len(lines)
        _parse_rest([lines[i] for i in other], numbers, result)


def _parse_rest(rest: list[str], numbers: list[int], result: ParsedFeed) -> None:
    """The lines of a block that are not one IPv4 address or CIDR (``numbers``: their 1-based
    line numbers): bare IPv6 lines through ``inet_pton`` in one batch, then one by one (comments,
    blank lines, a token with text after it); their tokens go through the bulk scan again (a
    padded or commented line, ``1.2.3.0/24 ; SBL1``) before what is left of them (IPv6 CIDRs,
    junk) is parsed token by token, rejections in line order."""
    v4 = result.singles[4]
    colons = [i for i, line in enumerate(rest) if ":" in line]  # the only lines that can be IPv6
    packed6, other = _pton_batch(socket.AF_INET6, [rest[i] for i in colons])
    left6 = {colons[i] for i in other}
    keep = [i for i, line in enumerate(rest) if ":" not in line or i in left6]
    rest, numbers = [rest[i] for i in keep], [numbers[i] for i in keep]
    size = len(packed6)
    records = map(packed6.__getitem__, map(slice, range(0, size, 16), range(16, size + 16, 16)))
    v6 = list(map(_big_endian, records))
    if _MAPPED_PREFIX in packed6:  # IPv4-mapped addresses (rare) fold to IPv4
        v4.extend(v & 0xFFFFFFFF for v in v6 if v >> 32 == MAPPED_V4_BASE >> 32)
        v6 = [v for v in v6 if v >> 32 != MAPPED_V4_BASE >> 32]
    result.singles[6].extend(v6)
    pending: list[tuple[int, str, str | None]] = []  # (number, line, its token; None: text after it)
    for number, line in zip(numbers, rest, strict=True):
        s = line.strip()
        if not s:
            result.blank += 1
        elif s[0] in "#;":
            _note_comment(s, result)
        else:
            first, *after = s.split(None, 1)
            pending.append((number, line, None if after and after[0][0] not in "#;" else first))
    tokens = [token for _, _, token in pending if token is not None]  # no whitespace: no line break
    found = scan_block("\n".join(tokens).encode() + b"\n") if tokens else None
    if found is not None:
        _take(found, result)
    left = set(found.numbers) if found is not None else None  # 1-based places among ``tokens``
    place = 0
    for number, line, maybe_token in pending:
        if maybe_token is None:
            _reject(result, number, line, R_TRAILING)
            continue
        place += 1
        if left is None or place in left:
            _add_token(maybe_token, result, number, line)


_big_endian = functools.partial(int.from_bytes, byteorder="big")


def _pton_batch(family: int, lines: list[str]) -> tuple[bytes, list[int]]:
    """Packed addresses of the lines that are exactly one address of ``family``, and the indexes
    of the other lines (in order). Chunks go through ``map`` in C; a chunk with a failure is redone
    per line."""
    pton = socket.inet_pton
    packed: list[bytes] = []
    rest: list[int] = []
    for start in range(0, len(lines), _CHUNK):
        chunk = lines[start : start + _CHUNK]
        try:
            packed.append(b"".join(map(pton, repeat(family), chunk)))
        except (OSError, ValueError):
            for index, line in enumerate(chunk, start):
                try:
                    packed.append(pton(family, line))
                except (OSError, ValueError):
                    rest.append(index)
    return b"".join(packed), rest


def _take(scanned: Scanned, result: ParsedFeed) -> None:
    """Add the IPv4 addresses and CIDRs ``scan.scan_block`` found to the result."""
    v4, cidrs = result.singles[4], result.networks[4]
    assert isinstance(v4, array) and isinstance(cidrs.networks, array)
    v4.frombytes(scanned.addresses)
    cidrs.networks.frombytes(scanned.networks)
    cidrs.lengths += scanned.lengths


def _parse_feodo_csv(lines: list[str], result: ParsedFeed) -> None:
    rows: list[tuple[int, str]] = []
    header: list[str] | None = None
    for number, line in enumerate(lines, 1):
        s = line.strip()
        if not s:
            result.blank += 1
        elif s.startswith("#"):
            _note_comment(s, result)
            if header is None and "dstip" in s.replace(" ", "").lower() and "," in s:
                result.format_error = (
                    "Feodo CSV header is commented out (the pre-2021 layout); "
                    f"expected a quoted header naming {FEODO_CSV_COLUMN!r}"
                )
                return
        elif header is None:
            if not s.startswith('"'):
                result.format_error = (
                    f"Feodo CSV header missing: expected a quoted header, got {fingerprint(number, line)}"
                )
                return
            header = next(csv.reader([s]))
            if FEODO_CSV_COLUMN not in header:
                result.format_error = (
                    f"Feodo CSV header ({fingerprint(number, line)}) has no {FEODO_CSV_COLUMN!r} column"
                )
                return
        else:
            rows.append((number, s))
    if header is None:
        if result.trailer is None:
            result.format_error = "Feodo CSV header missing"
        return
    col = header.index(FEODO_CSV_COLUMN)
    for (number, raw), row in zip(rows, csv.reader(r for _, r in rows), strict=True):
        if len(row) != len(header):
            _reject(result, number, raw, R_CSV_ROW)
        else:
            _add_token(row[col].strip(), result, number, raw)


def _parse_tor_exits(lines: list[str], result: ParsedFeed) -> None:
    for number, line in enumerate(lines, 1):
        s = line.strip()
        if not s:
            result.blank += 1
            continue
        key, _, rest = s.partition(" ")
        if key == "ExitAddress":
            _add_token(rest.split(" ", 1)[0], result, number, line)
        elif key in _TOR_META or s.startswith("#"):
            result.comments += 1
        else:
            _reject(result, number, line, R_NOT_IP)

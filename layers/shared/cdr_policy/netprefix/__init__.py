"""Network prefixes as integers: the one home of the prefix primitives every stage uses.

An address family is ``4`` or ``6``; an address is a Python ``int``; a prefix is ``(network, length)``
with the host bits cleared. Text is produced and read only at the edges, always in one canonical
spelling (``ipaddress``'): ``198.51.100.7/32``, ``2001:db8::/48``; an IPv4-mapped IPv6 prefix is
written ``::ffff:198.51.100.0/120``.

Tetragon matches an IPv4 prefix only on ``AF_INET`` sockets; a dual-stack (``AF_INET6``) socket
talking to ``::ffff:a.b.c.d`` needs the IPv4-mapped form ``::ffff:a.b.c.d/(96+n)`` as well
(cilium/tetragon#4618), so every IPv4 prefix a Tetragon filter holds is emitted twice
(``tetragon_values``), and readers fold the twin back (``unmap``).

Parsing uses ``socket.inet_pton`` (the checker and the change budget read every value of a
50,000-prefix blocklist, where ``ipaddress`` objects would cost seconds). Bulk operations on
a million prefixes live in ``cdr_policy.netprefix.vector`` (numpy), kept apart so that the
functions that do not need numpy do not import it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import numpy.typing as npt

BITS = {4: 32, 6: 128}
# IPv4-mapped IPv6 (::ffff:0:0/96): folded to IPv4 on input.
MAPPED_V4_BASE = 0xFFFF << 32
_MAPPED = "::ffff:"
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


def last_address(version: int, network: int, length: int) -> int:
    return network | ((1 << (BITS[version] - length)) - 1)


def to_string(version: int, network: int, length: int) -> str:
    """The canonical text of a prefix (``ipaddress``' spelling, so every stage agrees)."""
    if version == 4:
        return f"{socket.inet_ntop(socket.AF_INET, network.to_bytes(4, 'big'))}/{length}"
    return str(ipaddress.IPv6Network((network, length)))


class Prefix(NamedTuple):
    version: int
    network: int
    length: int

    @property
    def last(self) -> int:
        return last_address(self.version, self.network, self.length)


@dataclass(frozen=True)
class Prefixes:
    """An aggregated, sorted, non-overlapping prefix list of one family, as two parallel sequences
    (kept apart so that a million /32s cost two flat sequences, not a million tuples)."""

    version: int
    networks: Sequence[int] | npt.NDArray[Any]  # numpy arrays for IPv4 (``netprefix.vector``)
    lengths: Sequence[int] | npt.NDArray[Any]

    def __len__(self) -> int:
        return len(self.networks)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # Python integers also when the sequences are numpy arrays (``tolist``).
        networks = self.networks.tolist() if hasattr(self.networks, "tolist") else self.networks
        lengths = self.lengths.tolist() if hasattr(self.lengths, "tolist") else self.lengths
        return zip(networks, lengths, strict=True)

    def strings(self) -> list[str]:
        return [to_string(self.version, n, plen) for n, plen in self]


def _parse(value: str) -> tuple[Prefix | None, str | None]:
    """``address[/length]`` read with ``inet_pton``; host bits cleared. (None, reason) when it is not one."""
    address, slash, length_text = value.partition("/")
    version = 6 if ":" in address else 4
    try:
        packed = socket.inet_pton(_FAMILY[version], address)
    except (OSError, ValueError):
        return None, f"{value!r} is not an IP prefix"
    bits = BITS[version]
    if slash and (not length_text.isdigit() or not length_text.isascii() or int(length_text) > bits):
        return None, f"{value!r} has an invalid prefix length"
    length = int(length_text) if slash else bits
    host = bits - length
    return Prefix(version, int.from_bytes(packed, "big") >> host << host, length), None


def parse_explicit(value: object) -> tuple[Prefix | None, str | None]:
    """A prefix written with an explicit length in canonical form (host bits clear; IPv4-mapped
    prefixes as ``::ffff:a.b.c.d/n``), or the reason it is not one. A prefix that parses but is
    not canonical is returned together with the reason."""
    if not isinstance(value, str) or "/" not in value:
        return None, f"{value!r} has no prefix length (write /32 or /128)"
    prefix, reason = _parse(value)
    if prefix is None:
        return None, reason
    expected = canonical_text(prefix)
    if value != expected and not (prefix.version == 6 and value == to_string(6, prefix.network, prefix.length)):
        return prefix, f"{value!r} is not canonical (expected {expected})"
    return prefix, None


def parse_canonical(value: str) -> Prefix:
    """A stored canonical prefix (``to_string``'s spelling); ValueError when it is not one."""
    prefix, reason = parse_explicit(value)
    if prefix is None or reason:
        raise ValueError(reason)
    return prefix


def sort_key(value: str) -> tuple[int, int, int]:
    """Numeric order for canonical prefixes (IPv4 before IPv6)."""
    return parse_canonical(value)


def folded(text: str) -> Prefix | None:
    """Any address or prefix as written in an object (length optional, host bits ignored, IPv4-mapped
    folded to IPv4), or None when the text is not one: what the change budget counts."""
    if len(text) > 64 or not any(c in text for c in ".:"):
        return None
    prefix, _ = _parse(text.strip())
    return None if prefix is None else unmap(prefix)


def canonical_text(prefix: Prefix) -> str:
    """The canonical text; an IPv4-mapped IPv6 prefix as ``::ffff:a.b.c.d/n``."""
    inner = unmap(prefix)
    if inner is not prefix:
        return mapped_twin_text(to_string(4, inner.network, inner.length))
    return to_string(prefix.version, prefix.network, prefix.length)


def mapped_twin_text(prefix: str) -> str:
    """``198.51.100.0/24`` -> ``::ffff:198.51.100.0/120`` (canonical IPv4 text in, mapped text out)."""
    address, _, length = prefix.partition("/")
    return f"{_MAPPED}{address}/{96 + int(length)}"


def tetragon_values(prefixes: Sequence[str]) -> list[str]:
    """Values for a Tetragon address filter: the canonical prefixes (callers pass them sorted,
    IPv4 first) followed by the IPv4-mapped twin of every IPv4 one."""
    return list(prefixes) + [mapped_twin_text(p) for p in prefixes if ":" not in p]


def unmap(prefix: Prefix) -> Prefix:
    """The IPv4 prefix an IPv4-mapped IPv6 prefix stands for; other prefixes unchanged."""
    if prefix.version == 6 and prefix.length >= 96 and prefix.network >> 32 == 0xFFFF:
        return Prefix(4, prefix.network - MAPPED_V4_BASE, prefix.length - 96)
    return prefix

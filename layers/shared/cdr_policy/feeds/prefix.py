"""Integer prefixes: the representation the feed pipeline works on until it writes indicators.

An address family is ``4`` or ``6``; an address is a Python ``int``; a prefix is ``(network, length)``
with the host bits cleared. Strings are produced only at the edge, in the canonical form of
``models`` (``198.51.100.7/32``, ``2001:db8::/48``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

BITS = {4: 32, 6: 128}
# IPv4-mapped IPv6 (::ffff:0:0/96): folded to IPv4 on input.
MAPPED_V4_BASE = 0xFFFF << 32


def last_address(version: int, network: int, length: int) -> int:
    return network | ((1 << (BITS[version] - length)) - 1)


def to_string(version: int, network: int, length: int) -> str:
    """The canonical text of a prefix (``ipaddress``' spelling, so every stage agrees)."""
    if version == 4:
        return f"{socket.inet_ntop(socket.AF_INET, network.to_bytes(4, 'big'))}/{length}"
    return str(ipaddress.IPv6Network((network, length)))


def parse_canonical(value: str) -> tuple[int, int, int]:
    """``(version, network, length)`` of a stored canonical prefix; ValueError when it is not one."""
    net = ipaddress.ip_network(value, strict=True)
    if "/" not in value:
        raise ValueError(f"{value!r} has no prefix length")
    return net.version, int(net.network_address), net.prefixlen


def sort_key(value: str) -> tuple[int, int, int]:
    """Numeric order for canonical prefixes (IPv4 before IPv6)."""
    return parse_canonical(value)


@dataclass(frozen=True)
class Prefixes:
    """An aggregated, sorted, non-overlapping prefix list of one family, as two parallel sequences
    (kept apart so that a million /32s cost two flat sequences, not a million tuples)."""

    version: int
    networks: Sequence[int]
    lengths: Sequence[int]

    def __len__(self) -> int:
        return len(self.networks)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.networks, self.lengths, strict=True)

    def strings(self) -> list[str]:
        return [to_string(self.version, n, plen) for n, plen in self]

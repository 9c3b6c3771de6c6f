"""Prefix forms shared by the compilers and the checker.

Tetragon matches an IPv4 prefix only on ``AF_INET`` sockets; a dual-stack (``AF_INET6``) socket
talking to ``::ffff:a.b.c.d`` needs the IPv4-mapped form ``::ffff:a.b.c.d/(96+n)`` as well
(cilium/tetragon#4618), so every IPv4 prefix a Tetragon filter holds is emitted twice.

Parsing is on integers with ``socket.inet_pton`` (the checker reads every value of a 50,000-prefix
blocklist, where ``ipaddress`` objects would cost seconds); the canonical text is the one of
``cdr_policy.feeds.prefix.to_string``, so every stage agrees on the spelling.
"""

from __future__ import annotations

import socket
from typing import NamedTuple

from cdr_policy.feeds.prefix import BITS, last_address, to_string

_MAPPED_BASE = 0xFFFF << 32
_MAPPED = "::ffff:"


class Prefix(NamedTuple):
    version: int
    network: int
    length: int

    @property
    def last(self) -> int:
        return last_address(self.version, self.network, self.length)


def mapped_twin_text(prefix: str) -> str:
    """``198.51.100.0/24`` -> ``::ffff:198.51.100.0/120`` (canonical IPv4 text in, mapped text out)."""
    address, _, length = prefix.partition("/")
    return f"{_MAPPED}{address}/{96 + int(length)}"


def tetragon_values(prefixes: list[str]) -> list[str]:
    """Values for a Tetragon address filter: the canonical prefixes (callers pass them sorted,
    IPv4 first) followed by the IPv4-mapped twin of every IPv4 one."""
    return list(prefixes) + [mapped_twin_text(p) for p in prefixes if ":" not in p]


def unmap(prefix: Prefix) -> Prefix:
    """The IPv4 prefix an IPv4-mapped IPv6 prefix stands for; other prefixes unchanged."""
    if prefix.version == 6 and prefix.length >= 96 and prefix.network >> 32 == 0xFFFF:
        return Prefix(4, prefix.network - _MAPPED_BASE, prefix.length - 96)
    return prefix


def is_mapped(prefix: Prefix) -> bool:
    return unmap(prefix) is not prefix


def parse_explicit(value: object) -> tuple[Prefix | None, str | None]:
    """A prefix written with an explicit length in canonical form (host bits clear; IPv4-mapped
    prefixes as ``::ffff:a.b.c.d/n``), or the reason it is not one. A prefix that parses but is
    not canonical is returned together with the reason."""
    if not isinstance(value, str) or "/" not in value:
        return None, f"{value!r} has no prefix length (write /32 or /128)"
    address, _, length_text = value.partition("/")
    version = 6 if ":" in address else 4
    try:
        packed = socket.inet_pton(socket.AF_INET6 if version == 6 else socket.AF_INET, address)
    except OSError:
        return None, f"{value!r} is not an IP prefix"
    if not length_text.isdigit() or int(length_text) > BITS[version]:
        return None, f"{value!r} has an invalid prefix length"
    length = int(length_text)
    number = int.from_bytes(packed, "big")
    network = number >> (BITS[version] - length) << (BITS[version] - length)
    prefix = Prefix(version, network, length)
    expected = _canonical(prefix)
    if value != expected and not (version == 6 and value == to_string(6, network, length)):
        return prefix, f"{value!r} is not canonical (expected {expected})"
    return prefix, None


def _canonical(prefix: Prefix) -> str:
    inner = unmap(prefix)
    if inner is not prefix:
        return mapped_twin_text(to_string(4, inner.network, inner.length))
    return to_string(prefix.version, prefix.network, prefix.length)

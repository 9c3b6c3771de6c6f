"""Checklist items every kind shares (docs/ENFORCEMENT.md §5 "Common"): size, name length, labels,
CIDR form and the never-block list.

``check_cidrs`` is the fast path for a list of prefixes (a blocklist's thousands of values): a
value in canonical IPv4 or IPv4-mapped text (``inet_pton`` and a table of the canonical length
texts) whose host bits are clear and which the never-block list cannot concern (longer than its
minimum length, outside every protected range: a binary search over the protected ranges) passes
without further work; every other value goes through ``check_cidr``, so the problems and their
wording are the same either way.
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cdr_policy import jsonio
from cdr_policy.netprefix import parse_explicit, unmap
from cdr_policy.policy.checker.problem import Problem, error, warning

# Our own ceiling per object, far below etcd's default 1.5 MiB request limit.
MAX_OBJECT_BYTES = 512 * 1024
ETCD_LIMIT_BYTES = 3 * 512 * 1024
# Client-side apply copies the object into an annotation capped at 256 KiB.
CLIENT_SIDE_APPLY_BYTES = 200 * 1024


class BlockGuard(Protocol):
    """What the checker needs of the never-block list (``NeverBlock`` or a chain of them)."""

    def check_interval(self, version: int, first: int, last: int, prefixlen: int) -> str | None: ...

    def protected_ranges(self, version: int) -> list[tuple[int, int]]: ...

    def min_prefix_length(self, version: int) -> int: ...


_MAPPED = "::ffff:"
# Canonical prefix-length texts (no leading zeros), plain IPv4 and IPv4-mapped.
_LENGTHS = {str(n): n for n in range(33)}
_MAPPED_LENGTHS = {str(96 + n): n for n in range(33)}


def v4_interval(value: str) -> tuple[int, int, int] | None:
    """``(first, last, length)`` of a prefix in canonical IPv4 text (host bits clear), or of the
    IPv4 prefix a canonical IPv4-mapped one (``::ffff:a.b.c.d/(96+n)``) stands for; else None.
    (``inet_pton`` accepts exactly four decimal octets without leading zeros.)"""
    address, _, length_text = value.partition("/")
    if address.startswith(_MAPPED):
        address, length = address[len(_MAPPED) :], _MAPPED_LENGTHS.get(length_text)
    else:
        length = _LENGTHS.get(length_text)
    if length is None or ":" in address:
        return None
    try:
        first = int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")
    except OSError:
        return None
    host = (1 << (32 - length)) - 1
    return None if first & host else (first, first | host, length)


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a mapping, else an empty one (objects may be malformed)."""
    return value if isinstance(value, dict) else {}


def object_size(obj: dict[str, Any]) -> int:
    """Bytes of the object as the API server stores it (compact JSON)."""
    return len(jsonio.dumps(obj))


def check_common(obj: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    size = object_size(obj)
    if size > ETCD_LIMIT_BYTES:
        problems.append(
            error("size.etcd-limit", "", f"{size} bytes: over etcd's 1.5 MiB request limit, it cannot be stored")
        )
    elif size > MAX_OBJECT_BYTES:
        problems.append(error("size.too-large", "", f"{size} bytes: over the 512 KiB per-object ceiling, split it"))
    elif size > CLIENT_SIDE_APPLY_BYTES:
        problems.append(
            warning("size.server-side-apply", "", f"{size} bytes: apply it server-side (client-side apply fails)")
        )
    metadata = as_dict(obj.get("metadata"))
    name = metadata.get("name")
    if isinstance(name, str) and len(name) > 63:
        problems.append(warning("metadata.name-length", "metadata.name", f"{len(name)} characters: keep names <= 63"))
    labels = as_dict(metadata.get("labels"))
    for key, value in labels.items():
        if isinstance(value, str) and _is_address(value):
            problems.append(
                error(
                    "metadata.labels",
                    f"metadata.labels[{key}]",
                    f"{value!r} is an address: put addresses in annotations",
                )
            )
    return problems


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_cidr(value: Any, path: str, guard: BlockGuard | None, *, blocked: bool) -> list[Problem]:
    """An explicit, canonical prefix; when ``blocked`` (traffic to it is denied) also outside the
    never-block list. IPv4-mapped prefixes are checked as the IPv4 prefix they stand for."""
    prefix, reason = parse_explicit(value)
    if reason or prefix is None:
        return [error("cidr.form", path, reason or f"{value!r} is not a prefix")]
    if blocked and guard is not None:
        inner = unmap(prefix)
        refusal = guard.check_interval(inner.version, inner.network, inner.last, inner.length)
        if refusal:
            return [error("cidr.never-block", path, f"{value} must not be blocked: {refusal}")]
    return []


def check_cidrs(
    values: Sequence[Any], path: Callable[[int], str], guard: BlockGuard | None, *, blocked: bool
) -> tuple[list[Problem], list[bool]]:
    """``check_cidr`` for every value (``path(i)`` names the i-th), with the fast path of the module
    docstring. Also says which values passed the fast path (canonical IPv4 or IPv4-mapped text)."""
    screen = Screen(guard if blocked else None)
    passed = [screen.passes(value) for value in values]
    problems = [
        p for i, ok in enumerate(passed) if not ok for p in check_cidr(values[i], path(i), guard, blocked=blocked)
    ]
    return problems, passed


class Screen:
    """Is a value a canonical IPv4 prefix the guard cannot concern?"""

    def __init__(self, guard: BlockGuard | None) -> None:
        self.min_length = guard.min_prefix_length(4) if guard is not None else 0
        ranges = sorted(guard.protected_ranges(4)) if guard is not None else []
        self.starts = [a for a, _ in ranges]
        self.reach: list[int] = []
        for _, b in ranges:
            self.reach.append(max(b, self.reach[-1]) if self.reach else b)

    def passes(self, value: Any) -> bool:
        interval = v4_interval(value) if isinstance(value, str) else None
        return interval is not None and self.passes_interval(*interval)

    def passes_interval(self, first: int, last: int, length: int) -> bool:
        """The same for an IPv4 prefix already read (``v4_interval``)."""
        if length < self.min_length:
            return False
        i = bisect_right(self.starts, last) - 1
        return i < 0 or self.reach[i] < first

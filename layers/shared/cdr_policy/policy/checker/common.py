"""Checklist items every kind shares (docs/ENFORCEMENT.md §5 "Common"): size, name length, labels,
CIDR form and the never-block list."""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

from cdr_policy import jsonio
from cdr_policy.policy.checker.problem import Problem, error, warning
from cdr_policy.policy.prefixes import parse_explicit, unmap

# Our own ceiling per object, far below etcd's default 1.5 MiB request limit.
MAX_OBJECT_BYTES = 512 * 1024
ETCD_LIMIT_BYTES = 3 * 512 * 1024
# Client-side apply copies the object into an annotation capped at 256 KiB.
CLIENT_SIDE_APPLY_BYTES = 200 * 1024


class BlockGuard(Protocol):
    """What the checker needs of the never-block list (``NeverBlock`` or a chain of them)."""

    def check_interval(self, version: int, first: int, last: int, prefixlen: int) -> str | None: ...


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

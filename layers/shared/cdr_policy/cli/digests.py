"""Bundle digests as the day-2 commands take them: the 64 hex digits or any unique prefix of at
least ``flags.MIN_DIGEST_PREFIX``, resolved against what a store holds."""

from __future__ import annotations

from collections.abc import Iterable

from cdr_policy import layout
from cdr_policy.errors import ConfigError
from cdr_policy.storage import Store

# Of an ambiguous prefix, at most this many candidates are listed.
MAX_LISTED = 10


def resolve(prefix: str, candidates: Iterable[str], what: str) -> str | None:
    """The one digest of ``candidates`` starting with ``prefix``; None when none does. ConfigError
    listing the candidates (by the shortest prefix that tells them apart) when several do."""
    matches = sorted({c for c in candidates if c.startswith(prefix)})
    if len(matches) <= 1:
        return matches[0] if matches else None
    width = len(prefix) + 1
    while len({m[:width] for m in matches}) < len(matches):
        width += 1
    shown = ", ".join(m[:width] for m in matches[:MAX_LISTED])
    more = f" and {len(matches) - MAX_LISTED} more" if len(matches) > MAX_LISTED else ""
    raise ConfigError(f"{prefix} is ambiguous: {len(matches)} {what} start with it ({shown}{more}); give more digits")


def rendered(state: Store, prefix: str) -> list[str]:
    """Digests of the rendered bundles in the state store that start with ``prefix`` (each with its manifest)."""
    return [d for d in map(layout.rendered_digest, state.list(f"{layout.BUNDLES}{prefix}")) if d is not None]


def in_history(dist: Store, channel: str) -> dict[str, list[str]]:
    """The channel's history entries by the digest their key names (``<created_at>-<digest>.json``)."""
    out: dict[str, list[str]] = {}
    for key in dist.list(layout.history_prefix(channel)):
        if (entry := layout.history_entry(channel, key)) is not None:
            out.setdefault(entry[1], []).append(key)
    return out

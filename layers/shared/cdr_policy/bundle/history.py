"""What a channel ships and has shipped, as signed manifests: the current one (``read_current``)
and its verified history, newest first (``recent``). Publish reads a channel through it before it
writes one; promotion (``cdr_policy.promotion``) reads the audit channel's history (how long it has
shipped a change) and the enforcing channel's (what each publish promoted or took back).

Only manifests that verify with the pipeline's key and name the channel count: a planted,
unsigned or oversized entry is skipped (and logged), never trusted. A store that fails raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from cdr_policy import layout
from cdr_policy.bundle.loader import read_manifest
from cdr_policy.bundle.manifest import MAX_MANIFEST_BYTES, Manifest
from cdr_policy.bundle.signing import Verifier, verify_signature
from cdr_policy.errors import BundleError
from cdr_policy.observability import logger
from cdr_policy.storage import NotFound, Store, TooLarge
from cdr_policy.timeutil import parse_iso

# How many of the newest history entries are read (entries that do not verify were planted: they
# are skipped, but not without end).
HISTORY_SCAN = 100


@dataclass(frozen=True)
class Current:
    """What the channel ships, as Publish found it.

    ``etag``: of whatever object is at the channel manifest key (None: none). ``manifest``: the
    verified manifest the channel ships — the one at the key, or the newest verified history entry
    when the key is empty or holds an older one (``replayed``: the manifest must be written again).
    ``problem``: why the object at the key is unusable (planted, unsigned, oversized) when no
    verified history stands in. ``history``: the channel has verified history."""

    etag: str | None
    manifest: Manifest | None
    problem: str | None
    next_generation: int
    replayed: bool = False
    history: bool = False

    @property
    def digest(self) -> str | None:
        return self.manifest.digest if self.manifest else None

    @property
    def first(self) -> bool:
        """The channel has never shipped anything: no change budget applies."""
        return self.manifest is None and self.problem is None and not self.history


def read_signed(store: Store, key: str, verifier: Verifier) -> Manifest:
    manifest, _ = read_manifest(store, key)
    verify_signature(manifest, verifier)
    return manifest


def generation_of(manifest: Manifest) -> int:
    """A signed manifest's generation (the schema requires one with every signature)."""
    if manifest.generation is None:
        raise BundleError(f"bundle {manifest.digest[:12]}: a published manifest without a generation")
    return manifest.generation


def read_current(dist: Store, channel: str, verifier: Verifier) -> Current:
    """The channel's current manifest and the generation the next one gets (see ``Current``)."""
    key = layout.channel_manifest_key(channel)
    newest = next(recent(dist, channel, verifier), None)
    history = generation_of(newest) if newest else 0

    def standing_in(etag: str | None, problem: str | None) -> Current:
        """Nothing usable at the key: the newest history entry stands in, when there is one."""
        if newest is not None:
            logger.warning("the channel manifest is unusable: the newest history entry stands in", extra={"key": key})
            return Current(etag, newest, None, history + 1, replayed=True, history=True)
        return Current(etag, None, problem, history + 1)

    try:
        obj = dist.get(key, max_bytes=MAX_MANIFEST_BYTES)
    except NotFound:
        return standing_in(None, None)
    except TooLarge as exc:
        return standing_in(exc.etag, f"the current manifest of channel {channel} is unusable: {exc}")
    try:
        manifest = Manifest.parse(obj.data, key)
        verify_signature(manifest, verifier)
        if manifest.channel != channel:
            raise BundleError("it is for another channel")
    except BundleError as exc:
        return standing_in(obj.etag, f"the current manifest of channel {channel} is unusable: {exc}")
    if newest is not None and generation_of(newest) > generation_of(manifest):
        logger.warning(
            "the channel manifest is older than its history: replayed; publishing the newest again",
            extra={"channel": channel, "generation": manifest.generation, "newest": newest.generation},
        )
        return Current(obj.etag, newest, None, history + 1, replayed=True, history=True)
    return Current(obj.etag, manifest, None, max(generation_of(manifest), history) + 1, history=newest is not None)


def recent(dist: Store, channel: str, verifier: Verifier, *, since: datetime | None = None) -> Iterator[Manifest]:
    """The channel's verified history entries, newest first, among the last ``HISTORY_SCAN``; with
    ``since``, those published at or after it and the one before (in force at ``since``)."""
    for key in reversed(dist.list(layout.history_prefix(channel))[-HISTORY_SCAN:]):
        try:
            manifest = read_signed(dist, key, verifier)
        except (BundleError, NotFound, TooLarge) as exc:
            logger.warning("ignoring a history entry", extra={"key": key, "error": str(exc)})
            continue
        if manifest.channel != channel:
            continue
        yield manifest
        if since is not None and parse_iso(manifest.created_at) <= since:
            return

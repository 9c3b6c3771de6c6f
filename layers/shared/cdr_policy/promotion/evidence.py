"""What a promotion decision reads, once per channel and run (``World.read``): the enforcing
channel's signed current bundle and recent history, the fleet's hits (``hits.fleet.read_fleet``:
every row checked against its cluster's own channel's published bundles, counts bounded), the
approvers' grants of changes, and, per change judged, the audit channel's signed history.

The audit channel's history is sampled (``audit_samples``), not read whole: its current bundle
and the bundle in force every ``soak / SOAK_SAMPLES`` before, back to the start of the soak, plus
the bundles its reporting clusters applied. At most ``SOAK_SAMPLES + 1 + MAX_APPLIED`` provenance
indexes are read, however often the audit channel publishes; a change missing from any sample
starts its soak again after it. Every sample is a history entry verified with the pipeline's key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cdr_policy import layout
from cdr_policy.bundle.approvals import Grant, change_grants
from cdr_policy.bundle.history import Current, read_current, read_signed, recent
from cdr_policy.bundle.manifest import Manifest
from cdr_policy.bundle.provenance import ProvenanceIndex
from cdr_policy.bundle.signing import Verifier
from cdr_policy.errors import BundleError, StorageError
from cdr_policy.hits.aggregate import RETENTION_HOURS
from cdr_policy.hits.fleet import ClusterHits, Counted, Fleet, read_fleet
from cdr_policy.observability import logger
from cdr_policy.policy.channel import ChannelSettings, Promotion
from cdr_policy.promotion.content import Content, published_content
from cdr_policy.storage import NotFound, Store, TooLarge
from cdr_policy.timeutil import parse_iso

SOAK_SAMPLES = 24
# A cluster reports while its agent polled and its node readers' hits were summed this recently
# (the agent writes its status at least every 10 minutes, its hits every 5).
FRESH = timedelta(minutes=30)
# Bundles of reporting clusters read beyond the samples (a cluster further behind counts for nothing).
MAX_APPLIED = 8
# What an enforcing channel's clusters report of what it stopped (the watch counts these).
STOPPED = frozenset({"SIGKILL", "OVERRIDE", "DROPPED"})


@dataclass(frozen=True)
class Sample:
    """The audit channel's bundle in force at ``at`` (``manifest`` None: none was)."""

    at: datetime
    manifest: Manifest | None


@dataclass
class World:
    """Everything a decision about ``channel`` reads (see the module docstring)."""

    channel: ChannelSettings
    promote: Promotion
    now: datetime
    dist: Store
    verifier: Verifier
    current: Current
    content: Content
    index: ProvenanceIndex | None
    fleet: Fleet
    grants: list[Grant]
    history: list[Manifest]  # the channel's own, newest first, back to the watch's window
    _contents: dict[str, Content | None] = field(default_factory=dict)

    @classmethod
    def read(
        cls,
        *,
        state: Store,
        dist: Store,
        channel: ChannelSettings,
        verifier: Verifier,
        approvers: Verifier | None,
        now: datetime,
        fleet: Fleet | None = None,
        current: Current | None = None,
    ) -> World:
        """Read once (``fleet``: the fleet's hits when already read for another channel;
        ``current``: the channel's current manifest when the caller read it already)."""
        promote = channel.promote
        if promote is None:
            raise ValueError(f"channel {channel.name} does not promote")
        current = current if current is not None else read_current(dist, channel.name, verifier)
        content, index = Content.empty(), None
        if current.manifest is not None:
            try:
                content, index = published_content(dist, current.manifest)
            except (BundleError, NotFound, TooLarge) as exc:
                # what it ships cannot be read: nothing counts as shipped, every change is judged, and
                # Publish holds the bundle this composes (it cannot compare it with the current one)
                logger.error(
                    "the channel's current bundle is unusable: promotion composes as if it shipped nothing",
                    extra={"channel": channel.name, "digest": current.digest, "error": str(exc)},
                )
        window = timedelta(seconds=promote.watch.window_s) if promote.watch else timedelta(0)
        history = list(recent(dist, channel.name, verifier, since=now - window)) if promote.watch else []
        return cls(
            channel=channel,
            promote=promote,
            now=now,
            dist=dist,
            verifier=verifier,
            current=current,
            content=content,
            index=index,
            fleet=fleet if fleet is not None else read_fleet(dist, now=now, window=fleet_window(channel)),
            grants=change_grants(state, channel.name, current.digest, approvers=approvers, pipeline=verifier, now=now),
            history=history,
        )

    @property
    def source(self) -> str:
        return self.promote.source

    @property
    def evidence_since(self) -> str:
        """The first hour whose hits of the audit channel count (the soak, at least an hour)."""
        start = self.now - max(timedelta(seconds=self.promote.soak_s), timedelta(hours=1))
        return start.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")

    def audit_rows(self) -> Iterator[Counted]:
        """The audit channel's counted rows within the soak: what the changes would have blocked."""
        since = self.evidence_since
        return (c for c in self.fleet.counted if c.channel == self.source and c.row.hour >= since)

    def own_rows(self) -> Iterator[Counted]:
        """This channel's counted rows of what it stopped (the watch's evidence)."""
        return (c for c in self.fleet.counted if c.channel == self.channel.name and c.row.action in STOPPED)

    def reporting(self) -> list[ClusterHits]:
        """The audit channel's clusters whose agent polled and whose hits were summed lately."""
        fresh = self.now - FRESH
        return [
            c
            for c in self.fleet.clusters
            if c.channel == self.source
            and c.applied is not None
            and c.polled_at is not None
            and c.summed_at is not None
            and parse_iso(c.polled_at) >= fresh
            and parse_iso(c.summed_at) >= fresh
        ]

    def audit_samples(self) -> list[Sample]:
        """The audit channel's bundle now and every ``soak / SOAK_SAMPLES`` back to the start of the
        soak, newest first, read from its signed history (entries that do not verify are none)."""
        entries = self._history(self.source)
        keys, stamps = [key for _, _, key in entries], [created_at for created_at, _, _ in entries]
        step = timedelta(seconds=self.promote.soak_s) / SOAK_SAMPLES
        samples, read = [], {}
        for k in range(SOAK_SAMPLES + 1):
            at = self.now - step * k
            text = at.strftime("%Y-%m-%dT%H:%M:%SZ")
            before = [key for key, stamp in zip(keys, stamps, strict=True) if stamp <= text]
            key = before[-1] if before else None
            if key is not None and key not in read:
                read[key] = self._signed(key, self.source)
            samples.append(Sample(at, read[key] if key is not None else None))
            if self.promote.soak_s == 0:
                break
        return samples

    def entry(self, channel: str, digest: str) -> Manifest | None:
        """The newest signed history entry of bundle ``digest`` of ``channel`` (the audit channel's
        or this one's; None: not a bundle it shipped)."""
        matching = [key for _, named, key in self._history(channel) if named == digest]
        return self._signed(matching[-1], channel) if matching else None

    def _history(self, channel: str) -> list[tuple[str, str, str]]:
        """``(created_at, digest, key)`` of each of the channel's history entries, oldest first."""
        keys = self.dist.list(layout.history_prefix(channel))
        return sorted((*named, key) for key in keys if (named := layout.history_entry(channel, key)) is not None)

    def content_of(self, manifest: Manifest) -> Content | None:
        """What a bundle of the audit channel holds (None: its files are unusable), read once."""
        if manifest.digest not in self._contents:
            try:
                self._contents[manifest.digest] = published_content(self.dist, manifest)[0]
            except (BundleError, StorageError) as exc:
                logger.warning("an audit bundle is unusable", extra={"digest": manifest.digest, "error": str(exc)})
                self._contents[manifest.digest] = None
        return self._contents[manifest.digest]

    def forget_contents(self) -> None:
        """Let go of the audit bundles' contents (a judgement keeps only what it derived)."""
        self._contents.clear()

    def _signed(self, key: str, channel: str) -> Manifest | None:
        try:
            manifest = read_signed(self.dist, key, self.verifier)
        except (BundleError, StorageError) as exc:
            logger.warning("ignoring a history entry", extra={"key": key, "error": str(exc)})
            return None
        return manifest if manifest.channel == channel else None


def fleet_window(channel: ChannelSettings) -> timedelta:
    """How far back a decision about ``channel`` reads the fleet's hits: the soak, and twice the
    watch (its changes' hits, and as long again before them), within the hits' retention."""
    promote = channel.promote
    seconds = 3600.0
    if promote is not None:
        seconds = max(seconds, promote.soak_s, 2 * promote.watch.window_s if promote.watch else 0)
    return min(timedelta(seconds=seconds) + timedelta(hours=1), timedelta(hours=RETENTION_HOURS))

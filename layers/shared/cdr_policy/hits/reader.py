"""The node reader (``cdr-policy hits-reader``, a DaemonSet): follows this node's Tetragon and
Hubble exports, attributes every event to the channel's current bundle and reports the node's
hits to the agent.

- **The bundle** (``IndexFollower``): the channel's signed manifest, polled like the agent polls it
  (ETag; every ``--bundle-interval``, and at once, at most every ``HINT_POLL_S``, when an event
  names an object that looks like ours but that the reader does not know: an object's name is its
  content, so a changed bundle shows itself by new names), verified (signature, expiry, channel),
  and of its files only ``provenance.json``, read no further than its signed size and checked
  against its SHA-256. The last verified one is kept in the state folder, so a restart while the
  bucket is out of reach still attributes. Rows of objects the new bundle still has move to it
  (``HitTable.rebind``); events are attributed with the current bundle, else the one before (its
  objects fire until the agent has applied the new one).
- **The exports** (``hits.tail``): each file followed across rotations from its saved position.
- **The state** (``reader.json`` in ``--state-dir``, a hostPath): the positions and the node's hit
  table, written together after every batch, so that a restart neither loses nor counts again a
  line: what was counted is exactly what lies before the saved positions. A state that cannot be
  read starts at the files' ends (nothing counted twice; a gap).
- **The report** (``hits.reports``): the node report, every ``--interval``, to the agent.

Memory stays bounded whatever the files hold: a batch of lines at a time, the table held to
``MAX_NODE_ROWS`` rows, two indexes (the current bundle's and the one before). Long-running: an
unreachable bucket, API server or file is logged and tried again; only a configuration error or a
signal ends it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cdr_policy import jsonio, layout
from cdr_policy.agent.applier import ApplyError
from cdr_policy.bundle.manifest import MAX_MANIFEST_BYTES, Manifest, VerificationError
from cdr_policy.bundle.provenance import PATH, ProvenanceIndex, check_listed, load_published, read_index
from cdr_policy.bundle.signing import Verifier, verify_manifest, verify_signature
from cdr_policy.errors import BundleError, ConfigError, ContractError, StorageError
from cdr_policy.hits.aggregate import MAX_NODE_ROWS, HitTable
from cdr_policy.hits.attribute import attribute
from cdr_policy.hits.events import Event
from cdr_policy.hits.reports import NodeReport, ReportStore
from cdr_policy.hits.tail import Position, Tail, fingerprint
from cdr_policy.hits.tally import count_hit, read_event
from cdr_policy.observability import logger
from cdr_policy.policy.naming import is_generated_name
from cdr_policy.storage import LocalStore, NotFound, Store
from cdr_policy.timeutil import iso, utcnow

STATE = "reader.json"
SAVED_MANIFEST = "bundle.json"
STATE_VERSION = 1
BATCH_LINES = 10_000
DEFAULT_INTERVAL_S = 60.0
# A look for a new bundle every 15 minutes (a conditional GET), and sooner when an event names an
# object the reader does not know: a bundle's objects are renamed whenever what they enforce changes.
DEFAULT_BUNDLE_INTERVAL_S = 900.0
HINT_POLL_S = 30.0


@dataclass
class IndexFollower:
    """The channel's current provenance index (see the module docstring)."""

    store: Store
    channel: str
    verifier: Verifier
    saved: LocalStore
    digest: str | None = None
    index: ProvenanceIndex | None = None
    previous: tuple[str, ProvenanceIndex] | None = None  # the bundle before, while its objects may still fire
    _etag: str | None = field(default=None, repr=False)

    def load_saved(self) -> None:
        """The last verified index, from the state folder (ignored, and logged, when it does not verify)."""
        try:
            manifest = Manifest.parse(self.saved.get(SAVED_MANIFEST).data, SAVED_MANIFEST)
            verify_signature(manifest, self.verifier)
            data = self.saved.get(PATH).data
            if manifest.channel != self.channel:
                raise BundleError("it is the saved bundle of another channel")
            check_listed(manifest, data)
            self._use(manifest, read_index(data, PATH))
        except NotFound:
            return
        except (BundleError, StorageError) as exc:
            logger.warning("ignoring the saved bundle index", extra={"reason": str(exc)})

    def poll(self, now: datetime) -> bool:
        """Follow the channel's manifest; True when a new index is in use."""
        key = layout.channel_manifest_key(self.channel)
        try:
            obj = self.store.get_if_changed(key, self._etag, max_bytes=MAX_MANIFEST_BYTES)
        except StorageError as exc:
            logger.warning("cannot read the channel's manifest; keeping the last bundle", extra={"error": str(exc)})
            return False
        if obj is None:
            return False
        try:
            manifest = Manifest.parse(obj.data, key)
            verify_manifest(manifest, self.verifier, now=now)
            if manifest.channel != self.channel:
                raise VerificationError("wrong_channel", f"the manifest is for channel {manifest.channel}")
            if manifest.digest == self.digest:
                self._etag = obj.etag
                return False
            index = load_published(self.store, manifest)
        except StorageError as exc:
            logger.warning("cannot read the channel's bundle; keeping the last", extra={"error": str(exc)})
            return False
        except BundleError as exc:
            logger.error("bundle refused for attribution; keeping the last", extra={"reason": str(exc)})
            self._etag = obj.etag
            return False
        self._etag = obj.etag
        if index is None:
            logger.warning("the channel's bundle has no provenance index (rendered by an older Render)")
            return False
        if index.channel != self.channel:
            logger.error("provenance index of another channel refused", extra={"digest": manifest.digest})
            return False
        self.saved.put(SAVED_MANIFEST, manifest.to_bytes())
        self.saved.put(PATH, index.to_bytes())
        self._use(manifest, index)
        return True

    def _use(self, manifest: Manifest, index: ProvenanceIndex) -> None:
        if self.digest is not None and self.index is not None:
            self.previous = (self.digest, self.index)
        self.digest, self.index = manifest.digest, index
        logger.info("attributing with bundle", extra={"digest": self.digest, "detail": index.detail})

    def bundles(self) -> list[tuple[str, ProvenanceIndex]]:
        """The bundles to attribute with: the current one, then the one before."""
        current = [(self.digest, self.index)] if self.digest is not None and self.index is not None else []
        return current + ([self.previous] if self.previous is not None else [])

    def newer_named(self, event: Event) -> bool:
        """Whether ``event`` names an object that looks like ours (``<kind>-<purpose>-<hash8>``)
        but is in neither bundle: a newer bundle may have it (an object's name is its content)."""
        return any(
            is_generated_name(name) and not any(index.knows(event.engine, name) for _, index in self.bundles())
            for name in event.policies
        )


@dataclass(frozen=True)
class ReaderState:
    """What a reader keeps across restarts (``reader.json`` in its state folder): where each export
    file was read to, and its report so far."""

    positions: Mapping[str, Position]
    report: NodeReport

    @classmethod
    def from_json(cls, doc: Any) -> ReaderState:
        """ContractError naming the field when ``doc`` is not a state this version wrote."""
        if not isinstance(doc, dict) or doc.get("schema_version") != STATE_VERSION:
            raise ContractError(f"malformed {STATE}: not schema_version {STATE_VERSION}")
        positions, report = doc.get("positions"), doc.get("report")
        if not isinstance(positions, dict) or not all(
            isinstance(p, dict)
            and isinstance(p.get("offset"), int)
            and p["offset"] >= 0
            and isinstance(p.get("fingerprint"), str | None)
            for p in positions.values()
        ):
            raise ContractError(f"malformed {STATE}: positions")
        return cls(
            {str(e): Position(p["fingerprint"], p["offset"]) for e, p in positions.items()},
            NodeReport.from_json(report, STATE),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": STATE_VERSION,
            "channel": self.report.channel,
            "positions": {engine: position.to_dict() for engine, position in self.positions.items()},
            "report": self.report.to_json(),
        }


class Reader:
    def __init__(
        self,
        follower: IndexFollower,
        exports: Mapping[str, Path],
        *,
        state_dir: Path,
        reports: ReportStore,
        node: str,
        batch_lines: int = BATCH_LINES,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.follower = follower
        self.state = LocalStore(state_dir)
        self.reports = reports
        self.node = node
        self.batch_lines = batch_lines
        self.clock = clock
        self.table = HitTable()
        self.tails = {engine: Tail(path) for engine, path in exports.items()}
        self.last_report: datetime | None = None
        self._polled = float("-inf")  # time.monotonic() of the last look for a new bundle
        self._hinted = float("-inf")  # ... and of the last one an event asked for
        self._load()
        follower.load_saved()

    # -- state ---------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            saved = ReaderState.from_json(jsonio.loads(self.state.get(STATE).data))
            if saved.report.channel != self.follower.channel:
                raise BundleError("another channel")
        except NotFound:
            self.table.since = iso(self.clock())
            return
        except (BundleError, StorageError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.error("reader state unreadable: starting at the files' ends", extra={"reason": str(exc)})
            self.table.since, self.table.gaps = iso(self.clock()), len(self.tails)
            for tail in self.tails.values():
                tail.position = _at_end(tail.path)
            return
        self.table = saved.report.table
        for engine, tail in self.tails.items():
            if engine in saved.positions:
                tail.position = saved.positions[engine]

    def _save(self) -> None:
        saved = ReaderState({engine: tail.position for engine, tail in self.tails.items()}, self._report())
        self.state.put(STATE, jsonio.dumps(saved.to_json()))

    def _report(self) -> NodeReport:
        return NodeReport(self.node, self.follower.channel, self.table.to_section(self.clock()))

    # -- work ----------------------------------------------------------------------------------

    def poll_bundle(self) -> bool:
        """Follow the channel's bundle; True when a new one is in use."""
        self._polled = time.monotonic()
        if not self.follower.poll(self.clock()) or self.follower.index is None or self.follower.digest is None:
            return False
        self.table.rebind(self.follower.index, self.follower.digest)
        self._save()
        return True

    def step(self) -> int:
        """Count up to a batch of lines of each export; the number of lines counted. Nothing is
        read before a bundle is known (the lines wait in their files)."""
        if self.follower.index is None:
            return 0
        now = self.clock()
        counted = 0
        for engine, tail in self.tails.items():
            for line in tail.lines(self.batch_lines):
                counted += 1
                event = read_event(self.table.totals, engine, line)
                if event is not None:
                    self._count(event, now)
            self.table.gaps += tail.gaps
            tail.gaps = 0
        if counted:
            self.table.trim(MAX_NODE_ROWS, now)
            self._save()
        return counted

    def _count(self, event: Event, now: datetime) -> None:
        """Attribute ``event`` with the current bundle, else the one before; when it names an
        object of neither that looks like ours, look for a newer bundle first (at most every
        ``HINT_POLL_S``), so that the events of a bundle's new objects count from the first."""
        if self.follower.newer_named(event) and time.monotonic() - self._hinted >= HINT_POLL_S:
            self._hinted = time.monotonic()
            self.poll_bundle()
        for digest, index in self.follower.bundles():
            hit = attribute(event, index)
            if hit is not None:
                count_hit(self.table.totals, hit)
                self.table.add(hit, index, digest, now)
                return
        count_hit(self.table.totals, None)

    def drain(self) -> None:
        """Look for the bundle, count all the exports hold, and report (``--once``)."""
        self.poll_bundle()
        while self.step():
            pass
        self.report()

    def report(self) -> None:
        try:
            self.reports.write(self.node, jsonio.dumps(self._report().to_json()))
        except (StorageError, ApplyError) as exc:
            logger.warning("cannot write the node's hit report; trying again later", extra={"error": str(exc)})
            return
        self.last_report = self.clock()

    def behind(self) -> dict[str, int]:
        """Bytes of each export not read yet (the named file's size past the position)."""
        out = {}
        for engine, tail in self.tails.items():
            try:
                out[engine] = max(0, os.stat(tail.path).st_size - tail.position.offset)
            except OSError:
                out[engine] = 0
        return out

    def run(
        self,
        interval_s: float,
        stop: threading.Event,
        observe: Callable[[Reader], None] | None = None,
        *,
        bundle_interval_s: float = DEFAULT_BUNDLE_INTERVAL_S,
    ) -> None:
        """Until ``stop``: count what the exports hold, report every ``interval_s`` and look for a
        new bundle every ``bundle_interval_s`` (and sooner when an event names one: ``_count``)."""
        if interval_s <= 0 or bundle_interval_s <= 0:
            raise ConfigError(f"intervals must be above 0 seconds, got {interval_s} and {bundle_interval_s}")
        due = 0.0
        while not stop.is_set():
            if time.monotonic() - self._polled >= bundle_interval_s:
                self.poll_bundle()
            if time.monotonic() >= due:
                self.report()
                due = time.monotonic() + interval_s
            counted = self.step()
            if observe is not None:
                observe(self)
            if not counted:
                stop.wait(min(1.0, max(0.0, due - time.monotonic())))
        for tail in self.tails.values():
            tail.close()


def _at_end(path: Path) -> Position:
    """The position past what ``path`` holds now."""
    try:
        with path.open("rb") as f:
            return Position(fingerprint(f), os.fstat(f.fileno()).st_size)
    except OSError:
        return Position(None, 0)

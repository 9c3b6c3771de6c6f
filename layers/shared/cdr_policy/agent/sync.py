"""The sync agent: follow one channel and make the cluster carry what it ships.

One ``sync_once`` (bounded by one overall deadline; the status is written whatever happens):
1. poll ``channels/<channel>/manifest.json`` with the last ETag (a 304 costs one small request;
   the manifest is read no further than ``MAX_MANIFEST_BYTES``);
2. verify the new manifest (signature, schema, digest, expiry, channel, not created in the future
   beyond the allowed clock skew, and a ``generation`` not below the highest this cluster applied:
   replay protection), then every file's size and sha256 (each read no further than its signed
   size), then the objects and that they match the manifest's action/mode -- all BEFORE touching
   the cluster; a refusal keeps the cluster as it is;
3. run the cluster pre-flight (``agent.preflight``: Cilium's ``enable-non-default-deny-policies``,
   the served Cilium CRD versions, the channel's declared Cilium version) before the policy check
   (with this cluster's own protected ranges) and before touching anything; the Cilium objects it
   holds back are neither checked nor applied, the Tetragon ones are (result ``partial``, the reason
   in the status document's ``preflight`` and ``apply_errors``; retried on every poll, so a fixed
   Cilium configuration is picked up without a new bundle);
4. refuse to shrink what is enforced (every object gone, a behaviour policy gone, more than
   ``max_shrink_percent`` of the objects or of one engine's prefixes gone) unless the signed
   manifest carries an approval of exactly the bundle applied here, is a rollback, or its signed
   ``steps`` lead to it from the bundle applied here (an approved step this cluster missed);
5. apply every object (CiliumCIDRGroups first; each stamped with the generation and a content
   hash), then, only if all applied, delete the objects this agent owns that the bundle no longer
   has (CIDR groups last); then record the generation in the cluster (``state.ClusterRecord``).
   Tetragon policies are named by content, so a changed policy is a new object that is loaded
   before the old one goes: no gap;
6. on an unchanged poll, every ``drift_interval_s``: compare the owned live objects with the applied
   bundle and re-apply what is missing or was changed (drift repair);
7. once the applied bundle has expired, apply the newer verified bundle held back as a shrink when
   there is one; otherwise remove the expired bundle's objects, except those a newer verified,
   unexpired bundle applied (each object is stamped with its bundle's generation and expiry, so this
   holds after a restart too): a cluster cut off from the bucket does not enforce stale blocks
   forever, and a newer bundle that keeps failing one object keeps what it applied;
8. write ``status/<cluster-id>.json`` to the distribution store (and ``status.json`` locally), with
   the node readers' hits summed in (``hits``, given by ``hits.collect.HitsCollector``).

Replay floor: the highest of the in-cluster record, the verified local ``applied.json`` and the
``cdr-policy.io/generation`` annotation of the owned live objects (in the cluster, or the files of
``--output-dir``). So neither a lost state directory (an ``emptyDir`` after a reschedule), a corrupt
one, nor a deleted or lowered record lowers it. A record or objects that cannot be read stop the
sync (nothing applied).

Ownership is by label: ``app.kubernetes.io/managed-by=cdr-policy`` and ``cdr-policy.io/channel=<channel>``,
set by the agent on every object it applies; nothing without both labels is ever changed or deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cdr_policy import __version__, jsonio, layout
from cdr_policy.admission import Admission
from cdr_policy.agent.applier import Applier, ApplyError
from cdr_policy.agent.kinds import (
    BUNDLE_EXPIRES_ANNOTATION,
    CONTENT_HASH_ANNOTATION,
    GENERATION_ANNOTATION,
    ownership_labels,
)
from cdr_policy.agent.preflight import APPLY, Preflight, is_cilium, run_preflight
from cdr_policy.agent.reconcile import delete_objects, owned_objects, reconcile
from cdr_policy.agent.state import Applied, Record, RecordStore, StateDir
from cdr_policy.agent.status import (
    AgentStatus,
    Drift,
    LastPoll,
    ObjectCounts,
    ObjectError,
    PollResult,
    Verification,
)
from cdr_policy.bundle.change_budget import shrink_reasons
from cdr_policy.bundle.loader import Bundle, load_bundle
from cdr_policy.bundle.manifest import MAX_MANIFEST_BYTES, Manifest, VerificationError
from cdr_policy.bundle.objects import ObjectRef, ref_of
from cdr_policy.bundle.signing import Verifier, verify_manifest
from cdr_policy.errors import ConfigError, StorageError
from cdr_policy.hits.aggregate import HitsSection
from cdr_policy.observability import logger
from cdr_policy.policy.serialize import ParsedYaml
from cdr_policy.storage import NotFound, Store, TooLarge
from cdr_policy.timeutil import iso, parse_iso, utcnow

DEFAULT_MAX_CLOCK_SKEW_S = 300.0
DEFAULT_MAX_SHRINK_PERCENT = 50
DEFAULT_DRIFT_INTERVAL_S = 300.0
DEFAULT_SYNC_DEADLINE_S = 300.0
# The bucket's status is rewritten when it says something new, and at least this often otherwise (a
# heartbeat for ``fleet status``): an unchanged poll is then one conditional GET, not also a PUT,
# which was 93% of what a polling fleet costs.
DEFAULT_STATUS_HEARTBEAT_S = 600.0
# The agent's part of the deployment profiles (template.yaml Profile, docs/time-to-protect.md): how
# often it polls its channel's manifest. An unchanged poll is one conditional GET answered 304 without
# a body, so the manifest itself is the small object a fast profile polls.
POLL_INTERVALS_S = {"default": 60.0, "fast": 10.0}
DEFAULT_INTERVAL_S = POLL_INTERVALS_S["default"]
# Each wait between two polls is the interval times a factor drawn uniformly from [1 - jitter, 1 + jitter]:
# agents started together (one rollout across a fleet) drift apart instead of polling the bucket in
# step, and no poll starts later than (1 + jitter) intervals after the previous one.
DEFAULT_POLL_JITTER = 0.1

_CLUSTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Refusals that the same manifest bytes will always get again: do not re-download until it changes.
# The others (file digests, the policy check against the cluster's CRDs, a manifest from the future)
# are retried on the next poll.
_FINAL_CODES = frozenset(
    {
        "malformed",
        "missing_signature",
        "unknown_algorithm",
        "bad_signature",
        "digest_mismatch",
        "too_large",
        "expired",
        "wrong_channel",
        "replay",
        "bad_object",
        "inadmissible",
        "shrink",
    }
)


@dataclass(frozen=True)
class _Floor:
    """The lowest generation this cluster may go to (and the digest applied at it, when known)."""

    generation: int
    digest: str | None
    source: str


@dataclass(frozen=True)
class _Verified:
    """A bundle that passed verification, and the replay floor it was checked against."""

    bundle: Bundle
    floor: _Floor | None

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def generation(self) -> int:
        return self.manifest.generation or 0


class _NoFloor(Exception):
    """The replay floor cannot be established (the in-cluster record is unreadable)."""


class _Shrink(Exception):
    """A verified bundle refused because it would shrink what is enforced without a signed decision."""

    def __init__(self, bundle: _Verified, error: VerificationError) -> None:
        super().__init__(str(error))
        self.bundle = bundle
        self.error = error


def _newer_and_valid(obj: dict[str, Any], generation: int, now: datetime) -> bool:
    """A live object this agent applied from a verified bundle newer than ``generation`` that has
    not expired (the stamps ``_stamp`` writes)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    stamped, expires = str(annotations.get(GENERATION_ANNOTATION, "")), annotations.get(BUNDLE_EXPIRES_ANNOTATION)
    try:
        return stamped.isdigit() and int(stamped) > generation and parse_iso(str(expires)) > now
    except ValueError:
        return False


def content_hash(obj: dict[str, Any]) -> str:
    """sha256 of what an object enforces (everything but ``metadata`` and ``status``)."""
    body = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    return hashlib.sha256(jsonio.dumps(body)).hexdigest()


def _drifted(live: dict[str, Any], want: dict[str, Any]) -> bool:
    """The live object no longer is what was applied: another content hash, or content changed."""
    stamp = ((live.get("metadata") or {}).get("annotations") or {}).get(CONTENT_HASH_ANNOTATION)
    if stamp != want["metadata"]["annotations"][CONTENT_HASH_ANNOTATION]:
        return True
    # apiVersion aside: a list returns the object under the newest version served, not the one applied.
    return not _contains(live, {k: v for k, v in want.items() if k not in ("metadata", "apiVersion")})


def _contains(live: Any, want: Any) -> bool:
    """``live`` carries everything ``want`` has (the API server may add defaults, never remove)."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(k in live and _contains(live[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(map(_contains, live, want))
    return bool(live == want)


class Agent:
    def __init__(
        self,
        dist: Store,
        *,
        channel: str,
        cluster_id: str,
        verifier: Verifier,
        applier: Applier,
        state_dir: str | os.PathLike[str],
        admission: Admission | None = None,
        record: RecordStore | None = None,
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
        max_shrink_percent: int = DEFAULT_MAX_SHRINK_PERCENT,
        drift_interval_s: float = DEFAULT_DRIFT_INTERVAL_S,
        sync_deadline_s: float = DEFAULT_SYNC_DEADLINE_S,
        status_heartbeat_s: float = DEFAULT_STATUS_HEARTBEAT_S,
        hits: Callable[[datetime], HitsSection | None] | None = None,
    ) -> None:
        if not layout.is_channel_name(channel):
            raise ConfigError(f"channel {channel!r}: use 1-32 lower-case letters, digits or '-'")
        if not _CLUSTER_ID.match(cluster_id):
            raise ConfigError(f"cluster id {cluster_id!r}: use up to 128 letters, digits, '.', '_' or '-'")
        if not 1 <= max_shrink_percent <= 100:
            raise ConfigError(f"max shrink must be 1..100 percent, got {max_shrink_percent}")
        if max_clock_skew_s < 0 or drift_interval_s <= 0 or sync_deadline_s <= 0:
            raise ConfigError("clock skew must be >= 0, drift interval and sync deadline > 0 seconds")
        self.dist = dist
        self.channel = channel
        self.cluster_id = cluster_id
        self.verifier = verifier
        self.applier = applier
        self.admission = admission or Admission.baseline()
        self.record = record
        self.max_clock_skew = timedelta(seconds=max_clock_skew_s)
        self.max_shrink_percent = max_shrink_percent
        self.drift_interval_s = drift_interval_s
        self.status_heartbeat_s = status_heartbeat_s
        self.hits = hits  # the node readers' hits, summed (``hits.collect``), for the status
        self._reported: tuple[tuple[AgentStatus, bool], float] | None = (
            None  # (what the bucket's status says, when written)
        )
        self.sync_deadline_s = sync_deadline_s
        self.labels = ownership_labels(channel)
        self.manifest_key = layout.channel_manifest_key(channel)
        self._state = StateDir(Path(state_dir))
        self._applied = self._state.load(verifier, channel)
        self._desired: list[dict[str, Any]] | None = None  # the applied bundle's objects, as applied
        # The applied bundle's files by sha256: a new bundle reads only the files that changed.
        self._files: dict[str, bytes] = {}
        self._yaml = ParsedYaml()  # a new bundle's files that the last one had are not parsed again
        self._pending: _Verified | None = None  # a newer verified bundle held back as a shrink
        self._etag: str | None = None
        self._verification = Verification()
        self._apply_errors: list[ObjectError] = []
        self._counts = ObjectCounts()
        self._drift: Drift | None = None
        self._drift_due = 0.0
        self._record: Record | None = None  # the in-cluster record, once read (for expiry after a restart)
        self._record_read = False
        self._preflight: Preflight | None = None
        # Why the last sync could not write the state directory (a full disk), None when it could:
        # the cluster and the bucket's status are kept up to date all the same.
        self.local_error: str | None = None

    # -- one round -------------------------------------------------------------------------------

    def sync_once(self, now: datetime | None = None) -> AgentStatus:
        """Poll, verify, apply, prune, repair drift, expire, report -- within one deadline.
        Returns the status document it wrote."""
        now = now or utcnow()
        self.local_error = None
        self.applier.set_deadline(time.monotonic() + self.sync_deadline_s)
        try:
            result, detail = self._poll(now)
            expired = self._expire(now)
        finally:
            self.applier.set_deadline(None)
        if expired:
            result, detail = "expired", f"{detail}; {expired}"
        status = self._status(now, result, detail)
        self._report(status)
        log = logger.debug if result == "unchanged" else logger.info
        if result in ("refused", "apply_failed", "partial", "expired", "unreachable"):
            log = logger.error if result != "unreachable" else logger.warning
        log(
            "agent sync",
            extra={
                "channel": self.channel,
                "result": result,
                "detail": detail,
                "applied_digest": status.applied_digest,
                "applied_generation": status.applied_generation,
                "drift": status.to_json()["drift"],
            },
        )
        return status

    def run(
        self,
        interval: float,
        stop: threading.Event | None = None,
        observe: Callable[[AgentStatus], None] | None = None,
        *,
        jitter: float = DEFAULT_POLL_JITTER,
        rng: random.Random | None = None,
    ) -> None:
        """``sync_once`` about every ``interval`` seconds (each wait jittered, see ``DEFAULT_POLL_JITTER``)
        until ``stop`` is set; ``observe`` gets each status. The first poll is at once."""
        if interval <= 0 or not 0 <= jitter < 1:
            raise ConfigError(f"poll interval must be > 0 and jitter in [0, 1), got {interval} and {jitter}")
        stop = stop or threading.Event()
        rng = rng or random.Random()
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = self.sync_once()
            except Exception as exc:  # noqa: BLE001 -- one failed sync must not end the agent
                logger.error("agent sync failed", extra={"channel": self.channel, "error": repr(exc)[:500]})
                logger.debug("agent sync failed", exc_info=True)  # the traceback with --debug
            else:
                if observe is not None:
                    observe(status)
            wait = interval * rng.uniform(1 - jitter, 1 + jitter)
            stop.wait(max(0.0, wait - (time.monotonic() - started)))

    def _poll(self, now: datetime) -> tuple[PollResult, str]:
        try:
            obj = self.dist.get_if_changed(self.manifest_key, self._etag, max_bytes=MAX_MANIFEST_BYTES)
        except NotFound:
            return "no_manifest", f"no manifest at {self.dist.describe()}/{self.manifest_key} yet"
        except TooLarge as exc:
            self._refused(VerificationError("too_large", f"manifest refused: {exc}"), None, now)
            self._etag = exc.etag
            return "refused", f"bundle refused, nothing applied: {exc}"
        except StorageError as exc:
            return "unreachable", f"cannot read the channel manifest: {exc}; keeping the last good state"
        if obj is None:
            return self._unchanged(now)
        try:
            bundle = self._verify(obj.data, now)
            owned = owned_objects(self.applier, self.labels)
            self._check_shrink(bundle, owned)
        except _Shrink as exc:
            self._pending = exc.bundle  # verified, held back: it stands in when the applied bundle expires
            self._refused(exc.error, exc.bundle.manifest.digest, now)
            self._etag = obj.etag
            return "refused", f"bundle refused, nothing applied: {exc.error}"
        except VerificationError as exc:
            self._refused(exc, self._claimed_digest(obj.data), now)
            if exc.code in _FINAL_CODES:
                self._etag = obj.etag
            return "refused", f"bundle refused, nothing applied: {exc}"
        except _NoFloor as exc:
            return "unreachable", f"{exc}; nothing applied"
        except StorageError as exc:
            return "unreachable", f"cannot read the bundle's files: {exc}; keeping the last good state"
        except ApplyError as exc:
            self._apply_errors, self._counts = [], ObjectCounts()
            return "apply_failed", f"cannot read the objects this agent owns: {exc}; nothing changed"
        result, detail = self._apply(bundle, owned, now)
        if result == "applied":
            self._etag = obj.etag
        return result, detail

    def _apply(
        self, bundle: _Verified, owned: dict[ObjectRef, dict[str, Any]], now: datetime
    ) -> tuple[PollResult, str]:
        """Apply a verified bundle, prune what it no longer has, record the generation."""
        digest, generation = bundle.manifest.digest, bundle.generation
        self._verification = Verification(ok=True, digest=digest, at=iso(now))
        self._pending = None
        desired = [self._stamp(o, bundle.manifest) for o in bundle.bundle.objects]
        errors, applied, deleted = reconcile(
            self.applier, desired, channel=self.channel, preflight=self._preflight, owned=owned
        )
        self._apply_errors, self._counts = errors, ObjectCounts(applied, deleted)
        failed = [e for e in errors if e.action != "preflight"]
        if failed:
            return "apply_failed", (
                f"{len(failed)} object operation(s) failed for bundle {digest[:12]} (generation {generation}); "
                "retrying next poll (objects are pruned only once every object applied)"
            )
        done_at = self._applied = Applied(bundle.manifest, iso(now))
        self._desired = desired
        self._files = {e.sha256: bundle.bundle.files[e.path] for e in bundle.manifest.files}
        self._save_local(lambda: self._state.save(done_at))
        self._drift_due = time.monotonic() + self.drift_interval_s
        if self.record is not None:
            try:
                self._record = Record.of(self._applied)
                self.record.save(self.channel, self._record)
            except ApplyError as exc:
                return "apply_failed", (
                    f"bundle {digest[:12]} applied but generation {generation} could not be recorded in "
                    f"{self.record.describe()}: {exc}; retrying next poll"
                )
        done = f"bundle {digest[:12]} (generation {generation}): {applied} object(s) applied, {deleted} deleted"
        if errors and self._preflight is not None:
            # the manifest is verified again next poll, so the held-back part follows a fixed cluster
            return "partial", (
                f"{done}; {len(errors)} Cilium object(s) held back by the cluster pre-flight "
                f"({self._preflight.cilium}): {self._preflight.reason()}"
            )
        return "applied", done

    def _refused(self, exc: VerificationError, digest: str | None, now: datetime) -> None:
        self._verification = Verification(ok=False, code=exc.code, reason=str(exc), digest=digest, at=iso(now))

    @staticmethod
    def _claimed_digest(data: bytes) -> str | None:
        try:
            digest = jsonio.loads(data).get("digest")
        except (ValueError, AttributeError):
            return None
        return digest if layout.is_digest(digest) else None

    @staticmethod
    def _stamp(obj: dict[str, Any], manifest: Manifest) -> dict[str, Any]:
        """The object as applied: stamped with the generation and expiry of its verified bundle (so
        that a restarted agent knows which live objects a newer bundle put there) and a content hash."""
        meta = dict(obj["metadata"])
        meta["annotations"] = {
            **(meta.get("annotations") or {}),
            GENERATION_ANNOTATION: str(manifest.generation),
            BUNDLE_EXPIRES_ANNOTATION: manifest.expires_at,
            CONTENT_HASH_ANNOTATION: content_hash(obj),
        }
        return {**obj, "metadata": meta}

    # -- verification ----------------------------------------------------------------------------

    def _verify(self, data: bytes, now: datetime) -> _Verified:
        self._preflight = None
        manifest = Manifest.parse(data, self.manifest_key)
        verify_manifest(manifest, self.verifier, now=now)
        if manifest.channel != self.channel:
            raise VerificationError(
                "wrong_channel",
                f"the manifest is for channel {manifest.channel}, this agent follows {self.channel}",
            )
        if manifest.created > now + self.max_clock_skew:
            raise VerificationError(
                "future",
                f"bundle {manifest.digest[:12]} claims to be created at {manifest.created_at}, more than "
                f"{self.max_clock_skew.total_seconds():g}s ahead of this cluster's clock ({iso(now)})",
            )
        floor = self._floor()
        if floor is not None:
            generation, digest = manifest.generation or 0, manifest.digest
            if generation < floor.generation or (generation == floor.generation and floor.digest not in (None, digest)):
                raise VerificationError(
                    "replay",
                    f"bundle {digest[:12]} is generation {generation}; this cluster has applied generation "
                    f"{floor.generation} ({floor.source}): refusing to go back (a rollback is published as a "
                    "new, higher generation)",
                )
        bundle = load_bundle(self.dist, manifest, published=True, known=self._files, load=self._yaml.load)
        # The closed grammar and the effect first: nothing of a bundle they refuse is looked at further.
        verdict = self.admission.judge_objects(bundle)
        if not verdict.admitted:
            raise VerificationError("inadmissible", f"admission refused it: {'; '.join(verdict.lines()[:5])}")
        # The pre-flight runs before the CRD check: objects it holds back are neither checked nor
        # applied, so a Cilium part the cluster cannot take (a CRD version it does not serve) is
        # reported as such instead of refusing the Tetragon part with it.
        self._preflight = run_preflight(self.applier, bundle.objects)
        held = self._preflight is not None and self._preflight.cilium != APPLY
        problems = self.admission.crd_problems(bundle, applied=lambda obj: not (held and is_cilium(obj)))
        if problems:
            raise VerificationError("check_failed", f"the cluster's CRDs refuse it: {'; '.join(problems.lines()[:5])}")
        return _Verified(bundle, floor)

    def _floor(self) -> _Floor | None:
        """The replay floor (see the module docstring): the highest of the local state, the in-cluster
        record and the generation stamped on the owned live objects (in every mode: a lowered record
        or a lost state folder never lowers it). Raises _NoFloor when the record or the live objects
        cannot be read."""
        floors = []
        if self._applied is not None:
            floors.append(_Floor(self._applied.generation, self._applied.digest, "the local state"))
        if self.record is not None:
            try:
                record = self.record.load(self.channel)
            except ApplyError as exc:
                raise _NoFloor(f"cannot read the applied generation from {self.record.describe()}: {exc}") from exc
            self._record, self._record_read = record, True
            if record is not None:
                floors.append(_Floor(record.generation, record.digest, self.record.describe()))
        try:
            live = self._live_generation()
        except ApplyError as exc:
            raise _NoFloor(f"cannot read the generation of the objects applied here: {exc}") from exc
        if live:
            floors.append(_Floor(live, None, "the owned objects' generation annotations"))
        # at the same generation, a floor that knows its digest wins (the same generation with another
        # digest is a replay)
        return max(floors, key=lambda f: (f.generation, f.digest is not None), default=None)

    def _live_generation(self) -> int:
        """The highest generation annotation on the owned live objects (0: none carries one)."""
        best = 0
        for obj in owned_objects(self.applier, self.labels).values():
            value = ((obj.get("metadata") or {}).get("annotations") or {}).get(GENERATION_ANNOTATION, "")
            if str(value).isdigit():
                best = max(best, int(value))
        return best

    def _check_shrink(self, bundle: _Verified, owned: dict[ObjectRef, dict[str, Any]]) -> None:
        """Refuse to take protection away without a signed decision that covers exactly this step:
        the manifest's approval of the bundle applied here, a rollback, or the manifest's signed
        steps leading here from the bundle applied here (a step this cluster missed)."""
        reasons = shrink_reasons(list(owned.values()), bundle.bundle.objects, max_percent=self.max_shrink_percent)
        if not reasons:
            return
        manifest = bundle.manifest
        approval = manifest.approval
        applied = bundle.floor.digest if bundle.floor else None
        approved = approval is not None and (manifest.rollback_of is not None or approval.previous_digest == applied)
        if approved or (applied is not None and manifest.reached_from(applied)):
            logger.warning(
                "applying a shrinking bundle: a signed decision covers it",
                extra={"channel": self.channel, "digest": manifest.digest, "reasons": reasons},
            )
            return
        why = (
            "neither an approval nor its signed steps start from the bundle applied here"
            if approval is None
            else f"its approval replaces {str(approval.previous_digest)[:12]}, not the applied {str(applied)[:12]}"
        )
        error = VerificationError(
            "shrink",
            f"bundle {manifest.digest[:12]} would shrink what this cluster enforces ({'; '.join(reasons)}) and {why}",
        )
        raise _Shrink(bundle, error)

    # -- drift -----------------------------------------------------------------------------------

    def _unchanged(self, now: datetime) -> tuple[PollResult, str]:
        if self._desired is None or self._applied is None or time.monotonic() < self._drift_due:
            return "unchanged", "manifest unchanged (ETag)"
        self._drift_due = time.monotonic() + self.drift_interval_s
        try:
            owned = owned_objects(self.applier, self.labels)
        except ApplyError as exc:
            return "unchanged", f"manifest unchanged (ETag); drift not checked: {exc}"
        desired = {ref_of(o): o for o in self._desired}
        missing = sorted(str(r) for r in desired if r not in owned)
        changed = sorted(str(r) for r, want in desired.items() if r in owned and _drifted(owned[r], want))
        extra = sorted(str(r) for r in owned if r not in desired)
        drift = self._drift = Drift(iso(now), tuple(missing), tuple(changed), tuple(extra), repaired=False)
        if not drift.found:
            return "unchanged", "manifest unchanged (ETag)"  # the check is in the status's ``drift``
        errors, applied, deleted = reconcile(self.applier, self._desired, channel=self.channel, owned=owned)
        self._apply_errors, self._counts = errors, ObjectCounts(applied, deleted)
        errors = [e for e in errors if e.action != "preflight"]  # held back by the pre-flight: reported
        self._drift = dataclasses.replace(drift, repaired=not errors)
        what = f"{len(missing)} missing, {len(changed)} changed, {len(extra)} not in the bundle"
        logger.warning(
            "drift found", extra={"channel": self.channel, "missing": missing, "changed": changed, "extra": extra}
        )
        if errors:
            return "apply_failed", f"drift ({what}): {len(errors)} object operation(s) failed; retrying"
        return "repaired", f"drift repaired ({what}): {applied} object(s) re-applied, {deleted} deleted"

    # -- expiry ----------------------------------------------------------------------------------

    def _expiry(self) -> Record | None:
        """The applied bundle (digest, generation, expiry): from the local state, else the in-cluster record."""
        if self._applied is not None:
            return Record.of(self._applied)
        if self.record is not None and not self._record_read:
            try:
                self._record, self._record_read = self.record.load(self.channel), True
            except ApplyError:
                return None
        return self._record

    def _expire(self, now: datetime) -> str | None:
        """Once the applied bundle has expired: apply the newer verified bundle this agent held back
        as a shrink, when there is one (it is what the channel ships now, and more than nothing);
        otherwise remove the objects the expired bundle put here, but never those a newer verified,
        unexpired bundle applied (their stamps say so, across restarts). Returns what happened."""
        applied = self._expiry()
        if applied is None or parse_iso(applied.expires_at) > now:
            return None
        expired = f"applied bundle {applied.digest[:12]} expired at {applied.expires_at}"
        try:
            owned = owned_objects(self.applier, self.labels)
        except ApplyError as exc:
            return f"{expired}; cannot list its objects: {exc}"
        pending = self._pending
        if pending is not None and pending.manifest.expires > now:
            result, detail = self._apply(pending, owned, now)
            return f"{expired}; the newer verified bundle held back as a shrink stands in ({result}: {detail})"
        keep = {ref for ref, obj in owned.items() if _newer_and_valid(obj, applied.generation, now)}
        errors: list[ObjectError] = []
        deleted = delete_objects(self.applier, [o for r, o in owned.items() if r not in keep], errors)
        self._apply_errors, self._counts = errors, ObjectCounts(0, deleted)
        if errors:
            return f"{expired}: {len(errors)} object(s) not removed"
        self._save_local(self._state.clear)
        self._applied, self._record = None, None
        self._desired, self._files = None, {}
        self._etag = None  # verify the channel's manifest again: the status then says why nothing is applied
        kept = f"; kept {len(keep)} object(s) of a newer verified bundle" if keep else ""
        return f"{expired}: removed {deleted} object(s){kept}"

    # -- reporting -------------------------------------------------------------------------------

    def _save_local(self, write: Callable[[], None]) -> None:
        """A write to the state directory; when it fails (a full disk, a read-only volume) the sync
        goes on and ``local_error`` says why (each write is atomic: nothing is left half-written)."""
        try:
            write()
        except StorageError as exc:
            self.local_error = str(exc)
            logger.error("cannot write the agent state directory", extra={"error": str(exc)})

    def _status(self, now: datetime, result: PollResult, detail: str) -> AgentStatus:
        # What is applied: the local state, else (after a restart with an empty state dir) the record.
        applied = Record.of(self._applied) if self._applied else self._record
        return AgentStatus(
            cluster_id=self.cluster_id,
            channel=self.channel,
            agent_version=__version__,
            applier=self.applier.describe(),
            applied_digest=applied.digest if applied else None,
            applied_generation=applied.generation if applied else None,
            applied_at=applied.applied_at if applied else None,
            applied_expires_at=applied.expires_at if applied else None,
            last_poll=LastPoll(iso(now), result, detail),
            verification=self._verification,
            objects=self._counts,
            apply_errors=tuple(self._apply_errors),
            drift=self._drift,
            preflight=self._preflight.report() if self._preflight is not None else None,
            hits=self.hits(now) if self.hits is not None else None,
        )

    def _report(self, status: AgentStatus) -> None:
        """The local status every poll; the bucket's when it says something new (``AgentStatus.news``)
        or the heartbeat is due."""
        self._save_local(lambda: self._state.save_status(status))
        news = status.news()
        now = time.monotonic()
        if (
            self._reported is not None
            and self._reported[0] == news
            and now - self._reported[1] < self.status_heartbeat_s
        ):
            return
        try:
            self.dist.put(layout.status_key(self.cluster_id), jsonio.dumps_pretty(status.to_json()), "application/json")
        except StorageError as exc:
            logger.warning("cannot write the agent status to the bucket", extra={"error": str(exc)})
            return
        self._reported = (news, now)

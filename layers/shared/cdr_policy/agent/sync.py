"""The sync agent: follow one channel and make the cluster carry what it ships.

One ``sync_once``:
1. poll ``channels/<channel>/manifest.json`` with the last ETag (a 304 costs one small request);
2. verify the new manifest (signature, schema, digest, expiry, channel, not older than what is
   applied), then every file's size and sha256, then the objects, then the injected policy check --
   all BEFORE touching the cluster; a refusal keeps the cluster as it is;
3. run the cluster pre-flight (``agent.preflight``: Cilium's ``enable-non-default-deny-policies``,
   the served Cilium CRD versions, the channel's declared Cilium version) before the policy check
   and before touching anything; the Cilium objects it holds back are neither checked nor applied,
   the Tetragon ones are (result ``partial``, the reason in the status document's ``preflight`` and
   ``apply_errors``; retried on every poll, so a fixed Cilium configuration is picked up without a
   new bundle);
4. apply every object (CiliumCIDRGroups first), then, only if all applied, delete the objects this
   agent owns that the bundle no longer has (CIDR groups last). Tetragon policies are named by
   content, so a changed policy is a new object that is loaded before the old one goes: no gap;
5. remove everything it owns once the applied bundle has expired (a cluster cut off from the bucket
   does not enforce stale blocks forever);
6. write ``status/<cluster-id>.json`` to the distribution store (and ``status.json`` locally).

Ownership is by label: ``app.kubernetes.io/managed-by=cdr-policy`` and ``cdr-policy.io/channel=<channel>``,
set by the agent on every object it applies; nothing without both labels is ever changed or deleted.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cdr_policy import __version__, jsonio, layout
from cdr_policy.agent.applier import Applier, ApplyError
from cdr_policy.agent.kinds import kind_of, ownership_labels
from cdr_policy.agent.preflight import APPLY, Preflight, is_cilium, run_preflight
from cdr_policy.agent.reconcile import delete_objects, owned_objects, reconcile
from cdr_policy.agent.state import Applied, StateDir
from cdr_policy.agent.status import SCHEMA_VERSION
from cdr_policy.bundle.manifest import VerificationError, verify_files
from cdr_policy.bundle.objects import ObjectRef, parse_objects
from cdr_policy.bundle.signing import Verifier, verify_manifest
from cdr_policy.errors import ConfigError, StorageError
from cdr_policy.observability import logger
from cdr_policy.policy.checker.files import BundleCheck
from cdr_policy.storage import NotFound, Store
from cdr_policy.timeutil import iso, parse_iso, utcnow

_CLUSTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Refusals that the same manifest bytes will always get again: do not re-download until it changes.
# The others (file digests, the policy check against the cluster's CRDs) are retried on the next poll.
_FINAL_CODES = frozenset(
    {
        "malformed",
        "missing_signature",
        "unknown_algorithm",
        "bad_signature",
        "digest_mismatch",
        "expired",
        "wrong_channel",
        "replay",
        "bad_object",
    }
)


@dataclass(frozen=True)
class _Bundle:
    manifest: dict[str, Any]
    objects: list[dict[str, Any]]


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
        check: BundleCheck | None = None,
    ) -> None:
        if not layout.is_channel_name(channel):
            raise ConfigError(f"channel {channel!r}: use 1-32 lower-case letters, digits or '-'")
        if not _CLUSTER_ID.match(cluster_id):
            raise ConfigError(f"cluster id {cluster_id!r}: use up to 128 letters, digits, '.', '_' or '-'")
        self.dist = dist
        self.channel = channel
        self.cluster_id = cluster_id
        self.verifier = verifier
        self.applier = applier
        self.check = check
        self.labels = ownership_labels(channel)
        self.manifest_key = layout.channel_manifest_key(channel)
        self._state = StateDir(Path(state_dir))
        self._applied = self._state.load(verifier, channel)
        self._etag: str | None = None
        self._verification: dict[str, Any] = {
            "ok": None,
            "code": None,
            "reason": None,
            "digest": None,
            "at": None,
        }
        self._apply_errors: list[dict[str, Any]] = []
        self._counts = {"applied": 0, "deleted": 0}
        self._preflight: Preflight | None = None

    # -- one round -------------------------------------------------------------------------------

    def sync_once(self, now: datetime | None = None) -> dict[str, Any]:
        """Poll, verify, apply, prune, expire, report. Returns the status document it wrote."""
        now = now or utcnow()
        result, detail = self._poll(now)
        expired = self._expire(now)
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
                "applied_digest": status["applied_digest"],
            },
        )
        return status

    def run(
        self,
        interval: float,
        stop: threading.Event | None = None,
        observe: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """``sync_once`` every ``interval`` seconds until ``stop`` is set; ``observe`` gets each status."""
        stop = stop or threading.Event()
        while not stop.is_set():
            started = time.monotonic()
            status = self.sync_once()
            if observe is not None:
                observe(status)
            stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def _poll(self, now: datetime) -> tuple[str, str]:
        try:
            obj = self.dist.get_if_changed(self.manifest_key, self._etag)
        except NotFound:
            return "no_manifest", f"no manifest at {self.dist.describe()}/{self.manifest_key} yet"
        except StorageError as exc:
            return "unreachable", f"cannot read the channel manifest: {exc}; keeping the last good state"
        if obj is None:
            return "unchanged", "manifest unchanged (ETag)"
        try:
            bundle = self._verify(obj.data, now)
        except VerificationError as exc:
            digest = self._claimed_digest(obj.data)
            self._verification = {
                "ok": False,
                "code": exc.code,
                "reason": str(exc),
                "digest": digest,
                "at": iso(now),
            }
            if exc.code in _FINAL_CODES:
                self._etag = obj.etag
            return "refused", f"bundle refused, nothing applied: {exc}"
        except StorageError as exc:
            return "unreachable", f"cannot read the bundle's files: {exc}; keeping the last good state"
        digest = bundle.manifest["digest"]
        self._verification = {"ok": True, "code": None, "reason": None, "digest": digest, "at": iso(now)}
        try:
            errors, applied, deleted = self._apply(bundle.objects)
        except ApplyError as exc:
            self._apply_errors, self._counts = [], {"applied": 0, "deleted": 0}
            return "apply_failed", f"cannot read the objects this agent owns: {exc}; nothing changed"
        self._apply_errors, self._counts = errors, {"applied": applied, "deleted": deleted}
        failed = [e for e in errors if e["action"] != "preflight"]
        if failed:
            return "apply_failed", (
                f"{len(failed)} object operation(s) failed for bundle {digest[:12]}; retrying next poll "
                "(objects are pruned only once every object applied)"
            )
        self._applied = Applied(bundle.manifest, iso(now))
        self._state.save(self._applied)
        done = f"bundle {digest[:12]}: {applied} object(s) applied, {deleted} deleted"
        if errors and self._preflight is not None:
            # the manifest is verified again next poll, so the held-back part follows a fixed cluster
            return "partial", (
                f"{done}; {len(errors)} Cilium object(s) held back by the cluster pre-flight "
                f"({self._preflight.cilium}): {self._preflight.reason()}"
            )
        self._etag = obj.etag
        return "applied", done

    @staticmethod
    def _claimed_digest(data: bytes) -> str | None:
        try:
            digest = jsonio.loads(data).get("digest")
        except (ValueError, AttributeError):
            return None
        return digest if layout.is_digest(digest) else None

    # -- verification ----------------------------------------------------------------------------

    def _verify(self, data: bytes, now: datetime) -> _Bundle:
        self._preflight = None
        try:
            manifest = jsonio.loads(data)
        except ValueError as exc:
            raise VerificationError("malformed", f"malformed manifest: not JSON: {exc}") from exc
        verify_manifest(manifest, self.verifier, now=now)
        if manifest["channel"] != self.channel:
            raise VerificationError(
                "wrong_channel",
                f"the manifest is for channel {manifest['channel']}, this agent follows {self.channel}",
            )
        if self._applied and parse_iso(manifest["created_at"]) < parse_iso(self._applied.manifest["created_at"]):
            raise VerificationError(
                "replay",
                f"bundle {manifest['digest'][:12]} was created {manifest['created_at']}, before the applied "
                f"bundle {self._applied.digest[:12]} ({self._applied.manifest['created_at']}): "
                "refusing to go back in time",
            )
        digest = manifest["digest"]
        files = {e["path"]: self.dist.get(layout.bundle_file_key(digest, e["path"])).data for e in manifest["files"]}
        verify_files(manifest, files)
        objects = parse_objects(files)
        for obj in objects:
            kind_of(obj)
        # The pre-flight runs before the check: objects it holds back are neither checked nor applied,
        # so a Cilium part the cluster cannot take (a CRD version it does not serve) is reported as
        # such instead of refusing the Tetragon part with it.
        self._preflight = run_preflight(self.applier, objects)
        if self.check is not None:
            held = self._preflight is not None and self._preflight.cilium != APPLY
            checked = {
                path: data
                for path, data in files.items()
                if not (held and any(is_cilium(o) for o in parse_objects({path: data})))
            }
            problems = sorted(self.check(checked))
            if problems:
                shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
                raise VerificationError("check_failed", f"policy check failed: {shown}")
        return _Bundle(manifest, objects)

    # -- apply and prune -------------------------------------------------------------------------

    def _owned(self) -> dict[ObjectRef, dict[str, Any]]:
        return owned_objects(self.applier, self.labels)

    def _apply(self, objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, int]:
        return reconcile(self.applier, objects, channel=self.channel, preflight=self._preflight)

    def _delete(self, objects: list[dict[str, Any]], errors: list[dict[str, Any]]) -> int:
        return delete_objects(self.applier, objects, errors)

    def _expire(self, now: datetime) -> str | None:
        """Remove everything this agent owns once the applied bundle has expired. Returns what happened."""
        if self._applied is None or parse_iso(self._applied.manifest["expires_at"]) > now:
            return None
        digest, expires = self._applied.digest, self._applied.manifest["expires_at"]
        try:
            owned = list(self._owned().values())
        except ApplyError as exc:
            return f"applied bundle {digest[:12]} expired at {expires}; cannot list its objects: {exc}"
        errors: list[dict[str, Any]] = []
        deleted = self._delete(owned, errors)
        self._apply_errors, self._counts = errors, {"applied": 0, "deleted": deleted}
        if errors:
            return f"applied bundle {digest[:12]} expired at {expires}: {len(errors)} object(s) not removed"
        self._state.clear()
        self._applied = None
        self._etag = None  # verify the channel's manifest again: the status then says why nothing is applied
        return f"applied bundle {digest[:12]} expired at {expires}: removed {deleted} object(s)"

    # -- reporting -------------------------------------------------------------------------------

    def _status(self, now: datetime, result: str, detail: str) -> dict[str, Any]:
        applied = self._applied
        return {
            "schema_version": SCHEMA_VERSION,
            "cluster_id": self.cluster_id,
            "channel": self.channel,
            "agent_version": __version__,
            "applier": self.applier.describe(),
            "applied_digest": applied.digest if applied else None,
            "applied_at": applied.applied_at if applied else None,
            "applied_expires_at": applied.manifest["expires_at"] if applied else None,
            "last_poll": {"at": iso(now), "result": result, "detail": detail},
            "verification": dict(self._verification),
            "objects": dict(self._counts),
            "apply_errors": list(self._apply_errors),
            "preflight": self._preflight.to_dict() if self._preflight is not None else None,
        }

    def _report(self, status: dict[str, Any]) -> None:
        self._state.save_status(status)
        try:
            self.dist.put(layout.status_key(self.cluster_id), jsonio.dumps_pretty(status), "application/json")
        except StorageError as exc:
            logger.warning("cannot write the agent status to the bucket", extra={"error": str(exc)})

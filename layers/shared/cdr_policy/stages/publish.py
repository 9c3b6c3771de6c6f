"""The Publish stage: check, sign and publish one rendered bundle to one channel; and roll a
channel back to an earlier bundle.

A request for a digest that is no longer the channel's latest render is skipped (SQS does not keep
order: an old request must not roll a channel back). An operator approves a bundle held by the
change budget by creating ``approvals/<channel>/<digest>`` in the state store.

The signed manifest is stamped when it is published: ``created_at`` is the publish time and
``expires_at`` keeps the lifetime the bundle was rendered with. Agents refuse a manifest older than
the one they applied (a replayed old manifest), and a channel that goes A -> B -> A publishes A again
with a fresh stamp. A manifest whose bundle is already current is re-stamped ("refreshed") once half
of its lifetime has passed, so that agents of a channel whose content does not change do not see it
expire; anything that triggers a publish (each render) keeps a healthy channel fresh.

Order of writes in the distribution store: the bundle's files (``bundles/<digest>/<path>``) first,
then the history entry, then the signed channel manifest last, so an agent that sees a new manifest
always finds its files. Nothing is shipped that fails its own digests, the injected policy check or
the change budget (unless an operator approved it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from aws_lambda_powertools.metrics import MetricUnit

from cdr_policy import jsonio, layout
from cdr_policy.bundle.change_budget import DEFAULT_MIN_CHANGES, assess
from cdr_policy.bundle.manifest import (
    SIGNATURE_FIELDS,
    unsigned,
    validate_manifest,
    verify_files,
)
from cdr_policy.bundle.objects import parse_objects, prefixes
from cdr_policy.bundle.signing import Signer, sign_manifest
from cdr_policy.errors import BundleError, StorageError
from cdr_policy.observability import logger, metrics
from cdr_policy.policy.checker.files import BundleCheck
from cdr_policy.storage import NotFound, Store, exists
from cdr_policy.timeutil import iso, parse_iso

PublishStatus = Literal["published", "refreshed", "unchanged", "held", "refused", "rolled_back", "superseded"]
# A current manifest is re-stamped when more than this share of its lifetime has passed.
REFRESH_AFTER = 0.5

_CONTENT_TYPES = {".yaml": "application/yaml", ".yml": "application/yaml", ".json": "application/json"}


@dataclass(frozen=True)
class PublishResult:
    """What publishing did. ``held`` and ``refused`` shipped nothing; ``reason`` says why."""

    status: PublishStatus
    channel: str
    digest: str
    reason: str = ""
    previous_digest: str | None = None
    manifest_key: str | None = None
    history_key: str | None = None
    budget: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def shipped(self) -> bool:
        return self.status in ("published", "refreshed", "rolled_back")

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "channel": self.channel,
            "digest": self.digest,
            "reason": self.reason,
            "previous_digest": self.previous_digest,
            "manifest_key": self.manifest_key,
            "history_key": self.history_key,
            "budget": self.budget,
            "errors": list(self.errors),
        }


def _content_type(path: str) -> str:
    suffix = path[path.rfind(".") :] if "." in path else ""
    return _CONTENT_TYPES.get(suffix, "application/octet-stream")


def _read_manifest(store: Store, key: str) -> dict[str, Any]:
    try:
        doc = jsonio.loads(store.get(key).data)
    except ValueError as exc:
        raise BundleError(f"{store.describe()}/{key} is not valid JSON: {exc}") from exc
    return validate_manifest(doc)


def _read_files(store: Store, manifest: Mapping[str, Any]) -> dict[str, bytes]:
    """The manifest's files from ``bundles/<digest>/`` in ``store``, checked against the manifest."""
    digest = manifest["digest"]
    files = {e["path"]: store.get(layout.bundle_file_key(digest, e["path"])).data for e in manifest["files"]}
    verify_files(manifest, files)
    return files


def _current(dist: Store, channel: str) -> tuple[dict[str, Any] | None, str | None]:
    """The channel's current manifest, or None; and why it could not be used, if it exists but is bad."""
    key = layout.channel_manifest_key(channel)
    try:
        return _read_manifest(dist, key), None
    except NotFound:
        return None, None
    except BundleError as exc:
        return None, f"the current manifest of channel {channel} is unusable: {exc}"


def _write(dist: Store, channel: str, signed: dict[str, Any], files: Mapping[str, bytes] | None) -> tuple[str, str]:
    """Files first (unless already there), history next, channel manifest last."""
    digest = signed["digest"]
    for path, data in sorted((files or {}).items()):
        dist.put(layout.bundle_file_key(digest, path), data, _content_type(path))
    body = jsonio.dumps_pretty(signed)
    history = layout.history_key(channel, signed["created_at"], digest)
    dist.put(history, body, "application/json")
    manifest_key = layout.channel_manifest_key(channel)
    dist.put(manifest_key, body, "application/json")
    return manifest_key, history


def _refuse(channel: str, digest: str, previous: str | None, reason: str, errors: list[str]) -> PublishResult:
    logger.error(
        "bundle refused",
        extra={"channel": channel, "digest": digest, "reason": reason, "errors": errors[:20]},
    )
    metrics.add_metric(name="BundlesRefused", unit=MetricUnit.Count, value=1)
    return PublishResult("refused", channel, digest, reason=reason, previous_digest=previous, errors=errors)


def publish_bundle(
    state: Store,
    dist: Store,
    *,
    channel: str,
    digest: str,
    signer: Signer,
    now: datetime,
    change_budget_percent: int,
    check: BundleCheck | None = None,
    min_changes: int = DEFAULT_MIN_CHANGES,
) -> PublishResult:
    """Check, sign and publish rendered bundle ``digest`` (``bundles/<digest>/`` in ``state``) to ``channel``.

    - ``unchanged``: the bundle is already current and less than half through its lifetime; nothing written.
    - ``superseded``: ``digest`` is no longer the channel's latest render; nothing written.
    - ``refreshed``: the bundle is already current and was re-stamped and re-signed (no files copied).
    - ``refused``: ``check`` reported errors; nothing written, an alarm metric is emitted.
    - ``held``: more than ``change_budget_percent`` of the entries would change (and at least
      ``min_changes``); nothing written, an alarm metric is emitted. An operator's approval of this
      digest (``approvals/<channel>/<digest>`` in ``state``) skips the budget; so does a channel's first publish.
    - ``published``: files, history entry and channel manifest written, in that order.

    Raises BundleError when the rendered bundle is missing, malformed or does not match its digests.
    """
    latest = _latest_render(state, channel)
    if latest is not None and latest != digest:
        logger.info("publish request superseded", extra={"channel": channel, "digest": digest, "latest": latest})
        return PublishResult("superseded", channel, digest, reason=f"superseded by the later render {latest}")
    approved = exists(state, layout.approval_key(channel, digest))
    manifest = _read_manifest(state, layout.bundle_manifest_key(digest))
    if manifest["digest"] != digest:
        raise BundleError(f"bundles/{digest}/bundle.json describes bundle {manifest['digest']}")
    if manifest["channel"] != channel:
        raise BundleError(f"bundle {digest[:12]} was rendered for channel {manifest['channel']}, not {channel}")
    if any(f in manifest for f in SIGNATURE_FIELDS):
        raise BundleError(f"bundles/{digest}/bundle.json already carries signature fields")
    files = _read_files(state, manifest)
    current, problem = _current(dist, channel)
    previous = current["digest"] if current else None
    log = {"channel": channel, "digest": digest, "previous_digest": previous}

    refresh = current is not None and current["digest"] == digest
    if refresh and not _due_for_refresh(current, now):
        logger.info("bundle already current", extra=log)
        return PublishResult(
            "unchanged",
            channel,
            digest,
            reason="already the channel's current bundle",
            previous_digest=previous,
        )
    errors = sorted(check(files)) if check is not None else []
    if errors:
        return _refuse(channel, digest, previous, f"policy check failed with {len(errors)} error(s)", errors)

    budget: dict[str, Any] | None = None
    if refresh:
        pass  # same files: nothing changes in the clusters
    elif current is None and problem is None:
        logger.info("first publish to channel: change budget not applied", extra=log)
    elif approved:
        logger.warning("change budget skipped: publish approved by an operator", extra=log)
    else:
        held_reason, budget = _over_budget(dist, current, problem, files, change_budget_percent, min_changes)
        if held_reason:
            logger.error(
                "bundle held back by the change budget",
                extra={**log, "reason": held_reason, "budget": budget},
            )
            metrics.add_metric(name="BundlesHeld", unit=MetricUnit.Count, value=1)
            return PublishResult("held", channel, digest, reason=held_reason, previous_digest=previous, budget=budget)

    signed = sign_manifest(_stamp(manifest, now), signer)
    manifest_key, history = _write(dist, channel, signed, None if refresh else files)
    status: PublishStatus = "refreshed" if refresh else "published"
    logger.info(
        "bundle published",
        extra={**log, "status": status, "files": len(files), "expires_at": signed["expires_at"]},
    )
    metrics.add_metric(name="BundlesPublished", unit=MetricUnit.Count, value=1)
    return PublishResult(
        status,
        channel,
        digest,
        previous_digest=previous,
        manifest_key=manifest_key,
        history_key=history,
        budget=budget,
    )


def _latest_render(state: Store, channel: str) -> str | None:
    try:
        doc = jsonio.loads(state.get(layout.latest_render_key(channel)).data)
    except NotFound:
        return None
    except ValueError as exc:
        raise BundleError(f"{state.describe()}/{layout.latest_render_key(channel)} is not valid JSON: {exc}") from exc
    return str(doc["digest"])


def _stamp(manifest: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``manifest`` as published at ``now``: same lifetime, counted from now."""
    lifetime = parse_iso(manifest["expires_at"]) - parse_iso(manifest["created_at"])
    return validate_manifest({**unsigned(manifest), "created_at": iso(now), "expires_at": iso(now + lifetime)})


def _due_for_refresh(current: dict[str, Any], now: datetime) -> bool:
    created, expires = parse_iso(current["created_at"]), parse_iso(current["expires_at"])
    return now >= created + (expires - created) * REFRESH_AFTER


def _over_budget(
    dist: Store,
    current: dict[str, Any] | None,
    problem: str | None,
    files: Mapping[str, bytes],
    budget_percent: int,
    min_changes: int,
) -> tuple[str | None, dict[str, Any] | None]:
    """Why the bundle must be held (or None), and the measured change."""
    if current is None:
        return f"{problem}; approve this bundle to publish it", None
    try:
        current_files = _read_files(dist, current)
    except (StorageError, BundleError) as exc:
        return f"cannot compare with the current bundle {current['digest']}: {exc}; approve to publish", None
    check = assess(
        prefixes(parse_objects(current_files)),
        prefixes(parse_objects(files)),
        budget_percent=budget_percent,
        min_changes=min_changes,
    )
    return (check.reason() if check.exceeded else None), check.to_dict()


def rollback(dist: Store, *, channel: str, to_digest: str, signer: Signer, now: datetime) -> PublishResult:
    """Make an earlier bundle of ``channel`` current again: its latest history entry, re-stamped
    (``created_at`` = now, same lifetime as before) and re-signed. Its files must still be in ``dist``
    and match. Raises BundleError when there is no such history entry or its files are gone."""
    suffix = f"-{to_digest}.json"
    entries = [k for k in dist.list(layout.history_prefix(channel)) if k.endswith(suffix)]
    if not entries:
        raise BundleError(f"channel {channel} has never published bundle {to_digest}")
    old = _read_manifest(dist, entries[-1])
    if old["digest"] != to_digest or old["channel"] != channel:
        raise BundleError(f"history entry {entries[-1]} does not describe bundle {to_digest} of channel {channel}")
    try:
        _read_files(dist, old)
    except StorageError as exc:
        raise BundleError(
            f"cannot roll back to bundle {to_digest}: its files are not all in {dist.describe()}: {exc}"
        ) from exc
    current, _ = _current(dist, channel)
    previous = current["digest"] if current else None
    if previous == to_digest:
        return PublishResult(
            "unchanged",
            channel,
            to_digest,
            reason="already the channel's current bundle",
            previous_digest=previous,
        )
    signed = sign_manifest(_stamp(old, now), signer)
    manifest_key, history = _write(dist, channel, signed, None)
    logger.warning(
        "channel rolled back",
        extra={
            "channel": channel,
            "digest": to_digest,
            "previous_digest": previous,
            "from_history": entries[-1],
        },
    )
    metrics.add_metric(name="ChannelRollbacks", unit=MetricUnit.Count, value=1)
    return PublishResult(
        "rolled_back",
        channel,
        to_digest,
        previous_digest=previous,
        manifest_key=manifest_key,
        history_key=history,
    )

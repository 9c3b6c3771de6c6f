"""The Publish stage: check, sign and publish one rendered bundle to one channel; and roll a
channel back to an earlier bundle.

A request for a digest that is no longer the channel's latest render is skipped (SQS does not keep
order: an old request must not roll a channel back). An operator approves a bundle held by the
change budget by creating ``approvals/<channel>/<digest>`` in the state store.

The signed manifest is stamped when it is published: ``created_at`` is the publish time,
``expires_at`` keeps the lifetime the bundle was rendered with, and ``generation`` is the current
manifest's + 1 (strictly increasing per channel; agents never go to a lower one). A manifest whose
bundle is already current is re-stamped ("refreshed", a new generation) once half of its lifetime
has passed, so that agents of a channel whose content does not change do not see it expire.

One writer per channel, never backwards: the channel manifest is written with an S3 conditional
write on the manifest it replaces (``If-Match`` its ETag, ``If-None-Match: *`` when there is none).
When another publish landed in between, ``ChannelMoved`` is raised and nothing is overwritten: the
request fails and is retried by the queue, which then re-checks whether it is still the latest.

Order of writes in the distribution store: the bundle's files (``bundles/<digest>/<path>``) first,
then the signed channel manifest, then its history entry (a failed publish leaves no history; a
history entry missing after a crash is written by the next publish request for the channel).
Nothing is shipped that fails its own digests, the injected policy check, the channel's settings or
the change budget (unless an operator approved it: the manifest then carries a signed ``approval``
naming the digest it replaces, which the agents require before they shrink what they enforce).
A rollback is a new, higher generation that ships an earlier generation's bundle (``rollback_of``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from aws_lambda_powertools.metrics import MetricUnit

from cdr_policy import jsonio, layout
from cdr_policy.admission import Admission
from cdr_policy.bundle.change_budget import DEFAULT_MIN_CHANGES, assess, shrink_reasons
from cdr_policy.bundle.loader import Bundle, load_bundle, read_manifest
from cdr_policy.bundle.manifest import MAX_MANIFEST_BYTES, Approval, Manifest
from cdr_policy.bundle.objects import prefixes
from cdr_policy.bundle.signing import Signer, Verifier, sign_manifest, verify_signature
from cdr_policy.errors import BundleError, StorageError
from cdr_policy.observability import logger, metrics
from cdr_policy.storage import NotFound, PreconditionFailed, Store, TooLarge, exists
from cdr_policy.timeutil import iso

PublishStatus = Literal["published", "refreshed", "unchanged", "held", "refused", "rolled_back", "superseded"]
# A current manifest is re-stamped when more than this share of its lifetime has passed.
REFRESH_AFTER = 0.5
# How many of the newest history entries are tried for the generation when the channel manifest is
# unusable (entries that do not verify were planted: they are skipped, but not without end).
HISTORY_SCAN = 100

_CONTENT_TYPES = {".yaml": "application/yaml", ".yml": "application/yaml", ".json": "application/json"}


class ChannelMoved(BundleError):
    """Another publish wrote the channel manifest after this one read it: nothing was overwritten."""


@dataclass(frozen=True)
class PublishResult:
    """What publishing did. ``held`` and ``refused`` shipped nothing; ``reason`` says why."""

    status: PublishStatus
    channel: str
    digest: str
    reason: str = ""
    previous_digest: str | None = None
    generation: int | None = None
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
            "generation": self.generation,
            "manifest_key": self.manifest_key,
            "history_key": self.history_key,
            "budget": self.budget,
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class Current:
    """The channel manifest as Publish found it: ``etag`` of whatever object is there (None: none),
    ``manifest`` when it is a valid manifest signed by our key, else ``problem`` says why not.
    ``replayed``: the bucket holds an older signed manifest than the newest in the history (put back
    by someone who can write the bucket); ``manifest`` is then that newest one."""

    etag: str | None
    manifest: Manifest | None
    problem: str | None
    next_generation: int
    replayed: bool = False

    @property
    def digest(self) -> str | None:
        return self.manifest.digest if self.manifest else None


def _content_type(path: str) -> str:
    suffix = path[path.rfind(".") :] if "." in path else ""
    return _CONTENT_TYPES.get(suffix, "application/octet-stream")


def _read_signed(store: Store, key: str, verifier: Verifier) -> Manifest:
    manifest, _ = read_manifest(store, key)
    verify_signature(manifest, verifier)
    return manifest


def _current(dist: Store, channel: str, verifier: Verifier) -> Current:
    """The channel's current manifest and the generation the next one gets. A manifest that is not
    ours (unsigned, foreign key, malformed, oversized: someone else wrote the bucket) is unusable;
    the generation then continues from the newest verified history entry, so it never goes back."""
    key = layout.channel_manifest_key(channel)
    newest = _newest_history(dist, channel, verifier)
    history = _generation(newest) if newest else 0
    try:
        obj = dist.get(key, max_bytes=MAX_MANIFEST_BYTES)
    except NotFound:
        return Current(None, None, None, history + 1)
    except TooLarge as exc:
        return Current(exc.etag, None, f"the current manifest of channel {channel} is unusable: {exc}", history + 1)
    try:
        manifest = Manifest.parse(obj.data, key)
        verify_signature(manifest, verifier)
        if manifest.channel != channel:
            raise BundleError("it is for another channel")
    except BundleError as exc:
        return Current(obj.etag, None, f"the current manifest of channel {channel} is unusable: {exc}", history + 1)
    if newest is not None and _generation(newest) > _generation(manifest):
        logger.warning(
            "the channel manifest is older than its history: replayed; publishing the newest again",
            extra={"channel": channel, "generation": manifest.generation, "newest": newest.generation},
        )
        return Current(obj.etag, newest, None, history + 1, replayed=True)
    return Current(obj.etag, manifest, None, max(_generation(manifest), history) + 1)


def _generation(manifest: Manifest) -> int:
    """A signed manifest's generation (the schema requires one with every signature)."""
    if manifest.generation is None:
        raise BundleError(f"bundle {manifest.digest[:12]}: a published manifest without a generation")
    return manifest.generation


def _newest_history(dist: Store, channel: str, verifier: Verifier) -> Manifest | None:
    """The newest verified history entry among the last ``HISTORY_SCAN`` (None: none)."""
    for key in reversed(dist.list(layout.history_prefix(channel))[-HISTORY_SCAN:]):
        try:
            manifest = _read_signed(dist, key, verifier)
        except (BundleError, StorageError) as exc:
            logger.warning("ignoring a history entry", extra={"key": key, "error": str(exc)})
            continue
        if manifest.channel == channel:
            return manifest
    return None


def _write(dist: Store, signed: Manifest, current: Current, files: Mapping[str, bytes] | None) -> tuple[str, str]:
    """Files first (unless already there), the channel manifest (conditional on ``current``), history last."""
    digest, channel = signed.digest, signed.channel
    for path, data in sorted((files or {}).items()):
        dist.put(layout.published_file_key(channel, digest, path), data, _content_type(path))
    body = signed.to_bytes()
    manifest_key = layout.channel_manifest_key(channel)
    try:
        dist.put_if(manifest_key, body, current.etag, "application/json")
    except PreconditionFailed as exc:
        metrics.add_metric(name="PublishConflicts", unit=MetricUnit.Count, value=1)
        raise ChannelMoved(
            f"channel {channel} changed while generation {signed.generation} was being published "
            f"({exc}); nothing overwritten, the request is retried"
        ) from exc
    history = layout.history_key(channel, signed.created_at, digest)
    dist.put(history, body, "application/json")
    return manifest_key, history


def _ensure_history(dist: Store, manifest: Manifest) -> None:
    """Write the history entry of the current manifest if a crash between the two writes lost it."""
    key = layout.history_key(manifest.channel, manifest.created_at, manifest.digest)
    try:
        dist.get(key, max_bytes=MAX_MANIFEST_BYTES)
    except NotFound:
        logger.warning("writing the missing history entry of the current manifest", extra={"key": key})
        dist.put(key, manifest.to_bytes(), "application/json")


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
    admission: Admission | None = None,
    min_changes: int = DEFAULT_MIN_CHANGES,
) -> PublishResult:
    """Check, sign and publish rendered bundle ``digest`` (``bundles/<digest>/`` in ``state``) to ``channel``.

    - ``unchanged``: the bundle is already current and less than half through its lifetime; nothing written.
    - ``superseded``: ``digest`` is no longer the channel's latest render; nothing written.
    - ``refreshed``: the bundle is already current and was re-stamped and re-signed (no files copied).
    - ``refused``: ``admission`` (default: ``Admission.baseline()``) refused the bundle (the closed
      grammar, the objects' effect against the never-block list and the channel's protected ranges
      and ports, the CRDs); nothing written, an alarm metric is emitted.
    - ``held``: the change budget (churn over ``change_budget_percent`` with at least ``min_changes``
      changes, or any shrink: see ``change_budget``) or an unusable current manifest; nothing written,
      an alarm metric is emitted. An operator's approval of this digest (``approvals/<channel>/<digest>``
      in ``state``) publishes it with a signed ``approval``; a channel's first publish is exempt.
    - ``published``: files, channel manifest and history entry written, in that order.

    Raises BundleError when the rendered bundle is missing, malformed or does not match its digests,
    ChannelMoved when another publish wrote the channel in the meantime.
    """
    latest = _latest_render(state, channel)
    if latest is not None and latest != digest:
        logger.info("publish request superseded", extra={"channel": channel, "digest": digest, "latest": latest})
        return PublishResult("superseded", channel, digest, reason=f"superseded by the later render {latest}")
    approved = exists(state, layout.approval_key(channel, digest))
    rendered = _rendered(state, channel, digest)
    verifier = Verifier.from_public_pem(signer.public_key_pem())
    current = _current(dist, channel, verifier)
    previous = current.digest
    log = {"channel": channel, "digest": digest, "previous_digest": previous}

    refresh = current.manifest is not None and previous == digest
    if (
        refresh
        and current.manifest is not None
        and not current.replayed
        and not _due_for_refresh(current.manifest, now)
    ):
        _ensure_history(dist, current.manifest)
        logger.info("bundle already current", extra=log)
        return PublishResult(
            "unchanged",
            channel,
            digest,
            reason="already the channel's current bundle",
            previous_digest=previous,
            generation=current.manifest.generation,
        )
    verdict = (admission or Admission.baseline()).judge(rendered)
    if not verdict.admitted:
        reason = f"admission refused the bundle ({verdict.refusals.count} problem(s))"
        return _refuse(channel, digest, previous, reason, verdict.lines())

    budget: dict[str, Any] | None = None
    approval: Approval | None = None
    if refresh:
        pass  # same files: nothing changes in the clusters
    elif current.manifest is None and current.problem is None:
        logger.info("first publish to channel: change budget not applied", extra=log)
    else:
        held_reason, budget = _over_budget(dist, current, rendered, change_budget_percent, min_changes)
        if held_reason and approved:
            logger.warning("change budget passed by an operator's approval", extra={**log, "reason": held_reason})
            approval = Approval(previous_digest=previous, approved_at=iso(now))
        elif held_reason:
            logger.error(
                "bundle held back by the change budget",
                extra={**log, "reason": held_reason, "budget": budget},
            )
            metrics.add_metric(name="BundlesHeld", unit=MetricUnit.Count, value=1)
            return PublishResult("held", channel, digest, reason=held_reason, previous_digest=previous, budget=budget)

    rollback_of = None
    if refresh and current.manifest is not None:
        # A refresh ships the same transition again: an agent that missed the original still finds
        # the approval (and the rollback) it needs.
        rollback_of, approval = current.manifest.rollback_of, current.manifest.approval
    stamped = _stamp(
        rendered.manifest, now, generation=current.next_generation, rollback_of=rollback_of, approval=approval
    )
    signed = sign_manifest(stamped, signer)
    manifest_key, history = _write(dist, signed, current, None if refresh else rendered.files)
    status: PublishStatus = "refreshed" if refresh else "published"
    logger.info(
        "bundle published",
        extra={
            **log,
            "status": status,
            "generation": signed.generation,
            "files": len(rendered.files),
            "expires_at": signed.expires_at,
        },
    )
    metrics.add_metric(name="BundlesPublished", unit=MetricUnit.Count, value=1)
    return PublishResult(
        status,
        channel,
        digest,
        previous_digest=previous,
        generation=signed.generation,
        manifest_key=manifest_key,
        history_key=history,
        budget=budget,
    )


def _rendered(state: Store, channel: str, digest: str) -> Bundle:
    """Render's bundle ``digest`` from the state store, loaded and checked once."""
    manifest, _ = read_manifest(state, layout.bundle_manifest_key(digest))
    if manifest.digest != digest:
        raise BundleError(f"the rendered manifest of bundle {digest[:12]} describes another bundle")
    if manifest.channel != channel:
        raise BundleError(f"bundle {digest[:12]} was rendered for channel {manifest.channel}, not {channel}")
    if manifest.published or manifest.signature is not None:
        raise BundleError(f"the rendered manifest of bundle {digest[:12]} already carries publish fields")
    return load_bundle(state, manifest, published=False)


def _latest_render(state: Store, channel: str) -> str | None:
    try:
        doc = jsonio.loads(state.get(layout.latest_render_key(channel)).data)
    except NotFound:
        return None
    except ValueError as exc:
        raise BundleError(f"{state.describe()}/{layout.latest_render_key(channel)} is not valid JSON: {exc}") from exc
    return str(doc["digest"])


def _stamp(
    manifest: Manifest, now: datetime, *, generation: int, rollback_of: int | None, approval: Approval | None
) -> Manifest:
    """``manifest`` as published at ``now``: the same lifetime, counted from now, with the publish fields."""
    lifetime = manifest.expires - manifest.created
    return manifest.unsigned().replace(
        created_at=iso(now),
        expires_at=iso(now + lifetime),
        generation=generation,
        rollback_of=rollback_of,
        approval=approval,
    )


def _due_for_refresh(current: Manifest, now: datetime) -> bool:
    return now >= current.created + (current.expires - current.created) * REFRESH_AFTER


def _over_budget(
    dist: Store,
    current: Current,
    proposed: Bundle,
    budget_percent: int,
    min_changes: int,
) -> tuple[str | None, dict[str, Any] | None]:
    """Why the bundle must be held (or None), and the measured change."""
    if current.manifest is None:
        return f"{current.problem}; approve this bundle to publish it", None
    try:
        current_objects = load_bundle(dist, current.manifest, published=True).objects
    except (StorageError, BundleError) as exc:
        return f"cannot compare with the current bundle {current.digest}: {exc}; approve to publish", None
    check = assess(
        prefixes(current_objects),
        prefixes(proposed.objects),
        budget_percent=budget_percent,
        min_changes=min_changes,
    )
    shrink = shrink_reasons(current_objects, proposed.objects, max_percent=budget_percent)
    reasons = ([check.reason()] if check.exceeded else []) + shrink
    return ("; ".join(reasons) or None), {**check.to_dict(), "shrink": shrink}


def rollback(
    dist: Store,
    *,
    channel: str,
    signer: Signer,
    now: datetime,
    to_digest: str | None = None,
    to_generation: int | None = None,
) -> PublishResult:
    """Ship an earlier bundle of ``channel`` again -- the verified history entry of generation
    ``to_generation``, or the newest one of bundle ``to_digest`` -- as a new, higher generation with
    ``rollback_of``, re-stamped (``created_at`` = now, the same lifetime as before) and re-signed. A
    rollback is an operator's decision: it carries an ``approval`` of the digest it replaces, so
    agents apply it even when it enforces less. Its files must still be in ``dist`` and match.
    ``unchanged`` when that bundle is already the channel's. Raises BundleError when no verified
    history entry matches or its files are gone."""
    if (to_digest is None) == (to_generation is None):
        raise ValueError("give exactly one of to_digest and to_generation")
    verifier = Verifier.from_public_pem(signer.public_key_pem())
    old: Manifest | None = None
    suffix = f"-{to_digest}.json" if to_digest is not None else ".json"
    for key in [k for k in dist.list(layout.history_prefix(channel)) if k.endswith(suffix)]:
        try:
            entry = _read_signed(dist, key, verifier)
        except (BundleError, StorageError):
            continue
        if entry.channel == channel and (entry.generation == to_generation or entry.digest == to_digest):
            if old is None or _generation(entry) > _generation(old):
                old = entry
    if old is None:
        target = f"generation {to_generation}" if to_digest is None else f"bundle {to_digest}"
        raise BundleError(f"channel {channel} has no verified history entry for {target}")
    try:
        load_bundle(dist, old, published=True)
    except StorageError as exc:
        raise BundleError(
            f"cannot roll back to generation {old.generation}: its files are not all in {dist.describe()}: {exc}"
        ) from exc
    current = _current(dist, channel, verifier)
    previous = current.digest
    if previous == old.digest and not current.replayed:
        return PublishResult(
            "unchanged",
            channel,
            old.digest,
            reason="already the channel's current bundle",
            previous_digest=previous,
            generation=current.manifest.generation if current.manifest else None,
        )
    stamped = _stamp(
        old,
        now,
        generation=current.next_generation,
        rollback_of=old.generation,
        approval=Approval(previous_digest=previous, approved_at=iso(now)),
    )
    signed = sign_manifest(stamped, signer)
    manifest_key, history = _write(dist, signed, current, None)
    logger.warning(
        "channel rolled back",
        extra={
            "channel": channel,
            "digest": old.digest,
            "previous_digest": previous,
            "generation": signed.generation,
            "rollback_of": old.generation,
        },
    )
    metrics.add_metric(name="ChannelRollbacks", unit=MetricUnit.Count, value=1)
    return PublishResult(
        "rolled_back",
        channel,
        old.digest,
        previous_digest=previous,
        generation=signed.generation,
        manifest_key=manifest_key,
        history_key=history,
    )

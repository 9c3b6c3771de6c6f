"""The Publish stage: check, sign and publish one rendered bundle to one channel; and roll a
channel back to an earlier bundle.

One path, each step once (``publish_bundle``):

1. **Which bundle**: a request for a digest that is no longer the channel's latest render is
   ``superseded`` (SQS does not keep order: an old request must not roll a channel back), and so is
   one rendered with other settings than the channel has now (``ChannelSettings.fingerprint``): a
   render of the current settings follows. The rendered bundle is loaded and parsed once.
2. **What the channel ships** (``_current``): its signed manifest, verified with our key; the newest
   verified history entry when the manifest is missing, planted, or older than the history (deleting
   ``manifest.json`` never turns a publish into a first publish while history exists). A missing
   history entry of the current manifest is written again.
3. **The same bundle**: ``unchanged``, or ``refreshed`` (re-stamped, re-signed, no files copied) once
   half its lifetime has passed or when the channel's lifetime or settings changed.
4. **Admission** (``cdr_policy.admission``): the closed grammar, the objects' effect, the CRDs;
   ``refused`` otherwise.
4b. **Promotion**, on a channel that promotes from an audit channel (``cdr_policy.promotion.verify``):
   the decisions Render wrote beside the bundle are verified (composed over the bundle the channel
   ships; nothing added but what they promoted; every promoted change judged again on the evidence
   as Publish reads it); ``held`` otherwise. The signed manifest records what was promoted on what
   evidence (``promotion``), what a tripped watch took back and what stays held; what Publish found
   is written to ``promotion/<channel>.json`` of the distribution store on every request, and a
   watch that tripped raises the ``EnforcementHurting`` alarm metric, naming the generation.
5. **The change budget** (``bundle.change_budget``), per engine, against the bundle the channel
   ships — unless the channel has never shipped one. Over it, the bundle ships only with an
   approver's signed grant of exactly this change (``bundle.approvals``), which is then deleted: used
   once. Otherwise ``held``. On a promoting channel what was promoted on evidence or by an approver
   is not churn: the budget counts its removals (and shrinks).
6. **Sign and write**: the files, then the channel manifest (an S3 conditional write on the object it
   replaces: ``If-Match`` its ETag, ``If-None-Match: *`` when there is none; when another publish
   landed in between, ``ChannelMoved`` is raised and nothing is overwritten), then its history entry.

The signed manifest is stamped when it is published: ``created_at`` is the publish time,
``expires_at`` keeps the lifetime the bundle was rendered with, ``generation`` is the current one's
+ 1 (strictly increasing per channel; agents never go to a lower one), and ``steps`` the channel's
last transitions (an agent that missed an approved step follows the signed path from what it
applied). Errors of the stores or of KMS are raised, never turned into a decision, so that the
queue retries them; only decisions are returned (and remembered by the handler's idempotency).

A rollback is a new, higher generation that ships an earlier generation's bundle (``rollback_of``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from cdr_policy import layout
from cdr_policy.admission import Admission
from cdr_policy.admission.effect import BundleEffect
from cdr_policy.bundle.approvals import GrantError, find_grant
from cdr_policy.bundle.change_budget import DEFAULT_MIN_CHANGES, Budget, assess, shrink_reasons
from cdr_policy.bundle.history import Current, generation_of, read_current, read_signed
from cdr_policy.bundle.loader import Bundle, latest_render, load_bundle, read_manifest
from cdr_policy.bundle.manifest import MAX_MANIFEST_BYTES, Approval, Manifest, Step, StepKind, VerificationError
from cdr_policy.bundle.manifest import Promotion as ManifestPromotion
from cdr_policy.bundle.signing import Signer, Verifier, sign_manifest
from cdr_policy.errors import BundleError, ContractError
from cdr_policy.observability import logger, metrics
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.promotion.decisions import Decisions
from cdr_policy.promotion.decisions import write as write_decisions
from cdr_policy.schemas import fields_from_json
from cdr_policy.storage import NotFound, PreconditionFailed, Store, TooLarge
from cdr_policy.timeutil import iso

PublishStatus = Literal["published", "refreshed", "unchanged", "held", "refused", "rolled_back", "superseded"]
# A current manifest is re-stamped when more than this share of its lifetime has passed.
REFRESH_AFTER = 0.5
# How many transitions a manifest carries (``steps``): an agent further behind compares with what it
# applied, as it would without them.
STEPS_KEPT = 16

_CONTENT_TYPES = {".yaml": "application/yaml", ".yml": "application/yaml", ".json": "application/json"}
# What a store says about a bundle that makes it unusable for good (not a passing failure).
_UNUSABLE = (NotFound, TooLarge, VerificationError)


class ChannelMoved(BundleError):
    """Another publish wrote the channel manifest after this one read it: nothing was overwritten."""


@dataclass(frozen=True)
class PublishResult:
    """What publishing did. ``held``, ``refused`` and ``superseded`` shipped nothing; ``reason`` says why."""

    status: PublishStatus
    channel: str
    digest: str
    reason: str = ""
    previous_digest: str | None = None
    generation: int | None = None
    manifest_key: str | None = None
    history_key: str | None = None
    budget: Budget | None = None
    errors: tuple[str, ...] = ()

    @property
    def shipped(self) -> bool:
        return self.status in ("published", "refreshed", "rolled_back")

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "channel": self.channel,
            "digest": self.digest,
            "reason": self.reason,
            "previous_digest": self.previous_digest,
            "generation": self.generation,
            "manifest_key": self.manifest_key,
            "history_key": self.history_key,
            "budget": self.budget.to_json() if self.budget is not None else None,
            "errors": list(self.errors),
        }

    @classmethod
    def from_json(cls, doc: Any) -> PublishResult:
        """What a Publish invocation returned (read back by the CLI, the demo, the idempotency
        record); ContractError naming the field."""
        what = "publish result"
        fields = fields_from_json(cls, doc, what, nested=("budget", "errors"))
        budget, errors = doc["budget"], doc["errors"]
        if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
            raise ContractError(f"malformed {what}: errors")
        return cls(
            **fields,
            budget=None if budget is None else Budget.from_json(budget, f"{what}: budget"),
            errors=tuple(errors),
        )


def _content_type(path: str) -> str:
    suffix = path[path.rfind(".") :] if "." in path else ""
    return _CONTENT_TYPES.get(suffix, "application/octet-stream")


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
    except TooLarge:
        logger.warning("a planted history entry stands where the current one belongs", extra={"key": key})


def _result(status: PublishStatus, channel: str, digest: str, **fields: Any) -> PublishResult:
    return PublishResult(status, channel, digest, **fields)


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
    channels: Sequence[ChannelSettings] | None = None,
    approvers: Verifier | None = None,
    min_changes: int = DEFAULT_MIN_CHANGES,
    decisions: str | None = None,
) -> PublishResult:
    """Check, sign and publish rendered bundle ``digest`` (``bundles/<digest>/`` in ``state``) to
    ``channel`` (the steps of the module docstring).

    ``admission``: default ``Admission.baseline()``. ``channels``: the configured channels now (None:
    not known here, as in the CLI). ``approvers``: the approvers' public key(s) (None: nothing can be
    approved past the budget). ``decisions``: the SHA-256 of the promotion decisions the request was
    sent for (a promoting channel's render names them).

    - ``superseded``: not the channel's latest render, rendered with other settings than the channel
      has now, the channel is no longer configured, or (a promoting channel) a later render decided
      again; nothing written.
    - ``unchanged``: already current and less than half through its lifetime; nothing written.
    - ``refreshed``: already current, re-stamped and re-signed (no files copied).
    - ``refused``: admission refused it; nothing written, an alarm metric is emitted.
    - ``held``: over the change budget (any engine's churn, or a shrink) without a usable grant, or
      the channel's manifest is unusable and no history stands in; nothing written, an alarm metric.
    - ``published``: files, channel manifest and history entry written, in that order.

    Raises BundleError when the rendered bundle is missing, malformed or does not match its digests,
    ChannelMoved when another publish wrote the channel in the meantime, StorageError (and KMS's
    BundleError) when a store or the signer fails: the request is retried.
    """
    latest = latest_render(state, channel)
    if latest is not None and latest != digest:
        logger.info("publish request superseded", extra={"channel": channel, "digest": digest, "latest": latest})
        return _result("superseded", channel, digest, reason=f"superseded by the later render {latest}")
    rendered = _rendered(state, channel, digest)
    stale = _stale(rendered.manifest, channels)
    if stale:
        logger.info("publish request for stale settings", extra={"channel": channel, "digest": digest})
        return _result("superseded", channel, digest, reason=stale)
    pipeline = Verifier.from_public_pem(signer.public_key_pem())
    current = read_current(dist, channel, pipeline)
    previous = current.digest
    log = {"channel": channel, "digest": digest, "previous_digest": previous}
    if current.manifest is not None and not current.replayed:
        _ensure_history(dist, current.manifest)
    configured = next((c for c in channels or () if c.name == channel), None)
    promoting = (
        _Promoting(state, dist, configured, current, digest, pipeline=pipeline, approvers=approvers, now=now)
        if configured is not None and configured.promote is not None
        else None
    )

    def outcome(result: PublishResult) -> PublishResult:
        if promoting is not None:
            promoting.report(result)
        return result

    if promoting is not None and decisions is not None and promoting.fingerprint != decisions:
        logger.info("publish request for earlier promotion decisions", extra=log)
        return _result("superseded", channel, digest, reason="a later render decided its promotion again")

    how: StepKind
    approval: Approval | None = None
    budget: Budget | None = None
    grant_key: str | None = None
    promotion = current.manifest.promotion if current.manifest is not None else None
    if current.manifest is not None and previous == digest:
        if not current.replayed and not _needs_refresh(current.manifest, rendered.manifest, now):
            logger.info("bundle already current", extra=log)
            return outcome(
                _result(
                    "unchanged",
                    channel,
                    digest,
                    reason="already the channel's current bundle",
                    previous_digest=previous,
                    generation=current.manifest.generation,
                )
            )
        # The same files: nothing changes in the clusters. The transition is shipped again, so an
        # agent that missed it still finds the approval (and the rollback) it needs.
        how, approval = "refreshed", current.manifest.approval
        rollback_of = current.manifest.rollback_of
    else:
        verdict = (admission or Admission.baseline()).judge(rendered)
        if not verdict.admitted:
            reason = f"admission refused the bundle ({verdict.refusals.count} problem(s))"
            logger.error("bundle refused", extra={**log, "reason": reason, "errors": verdict.lines()})
            metrics.add_metric(name="BundlesRefused", unit=MetricUnit.Count, value=1)
            return outcome(
                _result(
                    "refused", channel, digest, reason=reason, previous_digest=previous, errors=tuple(verdict.lines())
                )
            )
        rollback_of = None
        if promoting is not None:
            held_why = promoting.check(rendered)
            if held_why is not None:
                reason = f"promotion: {held_why}"
                logger.error("bundle held back by promotion", extra={**log, "reason": reason})
                metrics.add_metric(name="BundlesHeld", unit=MetricUnit.Count, value=1)
                return outcome(_result("held", channel, digest, reason=reason, previous_digest=previous))
            promotion = promoting.record
        if current.first:
            logger.info("first publish to channel: change budget not applied", extra=log)
            how = "first"
        else:
            held, budget = _over_budget(
                dist,
                current,
                rendered,
                verdict.effect,
                change_budget_percent,
                min_changes,
                vetted=promoting is not None,
            )
            how = "published"
            if held:
                try:
                    found = find_grant(
                        state, channel, digest, previous, approvers=approvers, pipeline=pipeline, now=now
                    )
                except GrantError as exc:
                    found, held = None, f"{held}; {exc}"
                if found is None:
                    logger.error("bundle held back by the change budget", extra={**log, "reason": held})
                    metrics.add_metric(name="BundlesHeld", unit=MetricUnit.Count, value=1)
                    return outcome(
                        _result("held", channel, digest, reason=held, previous_digest=previous, budget=budget)
                    )
                logger.warning("change budget passed by an approver's grant", extra={**log, "reason": held})
                how, grant_key = "approved", found.key
                approval = Approval(previous, iso(now), grant=found.fingerprint(), approver=found.key_id)

    step = Step(current.next_generation, digest, previous, how)
    stamped = _stamp(
        rendered.manifest,
        now,
        generation=current.next_generation,
        rollback_of=rollback_of,
        approval=approval,
        steps=_steps(current.manifest, step),
        promotion=promotion,
    )
    signed = sign_manifest(stamped, signer)
    manifest_key, history = _write(dist, signed, current, None if how == "refreshed" else rendered.files)
    if grant_key is not None:
        state.delete(grant_key)  # used once
    if promoting is not None and how != "refreshed":
        promoting.shipped()
    status: PublishStatus = "refreshed" if how == "refreshed" else "published"
    logger.info(
        "bundle published",
        extra={**log, "status": status, "generation": signed.generation, "expires_at": signed.expires_at},
    )
    metrics.add_metric(name="BundlesPublished", unit=MetricUnit.Count, value=1)
    return outcome(
        _result(
            status,
            channel,
            digest,
            previous_digest=previous,
            generation=signed.generation,
            manifest_key=manifest_key,
            history_key=history,
            budget=budget,
        )
    )


class _Promoting:
    """Step 4b for one request (``cdr_policy.promotion.verify``, imported only for a promoting
    channel: it brings numpy): the world read once, Render's decisions, the check, then the grants
    used deleted once shipped, the report written whatever the outcome, the metrics."""

    def __init__(
        self,
        state: Store,
        dist: Store,
        channel: ChannelSettings,
        current: Current,
        digest: str,
        *,
        pipeline: Verifier,
        approvers: Verifier | None,
        now: datetime,
    ) -> None:
        from cdr_policy.promotion import record, verify, watch

        self.verify, self.record_io, self.state, self.dist, self.channel, self.now = (
            verify,
            record,
            state,
            dist,
            channel,
            now,
        )
        self.world = verify.read_world(state, dist, channel, current, verifier=pipeline, approvers=approvers, now=now)
        found = verify.decisions_of(state, digest)
        self.decided: Decisions | str = found if isinstance(found, str) else found[0]
        self.fingerprint: str | None = None if isinstance(found, str) else found[1]
        self.checked: verify.Checked | None = None
        self.trips = watch.trips(self.world)
        if self.trips:
            metrics.add_metric(name="EnforcementHurting", unit=MetricUnit.Count, value=len(self.trips))
        for trip in self.trips:
            named = trip.named()
            logger.error(
                "enforcing promoted changes hurt: the channel is held",
                extra={
                    "channel": channel.name,
                    "generation": trip.generation,
                    "reasons": list(trip.reasons),
                    "changes": named,
                },
            )
            with single_metric(
                name="EnforcementHurting", unit=MetricUnit.Count, value=1, namespace=metrics.namespace
            ) as metric:
                metric.add_dimension(name="channel", value=channel.name)
                metric.add_dimension(name="generation", value=str(trip.generation))
                metric.add_metadata(key="changes", value=[c["change"] for c in named])

    @property
    def record(self) -> ManifestPromotion | None:
        return self.checked.record if self.checked is not None else None

    def check(self, rendered: Bundle) -> str | None:
        """Why the bundle must be held (None: it may ship)."""
        if isinstance(self.decided, str):
            return self.decided
        self.checked = self.verify.check(self.world, rendered, self.decided)
        return self.checked.held

    def shipped(self) -> None:
        """The generation is written: its grants are used up, its changes counted."""
        if self.checked is None or self.checked.record is None:
            return
        for grant in self.checked.grants:
            self.state.delete(grant.key)  # used once
        record = self.checked.record
        if record.promoted.count:
            metrics.add_metric(name="ChangesPromoted", unit=MetricUnit.Count, value=record.promoted.count)
        if record.rolled_back is not None:
            metrics.add_metric(name="ChangesTakenBack", unit=MetricUnit.Count, value=record.rolled_back.changes.count)

    def report(self, result: PublishResult) -> None:
        """Publish's copy of the decisions, with the outcome, for ``channel evidence``."""
        if isinstance(self.decided, str):
            logger.warning("no promotion report: no usable decisions", extra={"channel": result.channel})
            return
        held = self.decided.counts.hold
        if held:
            metrics.add_metric(name="ChangesHeld", unit=MetricUnit.Count, value=held)
        checked = self.checked.report if self.checked is not None else None
        reason = result.reason or ("; ".join(result.errors))
        report = self.record_io.published(
            checked or self.decided, at=self.now, status=result.status, generation=result.generation, reason=reason
        )
        write_decisions(self.dist, layout.promotion_report_key(self.channel.name), report)


def _stale(manifest: Manifest, channels: Sequence[ChannelSettings] | None) -> str | None:
    """Why a rendered bundle no longer says what its channel is configured to do (None: it does, or the
    configuration is not known here)."""
    if channels is None:
        return None
    configured = next((c for c in channels if c.name == manifest.channel), None)
    if configured is None:
        return f"channel {manifest.channel} is no longer configured"
    if manifest.settings.channel_digest != configured.fingerprint():
        return "rendered with settings the channel no longer has; the render of its current settings ships"
    return None


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


def _stamp(
    manifest: Manifest,
    now: datetime,
    *,
    generation: int,
    rollback_of: int | None,
    approval: Approval | None,
    steps: tuple[Step, ...],
    promotion: ManifestPromotion | None = None,
) -> Manifest:
    """``manifest`` as published at ``now``: the same lifetime, counted from now, with the publish fields."""
    lifetime = manifest.expires - manifest.created
    return manifest.unsigned().replace(
        created_at=iso(now),
        expires_at=iso(now + lifetime),
        generation=generation,
        rollback_of=rollback_of,
        approval=approval,
        steps=steps,
        promotion=promotion,
    )


def _steps(current: Manifest | None, step: Step) -> tuple[Step, ...]:
    """The transitions the new manifest carries: the current one's (when they lead to it), then ``step``."""
    before = current.steps if current is not None and current.steps and step.previous_digest == current.digest else ()
    return (*before, step)[-STEPS_KEPT:]


def _needs_refresh(current: Manifest, rendered: Manifest, now: datetime) -> bool:
    """Re-sign a current bundle once half its lifetime has passed, or when the channel's lifetime or
    settings changed (the same files, rendered again with them)."""
    lifetime = current.expires - current.created
    if lifetime != rendered.expires - rendered.created or current.settings != rendered.settings:
        return True
    return now >= current.created + lifetime * REFRESH_AFTER


def _over_budget(
    dist: Store,
    current: Current,
    proposed: Bundle,
    effect: BundleEffect,
    budget_percent: int,
    min_changes: int,
    *,
    vetted: bool = False,
) -> tuple[str | None, Budget | None]:
    """Why the bundle must be held (None: it need not), and the measured change. The bundle the
    channel ships is read from the distribution store: a store that fails raises (retried); a bundle
    that is gone or does not verify is a reason to hold. ``vetted``: its additions were promoted
    on evidence or by an approver (not churn)."""
    if current.manifest is None:
        return f"{current.problem}; approve this bundle to publish it", None
    try:
        shipping = load_bundle(dist, current.manifest, published=True)
        shipping_effect = Admission.baseline().judge_objects(shipping).effect
    except _UNUSABLE as exc:
        return f"cannot compare with the current bundle {current.digest}: {exc}; approve to publish", None
    budget = assess(
        shipping_effect,
        effect,
        budget_percent=budget_percent,
        min_changes=min_changes,
        shrink=shrink_reasons(shipping.objects, proposed.objects, max_percent=budget_percent),
        vetted=vetted,
    )
    return ("; ".join(budget.reasons()) or None), budget


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
    for key in dist.list(layout.history_prefix(channel)):
        if (named := layout.history_entry(channel, key)) is None or to_digest not in (None, named[1]):
            continue
        try:
            entry = read_signed(dist, key, verifier)
        except (BundleError, NotFound, TooLarge):
            continue
        if entry.channel == channel and (entry.generation == to_generation or entry.digest == to_digest):
            if old is None or generation_of(entry) > generation_of(old):
                old = entry
    if old is None:
        target = f"generation {to_generation}" if to_digest is None else f"bundle {to_digest}"
        raise BundleError(f"channel {channel} has no verified history entry for {target}")
    try:
        load_bundle(dist, old, published=True)
    except _UNUSABLE as exc:
        raise BundleError(
            f"cannot roll back to generation {old.generation}: its files are not all in {dist.describe()}: {exc}"
        ) from exc
    current = read_current(dist, channel, verifier)
    previous = current.digest
    if previous == old.digest and not current.replayed:
        return _result(
            "unchanged",
            channel,
            old.digest,
            reason="already the channel's current bundle",
            previous_digest=previous,
            generation=current.manifest.generation if current.manifest else None,
        )
    step = Step(current.next_generation, old.digest, previous, "rolled_back")
    stamped = _stamp(
        old,
        now,
        generation=current.next_generation,
        rollback_of=old.generation,
        approval=Approval(previous_digest=previous, approved_at=iso(now)),
        steps=_steps(current.manifest, step),
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
    return _result(
        "rolled_back",
        channel,
        old.digest,
        previous_digest=previous,
        generation=signed.generation,
        manifest_key=manifest_key,
        history_key=history,
    )

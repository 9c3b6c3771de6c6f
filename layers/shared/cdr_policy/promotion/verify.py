"""Publish's side of promotion: before a promoting channel's bundle is signed, what Render decided
is verified against the signed world, and the decision is recorded (``check``).

1. The decisions beside the bundle (``promotion.json``) must be there, for this bundle, composed
   over the bundle the channel ships now (else the next render composes again).
2. The bundle adds nothing but what they promoted: every address it blocks is blocked now or in a
   promoted prefix, every port and rule version is shipped now or promoted. Removals need nothing.
3. Every promoted change is judged again, on the evidence as Publish reads it (the same
   ``gate.judge``): each must still be promoted (soaked, or approved by a grant that still verifies).
   A change that no longer qualifies (a new hit, a tripped watch, a cluster gone quiet) holds the
   bundle, and the next render leaves it out.

The result carries the signed manifest's record (``record.manifest_record``), the approvers'
grants it used (Publish deletes them once the manifest is written) and the report Publish writes
for ``cdr-policy channel evidence``. Someone who can write the state bucket but cannot sign can
make Publish hold; they can list finer prefix changes than Render would (which only the per-change
workload limit sees), never add an address, port or rule version that did not soak on the audit
channel without a hit in a protected namespace, nor one no approver approved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cdr_policy import layout
from cdr_policy.bundle.approvals import Grant
from cdr_policy.bundle.history import Current
from cdr_policy.bundle.loader import Bundle
from cdr_policy.bundle.manifest import Promotion
from cdr_policy.bundle.signing import Verifier
from cdr_policy.errors import BundleError
from cdr_policy.hits.attribute import PORT, PREFIX, RULE
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.promotion import record
from cdr_policy.promotion.addresses import AddressSet, Spans
from cdr_policy.promotion.content import Content, rendered_content
from cdr_policy.promotion.decisions import Decisions, read_decisions
from cdr_policy.promotion.evidence import World
from cdr_policy.promotion.gate import Judgement, judge
from cdr_policy.promotion.watch import Trip, trips
from cdr_policy.storage import NotFound, Store


@dataclass
class Checked:
    """What Publish found (see the module docstring): ``held`` says why the bundle must not ship."""

    held: str | None
    trips: tuple[Trip, ...] = ()
    record: Promotion | None = None
    grants: tuple[Grant, ...] = ()
    report: Decisions | None = None


def read_world(
    state: Store,
    dist: Store,
    channel: ChannelSettings,
    current: Current,
    *,
    verifier: Verifier,
    approvers: Verifier | None,
    now: datetime,
) -> World:
    return World.read(
        state=state, dist=dist, channel=channel, verifier=verifier, approvers=approvers, now=now, current=current
    )


def decisions_of(state: Store, digest: str) -> tuple[Decisions, str] | str:
    """Render's decisions of bundle ``digest`` and their SHA-256, or why there are none usable."""
    key = layout.promotion_decisions_key(digest)
    try:
        decided, sha = read_decisions(state, key)
    except NotFound:
        return f"bundle {digest[:12]} has no promotion decisions beside it"
    except BundleError as exc:
        return str(exc)
    if decided.bundle != digest:
        return f"the promotion decisions beside bundle {digest[:12]} are another's"
    return decided, sha


def check(world: World, rendered: Bundle, decided: Decisions) -> Checked:
    """Steps 1-3 of the module docstring, for the bundle ``rendered`` and Render's ``decided``."""
    tripped = tuple(trips(world))
    if decided.over != world.current.digest:
        over = (decided.over or "none")[:12]
        return Checked(
            f"it was composed over bundle {over}, and the channel ships {(world.current.digest or 'none')[:12]}: "
            "the next render composes it again",
            tripped,
        )
    pending = record.listed(decided, promoted_only=True)
    judgement = judge(world, pending, tripped)
    failing = [v for v in judgement.verdicts if not v.promoted]
    if failing:
        first = failing[0]
        return Checked(
            f"{len(failing)} change(s) Render promoted no longer qualify, among them {first.change}: "
            f"{'; '.join(first.reasons)}",
            tripped,
        )
    try:
        content = rendered_content(rendered)
    except BundleError as exc:
        return Checked(str(exc), tripped)
    extra = _unpromoted(world.content, content, judgement)
    if extra:
        return Checked(f"it adds what was not promoted: {', '.join(extra)}", tripped)
    judgement = judgement.only(_shipped(judgement, content))
    taken = _taken_back(world, content, tripped)
    report = record.replaced(decided, judgement)
    return Checked(
        None,
        tripped,
        record.manifest_record(world, judgement, counts=decided.counts, taken_back=taken),
        tuple(judgement.grants()),
        report,
    )


def _shipped(judgement: Judgement, proposed: Content) -> set[str]:
    """The promoted changes ``proposed`` holds (the capacity budget may have cut some)."""
    prefixes = [v for v in judgement.verdicts if v.kind == PREFIX]
    inside = proposed.addresses.covers(Spans.of([v.value for v in prefixes]))
    out = {v.change for v, held in zip(prefixes, inside.tolist(), strict=True) if held}
    for v in judgement.verdicts:
        if (v.kind == PORT and v.value in proposed.ports) or (
            v.kind == RULE and proposed.rules.get(v.value) == v.fingerprint
        ):
            out.add(v.change)
    return out


def _unpromoted(shipped: Content, proposed: Content, judgement: Judgement) -> list[str]:
    """What ``proposed`` adds over ``shipped`` beyond the promoted changes (at most 5, named)."""
    promoted = judgement.promoted()
    prefixes = AddressSet.of_spans(Spans.of([v.value for v in promoted if v.kind == PREFIX]))
    out = [f"prefix:{p}" for p in proposed.addresses.outside(shipped.addresses.union(prefixes))]
    ports = {v.value for v in promoted if v.kind == PORT}
    out += [f"port:{p}" for p in sorted(proposed.ports - shipped.ports - ports)]
    rules = {(v.value, v.fingerprint) for v in promoted if v.kind == RULE}
    out += [
        f"rule:{rule}"
        for rule, fp in sorted(proposed.rules.items())
        if shipped.rules.get(rule) != fp and (rule, fp) not in rules
    ]
    return out[:5]


def _taken_back(world: World, proposed: Content, tripped: tuple[Trip, ...]) -> Trip | None:
    """The newest tripped generation whose changes the channel ships now and ``proposed`` no longer
    holds (with ``rollback``): this publish takes them back."""
    watch = world.promote.watch
    if watch is None or not watch.rollback:
        return None
    for trip in tripped:
        now_held = world.content.addresses.touches(Spans.of(trip.addresses.prefixes())).any() or any(
            world.content.rules.get(r) == fp for r, fp in trip.rules.items()
        )
        still = proposed.addresses.touches(Spans.of(trip.addresses.prefixes())).any() or any(
            proposed.rules.get(r) == fp for r, fp in trip.rules.items()
        )
        if (now_held or trip.ports & world.content.ports) and not still and not (trip.ports & proposed.ports):
            return trip
    return None

"""The promotion decisions as documents (schema ``promotion.schema.json``) and as the signed
manifest's record (``bundle.manifest.Promotion``).

- ``decisions``: what Render decided for the bundle it composed (``decisions.Decisions``); written
  beside it (``bundles/<digest>/promotion.json``), read back by Publish (``listed``), which
  re-judges every promoted change, adds what it did (``published``) and writes its copy to the
  distribution store (``promotion/<channel>.json``) for ``channel evidence``.
- ``manifest_record``: what the published generation promoted (its addresses collapsed and
  packed), on what evidence, with which grants; what it took back and what stays held.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime

from cdr_policy.bundle.manifest import Changes, GrantUsed, PromotedEvidence, Promotion, RolledBack
from cdr_policy.errors import BundleError, ContractError
from cdr_policy.hits.attribute import PORT, PREFIX, RULE
from cdr_policy.promotion.addresses import AddressSet, Spans
from cdr_policy.promotion.decisions import SCHEMA, Counts, Decisions, Promoted
from cdr_policy.promotion.evidence import World
from cdr_policy.promotion.gate import HOLD, PROMOTE, WAIT, Judgement, Pending, Verdict
from cdr_policy.promotion.watch import Trip
from cdr_policy.timeutil import iso

MAX_LISTED = 1000
MAX_EVIDENCE = 32  # promoted changes the manifest names with their evidence
# Addresses the manifest keeps held back (collapsed prefixes): beyond, the oldest are forgotten
# (they must soak and pass the audit evidence again).
MAX_HELD_BACK = 50_000


def _order(v: Verdict) -> tuple[int, int, str]:
    rank = {HOLD: 0, PROMOTE: 2, WAIT: 3}[v.decision]
    if v.evidence.hits and v.decision != HOLD:
        rank = 1
    return rank, -v.evidence.hits, v.change


def decisions(world: World, judgement: Judgement, *, bundle: str, unjudged: int = 0) -> Decisions:
    """Render's document for the bundle ``bundle`` it composed (checked against the schema);
    ``unjudged``: the changes left waiting without a judgement (counted as waiting)."""
    promoted = judgement.promoted()
    counts = judgement.counts()
    counts[WAIT] += unjudged
    decided = Decisions(
        channel=world.channel.name,
        source=world.source,
        bundle=bundle,
        over=world.current.digest,
        decided_at=iso(world.now),
        settings=world.promote,
        counts=Counts(**counts),
        promoted=Promoted(
            prefixes=tuple(v.value for v in promoted if v.kind == PREFIX),
            ports=tuple(v.value for v in promoted if v.kind == PORT),
            rules={v.value: v.fingerprint or "" for v in promoted if v.kind == RULE},
        ),
        changes=tuple(v.decided() for v in sorted(judgement.verdicts, key=_order)[:MAX_LISTED]),
        watch=tuple(t.decided() for t in judgement.trips),
    )
    return _checked(decided.to_json(), f"the promotion decisions of channel {world.channel.name}")


def published(decided: Decisions, *, at: datetime, status: str, generation: int | None, reason: str) -> Decisions:
    """Publish's copy of ``decided``: with what it did."""
    outcome = {"at": iso(at), "status": status, "generation": generation, "reason": reason[:4096]}
    return _checked({**decided.to_json(), "publish": outcome}, f"the promotion report of channel {decided.channel}")


def replaced(decided: Decisions, judgement: Judgement) -> Decisions:
    """``decided`` with the verdicts Publish reached for the changes it re-judged."""
    found = {v.change: v for v in judgement.verdicts}
    listed = [found.pop(c.change).decided() if c.change in found else c for c in decided.changes]
    listed += [v.decided() for v in found.values()]
    return replace(decided, changes=tuple(listed[:MAX_LISTED]), watch=tuple(t.decided() for t in judgement.trips))


def listed(decided: Decisions, *, promoted_only: bool) -> Pending:
    """The changes ``decided`` promoted (and, unless ``promoted_only``, those it lists), to judge again."""
    prefixes = list(decided.promoted.prefixes)
    ports = list(decided.promoted.ports)
    rules = dict(decided.promoted.rules)
    if not promoted_only:
        for change in decided.changes:
            value = change.value
            if change.kind == PREFIX and value not in prefixes:
                prefixes.append(value)
            elif change.kind == PORT and value not in ports:
                ports.append(value)
            elif change.kind == RULE and change.fingerprint is not None:
                rules.setdefault(value.partition("@")[0], change.fingerprint)
    sources = {c.change: c.sources for c in decided.changes}
    try:
        spans = Spans.of(prefixes)
    except ValueError as exc:
        raise BundleError(
            f"the promotion decisions of channel {decided.channel} name a prefix that is not one"
        ) from exc
    return Pending(spans, tuple(ports), rules, sources)


def changes_of(verdicts: Iterable[Verdict]) -> Changes:
    """The changes of ``verdicts`` as a manifest records them."""
    verdicts = list(verdicts)
    prefixes = AddressSet.of_spans(Spans.of([v.value for v in verdicts if v.kind == PREFIX]))
    return Changes(
        prefixes=prefixes.to_fields(),
        ports=tuple(sorted(v.value for v in verdicts if v.kind == PORT)),
        rules=tuple(sorted((v.value, v.fingerprint or "") for v in verdicts if v.kind == RULE)),
        count=len(verdicts),
    )


def manifest_record(world: World, judgement: Judgement, *, counts: Counts, taken_back: Trip | None) -> Promotion:
    """The signed manifest's record of a generation (see the module docstring). ``counts``: the
    decisions of every change Render judged; ``taken_back``: the tripped generation whose changes
    this one takes out."""
    promoted = judgement.promoted()
    by_evidence = sorted(promoted, key=lambda v: (-v.evidence.hits, -len(v.evidence.workloads), v.change))
    rolled = None
    if taken_back is not None:
        rolled = RolledBack(
            generation=taken_back.generation,
            reason="; ".join(taken_back.reasons)[:512],
            changes=_changes(taken_back.addresses, taken_back.ports, taken_back.rules, 0),
        )
    return Promotion(
        source=world.source,
        over=world.current.digest,
        decided_at=iso(world.now),
        promoted=changes_of(promoted),
        pending={"wait": counts.wait, "hold": counts.hold},
        approved=tuple(GrantUsed(g.fingerprint(), g.key_id, len(g.changes)) for g in judgement.grants()),
        evidence=tuple(
            PromotedEvidence(
                change=v.change,
                how=v.how or "soaked",
                in_audit_since=v.evidence.in_audit_since,
                clusters=v.evidence.clusters,
                hits=v.evidence.hits,
                workloads=len(v.evidence.workloads),
            )
            for v in by_evidence[:MAX_EVIDENCE]
        ),
        rolled_back=rolled,
        held_back=_held_back(world, judgement, rolled),
    )


def _held_back(world: World, judgement: Judgement, rolled: RolledBack | None) -> Changes | None:
    """What stays held: what the shipped manifest held back and this generation takes back, less
    what this generation promoted (an approver approved it again)."""
    manifest = world.current.manifest
    before = manifest.promotion.held_back if manifest is not None and manifest.promotion is not None else None
    parts = [c for c in (before, rolled.changes if rolled else None) if c is not None]
    if not parts:
        return None
    addresses = AddressSet.empty()
    ports: set[str] = set()
    rules: dict[str, str] = {}
    for part in parts:
        addresses = addresses.union(AddressSet.from_fields(dict(part.prefixes)))
        ports.update(part.ports)
        rules.update(dict(part.rules))
    promoted = judgement.promoted()
    again = AddressSet.of_spans(Spans.of([v.value for v in promoted if v.kind == PREFIX]))
    held = Spans.of(addresses.prefixes())
    kept = [p for p, inside in zip(held.values, again.covers(held).tolist(), strict=True) if not inside]
    kept = kept[:MAX_HELD_BACK]
    ports -= {v.value for v in promoted if v.kind == PORT}
    for v in promoted:
        if v.kind == RULE and rules.get(v.value) == v.fingerprint:
            del rules[v.value]
    if not (kept or ports or rules):
        return None
    return _changes(AddressSet.of_spans(Spans.of(kept)), frozenset(ports), rules, 0)


def _changes(addresses: AddressSet, ports: Iterable[str], rules: Mapping[str, str], count: int) -> Changes:
    prefixes = addresses.prefixes()
    return Changes(
        prefixes=addresses.to_fields(),
        ports=tuple(sorted(ports)),
        rules=tuple(sorted(rules.items())),
        count=count or len(prefixes) + len(list(ports)) + len(rules),
    )


def _checked(doc: Mapping[str, object], what: str) -> Decisions:
    try:
        return Decisions.from_json(doc)
    except ContractError as exc:
        raise BundleError(f"{what} do not match {SCHEMA}: {exc}") from exc

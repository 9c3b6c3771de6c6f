"""The operator's view of a promoting channel (``cdr_policy.promotion``):

- ``cdr-policy channel evidence <channel> --dist URL [--json]``: each pending change with the
  evidence its audit channel gave so far and the decision (promote, wait, hold) with its reasons,
  as Publish last verified them (``promotion/<channel>.json``), and any watch that tripped;
- ``cdr-policy channel approve <channel> --change prefix:<cidr> ...``: an approver's grant of
  held (or waiting) changes, the same signed, used-once grant as a held bundle's
  (``bundle.approvals``); the next render promotes them;
- what the signed manifest records of a generation's promotion, for ``channel show``,
  ``channel history`` and ``fleet status``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cdr_policy import jsonio, layout
from cdr_policy.bundle.approvals import MAX_GRANT_BYTES, changes_digest, grant
from cdr_policy.bundle.manifest import Manifest
from cdr_policy.bundle.signing import Signer
from cdr_policy.errors import BundleError, ConfigError, ContractError
from cdr_policy.promotion.decisions import ChangeDecision, Decisions, read_decisions
from cdr_policy.schemas import fields_from_json
from cdr_policy.storage import NotFound, Store
from cdr_policy.timeutil import format_duration, utcnow

MAX_CHANGES = 256  # per grant (approval.schema.json)
SHOWN = 50  # changes printed one by one (--json: all the report lists)
_NAMES = {"promote": "PROMOTE", "wait": "WAIT", "hold": "HOLD"}


def evidence(dist: Store, channel: str) -> Decisions:
    """The channel's promotion report (ConfigError when there is none)."""
    key = layout.promotion_report_key(channel)
    try:
        return read_decisions(dist, key)[0]
    except NotFound as exc:
        raise ConfigError(
            f"channel {channel} has no promotion report in {dist.describe()} (it does not promote, or Publish "
            "has not run for it since it does)"
        ) from exc


def evidence_lines(decided: Decisions) -> list[str]:
    s = decided.settings
    out = [
        f"channel {decided.channel} promotes from {decided.source}: soak {format_duration(s.soak_s)}, at most "
        f"{s.max_workloads_hit} workload(s) hit, {s.min_clusters_reporting} reporting cluster(s) needed"
        + (f", protected namespaces {', '.join(s.protected_namespaces)}" if s.protected_namespaces else ""),
    ]
    if s.watch is not None:
        w = s.watch
        out.append(
            f"  watch after enforcing: {format_duration(w.window_s)}, at most {w.max_workloads_hit} workload(s) "
            f"stopped, {w.max_rate_increase:g}x the events a minute before (from {w.min_events} events)"
            + (", takes the changes back" if w.rollback else "")
        )
    over = (decided.over or "none")[:12]
    out.append(f"decided by Render at {decided.decided_at}: bundle {decided.bundle[:12]} composed over {over}")
    if decided.publish is not None:
        p = decided.publish
        generation = f" as generation {p.generation}" if p.status in ("published", "refreshed") else ""
        out.append(f"Publish at {p.at}: {p.status}{generation}" + (f" ({p.reason})" if p.reason else ""))
    c = decided.counts
    out.append(f"changes: {c.promote} promote, {c.wait} wait, {c.hold} hold")
    for change in decided.changes[:SHOWN]:
        out += _change_lines(decided, change)
    if len(decided.changes) > SHOWN:
        out.append(f"... {len(decided.changes) - SHOWN} more listed (--json)")
    for trip in decided.watch:
        back = "; its changes were taken back" if trip.rolled_back else ""
        out.append(f"watch tripped: generation {trip.generation} (published {trip.published_at}){back}")
        out += [f"    {r}" for r in trip.reasons]
        out += [f"    caused by {c.change}: {c.events} event(s)" for c in trip.changes]
        out += [f"    {w.line()}" for w in trip.workloads]
    return out


def _change_lines(decided: Decisions, change: ChangeDecision) -> list[str]:
    ev = change.evidence
    how = f" ({change.how})" if change.how else ""
    sources = f"  [{', '.join(change.sources)}]" if change.sources else ""
    out = [f"{_NAMES[change.decision]:<8}{change.change}{how}{sources}"]
    out += [f"          {r}" for r in change.reasons]
    since = f"on {decided.source} since {ev.in_audit_since}" if ev.in_audit_since else f"not on {decided.source}"
    out.append(
        f"          evidence: {since}, {ev.clusters} reporting cluster(s), {ev.hits} hit(s) in "
        f"{ev.workloads_total} workload(s)"
        + (f", namespaces {', '.join(f'{ns} ({n})' for ns, n in ev.namespaces.items())}" if ev.namespaces else "")
    )
    out += [f"            {w.line()}" for w in ev.workloads]
    if change.decision != "promote":
        out.append(f"          approve: cdr-policy channel approve {decided.channel} --change {change.change} ...")
    return out


def change_argument(text: str) -> str:
    """``--change``: a change id as ``channel evidence`` prints it."""
    from cdr_policy.promotion.gate import parse_change

    try:
        parse_change(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def approve_changes(
    state: Store, dist: Store, channel: str, changes: Sequence[str], *, approver: Signer, reason: str, valid_for: Any
) -> list[str]:
    """Grant ``changes`` of ``channel`` over the bundle it ships; the lines to print. Each must be a
    pending change of the channel's promotion report."""
    if len(set(changes)) > MAX_CHANGES:
        raise ConfigError(f"--change: at most {MAX_CHANGES} changes per approval")
    pending = {c.change: c for c in evidence(dist, channel).changes if c.decision != "promote"}
    unknown = sorted(set(changes) - set(pending))
    if unknown:
        raise ConfigError(
            f"{unknown[0]} is not a pending change of channel {channel} (cdr-policy channel evidence lists them)"
        )
    try:
        previous: str | None = Manifest.parse(
            dist.get(layout.channel_manifest_key(channel), max_bytes=1 << 20).data, channel
        ).digest
    except (NotFound, BundleError):
        previous = None
    listed = sorted(set(changes))
    signed = grant(
        channel,
        changes_digest(listed),
        previous,
        signer=approver,
        now=utcnow(),
        reason=reason,
        validity=valid_for,
        changes=listed,
    )
    data = jsonio.dumps_pretty(signed.to_json())
    if len(data) > MAX_GRANT_BYTES:
        raise ConfigError("--change: too many changes for one approval; approve them in smaller groups")
    state.put(signed.key, data, "application/json")
    over = f"over bundle {previous[:12]}" if previous else "for a channel that ships nothing usable"
    out = [f"approved: {len(listed)} change(s) of channel {channel} {over}, until {signed.expires_at}"]
    out += [f"  {c} (was {pending[c].decision}: {'; '.join(pending[c].reasons)})" for c in listed]
    out.append("  the next render promotes them; Publish verifies the grant, records it and deletes it")
    return out


def manifest_lines(manifest: Manifest) -> list[str]:
    """What a manifest records of its promotion (nothing when its channel does not promote)."""
    p = manifest.promotion
    if p is None:
        return []
    out = [
        f"promotion: from {p.source} over {(p.over or 'none')[:12]} at {p.decided_at}: {p.promoted.count} change(s) "
        f"promoted ({len(p.approved)} grant(s)), {p.pending['wait']} waiting, {p.pending['hold']} held"
    ]
    for e in p.evidence:
        out.append(
            f"  {e.change} ({e.how}): on {p.source} since {e.in_audit_since or '-'}, {e.clusters} cluster(s), "
            f"{e.hits} hit(s) in {e.workloads} workload(s)"
        )
    for a in p.approved:
        out.append(f"  grant {a.grant[:12]} by {a.approver}: {a.changes} change(s)")
    if p.rolled_back is not None:
        out.append(
            f"  took back the {p.rolled_back.changes.count} change(s) of generation {p.rolled_back.generation}: "
            f"{p.rolled_back.reason}"
        )
    if p.held_back is not None:
        out.append(f"  held until approved: {p.held_back.count} change(s) taken back")
    return out


@dataclass(frozen=True)
class GenerationPromotion:
    """What a generation promoted, as ``channel history`` and ``fleet status`` show it (``--json``:
    ``to_json``, read back by ``from_json``)."""

    generation: int | None
    source: str
    promoted: int
    approved: int
    waiting: int
    held: int
    rolled_back: int | None  # the generation whose changes it took back
    held_back: int

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "from": self.source,
            "promoted": self.promoted,
            "approved": self.approved,
            "waiting": self.waiting,
            "held": self.held,
            "rolled_back": self.rolled_back,
            "held_back": self.held_back,
        }

    @classmethod
    def from_json(cls, doc: Any, what: str = "generation promotion") -> GenerationPromotion:
        """What ``to_json`` wrote (``source`` as ``from``); ContractError naming the field."""
        fields = fields_from_json(cls, doc, what, given=("source",), derived=("from",))
        if not isinstance(doc["from"], str):
            raise ContractError(f"malformed {what}: from is not a string")
        return cls(source=doc["from"], **fields)

    def line(self) -> str:
        taken = f", took back generation {self.rolled_back}'s changes" if self.rolled_back else ""
        return (
            f"promoted {self.promoted} change(s) from {self.source} ({self.approved} approved), "
            f"{self.waiting} waiting, {self.held} held, {self.held_back} held back{taken}"
        )


def summary(manifest: Manifest | None) -> GenerationPromotion | None:
    """A manifest's promotion (None: its channel does not promote)."""
    if manifest is None or manifest.promotion is None:
        return None
    p = manifest.promotion
    return GenerationPromotion(
        generation=manifest.generation,
        source=p.source,
        promoted=p.promoted.count,
        approved=sum(a.changes for a in p.approved),
        waiting=p.pending["wait"],
        held=p.pending["hold"],
        rolled_back=p.rolled_back.generation if p.rolled_back else None,
        held_back=p.held_back.count if p.held_back else 0,
    )

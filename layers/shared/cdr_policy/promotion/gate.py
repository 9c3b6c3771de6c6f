"""The decision about each pending change of a promoting channel (``judge``): ``promote``,
``wait`` or ``hold``, with its reasons and what the audit channel saw of it.

A change is a prefix the channel does not block whole yet (one ranked entry: a feed entry or a CDR
detection), a port it does not name yet, or a behaviour rule whose fingerprint of what it matches
is new or changed (``promotion.content``). For each:

1. An approver's grant naming it (``bundle.approvals.change_grants``, over the bundle the channel
   ships) promotes it (``approved``), whatever else holds it; the reasons say what it overrode.
2. **hold**: it was taken back because enforcing it hurt and is not approved again (``held_back``
   in the signed manifest), or it is being taken back now, or the channel is held by a tripped watch
   (``promotion.watch``); or the audit channel's clusters report it would have blocked something in
   a protected namespace (or in a namespace their status folded away), or more than
   ``max_workloads_hit`` distinct workloads, within the soak.
3. **wait**: the audit channel does not ship it now, has not shipped it for the whole soak (at
   every sample of its signed history, ``evidence.World.audit_samples``), or fewer than
   ``min_clusters_reporting`` of its clusters that report fresh hits applied a bundle holding it;
   or more than ``MAX_PROMOTED`` prefixes were promoted already in this decision (rank order).
4. **promote** (``soaked``) otherwise.

Evidence is read only through ``hits.fleet`` (rows checked against each cluster's own channel's
bundles, counts bounded): a cluster can count one reporting cluster and its own hits, no more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np

from cdr_policy.bundle.approvals import Grant
from cdr_policy.hits.aggregate import SectionRow
from cdr_policy.hits.attribute import PORT, PREFIX, RULE
from cdr_policy.netprefix import BITS, folded, parse_canonical
from cdr_policy.promotion.addresses import AddressSet, Spans
from cdr_policy.promotion.content import Content, change_id
from cdr_policy.promotion.decisions import ChangeDecision, ChangeEvidence
from cdr_policy.promotion.evidence import MAX_APPLIED, World
from cdr_policy.promotion.watch import Trip, Workload, workload_of, workload_rows
from cdr_policy.timeutil import parse_iso

PROMOTE, WAIT, HOLD = "promote", "wait", "hold"
SOAKED, APPROVED = "soaked", "approved"
# Prefixes one publish promotes at most (the best-ranked first); the rest wait for the next.
MAX_PROMOTED = 10_000
MAX_NAMESPACES_SHOWN = 20


def parse_change(text: str) -> tuple[str, str]:
    """(kind, value) of a change id; ValueError for anything else."""
    kind, _, value = text.partition(":")
    if kind == PREFIX:
        prefix = parse_canonical(value)
        if prefix.length > BITS[prefix.version]:
            raise ValueError(f"{text[:60]!r}: not a prefix")
        return kind, value
    if kind == PORT and value.partition("/")[0] in ("tcp", "udp") and value.partition("/")[2].isdigit():
        return kind, value
    if kind == RULE and "@" in value:
        return kind, value
    raise ValueError(f"{text[:60]!r} is not a change: use prefix:<cidr>, port:tcp/<n> or rule:<id>@<fingerprint>")


@dataclass(frozen=True)
class Pending:
    """The changes to judge: prefixes (in rank order), ports, rules (id -> fingerprint of the new
    version), and each change's sources (for the report)."""

    prefixes: Spans = field(default_factory=lambda: Spans.of([]))
    ports: tuple[str, ...] = ()
    rules: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prefixes) + len(self.ports) + len(self.rules)


@dataclass
class Evidence:
    """What the audit channel saw of one change."""

    in_audit_since: str | None = None
    clusters: int = 0
    hits: int = 0
    workloads: Counter[Workload] = field(default_factory=Counter)
    namespaces: Counter[str] = field(default_factory=Counter)

    def add(self, cluster: str, row: SectionRow) -> None:
        self.hits += row.count
        self.workloads[workload_of(cluster, row)] += row.count
        self.namespaces[row.namespace or "?"] += row.count

    def decided(self) -> ChangeEvidence:
        """As the decisions document lists it."""
        return ChangeEvidence(
            in_audit_since=self.in_audit_since,
            clusters=self.clusters,
            hits=self.hits,
            workloads=workload_rows(self.workloads),
            workloads_total=len(self.workloads),
            namespaces=dict(sorted(self.namespaces.items())[:MAX_NAMESPACES_SHOWN]),
        )


@dataclass(frozen=True)
class Verdict:
    change: str
    kind: str
    value: str
    decision: str
    how: str | None
    reasons: tuple[str, ...]
    evidence: Evidence
    fingerprint: str | None = None
    sources: tuple[str, ...] = ()
    grant: Grant | None = None  # the approver's grant that promoted it

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTE

    def decided(self) -> ChangeDecision:
        """As the decisions document lists it."""
        return ChangeDecision(
            change=self.change,
            kind=self.kind,
            decision=self.decision,
            how=self.how,
            reasons=self.reasons,
            sources=self.sources,
            evidence=self.evidence.decided(),
            fingerprint=self.fingerprint,
        )


@dataclass(frozen=True)
class Judgement:
    verdicts: tuple[Verdict, ...]
    trips: tuple[Trip, ...]

    def grants(self) -> list[Grant]:
        """The grants whose changes it promoted (each once, by key)."""
        found = {v.grant.key: v.grant for v in self.verdicts if v.grant is not None}
        return [found[k] for k in sorted(found)]

    def only(self, changes: set[str]) -> Judgement:
        """The verdicts of ``changes`` alone."""
        return Judgement(tuple(v for v in self.verdicts if v.change in changes), self.trips)

    def counts(self) -> dict[str, int]:
        found = Counter(v.decision for v in self.verdicts)
        return {d: found[d] for d in (PROMOTE, WAIT, HOLD)}

    def promoted(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.promoted]


def judge(world: World, pending: Pending, trips: Iterable[Trip]) -> Judgement:
    """Each change of ``pending``'s decision (see the module docstring)."""
    trips = tuple(trips)
    prefix_ids = [change_id(PREFIX, v) for v in pending.prefixes.values]
    port_ids = [change_id(PORT, p) for p in pending.ports]
    rule_ids = [change_id(RULE, r, fp) for r, fp in sorted(pending.rules.items())]
    evidence = [Evidence() for _ in range(len(prefix_ids) + len(port_ids) + len(rule_ids))]
    offsets = {PREFIX: 0, PORT: len(prefix_ids), RULE: len(prefix_ids) + len(port_ids)}
    held = _taken_back(world, trips, pending)
    _soak_and_clusters(world, pending, evidence, offsets)
    _hits(world, pending, evidence, offsets)
    approvals = {change: grant for grant in world.grants for change in grant.changes}
    verdicts, promoted_prefixes = [], 0
    kinds: list[tuple[str, str, str | None]] = [(PREFIX, v, None) for v in pending.prefixes.values]
    kinds += [(PORT, p, None) for p in pending.ports]
    kinds += [(RULE, r, fp) for r, fp in sorted(pending.rules.items())]
    for i, ((kind, value, fingerprint), change) in enumerate(zip(kinds, prefix_ids + port_ids + rule_ids, strict=True)):
        ev = evidence[i]
        holds = list(held.get(i, ())) or [f"the channel is held: {t.why()}" for t in trips]
        holds += _evidence_holds(world, ev)
        grant = approvals.get(change)
        if grant is not None:
            reasons = [f"approved by {grant.key_id}"] + [f"approved over: {h}" for h in holds]
            decision, how = PROMOTE, APPROVED
        elif holds:
            decision, how, reasons = HOLD, None, holds
        else:
            reasons = _waits(world, ev)
            if not reasons and kind == PREFIX and promoted_prefixes >= MAX_PROMOTED:
                reasons = [f"{MAX_PROMOTED:,} prefixes are promoted per publish at most; the next publish takes it"]
            decision, how = (WAIT, None) if reasons else (PROMOTE, SOAKED)
            if decision == PROMOTE and kind == PREFIX:
                promoted_prefixes += 1
        sources = pending.sources.get(change, ())
        verdicts.append(Verdict(change, kind, value, decision, how, tuple(reasons), ev, fingerprint, sources, grant))
    return Judgement(tuple(verdicts), trips)


def _taken_back(world: World, trips: tuple[Trip, ...], pending: Pending) -> dict[int, list[str]]:
    """Per change (its position): why it is held as taken back (by an earlier watch, or now)."""
    out: dict[int, list[str]] = {}
    offsets = (0, len(pending.prefixes), len(pending.prefixes) + len(pending.ports))
    rules = sorted(pending.rules.items())

    def mark(addresses: AddressSet, ports: Iterable[str], fingerprints: Mapping[str, str], why: str) -> None:
        if len(pending.prefixes) and addresses:
            for i in np.flatnonzero(addresses.touches(pending.prefixes)).tolist():
                out.setdefault(i, []).append(why)
        for j, port in enumerate(pending.ports):
            if port in ports:
                out.setdefault(offsets[1] + j, []).append(why)
        for j, (rule, fp) in enumerate(rules):
            if fingerprints.get(rule) == fp:
                out.setdefault(offsets[2] + j, []).append(why)

    manifest = world.current.manifest
    back = manifest.promotion.held_back if manifest is not None and manifest.promotion is not None else None
    if back is not None:
        mark(
            AddressSet.from_fields(dict(back.prefixes)),
            back.ports,
            dict(back.rules),
            "taken back after enforcing it hurt (promote.watch); approve it to promote it again",
        )
    if world.promote.watch is not None and world.promote.watch.rollback:
        for trip in trips:
            if not trip.rolled_back:  # once taken back, the manifest holds them back
                mark(trip.addresses, trip.ports, trip.rules, f"being taken back: {trip.why()}")
    return out


def _soak_and_clusters(world: World, pending: Pending, evidence: list[Evidence], offsets: dict[str, int]) -> None:
    """``in_audit_since`` (the oldest sample of the unbroken run holding the change, from now back)
    and ``clusters`` (fresh reporting clusters whose applied bundle holds it)."""
    n = len(evidence)
    held_by: dict[str, np.ndarray] = {}

    def holding(content: Content | None) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        if content is None:
            return mask
        if len(pending.prefixes):
            mask[: len(pending.prefixes)] = content.addresses.covers(pending.prefixes)
        for j, port in enumerate(pending.ports):
            mask[offsets[PORT] + j] = port in content.ports
        for j, (rule, fp) in enumerate(sorted(pending.rules.items())):
            mask[offsets[RULE] + j] = content.rules.get(rule) == fp
        return mask

    alive = np.ones(n, dtype=bool)
    since: list[str | None] = [None] * n
    for sample in world.audit_samples():
        if sample.manifest is None:
            break
        digest = sample.manifest.digest
        if digest not in held_by:
            held_by[digest] = holding(world.content_of(sample.manifest))
        alive &= held_by[digest]
        if not alive.any():
            break
        for i in np.flatnonzero(alive).tolist():
            since[i] = sample.manifest.created_at
    extra = 0
    for cluster in world.reporting():
        digest = cluster.applied or ""
        if digest not in held_by and extra < MAX_APPLIED:
            extra += 1
            manifest = world.entry(world.source, digest)
            held_by[digest] = holding(world.content_of(manifest) if manifest is not None else None)
        for i in np.flatnonzero(held_by.get(digest, np.zeros(n, dtype=bool))).tolist():
            evidence[i].clusters += 1
    world.forget_contents()
    for i, moment in enumerate(since):
        evidence[i].in_audit_since = moment


def _hits(world: World, pending: Pending, evidence: list[Evidence], offsets: dict[str, int]) -> None:
    """Each of the audit channel's counted rows within the soak, added to the changes it hit."""
    ports = {port: offsets[PORT] + j for j, port in enumerate(pending.ports)}
    rules = {rule: offsets[RULE] + j for j, rule in enumerate(sorted(pending.rules))}
    for counted in world.audit_rows():
        row = counted.row
        if row.kind == PORT:
            hit = [ports[row.indicator]] if row.indicator in ports else []
        elif row.kind == RULE:
            hit = [rules[row.indicator]] if row.indicator in rules else []
        else:
            address = folded(str(row.address)) if row.address else None
            if address is not None and address.length == BITS[address.version]:
                hit = pending.prefixes.holding(address.version, address.network, address.network)
            else:
                p = parse_canonical(row.indicator)
                hit = pending.prefixes.holding(p.version, p.network, p.last)
        for i in hit:
            evidence[i].add(counted.cluster, row)


def _evidence_holds(world: World, ev: Evidence) -> list[str]:
    promote, source = world.promote, world.source
    out = []
    protected = sorted(ns for ns in ev.namespaces if ns in promote.protected_namespaces)
    if protected:
        events = sum(ev.namespaces[ns] for ns in protected)
        out.append(f"would have blocked {events} event(s) in protected namespace(s) {', '.join(protected)} on {source}")
    if "?" in ev.namespaces and promote.protected_namespaces:
        out.append(f"{ev.namespaces['?']} hit(s) on {source} whose namespace the cluster folded away may be protected")
    if len(ev.workloads) > promote.max_workloads_hit:
        out.append(
            f"would have blocked {len(ev.workloads)} distinct workloads on {source} "
            f"(at most {promote.max_workloads_hit})"
        )
    return out


def _waits(world: World, ev: Evidence) -> list[str]:
    promote, source = world.promote, world.source
    if ev.in_audit_since is None:
        return [f"not shipped on {source} now"]
    out = []
    soaked = world.now - parse_iso(ev.in_audit_since)
    if soaked < timedelta(seconds=promote.soak_s):
        out.append(f"on {source} for {_age(soaked)} of the {_age(timedelta(seconds=promote.soak_s))} soak")
    if ev.clusters < promote.min_clusters_reporting:
        out.append(
            f"{ev.clusters} of the {promote.min_clusters_reporting} {source} cluster(s) needed report fresh hits "
            "with it applied"
        )
    return out


def _age(span: timedelta) -> str:
    seconds = max(int(span.total_seconds()), 0)
    if seconds < 120:
        return f"{seconds}s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"

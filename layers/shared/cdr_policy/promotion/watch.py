"""The watch after enforcing (``promote.watch``): for ``for`` after each publish that promoted
changes, what the fleet's clusters of the channel stopped *because of those changes* (rows whose
address lies in the changes' addresses, or whose port or rule is one of them, attributed with that
bundle or a later one, from the publish's hour on). The generation trips when the changes hit more
than ``max_workloads_hit`` distinct workloads, or when, from ``min_events`` events on, they stop
more events per minute than ``max_rate_increase`` times what the whole channel stopped per minute
in as long a span before the publish.

A tripped generation holds the channel (nothing more is promoted while it is watched) and, with
``rollback``, its changes are taken out again (``promotion.compose``) and held until an approver
approves them (``held_back`` in the signed manifest). Each cluster's rows are its own word, checked
against its channel's bundles and bounded (``hits.fleet``): a hostile cluster can add its own
counts of the changes its channel holds, never counts for anything else.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cdr_policy.bundle.manifest import Manifest
from cdr_policy.hits.aggregate import SectionRow, hour_of
from cdr_policy.hits.attribute import PORT, PREFIX, RULE
from cdr_policy.hits.fleet import Counted
from cdr_policy.netprefix import BITS, folded
from cdr_policy.promotion.addresses import AddressSet, Spans
from cdr_policy.promotion.content import change_id
from cdr_policy.promotion.decisions import TripChange, WatchTrip, WorkloadHits
from cdr_policy.promotion.evidence import World
from cdr_policy.timeutil import parse_iso

Workload = tuple[str, str, str]  # cluster, namespace, workload ("?" where the cluster folded it away)
CHANGES_SHOWN = 10  # the changes that stopped the most events, named in a trip


@dataclass(frozen=True)
class Trip:
    """Generation ``generation`` (bundle ``digest``, over ``over``) promoted changes that hurt."""

    generation: int
    digest: str
    over: str | None
    published_at: str
    addresses: AddressSet
    ports: frozenset[str]
    rules: Mapping[str, str]
    events: int
    workloads: Counter[Workload]
    changes: Counter[str]  # change id (``prefix:...``, ``port:...``, ``rule:...@...``) -> events it stopped
    reasons: tuple[str, ...]
    rolled_back: bool  # a later generation took its changes out already

    def why(self) -> str:
        return f"the changes generation {self.generation} promoted {'; '.join(self.reasons)} after enforcing"

    def named(self) -> list[dict[str, Any]]:
        """The changes that stopped the most events, most first: what the alarm and the report name."""
        top = sorted(self.changes.items(), key=lambda kv: (-kv[1], kv[0]))[:CHANGES_SHOWN]
        return [{"change": change, "events": n} for change, n in top]

    def decided(self) -> WatchTrip:
        """As the decisions document lists it."""
        return WatchTrip(
            generation=self.generation,
            published_at=self.published_at,
            reasons=self.reasons,
            events=self.events,
            workloads=workload_rows(self.workloads),
            workloads_total=len(self.workloads),
            changes=tuple(TripChange(c["change"], c["events"]) for c in self.named()),
            changes_total=len(self.changes),
            rolled_back=self.rolled_back,
        )


def workload_rows(workloads: Counter[Workload], limit: int = 10) -> tuple[WorkloadHits, ...]:
    """The most hit workloads, as report rows."""
    top = sorted(workloads.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return tuple(WorkloadHits(c, ns, wl, n) for (c, ns, wl), n in top)


def workload_of(cluster: str, row: SectionRow) -> Workload:
    return (cluster, row.namespace or "?", row.workload or "?")


def trips(world: World) -> list[Trip]:
    """The generations of the watch's window whose promoted changes hurt, newest first."""
    watch = world.promote.watch
    if watch is None:
        return []
    start = world.now - timedelta(seconds=watch.window_s)
    rolled = {m.promotion.rolled_back.generation for m in world.history if m.promotion and m.promotion.rolled_back}
    own = list(world.own_rows())
    found, later = [], set()
    for manifest in world.history:
        later.add(manifest.digest)
        published = parse_iso(manifest.created_at)
        if published < start:
            break
        promotion = manifest.promotion
        if promotion is None or not promotion.promoted.count:
            continue
        trip = _judge(world, manifest, own, later, rolled)
        if trip is not None:
            found.append(trip)
    return found


def _judge(world: World, manifest: Manifest, own: list[Counted], later: set[str], rolled: set[int]) -> Trip | None:
    watch, promotion = world.promote.watch, manifest.promotion
    assert watch is not None and promotion is not None and manifest.generation is not None
    addresses = AddressSet.from_fields(dict(promotion.promoted.prefixes))
    ports, rules = frozenset(promotion.promoted.ports), dict(promotion.promoted.rules)
    published = parse_iso(manifest.created_at)
    since = hour_of(published)
    hours = max(1, math.ceil((world.now - published) / timedelta(hours=1)))
    before = hour_of(published - timedelta(hours=hours))
    events, earlier = 0, 0
    workloads: Counter[Workload] = Counter()
    changes: Counter[str] = Counter()
    for counted in own:
        row = counted.row
        if row.hour >= since and counted.digest in later and _caused(row, addresses, ports, rules):
            events += row.count
            workloads[workload_of(counted.cluster, row)] += row.count
            changes[_change(row, rules)] += row.count
        elif before <= row.hour < since:
            earlier += row.count
    rate = events / max((world.now - published).total_seconds() / 60, 1.0)
    rate_before = earlier / (hours * 60)
    reasons = []
    if len(workloads) > watch.max_workloads_hit:
        reasons.append(
            f"stopped {events} event(s) in {len(workloads)} distinct workloads (at most {watch.max_workloads_hit})"
        )
    if events >= watch.min_events and rate > watch.max_rate_increase * rate_before:
        reasons.append(
            f"stopped {rate:.2f} events a minute, against {rate_before:.2f} for the whole channel before "
            f"(at most {watch.max_rate_increase:g} times)"
        )
    if not reasons:
        return None
    return Trip(
        generation=manifest.generation,
        digest=manifest.digest,
        over=promotion.over,
        published_at=manifest.created_at,
        addresses=addresses,
        ports=ports,
        rules=rules,
        events=events,
        workloads=workloads,
        changes=changes,
        reasons=tuple(reasons),
        rolled_back=manifest.generation in rolled,
    )


def _change(row: SectionRow, rules: Mapping[str, str]) -> str:
    """The change a row caused: its indicator (the entry, port or rule its cluster attributed it to)."""
    if row.kind == RULE:
        return change_id(RULE, str(row.indicator), rules.get(row.indicator))
    return change_id(PORT if row.kind == PORT else PREFIX, str(row.indicator))


def _caused(row: SectionRow, addresses: AddressSet, ports: frozenset[str], rules: Mapping[str, str]) -> bool:
    """Whether a row counts events of the changes (``addresses``, ``ports``, ``rules``)."""
    if row.kind == "port":
        return bool(row.indicator in ports)
    if row.kind == "rule":
        return bool(row.indicator in rules)
    address = folded(str(row.address)) if row.address else None
    if address is not None and address.length == BITS[address.version]:
        return addresses.holds(address.version, address.network)
    return bool(addresses.touches(Spans.of([row.indicator])).any())

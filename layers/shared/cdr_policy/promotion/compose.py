"""Render's side of promotion: a promoting channel's bundle is composed from what it ships now
plus the changes that qualify (``Composer``, the ``policy.render.Gate`` of such a channel).

- Removals and expiries are never held: what the channel's render no longer holds is gone.
- A ranked entry the channel's current bundle blocks whole stays; every other one is a pending
  change, judged (``gate.judge``) and kept only when promoted. One unsoaked entry holds back only
  itself, never the others: a steady stream of new feed entries promotes each as it qualifies.
- A port the channel names now stays; a new one is a pending change.
- A rule whose fingerprint is unchanged stays; a new or changed one is a pending change, and
  while it is not promoted the channel keeps shipping the version it has (the same objects, read
  from its current bundle) or none.
- What a tripped watch takes back (``promotion.watch``, with ``rollback``) and what the signed
  manifest holds back are pending changes too, held unless approved; a rule taken back returns to
  the version the channel shipped before the generation that promoted it.

At most ``MAX_JUDGED`` entries are judged one by one per render (the best-ranked: more than any
publish promotes); the others wait and are counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cdr_policy.bundle.loader import load_files
from cdr_policy.bundle.manifest import Manifest
from cdr_policy.bundle.objects import placed_objects
from cdr_policy.bundle.provenance import load_published
from cdr_policy.errors import BundleError, StorageError
from cdr_policy.hits.attribute import PORT, PREFIX, RULE
from cdr_policy.netprefix.vector import intervals_v4
from cdr_policy.observability import logger
from cdr_policy.policy.naming import BUNDLE_KEY
from cdr_policy.policy.output import PolicyFile
from cdr_policy.policy.ranked import RankedTable
from cdr_policy.policy.render import Ports, policy_file
from cdr_policy.promotion import record
from cdr_policy.promotion.addresses import AddressSet, Spans
from cdr_policy.promotion.content import change_id, rule_fingerprints, rule_paths
from cdr_policy.promotion.decisions import Decisions
from cdr_policy.promotion.evidence import World
from cdr_policy.promotion.gate import Judgement, Pending, judge
from cdr_policy.promotion.watch import Trip, trips

MAX_JUDGED = 20_000


class Composer:
    """The gate of one promoting channel's render (see the module docstring)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.judgement: Judgement | None = None
        self.unjudged = 0

    def compose(
        self, table: RankedTable, ports: Ports, rules: dict[str, list[PolicyFile]]
    ) -> tuple[RankedTable, Ports, dict[str, list[PolicyFile]]]:
        world = self.world
        tripped = trips(world)
        back = _back(world, tripped)
        content = world.content
        stays = _rows(table, content.addresses.covers4, content.addresses.covers6)
        if back.addresses:
            stays &= ~_rows(table, back.addresses.touches4, back.addresses.touches6)
        candidates = np.flatnonzero(~stays)
        judged = candidates[:MAX_JUDGED]
        self.unjudged = len(candidates) - len(judged)
        values = [table.value(int(row)) for row in judged]
        names = table.sources_of(judged)
        sources = {change_id(PREFIX, v): tuple(names.get(int(r), ())) for v, r in zip(values, judged, strict=True)}
        texts = {f"{proto}/{number}" for _, (proto, number) in ports}
        pending_ports = sorted(p for p in texts if p not in content.ports or p in back.ports)
        versions = {rule: rule_fingerprints(f.obj for f in files) for rule, files in rules.items()}
        fingerprints = {rule: fps.get(rule, "") for rule, fps in versions.items()}
        pending_rules = {
            rule: fp for rule, fp in fingerprints.items() if content.rules.get(rule) != fp or back.rules.get(rule) == fp
        }
        self.judgement = judge(world, Pending(Spans.of(values), tuple(pending_ports), pending_rules, sources), tripped)
        promoted = {v.change for v in self.judgement.promoted()}
        keep = stays.copy()
        keep[judged] = [change_id(PREFIX, v) in promoted for v in values]
        kept_ports = [
            (i, p)
            for i, p in ports
            if f"{p[0]}/{p[1]}" not in pending_ports or change_id(PORT, f"{p[0]}/{p[1]}") in promoted
        ]
        composed = {}
        for rule, files in rules.items():
            if rule not in pending_rules or change_id(RULE, rule, pending_rules[rule]) in promoted:
                composed[rule] = files
            else:
                kept = self._fallback(rule, back, tripped)
                if kept:
                    composed[rule] = kept
        counts = self.judgement.counts()
        logger.info(
            "promotion composed",
            extra={"channel": world.channel.name, **counts, "unjudged": self.unjudged, "trips": len(tripped)},
        )
        return table.take(keep), kept_ports, composed

    def decisions(self, bundle: str) -> Decisions:
        """The decision document of the bundle composed (``record.decisions``)."""
        if self.judgement is None:
            raise ValueError("compose first")
        return record.decisions(self.world, self.judgement, bundle=bundle, unjudged=self.unjudged)

    def _fallback(self, rule: str, back: _Back, tripped: list[Trip]) -> list[PolicyFile]:
        """The version of ``rule`` the channel keeps while its new version is not promoted: the one
        it ships, or, when that one is taken back, the one before the generation that promoted it."""
        world = self.world
        shipped = world.content.rules.get(rule)
        if shipped is None:
            return []
        if back.rules.get(rule) != shipped:
            return _rule_files(world, world.current.manifest, rule)
        for trip in tripped:
            if trip.rules.get(rule) == shipped and trip.over is not None:
                return _rule_files(world, world.entry(world.channel.name, trip.over), rule)
        return []


class _Back:
    """What is held back (the signed manifest's ``held_back``) or being taken back (tripped)."""

    def __init__(self, addresses: AddressSet, ports: set[str], rules: dict[str, str]) -> None:
        self.addresses, self.ports, self.rules = addresses, ports, rules


def _back(world: World, tripped: list[Trip]) -> _Back:
    out = _Back(AddressSet.empty(), set(), {})
    manifest = world.current.manifest
    held = manifest.promotion.held_back if manifest is not None and manifest.promotion is not None else None
    if held is not None:
        out.addresses = AddressSet.from_fields(dict(held.prefixes))
        out.ports.update(held.ports)
        out.rules.update(dict(held.rules))
    if world.promote.watch is not None and world.promote.watch.rollback:
        for trip in tripped:
            out.addresses = out.addresses.union(trip.addresses)
            out.ports.update(trip.ports)
            out.rules.update(trip.rules)
    return out


def _rows(table: RankedTable, test4: Any, test6: Any) -> np.ndarray:
    """Per ranked row: ``test4``/``test6`` (an AddressSet's covers or touches) on its interval."""
    out = np.zeros(len(table), dtype=bool)
    v4 = np.flatnonzero(table.version == 4)
    if len(v4):
        out[v4] = test4(*intervals_v4(table.lo[v4], table.length[v4]))
    v6 = np.flatnonzero(table.version == 6).tolist()
    firsts = [int(table.hi[r]) << 64 | int(table.lo[r]) for r in v6]
    lasts = [f | ((1 << (128 - int(table.length[r]))) - 1) for f, r in zip(firsts, v6, strict=True)]
    out[v6] = test6(firsts, lasts)
    return out


def _rule_files(world: World, manifest: Manifest | None, rule: str) -> list[PolicyFile]:
    """The objects of ``rule`` in a bundle the channel shipped, as they were (its bundle label
    dropped: assembly sets the new one); none when the bundle or its files are unusable."""
    if manifest is None:
        return []
    try:
        index = world.index if manifest.digest == world.current.digest else load_published(world.dist, manifest)
        if index is None:
            return []
        files = load_files(world.dist, manifest, rule_paths(index, [rule]), published=True)
    except (BundleError, StorageError) as exc:
        logger.warning("a rule's shipped version is unusable", extra={"rule": rule, "error": str(exc)})
        return []
    out = []
    for path, obj in placed_objects(files):
        obj.get("metadata", {}).get("labels", {}).pop(BUNDLE_KEY, None)
        out.append(policy_file(obj, path))
    return out

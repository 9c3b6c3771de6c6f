"""Counting export lines against a bundle: every line read is either one of ours (a ``Hit``),
unattributed (another policy's event, a forwarded flow, another destination, another kind of
event) or malformed. The command (``cdr-policy hits``) and the node reader (``hits.reader``) count
the same way."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cdr_policy.bundle.provenance import ProvenanceIndex
from cdr_policy.hits.attribute import Hit, attribute
from cdr_policy.hits.events import Event, Malformed, parse_line
from cdr_policy.hits.files import TOO_LONG
from cdr_policy.schemas import fields_to_json, from_fields

TOTALS = ("read", "ours", "unattributed", "malformed")


@dataclass
class Totals:
    read: int = 0
    ours: int = 0
    unattributed: int = 0
    malformed: int = 0

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in TOTALS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Totals:
        return cls(**{name: int(d[name]) for name in TOTALS})

    def add(self, other: Totals) -> None:
        for name in TOTALS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def count_line(totals: Totals, engine: str, line: bytes, index: ProvenanceIndex) -> Hit | None:
    """Count one line of ``engine``'s export in ``totals``; the hit it is, if any."""
    event = read_event(totals, engine, line)
    return count_hit(totals, attribute(event, index)) if event is not None else None


def read_event(totals: Totals, engine: str, line: bytes) -> Event | None:
    """The event on one line of ``engine``'s export, counted as read (and as malformed, or as
    unattributed when it is an event of another kind); None when there is nothing to attribute."""
    totals.read += 1
    try:
        if line == TOO_LONG:
            raise Malformed("line too long")
        event = parse_line(engine, line)
    except Malformed:
        totals.malformed += 1
        return None
    if event is None:
        totals.unattributed += 1
    return event


def count_hit(totals: Totals, hit: Hit | None) -> Hit | None:
    """Count what an event's attribution found (``hit``, or None: not ours); returns ``hit``."""
    if hit is None:
        totals.unattributed += 1
    else:
        totals.ours += 1
    return hit


@dataclass
class Tally:
    """Totals over lines, and the hits of each (engine, object, kind, indicator, address, action)."""

    totals: Totals = field(default_factory=Totals)
    hits: Counter[tuple[str, str, str, str, str | None, str, int]] = field(default_factory=Counter)

    def line(self, engine: str, line: bytes, index: ProvenanceIndex) -> None:
        hit = count_line(self.totals, engine, line, index)
        if hit is not None:
            self.hits[hit.engine, hit.object, hit.kind, hit.indicator, hit.address, hit.action, hit.klass] += 1

    def report(self, index: ProvenanceIndex) -> HitsReport:
        """What ``cdr-policy hits`` prints: the hits, most first, each with its indicator's
        provenance, and the totals."""
        rows = []
        for (engine, obj, kind, indicator, address, action, klass), count in self.hits.items():
            p = index.classes[klass]
            rows.append(
                HitRow(
                    engine=engine,
                    object=obj,
                    address=address,
                    prefix=indicator if kind == "prefix" else None,
                    port=indicator if kind == "port" else None,
                    rule=indicator if kind == "rule" else None,
                    action=action,
                    count=count,
                    feeds=tuple(p.feeds),
                    findings=tuple(p.findings),
                    categories=tuple(p.categories),
                )
            )
        rows.sort(key=lambda r: (-r.count, r.engine, r.object, str(r.address), r.action))
        return HitsReport(tuple(rows), dataclasses.replace(self.totals))


@dataclass(frozen=True)
class HitRow:
    """Events of one engine, object, indicator (a prefix, a port or a rule), address and action."""

    engine: str
    object: str
    address: str | None
    prefix: str | None
    port: str | None
    rule: str | None
    action: str
    count: int
    feeds: tuple[str, ...]
    findings: tuple[str, ...]
    categories: tuple[str, ...]


@dataclass(frozen=True)
class HitsReport:
    """``cdr-policy hits``'s report (``--json`` prints ``to_json``)."""

    hits: tuple[HitRow, ...]
    events: Totals

    def to_json(self) -> dict[str, Any]:
        return fields_to_json(self)

    @classmethod
    def from_json(cls, doc: Any) -> HitsReport:
        return from_fields(cls, doc, "hits report")

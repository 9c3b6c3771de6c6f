"""The hits of a node or a cluster as a bounded table (``HitTable``) and its JSON form, the
*hits section* (``HitTable.to_section``, ``HitsSection``): what a node reader reports to its cluster's
agent and what the agent puts under ``hits`` in ``status/<cluster-id>.json``. The fleet commands,
the HitsRollup stage and the promotion of enforcement (issue 24) read it.

A row counts the events of one hour that hit one indicator of one object, with one action, from
one workload::

    {"hour": "2026-01-10T03:00:00Z", "engine": "tetragon", "object": "tp-cdr-blocklist-1f0c9a2e",
     "kind": "prefix", "indicator": "45.33.32.156/32", "address": "45.33.32.156", "action": "SIGKILL",
     "namespace": "shop", "workload": "web", "pod": null, "bundle": 0, "count": 3}

``bundle`` numbers the section's ``bundles`` (the digests of the bundles the rows were attributed
with; a row moves to a newer bundle while that one still has its object, whose name is its content).
``namespace``, ``workload`` and ``pod`` are kept only as far as the channel's ``hit_detail`` allows
(carried signed in the provenance index); ``address`` only for ``prefix`` rows.

Bounded whatever happens: rows older than ``RETENTION_HOURS`` age out; past ``max_rows`` rows are
folded, first the pods, then the addresses, the workloads and the namespaces (their counts kept in
the coarser row), and only then are the oldest hours' rows dropped (counted in ``dropped``); at
most ``MAX_BUNDLES`` bundles are referenced (the rows of older ones are dropped and counted). The
section also carries the lines' ``totals`` (read, ours, unattributed, malformed), ``counters`` by
engine, action, category and source kind (the agent's Prometheus metrics) and ``gaps`` (rotated
export files that were gone before a restarted reader could finish them).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from cdr_policy import layout
from cdr_policy.bundle.provenance import ProvenanceIndex
from cdr_policy.errors import BundleError
from cdr_policy.hits.attribute import PREFIX, Hit
from cdr_policy.hits.tally import Totals
from cdr_policy.timeutil import iso, parse_iso

RETENTION_HOURS = 7 * 24
MAX_BUNDLES = 16
MAX_COUNTERS = 512
# Rows a node reader reports, and rows a cluster's status carries (about 200 bytes each).
MAX_NODE_ROWS = 2_000
MAX_CLUSTER_ROWS = 2_000
# No count of a row, a total or a counter may exceed this (a day of a million events a second).
MAX_COUNT = 10**11
# The workload fields each ``hit_detail`` keeps.
DETAIL_FIELDS = {
    "off": (),
    "namespace": ("namespace",),
    "workload": ("namespace", "workload"),
    "pod": ("namespace", "workload", "pod"),
}


class Row(NamedTuple):
    hour: str
    engine: str
    object: str
    kind: str
    indicator: str
    address: str | None
    action: str
    namespace: str | None
    workload: str | None
    pod: str | None
    bundle: str  # the bundle's digest (numbered in the section)


# What is folded away, in this order, when a table holds too many rows.
FOLDS: tuple[tuple[str, Callable[[Row], Row]], ...] = (
    ("pod", lambda r: r._replace(pod=None)),
    ("address", lambda r: r._replace(address=None)),
    ("workload", lambda r: r._replace(workload=None)),
    ("namespace", lambda r: r._replace(namespace=None)),
)


class CounterKey(NamedTuple):
    engine: str
    action: str
    category: str
    source: str


def hour_of(moment: datetime) -> str:
    return iso(moment.replace(minute=0, second=0, microsecond=0))


@dataclass
class HitTable:
    rows: Counter[Row] = field(default_factory=Counter)
    counters: Counter[CounterKey] = field(default_factory=Counter)
    totals: Totals = field(default_factory=Totals)
    bundles: list[str] = field(default_factory=list)  # oldest first
    since: str | None = None
    gaps: int = 0
    dropped_rows: int = 0
    dropped_events: int = 0

    def add(self, hit: Hit, index: ProvenanceIndex, digest: str, now: datetime) -> None:
        """Count ``hit`` (attributed with ``index``, the bundle ``digest``) as far as the
        channel's ``hit_detail`` allows; ``now`` stands in for an event without a time."""
        if index.detail == "off":
            return
        keep = DETAIL_FIELDS[index.detail]
        row = Row(
            hour=hit.hour or hour_of(now),
            engine=hit.engine,
            object=hit.object,
            kind=hit.kind,
            indicator=hit.indicator,
            address=hit.address if hit.kind == PREFIX else None,
            action=hit.action,
            namespace=hit.namespace if "namespace" in keep else None,
            workload=hit.workload if "workload" in keep else None,
            pod=hit.pod if "pod" in keep else None,
            bundle=digest,
        )
        self._bundle(digest)
        self.rows[row] += 1
        provenance = index.classes[hit.klass]
        key = CounterKey(hit.engine, hit.action, provenance.category, provenance.source)
        if key in self.counters or len(self.counters) < MAX_COUNTERS:
            self.counters[key] += 1

    def _bundle(self, digest: str) -> None:
        if not self.bundles or self.bundles[-1] != digest:
            if digest in self.bundles:
                self.bundles.remove(digest)
            self.bundles.append(digest)

    def rebind(self, index: ProvenanceIndex, digest: str) -> None:
        """Move the rows whose object ``index`` (the bundle ``digest``) still has to that bundle:
        an object's name is its content, so it holds the same indicators."""
        objects = index.objects()
        moved: Counter[Row] = Counter()
        for row, count in self.rows.items():
            moved[row._replace(bundle=digest) if (row.engine, row.object) in objects else row] += count
        self.rows = moved
        self._bundle(digest)
        used = {r.bundle for r in moved} | {digest}
        self.bundles = [b for b in self.bundles if b in used]

    def merge(self, other: HitTable) -> None:
        """Add ``other`` (another node's table): rows, counters, totals, gaps and drops."""
        self.rows.update(other.rows)
        for key, count in other.counters.items():
            if key in self.counters or len(self.counters) < MAX_COUNTERS:
                self.counters[key] += count
        self.totals.add(other.totals)
        for digest in other.bundles:
            if digest not in self.bundles:
                self.bundles.append(digest)
        self.since = min(filter(None, (self.since, other.since)), default=None)
        self.gaps += other.gaps
        self.dropped_rows += other.dropped_rows
        self.dropped_events += other.dropped_events

    def trim(self, max_rows: int, now: datetime) -> None:
        """Hold the table to ``max_rows`` rows and ``MAX_BUNDLES`` bundles (module docstring)."""
        oldest = hour_of(now - timedelta(hours=RETENTION_HOURS))
        self.rows = Counter({r: c for r, c in self.rows.items() if r.hour >= oldest})
        used = {r.bundle for r in self.rows}
        self.bundles = [b for b in self.bundles if b in used]
        if len(self.bundles) > MAX_BUNDLES:
            gone = set(self.bundles[:-MAX_BUNDLES])
            self._drop([r for r in self.rows if r.bundle in gone])
            self.bundles = self.bundles[-MAX_BUNDLES:]
        for _, fold in FOLDS:
            if len(self.rows) <= max_rows:
                return
            folded: Counter[Row] = Counter()
            for row, count in self.rows.items():
                folded[fold(row)] += count
            self.rows = folded
        if len(self.rows) > max_rows:
            by_age = sorted(self.rows, key=lambda r: (r.hour, self.rows[r], r))
            self._drop(by_age[: len(self.rows) - max_rows])

    def _drop(self, rows: list[Row]) -> None:
        for row in rows:
            self.dropped_rows += 1
            self.dropped_events += self.rows.pop(row)

    # -- the hits section ------------------------------------------------------------------------

    def to_section(self, now: datetime) -> HitsSection:
        number = {digest: i for i, digest in enumerate(self.bundles)}
        return HitsSection(
            since=self.since or iso(now),
            updated_at=iso(now),
            bundles=tuple(self.bundles),
            totals=Totals(**{k: min(v, MAX_COUNT) for k, v in self.totals.to_dict().items()}),
            counters=tuple(
                SectionCounter(*key, count=min(count, MAX_COUNT)) for key, count in sorted(self.counters.items())
            ),
            rows=tuple(
                SectionRow(**{**row._asdict(), "bundle": number[row.bundle]}, count=min(count, MAX_COUNT))
                for row, count in sorted(self.rows.items())
            ),
            gaps=self.gaps,
            dropped_rows=self.dropped_rows,
            dropped_events=self.dropped_events,
        )


@dataclass(frozen=True)
class SectionRow:
    """A row of a hits section: ``Row`` with its bundle numbered (``HitsSection.bundles``) and its count."""

    hour: str
    engine: str
    object: str
    kind: str
    indicator: str
    address: str | None
    action: str
    namespace: str | None
    workload: str | None
    pod: str | None
    bundle: int
    count: int


@dataclass(frozen=True)
class SectionCounter:
    """A counter of a hits section: events by engine, action, category and source kind."""

    engine: str
    action: str
    category: str
    source: str
    count: int


@dataclass(frozen=True)
class HitsSection:
    """The hits section (``$defs/hits`` of ``hit-report.schema.json`` and ``agent-status.schema.json``):
    a node report's, or the sum of a cluster's in its status (``nodes``: the readers summed)."""

    since: str
    updated_at: str
    bundles: tuple[str, ...]
    totals: Totals
    counters: tuple[SectionCounter, ...]
    rows: tuple[SectionRow, ...]
    gaps: int
    dropped_rows: int
    dropped_events: int
    nodes: int | None = None

    @classmethod
    def from_json(cls, doc: Any) -> HitsSection:
        """A section of a document already checked against its schema (its ``from_json``)."""
        return cls(
            since=doc["since"],
            updated_at=doc["updated_at"],
            bundles=tuple(doc["bundles"]),
            totals=Totals.from_dict(doc["totals"]),
            counters=tuple(SectionCounter(**c) for c in doc["counters"]),
            rows=tuple(SectionRow(**r) for r in doc["rows"]),
            gaps=doc["gaps"],
            dropped_rows=doc["dropped"]["rows"],
            dropped_events=doc["dropped"]["events"],
            nodes=doc.get("nodes"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "since": self.since,
            "updated_at": self.updated_at,
            "bundles": list(self.bundles),
            "totals": self.totals.to_dict(),
            "counters": [dataclasses.asdict(c) for c in self.counters],
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "gaps": self.gaps,
            "dropped": {"rows": self.dropped_rows, "events": self.dropped_events},
        }
        if self.nodes is not None:
            out["nodes"] = self.nodes
        return out

    def check(self, where: str) -> HitsSection:
        """What the schema cannot say of a section: every row's bundle is one of its bundles, the
        bundles are digests named once, and no time is in the future. Returns ``self``."""
        bundles = self.bundles
        if len(set(bundles)) != len(bundles) or not all(layout.is_digest(b) for b in bundles):
            raise BundleError(f"{where}: hits: bundles are not distinct digests")
        if any(r.bundle >= len(bundles) for r in self.rows):
            raise BundleError(f"{where}: hits: a row names a bundle the section does not list")
        updated = parse_iso(self.updated_at)
        if any(parse_iso(r.hour) > updated for r in self.rows):
            raise BundleError(f"{where}: hits: a row's hour is after the section was written")
        return self

    def table(self) -> HitTable:
        """The table back (of a ``check``-ed section)."""
        rows: Counter[Row] = Counter()
        for r in self.rows:
            rows[Row(**{**{k: getattr(r, k) for k in Row._fields}, "bundle": self.bundles[r.bundle]})] += r.count
        counters: Counter[CounterKey] = Counter()
        for c in self.counters:
            counters[CounterKey(c.engine, c.action, c.category, c.source)] += c.count
        return HitTable(
            rows=rows,
            counters=counters,
            totals=Totals(**self.totals.to_dict()),
            bundles=list(self.bundles),
            since=self.since,
            gaps=self.gaps,
            dropped_rows=self.dropped_rows,
            dropped_events=self.dropped_events,
        )

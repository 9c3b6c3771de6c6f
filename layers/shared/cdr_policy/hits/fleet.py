"""The fleet's hits: every cluster's ``status.hits`` checked against its own channel's bundles and
summed (``read_fleet``), for ``cdr-policy fleet hits`` (``fleet_report``) and the HitsRollup stage
(``fired``: what fired anywhere, the input of Render's ranking).

A status is a cluster's word and nothing more: a row is counted only when the bundle it names is
published under the cluster's *own* channel (``channels/<channel>/bundles/<digest>/``, which only
Publish can write), the channel lets its clusters report hits at that detail, and the indicator is
one that bundle's object holds (the address inside the prefix, the prefix the one the object's
range holds there, the port or rule the object's). Everything else is refused and counted per
cluster with its reason, so a hostile cluster can never make an address it was not sent fire, and
its counts are bounded by the status schema. Rows older than the window are left out.

Reading is bounded: status documents of at most ``MAX_STATUS_BYTES``, a few at a time, and at most
``MAX_INDEXES`` bundle indexes in memory at once (the most recently used).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from cdr_policy import jsonio, layout, schemas
from cdr_policy.agent.status import AgentStatus
from cdr_policy.bundle.loader import read_manifest
from cdr_policy.bundle.provenance import MAX_INDEX_BYTES, PATH, Provenance, ProvenanceIndex, read_index
from cdr_policy.errors import BundleError, StorageError
from cdr_policy.hits.aggregate import DETAIL_FIELDS, RETENTION_HOURS, SectionRow
from cdr_policy.hits.tally import Totals
from cdr_policy.netprefix import BITS, folded
from cdr_policy.netprefix.vector import V4, V6, PackError, from_fields, to_fields
from cdr_policy.observability import logger
from cdr_policy.schemas import load_checked
from cdr_policy.storage import NotFound, Store, TooLarge
from cdr_policy.timeutil import iso, parse_iso

MAX_STATUS_BYTES = 1 << 20  # a status document is a few hundred kB at most (its hits included)
STATUS_READERS = 16
MAX_INDEXES = 8
TOP = 10
MAX_LISTED = 100  # findings listed as never fired (all are counted)
# Addresses ``hits/fleet.json`` holds (a few MB packed): those with the most hits first.
MAX_FIRED_ADDRESSES = 1_000_000
FIRED_SCHEMA = "fleet-hits.schema.json"
MAX_FIRED_BYTES = 32 << 20
FIRED_VERSION = 1


@dataclass(frozen=True)
class Counted:
    """One row of a cluster's status that passed every check."""

    cluster: str
    channel: str
    digest: str
    row: SectionRow
    provenance: Provenance


@dataclass
class ClusterHits:
    """One cluster's counted hits, with what promotion asks of it (``cdr_policy.promotion``): the
    bundle it applied, when its agent last polled and when its hits were last summed."""

    cluster: str
    channel: str
    applied: str | None = None
    polled_at: str | None = None
    summed_at: str | None = None
    nodes: int = 0
    hits: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    totals: Totals = field(default_factory=Totals)


@dataclass
class Fleet:
    since: str
    until: str
    clusters: list[ClusterHits] = field(default_factory=list)
    counted: list[Counted] = field(default_factory=list)
    current: dict[str, tuple[str, ProvenanceIndex] | None] = field(default_factory=dict)  # channel -> its bundle
    unreadable: int = 0  # status documents that are not a cluster's word


class _Indexes:
    """Bundle indexes by (channel, digest), the most recently used ``MAX_INDEXES`` kept."""

    def __init__(self, dist: Store) -> None:
        self.dist = dist
        self._held: OrderedDict[tuple[str, str], ProvenanceIndex | None] = OrderedDict()

    def get(self, channel: str, digest: str) -> ProvenanceIndex | None:
        key = (channel, digest)
        if key in self._held:
            self._held.move_to_end(key)
            return self._held[key]
        path = layout.published_file_key(channel, digest, PATH)
        try:
            index: ProvenanceIndex | None = read_index(self.dist.get(path, max_bytes=MAX_INDEX_BYTES).data, path)
            if index is not None and index.channel != channel:
                index = None
        except (NotFound, TooLarge, BundleError):
            index = None  # not a bundle of this channel, or none Publish wrote
        # any other StorageError (access denied, the bucket unreachable) raises: a run that cannot read
        # must fail, not report that nothing fired
        self._held[key] = index
        if len(self._held) > MAX_INDEXES:
            self._held.popitem(last=False)
        return index


def read_fleet(dist: Store, *, now: datetime, window: timedelta) -> Fleet:
    """Every cluster's hits of the last ``window`` (at most ``RETENTION_HOURS``), checked."""
    window = min(window, timedelta(hours=RETENTION_HOURS))
    since = iso((now - window).replace(minute=0, second=0, microsecond=0))
    fleet = Fleet(since=since, until=iso(now))
    indexes = _Indexes(dist)
    keys = dist.list(layout.STATUS)
    with ThreadPoolExecutor(max_workers=STATUS_READERS) as pool:
        statuses = list(pool.map(lambda key: _status(dist, key), keys))
    for key, status in zip(keys, statuses, strict=True):
        cluster = layout.status_cluster(key)
        if status is None or cluster is None or status.cluster_id != cluster:
            fleet.unreadable += 1  # planted, broken, or under another cluster's key
            continue
        channel, section = status.channel, status.hits
        if channel not in fleet.current:
            fleet.current[channel] = _current(dist, channel, indexes)
        if section is None:
            continue
        hits = ClusterHits(
            cluster,
            channel,
            applied=status.applied_digest,
            polled_at=status.last_poll.at,
            summed_at=section.updated_at,
            nodes=section.nodes or 0,
            totals=section.totals,
        )
        fleet.clusters.append(hits)
        try:
            section.check(key)
        except BundleError:
            hits.refused["malformed"] += len(section.rows)
            continue
        for row in section.rows:
            if row.hour < since:
                continue
            digest = section.bundles[row.bundle]
            index = indexes.get(channel, digest)
            reason, provenance = _check_row(row, index, now)
            if provenance is None:
                hits.refused[reason] += 1
                continue
            fleet.counted.append(Counted(cluster, channel, digest, row, provenance))
            hits.hits += row.count
            hits.actions[row.action] += row.count
    fleet.clusters.sort(key=lambda c: (c.channel, c.cluster))
    return fleet


def _status(dist: Store, key: str) -> AgentStatus | None:
    """The status document, or None when it is gone since the listing, too large or not one (planted or
    broken); an error reading it (access denied, the bucket unreachable) raises."""
    try:
        return AgentStatus.parse(dist.get(key, max_bytes=MAX_STATUS_BYTES).data)
    except (NotFound, TooLarge, BundleError):
        return None


def _current(dist: Store, channel: str, indexes: _Indexes) -> tuple[str, ProvenanceIndex] | None:
    """The channel's current bundle and its index (None: no manifest, or no index)."""
    try:
        manifest, _ = read_manifest(dist, layout.channel_manifest_key(channel))
    except (NotFound, BundleError) as exc:
        logger.warning("no usable manifest for a channel", extra={"channel": channel, "error": str(exc)})
        return None
    index = indexes.get(channel, manifest.digest)
    return (manifest.digest, index) if index is not None else None


def _check_row(row: SectionRow, index: ProvenanceIndex | None, now: datetime) -> tuple[str, Provenance | None]:
    """(reason, None) when the row cannot be counted, else ("", its indicator's provenance)."""
    if index is None:
        return "bundle not published for the cluster's channel", None
    if parse_iso(row.hour) > now:
        return "hour in the future", None
    keep = DETAIL_FIELDS[index.detail]
    if index.detail == "off" or any(
        getattr(row, f) is not None and f not in keep for f in ("namespace", "workload", "pod")
    ):
        return "more detail than the channel allows", None
    held = index.holds(row.engine, row.object)
    kind, indicator = row.kind, row.indicator
    if kind == "rule" and held.rule is not None and held.rule.rule == indicator:
        return "", index.classes[held.rule.klass]
    for port in held.ports:
        if kind == "port" and port.port == indicator:
            return "", index.classes[port.klass]
    if kind == "prefix" and held.blocklist is not None and held.holder is not None:
        address = folded(str(row.address))
        if address is None or address.length != BITS[address.version]:
            return "not an address", None
        found = held.blocklist.find(address.version, address.network)
        holder = held.holder
        if found is not None and holder.first <= found < holder.first + holder.count:
            if held.blocklist.prefix(found) == indicator:
                return "", index.classes[int(held.blocklist.classes[found])]
    return "not an indicator of the bundle's object", None


# -- the report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterRow:
    cluster_id: str
    channel: str
    nodes: int
    hits: int
    actions: dict[str, int]
    refused: dict[str, int]
    totals: Totals


@dataclass(frozen=True)
class FeedRow:
    feed: str
    hits: int
    prefixes_held: int
    hits_per_thousand_prefixes: float | None  # None: the current bundles hold none of its prefixes


@dataclass(frozen=True)
class FindingRow:
    finding: str
    hits: int


@dataclass(frozen=True)
class CategoryRow:
    category: str
    hits: int


@dataclass(frozen=True)
class NeverFired:
    """What the channels' current bundles hold that no cluster reported a hit for."""

    prefixes: int
    by_feed: dict[str, int]
    rules: tuple[str, ...]
    findings: int
    findings_listed: tuple[str, ...]  # the first MAX_LISTED


@dataclass(frozen=True)
class TopIndicator:
    channel: str
    kind: str
    indicator: str
    hits: int


@dataclass(frozen=True)
class TopWorkload:
    cluster_id: str
    namespace: str
    workload: str | None
    hits: int


@dataclass(frozen=True)
class FleetHitsReport:
    """What ``cdr-policy fleet hits`` prints (``--json``: ``to_json``)."""

    since: str
    until: str
    hits: int
    clusters: tuple[ClusterRow, ...]
    feeds: tuple[FeedRow, ...]
    findings: tuple[FindingRow, ...]
    categories: tuple[CategoryRow, ...]
    never_fired: NeverFired
    top_indicators: tuple[TopIndicator, ...]
    top_workloads: tuple[TopWorkload, ...]
    unreadable_statuses: int

    def to_json(self) -> dict[str, Any]:
        return schemas.fields_to_json(self)

    @classmethod
    def from_json(cls, doc: Any) -> FleetHitsReport:
        return schemas.from_fields(cls, doc, "fleet hits report")


def fleet_report(fleet: Fleet) -> FleetHitsReport:
    """Per feed (hits per thousand prefixes held), per finding, per category, per cluster; what
    never fired; the top indicators and workloads."""
    feeds: Counter[str] = Counter()
    findings: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    indicators: Counter[tuple[str, str, str]] = Counter()
    workloads: Counter[tuple[str, str, str]] = Counter()
    fired: dict[str, set[tuple[str, str]]] = {}
    for c in fleet.counted:
        n, row = c.row.count, c.row
        feeds.update({f: n for f in c.provenance.feeds})
        findings.update({f: n for f in c.provenance.findings})
        categories.update({k: n for k in c.provenance.categories})
        indicators[c.channel, row.kind, row.indicator] += n
        if row.namespace:
            workloads[c.cluster, row.namespace, row.workload or ""] += n
        fired.setdefault(c.channel, set()).add((row.kind, row.indicator))
    held = _held_per_feed(fleet)
    return FleetHitsReport(
        since=fleet.since,
        until=fleet.until,
        hits=sum(c.hits for c in fleet.clusters),
        clusters=tuple(
            ClusterRow(
                cluster_id=c.cluster,
                channel=c.channel,
                nodes=c.nodes,
                hits=c.hits,
                actions=dict(sorted(c.actions.items())),
                refused=dict(sorted(c.refused.items())),
                totals=dataclasses.replace(c.totals),
            )
            for c in fleet.clusters
        ),
        feeds=tuple(
            FeedRow(
                feed=f,
                hits=feeds[f],
                prefixes_held=held.get(f, 0),
                hits_per_thousand_prefixes=round(1000 * feeds[f] / held[f], 3) if held.get(f) else None,
            )
            for f in sorted(set(feeds) | set(held), key=lambda f: (-feeds[f], f))
        ),
        findings=tuple(FindingRow(f, n) for f, n in _ranked(findings)),
        categories=tuple(CategoryRow(k, n) for k, n in _ranked(categories)),
        never_fired=_never_fired(fleet, fired),
        top_indicators=tuple(TopIndicator(ch, kind, ind, n) for (ch, kind, ind), n in _ranked(indicators)[:TOP]),
        top_workloads=tuple(TopWorkload(cl, ns, wl or None, n) for (cl, ns, wl), n in _ranked(workloads)[:TOP]),
        unreadable_statuses=fleet.unreadable,
    )


def _ranked(counter: Counter[Any]) -> list[tuple[Any, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def _held_per_feed(fleet: Fleet) -> dict[str, int]:
    """Prefixes each feed has in the channels' current bundles (per group, the larger of the
    engines' lists; summed over channels)."""
    held: Counter[str] = Counter()
    for current in fleet.current.values():
        if current is None:
            continue
        _, index = current
        per_group: dict[str, Counter[str]] = {}
        for b in index.blocklists:
            counts = np.bincount(b.classes, minlength=len(index.classes)).tolist() if len(b) else []
            mine: Counter[str] = Counter()
            for klass, n in enumerate(counts):
                for feed in index.classes[klass].feeds if n else ():
                    mine[feed] += int(n)
            group = per_group.setdefault(b.group, Counter())
            for feed, n in mine.items():
                group[feed] = max(group[feed], n)
        for group in per_group.values():
            held.update(group)
    return dict(held)


def _never_fired(fleet: Fleet, fired: dict[str, set[tuple[str, str]]]) -> NeverFired:
    prefixes, by_feed, rules = 0, Counter[str](), set()
    findings_hit: set[str] = set()
    findings_all: set[str] = set()
    for c in fleet.counted:
        findings_hit.update(c.provenance.findings)
    for channel, current in fleet.current.items():
        if current is None:
            continue
        _, index = current
        hit = fired.get(channel, set())
        seen: set[str] = set()
        for b in index.blocklists:
            for i in range(len(b)):
                prefix = b.prefix(i)
                if prefix in seen:
                    continue
                seen.add(prefix)
                p = index.classes[int(b.classes[i])]
                findings_all.update(p.findings)
                if ("prefix", prefix) not in hit:
                    prefixes += 1
                    by_feed.update(p.feeds)
        for r in index.rules:
            findings_all.update(index.classes[r.klass].findings)
            if ("rule", r.rule) not in hit:
                rules.add(r.rule)
        for port in index.ports:
            findings_all.update(index.classes[port.klass].findings)
    quiet = sorted(findings_all - findings_hit)
    return NeverFired(
        prefixes=prefixes,
        by_feed=dict(sorted(by_feed.items())),
        rules=tuple(sorted(rules)),
        findings=len(quiet),
        findings_listed=tuple(quiet[:MAX_LISTED]),
    )


# -- what fired, for Render ------------------------------------------------------------------------


@dataclass(frozen=True)
class Fired:
    """What fired anywhere in the fleet in the window (``hits/fleet.json``, schema
    ``fleet-hits.schema.json``; HitsRollup writes it, Render ranks with it): the addresses (as
    full-length prefixes, packed as ``netprefix.vector`` fields), the rules and the ports, with
    the window and what was counted and refused."""

    since: str
    until: str
    clusters: int
    hits: int
    refused: int
    v4: V4
    v6: V6
    rules: tuple[str, ...]
    ports: tuple[str, ...]

    def to_bytes(self) -> bytes:
        return jsonio.dumps(
            {
                "schema_version": FIRED_VERSION,
                "since": self.since,
                "until": self.until,
                "clusters": self.clusters,
                "hits": self.hits,
                "refused": self.refused,
                "addresses": to_fields(self.v4, self.v6),
                "rules": list(self.rules),
                "ports": list(self.ports),
            }
        )


def fired(fleet: Fleet, limit: int = MAX_FIRED_ADDRESSES) -> Fired:
    """What fired in ``fleet``: at most ``limit`` addresses (those with the most hits first)."""
    addresses: Counter[tuple[int, int]] = Counter()
    rules, ports = set(), set()
    for c in fleet.counted:
        row = c.row
        if row.kind == "prefix":
            address = folded(str(row.address))
            if address is not None:
                addresses[address.version, address.network] += row.count
        elif row.kind == "rule":
            rules.add(row.indicator)
        else:
            ports.add(row.indicator)
    kept = sorted(a for a, _ in _ranked(addresses)[:limit])
    v4 = [n for version, n in kept if version == 4]
    v6 = [n for version, n in kept if version == 6]
    return Fired(
        since=fleet.since,
        until=fleet.until,
        clusters=sum(1 for c in fleet.clusters),
        hits=sum(c.hits for c in fleet.clusters),
        refused=sum(sum(c.refused.values()) for c in fleet.clusters),
        v4=V4(np.array(v4, dtype=np.uint32), np.full(len(v4), 32, dtype=np.uint8)),
        v6=V6(v6, bytes([128] * len(v6))),
        rules=tuple(sorted(rules)),
        ports=tuple(sorted(ports)),
    )


def read_fired(data: bytes, where: str) -> Fired:
    """``hits/fleet.json`` after its checks (schema, payload, every prefix an address);
    BundleError says what is wrong."""
    try:
        doc = load_checked(data, FIRED_SCHEMA)
    except ValueError as exc:
        raise BundleError(f"{where}: {exc}") from exc
    try:
        v4, v6 = from_fields(doc["addresses"])
    except PackError as exc:
        raise BundleError(f"{where}: addresses: {exc}") from exc
    if (len(v4) and int(np.min(v4.lengths)) < 32) or any(length < 128 for length in v6.lengths):
        raise BundleError(f"{where}: addresses: a prefix that is not one address")
    return Fired(
        doc["since"],
        doc["until"],
        doc["clusters"],
        doc["hits"],
        doc["refused"],
        v4,
        v6,
        tuple(doc["rules"]),
        tuple(doc["ports"]),
    )


def load_fired(state: Store, *, now: datetime) -> Fired | None:
    """``hits/fleet.json`` for a render: None when there is none, when it is broken (logged: the
    render ranks without hits rather than fail) or older than the window it covers."""
    try:
        result = read_fired(state.get(layout.FLEET_HITS, max_bytes=MAX_FIRED_BYTES).data, layout.FLEET_HITS)
    except NotFound:
        return None
    except (StorageError, BundleError) as exc:
        logger.warning("the fleet's hits are unusable; ranking without them", extra={"error": str(exc)})
        return None
    if parse_iso(result.until) < now - timedelta(hours=RETENTION_HOURS):
        logger.warning(
            "the fleet's hits are older than their window; ranking without them", extra={"until": result.until}
        )
        return None
    return result

"""The promotion decisions document (schema ``promotion.schema.json``), the one typed form of the
contract between Render, which writes it beside the bundle it composed
(``bundles/<digest>/promotion.json``), Publish, which reads it back, re-judges the promoted changes
and writes its copy with what it did (``promotion/<channel>.json``), and ``cdr-policy channel
evidence``, which prints that copy. Every reader parses with ``Decisions.parse`` / ``from_json``
(the schema checked once, ``ContractError`` naming the field otherwise) and reads typed fields.

Kept free of numpy: the CLI imports it to print a report.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdr_policy import jsonio
from cdr_policy.errors import BundleError, ContractError
from cdr_policy.policy.channel import Promotion as PromoteSettings
from cdr_policy.policy.channel import Watch
from cdr_policy.schemas import check_contract, parse_contract
from cdr_policy.storage import Store

SCHEMA = "promotion.schema.json"
WHAT = "promotion decisions"
MAX_DOCUMENT_BYTES = 8 << 20


@dataclass(frozen=True)
class WorkloadHits:
    cluster: str
    namespace: str
    workload: str
    hits: int

    def line(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.workload}: {self.hits} hit(s)"


@dataclass(frozen=True)
class ChangeEvidence:
    """What the audit channel saw of one change: the most hit workloads (``workloads_total`` of
    them in all) and the hits per namespace."""

    in_audit_since: str | None
    clusters: int
    hits: int
    workloads: tuple[WorkloadHits, ...]
    workloads_total: int
    namespaces: Mapping[str, int]


@dataclass(frozen=True)
class ChangeDecision:
    """One pending change (``prefix:<cidr>``, ``port:<proto>/<n>``, ``rule:<id>@<fingerprint>``):
    the decision (promote, wait, hold), how it was promoted (soaked, approved), why."""

    change: str
    kind: str
    decision: str
    how: str | None
    reasons: tuple[str, ...]
    sources: tuple[str, ...]
    evidence: ChangeEvidence
    fingerprint: str | None = None  # a rule change's: of what the rule matches

    @property
    def value(self) -> str:
        """The change without its kind: the prefix, the port, the rule with its fingerprint."""
        return self.change.partition(":")[2]

    @classmethod
    def _build(cls, c: Mapping[str, Any]) -> ChangeDecision:
        """From a change of a document already checked against the schema."""
        ev = c["evidence"]
        return cls(
            change=c["change"],
            kind=c["kind"],
            decision=c["decision"],
            how=c["how"],
            reasons=tuple(c["reasons"]),
            sources=tuple(c["sources"]),
            evidence=ChangeEvidence(
                in_audit_since=ev["in_audit_since"],
                clusters=ev["clusters"],
                hits=ev["hits"],
                workloads=tuple(WorkloadHits(**w) for w in ev["workloads"]),
                workloads_total=ev["workloads_total"],
                namespaces=dict(ev["namespaces"]),
            ),
            fingerprint=c.get("fingerprint"),
        )

    def to_json(self) -> dict[str, Any]:
        ev = self.evidence
        out: dict[str, Any] = {
            "change": self.change,
            "kind": self.kind,
            "decision": self.decision,
            "how": self.how,
            "reasons": list(self.reasons),
            "sources": list(self.sources),
            "evidence": {
                "in_audit_since": ev.in_audit_since,
                "clusters": ev.clusters,
                "hits": ev.hits,
                "workloads": [dataclasses.asdict(w) for w in ev.workloads],
                "workloads_total": ev.workloads_total,
                "namespaces": dict(ev.namespaces),
            },
        }
        if self.fingerprint is not None:
            out["fingerprint"] = self.fingerprint
        return out


@dataclass(frozen=True)
class TripChange:
    change: str
    events: int


@dataclass(frozen=True)
class WatchTrip:
    """A generation whose promoted changes hurt after enforcing (``promote.watch``)."""

    generation: int
    published_at: str
    reasons: tuple[str, ...]
    events: int
    workloads: tuple[WorkloadHits, ...]
    workloads_total: int
    changes: tuple[TripChange, ...]  # those that stopped the most events, most first
    changes_total: int
    rolled_back: bool


@dataclass(frozen=True)
class Counts:
    promote: int
    wait: int
    hold: int


@dataclass(frozen=True)
class Promoted:
    """Every change promoted: the bundle adds nothing else over the one it was composed over."""

    prefixes: tuple[str, ...]
    ports: tuple[str, ...]
    rules: Mapping[str, str]  # rule id -> fingerprint


@dataclass(frozen=True)
class PublishOutcome:
    """What Publish did with the bundle (Publish's copy only)."""

    at: str
    status: str
    generation: int | None
    reason: str


@dataclass(frozen=True)
class Decisions:
    channel: str
    source: str  # the audit channel (``from``)
    bundle: str  # the bundle Render composed
    over: str | None  # the bundle the channel shipped, which it was composed over
    decided_at: str
    settings: PromoteSettings
    counts: Counts
    promoted: Promoted
    changes: tuple[ChangeDecision, ...]
    watch: tuple[WatchTrip, ...]
    publish: PublishOutcome | None = None
    schema_version: int = 1

    @classmethod
    def parse(cls, data: bytes) -> Decisions:
        """A document's bytes, checked (ContractError naming what is wrong, never a value)."""
        return cls._build(parse_contract(data, SCHEMA, WHAT))

    @classmethod
    def from_json(cls, doc: Any) -> Decisions:
        check_contract(doc, SCHEMA, WHAT)
        return cls._build(doc)

    @classmethod
    def _build(cls, doc: Any) -> Decisions:
        """From a document already checked against the schema."""
        s, promoted, publish = doc["settings"], doc["promoted"], doc.get("publish")
        w = s.get("watch")
        return cls(
            schema_version=doc["schema_version"],
            channel=doc["channel"],
            source=doc["from"],
            bundle=doc["bundle"],
            over=doc["over"],
            decided_at=doc["decided_at"],
            settings=PromoteSettings(
                source=s["from"],
                soak_s=s["soak"],
                max_workloads_hit=s["max_workloads_hit"],
                protected_namespaces=tuple(s["protected_namespaces"]),
                min_clusters_reporting=s["min_clusters_reporting"],
                watch=None
                if w is None
                else Watch(w["for"], w["max_workloads_hit"], w["max_rate_increase"], w["min_events"], w["rollback"]),
            ),
            counts=Counts(**doc["counts"]),
            promoted=Promoted(
                prefixes=tuple(promoted["prefixes"]),
                ports=tuple(promoted["ports"]),
                rules={r["rule"]: r["fingerprint"] for r in promoted["rules"]},
            ),
            changes=tuple(ChangeDecision._build(c) for c in doc["changes"]),
            watch=tuple(
                WatchTrip(
                    generation=t["generation"],
                    published_at=t["published_at"],
                    reasons=tuple(t["reasons"]),
                    events=t["events"],
                    workloads=tuple(WorkloadHits(**x) for x in t["workloads"]),
                    workloads_total=t["workloads_total"],
                    changes=tuple(TripChange(**c) for c in t["changes"]),
                    changes_total=t["changes_total"],
                    rolled_back=t["rolled_back"],
                )
                for t in doc["watch"]
            ),
            publish=None if publish is None else PublishOutcome(**publish),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "channel": self.channel,
            "from": self.source,
            "bundle": self.bundle,
            "over": self.over,
            "decided_at": self.decided_at,
            "settings": self.settings.to_dict(),
            "counts": dataclasses.asdict(self.counts),
            "promoted": {
                "prefixes": list(self.promoted.prefixes),
                "ports": list(self.promoted.ports),
                "rules": [{"rule": r, "fingerprint": fp} for r, fp in self.promoted.rules.items()],
            },
            "changes": [c.to_json() for c in self.changes],
            "watch": [
                {
                    **dataclasses.asdict(t),
                    "reasons": list(t.reasons),
                    "workloads": [dataclasses.asdict(x) for x in t.workloads],
                    "changes": [dataclasses.asdict(c) for c in t.changes],
                }
                for t in self.watch
            ],
        }
        if self.publish is not None:
            out["publish"] = dataclasses.asdict(self.publish)
        return out

    def change(self, change: str) -> ChangeDecision | None:
        """The listed change ``change`` (None: not listed)."""
        return next((c for c in self.changes if c.change == change), None)


def read_decisions(store: Store, key: str) -> tuple[Decisions, str]:
    """The document at ``key``, checked, and the SHA-256 of its bytes; BundleError when it is not
    one (StorageError: unreadable)."""
    data = store.get(key, max_bytes=MAX_DOCUMENT_BYTES).data
    try:
        return Decisions.parse(data), hashlib.sha256(data).hexdigest()
    except ContractError as exc:
        raise BundleError(f"{store.describe()}/{key} is not a promotion decision: {exc}") from exc


def write(store: Store, key: str, decisions: Decisions) -> str:
    """Write ``decisions``; the SHA-256 of what was written (a publish request names it)."""
    data = jsonio.dumps_pretty(decisions.to_json())
    store.put(key, data, "application/json")
    return hashlib.sha256(data).hexdigest()

"""The data that flows between the stages.

Every document that crosses a stage boundary (S3 object, SQS message, file on disk) is one of
these dataclasses serialised to JSON with ``to_dict``/``from_dict``, and each has a JSON Schema in
``cdr_policy/schemas/`` (checked in the tests on both the producing and the consuming side).

Indicator values are canonical:
- ``ip``: a CIDR prefix with an explicit length and host bits cleared (``198.51.100.7/32``,
  ``2001:db8::/48``); IPv4-mapped IPv6 input is folded to IPv4.
- ``domain``: lower-case, IDNA (punycode) encoded, no trailing dot.
- ``port``: ``<proto>/<number>`` (``tcp/4444``).

Two forms of an indicator set: per-entry records (``entries``: each indicator with its own
provenance, what CDR sets and AbuseIPDB hold, hundreds to thousands of entries) and the compact
feed form (``prefixes``: a feed's sorted, aggregated prefixes with one provenance for all of them,
a million entries in a few megabytes; see ``FeedPrefixes`` and ``cdr_policy.feeds.persist``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from cdr_policy.netprefix.vector import V4, V6

SCHEMA_VERSION = 1
# Finding uuids or feed names kept per indicator: an indicator seen 10,000 times stays small.
MAX_REFS = 20

IndicatorKind = Literal["ip", "domain", "port"]
SetStatus = Literal["ok", "stale", "empty", "error", "disabled"]


@dataclass(frozen=True)
class Rejection:
    """An entry a guard or parser refused, with the reason. Never dropped silently."""

    value: str
    source: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rejection:
        return cls(value=d["value"], source=d["source"], reason=d["reason"])


@dataclass
class Indicator:
    """One blockable thing (a prefix, a domain or a port) and why we believe it is bad.

    ``sources`` names where it came from (``cdr`` or a feed name); ``refs`` holds finding uuids
    (CDR) or feed names, capped so that an indicator seen 10,000 times stays small.
    """

    value: str
    kind: IndicatorKind
    category: str
    sources: list[str]
    first_seen: str
    last_seen: str
    expires_at: str
    refs: list[str] = field(default_factory=list)
    score: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["score"] is None:
            del d["score"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Indicator:
        return cls(
            value=d["value"],
            kind=d["kind"],
            category=d["category"],
            sources=list(d["sources"]),
            first_seen=d["first_seen"],
            last_seen=d["last_seen"],
            expires_at=d["expires_at"],
            refs=list(d.get("refs", [])),
            score=d.get("score"),
        )


@dataclass
class Sighting:
    """Where a behaviour's process was seen: one bare executable name in one workload, from the
    findings' ``podLabels`` (the namespace from ``io.kubernetes.pod.namespace``, the pod's own
    labels) and ``deploymentName``, each validated as Kubernetes names and labels before it is
    stored (``qualys.findings.parse_workload``). A finding without a usable workload still counts,
    under an unknown one (all three None)."""

    process: str
    namespace: str | None
    deployment: str | None
    labels: dict[str, str] | None
    findings: int
    last_seen: str
    expires_at: str

    @property
    def key(self) -> tuple[str, str | None, str | None, tuple[tuple[str, str], ...] | None]:
        labels = None if self.labels is None else tuple(sorted(self.labels.items()))
        return (self.process, self.namespace, self.deployment, labels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sighting:
        labels = d.get("labels")
        return cls(
            process=d["process"],
            namespace=d.get("namespace"),
            deployment=d.get("deployment"),
            labels=None if labels is None else dict(labels),
            findings=d["findings"],
            last_seen=d["last_seen"],
            expires_at=d["expires_at"],
        )


@dataclass
class Behaviour:
    """A mapped CDR behaviour (rule id from the category mapping) and the evidence for it:
    the process names seen (``processes``) and, per name, the workloads they were seen in
    (``sightings``; absent from sets written before they were kept)."""

    rule: str
    categories: dict[str, int]
    processes: list[str]
    refs: list[str]
    first_seen: str
    last_seen: str
    expires_at: str
    sightings: list[Sighting] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Behaviour:
        return cls(
            rule=d["rule"],
            categories=dict(d["categories"]),
            processes=list(d["processes"]),
            refs=list(d["refs"]),
            first_seen=d["first_seen"],
            last_seen=d["last_seen"],
            expires_at=d["expires_at"],
            sightings=[Sighting.from_dict(s) for s in d.get("sightings", [])],
        )


@dataclass
class FeedPrefixes:
    """A feed's entries in the compact form: sorted, aggregated, non-overlapping prefixes per
    family (``ipv4``/``ipv6``, see ``cdr_policy.netprefix.vector``) that share one provenance: the
    feed (``source``, also the only ref), its ``category``, when they were last downloaded
    (``last_seen``, which is also every entry's ``first_seen``: a feed's own history is not ours
    to keep) and when they expire. Stored packed and checked as a whole
    (``cdr_policy.feeds.persist``), never entry by entry.

    ``held_back`` counts the prefixes a render let go of as it loaded the set, past what its
    ranking can take (``policy.ranked.hold_to_room``): they are not in ``ipv4``/``ipv6`` (the
    first prefixes are kept, in value order), and such a set is never stored again."""

    category: str
    last_seen: str
    expires_at: str
    ipv4: V4
    ipv6: V6
    held_back: int = 0

    def __len__(self) -> int:
        """The prefixes held (``held_back`` not among them)."""
        return len(self.ipv4) + len(self.ipv6)


@dataclass
class IndicatorSet:
    """What one source currently contributes (``indicators/cdr/current.json``,
    ``indicators/feeds/<name>.json``, ``indicators/reputation/abuseipdb.json``)."""

    source: str
    fetched_at: str
    status: SetStatus
    entries: list[Indicator] = field(default_factory=list)
    behaviours: list[Behaviour] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # The compact feed form of the entries (feed sets only); ``entries`` is then empty.
    prefixes: FeedPrefixes | None = None

    @property
    def size(self) -> int:
        """Entries in force, in either form (a compact set's held-back prefixes among them)."""
        fp = self.prefixes
        return len(self.entries) + (len(fp) + fp.held_back if fp is not None else 0)

    def to_dict(self) -> dict[str, Any]:
        """The per-entry JSON form (a set with ``prefixes`` is written by ``feeds.persist.dump_set``)."""
        if self.prefixes is not None:
            raise ValueError("a compact feed set is written by cdr_policy.feeds.persist.dump_set")
        return {
            "schema_version": SCHEMA_VERSION,
            "source": self.source,
            "fetched_at": self.fetched_at,
            "status": self.status,
            "error": self.error,
            "stats": self.stats,
            "entries": [e.to_dict() for e in self.entries],
            "behaviours": [b.to_dict() for b in self.behaviours],
            "rejected": [r.to_dict() for r in self.rejected],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndicatorSet:
        """The per-entry JSON form (``feeds.persist.parse_set`` reads both forms)."""
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported indicator-set schema_version {d.get('schema_version')!r}")
        return cls(
            source=d["source"],
            fetched_at=d["fetched_at"],
            status=d["status"],
            error=d.get("error"),
            stats=dict(d.get("stats", {})),
            entries=[Indicator.from_dict(e) for e in d.get("entries", [])],
            behaviours=[Behaviour.from_dict(b) for b in d.get("behaviours", [])],
            rejected=[Rejection.from_dict(r) for r in d.get("rejected", [])],
        )

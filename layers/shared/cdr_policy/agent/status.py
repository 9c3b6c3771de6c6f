"""The agent status (``status/<cluster-id>.json`` in the distribution bucket and ``status.json`` in
the agent's state folder; schema ``agent-status.schema.json``): what one cluster's agent last did.

``AgentStatus`` is the one typed form of the contract between the agent, which writes it, and the
fleet commands, the HitsRollup stage, the agent's own metrics and its ``--once`` line, which read it:
every reader parses a document with ``AgentStatus.parse`` / ``from_json`` (the schema checked once,
``ContractError`` naming the field otherwise) and reads typed fields; the agent writes ``to_json()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cdr_policy.hits.aggregate import HitsSection
from cdr_policy.schemas import check_contract, parse_contract

SCHEMA = "agent-status.schema.json"
SCHEMA_VERSION = 1
WHAT = "agent status"

PollResult = Literal[
    "applied", "partial", "unchanged", "repaired", "refused", "unreachable", "no_manifest", "apply_failed", "expired"
]
ObjectAction = Literal["apply", "delete", "preflight"]
CiliumEffect = Literal["apply", "withhold", "withdraw"]
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class LastPoll:
    at: str
    result: PollResult
    detail: str

    def line(self) -> str:
        """The poll as one line: its result and what changed (or ``unchanged``)."""
        return f"{self.result}: {self.detail}"


@dataclass(frozen=True)
class Verification:
    """The last manifest verified: ``ok`` None until one was."""

    ok: bool | None = None
    code: str | None = None
    reason: str | None = None
    digest: str | None = None
    at: str | None = None


@dataclass(frozen=True)
class ObjectCounts:
    applied: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class ObjectError:
    """An object operation that failed (or a Cilium object the pre-flight held back)."""

    kind: str
    name: str
    namespace: str | None
    action: ObjectAction
    error: str


@dataclass(frozen=True)
class Drift:
    """The last drift check: owned objects missing, changed out of band, or not in the bundle."""

    checked_at: str
    missing: tuple[str, ...]
    changed: tuple[str, ...]
    extra: tuple[str, ...]
    repaired: bool

    @property
    def found(self) -> bool:
        return bool(self.missing or self.changed or self.extra)


@dataclass(frozen=True)
class PreflightFinding:
    code: str
    severity: Severity
    message: str


@dataclass(frozen=True)
class PreflightReport:
    """The cluster pre-flight of the last apply: what happened to the Cilium objects, why, and what
    was read of the cluster (``cluster``: free-form, for people)."""

    cilium: CiliumEffect
    findings: tuple[PreflightFinding, ...]
    cluster: Mapping[str, Any]


@dataclass(frozen=True)
class AgentStatus:
    cluster_id: str
    channel: str
    agent_version: str
    applier: str
    applied_digest: str | None
    applied_generation: int | None
    applied_at: str | None
    applied_expires_at: str | None
    last_poll: LastPoll
    verification: Verification
    objects: ObjectCounts
    apply_errors: tuple[ObjectError, ...]
    drift: Drift | None
    preflight: PreflightReport | None = None
    hits: HitsSection | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def parse(cls, data: bytes) -> AgentStatus:
        """A status document's bytes, checked (ContractError naming what is wrong, never a value)."""
        return cls._build(parse_contract(data, SCHEMA, WHAT))

    @classmethod
    def from_json(cls, doc: Any) -> AgentStatus:
        check_contract(doc, SCHEMA, WHAT)
        return cls._build(doc)

    @classmethod
    def _build(cls, doc: Any) -> AgentStatus:
        """From a document already checked against the schema."""
        drift, preflight, hits = doc["drift"], doc.get("preflight"), doc.get("hits")
        return cls(
            cluster_id=doc["cluster_id"],
            channel=doc["channel"],
            agent_version=doc["agent_version"],
            applier=doc["applier"],
            applied_digest=doc["applied_digest"],
            applied_generation=doc["applied_generation"],
            applied_at=doc["applied_at"],
            applied_expires_at=doc["applied_expires_at"],
            last_poll=LastPoll(**doc["last_poll"]),
            verification=Verification(**doc["verification"]),
            objects=ObjectCounts(**doc["objects"]),
            apply_errors=tuple(ObjectError(**e) for e in doc["apply_errors"]),
            drift=None
            if drift is None
            else Drift(
                drift["checked_at"],
                tuple(drift["missing"]),
                tuple(drift["changed"]),
                tuple(drift["extra"]),
                drift["repaired"],
            ),
            preflight=None
            if preflight is None
            else PreflightReport(
                preflight["cilium"],
                tuple(PreflightFinding(**f) for f in preflight["findings"]),
                dict(preflight["cluster"]),
            ),
            hits=None if hits is None else HitsSection.from_json(hits),
            schema_version=doc["schema_version"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "cluster_id": self.cluster_id,
            "channel": self.channel,
            "agent_version": self.agent_version,
            "applier": self.applier,
            "applied_digest": self.applied_digest,
            "applied_generation": self.applied_generation,
            "applied_at": self.applied_at,
            "applied_expires_at": self.applied_expires_at,
            "last_poll": dataclasses.asdict(self.last_poll),
            "verification": dataclasses.asdict(self.verification),
            "objects": dataclasses.asdict(self.objects),
            "apply_errors": [dataclasses.asdict(e) for e in self.apply_errors],
            "drift": None
            if self.drift is None
            else {
                "checked_at": self.drift.checked_at,
                "missing": list(self.drift.missing),
                "changed": list(self.drift.changed),
                "extra": list(self.drift.extra),
                "repaired": self.drift.repaired,
            },
            "preflight": None
            if self.preflight is None
            else {
                "cilium": self.preflight.cilium,
                "findings": [dataclasses.asdict(f) for f in self.preflight.findings],
                "cluster": dict(self.preflight.cluster),
            },
            "hits": None if self.hits is None else self.hits.to_json(),
        }

    def news(self) -> tuple[AgentStatus, bool]:
        """What the status says that is news for the bucket: all but the times of the poll and of
        the drift check, and the hit counts (that hits appear or go is news)."""
        timeless = dataclasses.replace(
            self,
            last_poll=dataclasses.replace(self.last_poll, at=""),
            drift=None if self.drift is None else dataclasses.replace(self.drift, checked_at=""),
            hits=None,
        )
        return timeless, self.hits is not None

"""The agent's memory across restarts.

- ``StateDir``: the last manifest it applied completely (``applied.json``) and the last status, in
  its state directory. Re-verified on load, so a tampered or foreign file is ignored, never trusted.
  The directory may be an ``emptyDir``: losing it must never lower the bar.
- ``ClusterRecord``: the highest generation (and digest, expiry) applied per channel, in a ConfigMap
  in the agent's namespace, written with optimistic concurrency (``resourceVersion``) and never
  lowered. It survives the pod; only someone with write access to the agent's namespace can change it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Protocol

from cdr_policy import jsonio
from cdr_policy.agent.applier import ApplyError, Conflict
from cdr_policy.agent.status import AgentStatus
from cdr_policy.bundle.manifest import MAX_MANIFEST_BYTES, Manifest
from cdr_policy.bundle.signing import Verifier, verify_signature
from cdr_policy.errors import BundleError, StorageError
from cdr_policy.observability import logger
from cdr_policy.storage import LocalStore, NotFound

APPLIED = "applied.json"
STATUS = "status.json"
RECORD_NAME = "cdr-policy-agent-state"
_ATTEMPTS = 5


@dataclass(frozen=True)
class Applied:
    """The last signed manifest this agent applied completely, and when."""

    manifest: Manifest
    applied_at: str

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def generation(self) -> int:
        return self.manifest.generation or 0

    @classmethod
    def from_json(cls, doc: Any) -> Applied:
        """BundleError when ``doc`` is not a state this agent saved (the manifest checked, not verified)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("applied_at"), str):
            raise BundleError("no applied_at")
        manifest = Manifest.from_json(doc.get("manifest"))
        if manifest.generation is None:
            raise BundleError("no generation")
        return cls(manifest, doc["applied_at"])

    def to_json(self) -> dict[str, Any]:
        return {"manifest": self.manifest.to_json(), "applied_at": self.applied_at}


@dataclass(frozen=True)
class Record:
    """What the cluster remembers of a channel: the highest generation applied completely."""

    generation: int
    digest: str
    expires_at: str
    applied_at: str

    @classmethod
    def of(cls, applied: Applied) -> Record:
        return cls(applied.generation, applied.digest, applied.manifest.expires_at, applied.applied_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "digest": self.digest,
            "expires_at": self.expires_at,
            "applied_at": self.applied_at,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> Record:
        if not isinstance(doc, dict) or not isinstance(doc.get("generation"), int) or doc["generation"] < 1:
            raise ValueError("no positive integer 'generation'")
        if not re.fullmatch(r"[0-9a-f]{64}", str(doc.get("digest"))):
            raise ValueError("no sha256 'digest'")
        for key in ("expires_at", "applied_at"):
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", str(doc.get(key))):
                raise ValueError(f"no timestamp '{key}'")
        return cls(doc["generation"], doc["digest"], doc["expires_at"], doc["applied_at"])


class RecordStore(Protocol):
    def describe(self) -> str: ...

    def load(self, channel: str) -> Record | None:
        """The channel's record, None when there is none; ApplyError when it cannot be read or is corrupt."""
        ...

    def save(self, channel: str, record: Record) -> None:
        """Store ``record`` unless a higher generation is already stored; ApplyError on failure."""
        ...


class ConfigMapClient(Protocol):
    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def write_configmap(self, obj: dict[str, Any]) -> None: ...


class ClusterRecord:
    """One ConfigMap (``cdr-policy-agent-state``) in the agent's namespace, one data key per channel."""

    def __init__(self, client: ConfigMapClient, namespace: str, name: str = RECORD_NAME) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name

    def describe(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    def load(self, channel: str) -> Record | None:
        obj = self.client.get_configmap(self.namespace, self.name)
        text = ((obj or {}).get("data") or {}).get(channel)
        if text is None:
            return None
        try:
            return Record.from_dict(jsonio.loads(text.encode()))
        except ValueError as exc:
            # Only the agent writes it: a corrupt record must stop the agent, not reset its floor.
            raise ApplyError(f"{self.describe()} key {channel} is corrupt ({exc}): fix or delete it") from exc

    def save(self, channel: str, record: Record) -> None:
        for _ in range(_ATTEMPTS):
            obj = self.client.get_configmap(self.namespace, self.name)
            data = dict((obj or {}).get("data") or {})
            try:
                stored = Record.from_dict(jsonio.loads(data[channel].encode())) if channel in data else None
            except ValueError:
                stored = None
            if stored is not None and stored.generation > record.generation:
                return  # another agent got further: never lower it
            data[channel] = jsonio.dumps(record.to_dict()).decode()
            meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
            if obj is not None:
                meta["resourceVersion"] = obj["metadata"]["resourceVersion"]
                meta["labels"] = (obj["metadata"].get("labels")) or {}
            else:
                meta["labels"] = {"app.kubernetes.io/managed-by": "cdr-policy"}
            try:
                self.client.write_configmap({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
                return
            except Conflict:
                continue
        raise ApplyError(f"{self.describe()}: still changing after {_ATTEMPTS} attempts")


class StateDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._store = LocalStore(path)

    def describe(self) -> str:
        return self._store.describe()

    def load(self, verifier: Verifier, channel: str) -> Applied | None:
        try:
            applied = Applied.from_json(
                jsonio.loads(self._store.get(APPLIED, max_bytes=MAX_MANIFEST_BYTES + 4096).data)
            )
            verify_signature(applied.manifest, verifier)
            if applied.manifest.channel != channel:
                raise BundleError("it belongs to another channel")
        except NotFound:
            return None
        except (StorageError, BundleError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring the saved agent state", extra={"path": self.describe(), "reason": str(exc)})
            return None
        return applied

    def save(self, applied: Applied) -> None:
        self._store.put(APPLIED, jsonio.dumps_pretty(applied.to_json()))

    def clear(self) -> None:
        self._store.delete(APPLIED)

    def save_status(self, status: AgentStatus) -> None:
        self._store.put(STATUS, jsonio.dumps_pretty(status.to_json()))

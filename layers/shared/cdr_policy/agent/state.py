"""The agent's memory across restarts: the last manifest it applied completely (``applied.json`` in its
state directory). Re-verified on load, so a tampered or foreign file is ignored, never trusted."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cdr_policy import jsonio
from cdr_policy.bundle.signing import Verifier, verify_signature
from cdr_policy.errors import BundleError, StorageError
from cdr_policy.observability import logger
from cdr_policy.storage import LocalStore, NotFound

APPLIED = "applied.json"
STATUS = "status.json"


@dataclass(frozen=True)
class Applied:
    manifest: dict[str, Any]
    applied_at: str

    @property
    def digest(self) -> str:
        return self.manifest["digest"]


class StateDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._store = LocalStore(path)

    def describe(self) -> str:
        return self._store.describe()

    def load(self, verifier: Verifier, channel: str) -> Applied | None:
        try:
            doc = jsonio.loads(self._store.get(APPLIED).data)
            manifest, applied_at = doc["manifest"], doc["applied_at"]
            verify_signature(manifest, verifier)
            if manifest["channel"] != channel:
                raise BundleError(f"it belongs to channel {manifest['channel']}")
        except NotFound:
            return None
        except (StorageError, BundleError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring the saved agent state", extra={"path": self.describe(), "reason": str(exc)})
            return None
        return Applied(manifest, applied_at)

    def save(self, applied: Applied) -> None:
        self._store.put(APPLIED, jsonio.dumps_pretty({"manifest": applied.manifest, "applied_at": applied.applied_at}))

    def clear(self) -> None:
        self._store.delete(APPLIED)

    def save_status(self, status: dict[str, Any]) -> None:
        self._store.put(STATUS, jsonio.dumps_pretty(status))

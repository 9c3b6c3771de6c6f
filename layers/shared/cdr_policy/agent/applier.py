"""Where the agent puts objects: a Kubernetes API server (``kube.KubeApplier``) or a directory
(``directory.DirectoryApplier``). Both speak this small interface."""

from __future__ import annotations

from typing import Any, Protocol

from cdr_policy.errors import CdrPolicyError


class ApplyError(CdrPolicyError):
    """Applying, reading or deleting one object (or listing objects) failed."""


class Conflict(ApplyError):
    """409: the object changed since it was read (or already exists): read it again."""


class Applier(Protocol):
    def describe(self) -> str:
        """Where objects go (an API URL or a directory), for logs and the status document."""
        ...

    def owned(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Every object of a supported kind carrying all of ``labels``."""
        ...

    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The live object with ``obj``'s kind, namespace and name, or None."""
        ...

    def apply(self, obj: dict[str, Any]) -> None:
        """Create ``obj`` or make the live object match it."""
        ...

    def delete(self, obj: dict[str, Any]) -> None:
        """Remove the live object (already gone is fine)."""
        ...

    def set_deadline(self, deadline: float | None) -> None:
        """A ``time.monotonic()`` instant after which no operation starts (ApplyError); None: no limit."""
        ...

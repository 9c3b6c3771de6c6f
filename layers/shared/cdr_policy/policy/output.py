"""What the compilers produce: one Kubernetes object per file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cdr_policy.policy.serialize import dump_yaml


@dataclass
class ObjectMeta:
    """Labels and annotations shared by all objects compiled for one purpose (Tetragon or Cilium)."""

    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class PolicyFile:
    """``filename`` is the local/bundle file name, ``kind``/``name`` the object's, ``entries`` the
    number of blocked values it carries (prefixes, ports or binaries; the change budget of the
    publish stage compares these)."""

    filename: str
    kind: str
    name: str
    obj: dict[str, Any]
    entries: int = 0

    def to_bytes(self) -> bytes:
        return dump_yaml(self.obj)

    def summary(self) -> dict[str, Any]:
        return {"file": self.filename, "kind": self.kind, "name": self.name, "entries": self.entries}

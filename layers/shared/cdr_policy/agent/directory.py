"""The dry-run / GitOps applier: each object is a YAML file ``<kind>-<name>.yaml`` (namespaced objects
``<kind>-<namespace>.<name>.yaml``; kinds lower-case) in one directory, which a GitOps tool or
``kubectl apply -f`` can take from there. Files that do not carry our labels are never touched."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from cdr_policy.agent.applier import ApplyError
from cdr_policy.agent.kinds import KINDS
from cdr_policy.bundle.objects import file_name
from cdr_policy.errors import StorageError
from cdr_policy.observability import logger
from cdr_policy.policy.serialize import ParsedYaml, dump_yaml
from cdr_policy.storage import LocalStore


class DirectoryApplier:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._store = LocalStore(self.path)
        self._yaml = ParsedYaml()  # every apply lists the folder: the files it wrote are not parsed again

    def describe(self) -> str:
        return f"directory {self.path}"

    def set_deadline(self, deadline: float | None) -> None:
        """Local files need no deadline: each write is bounded by the object's size."""

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            docs = self._yaml.load(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, yaml.YAMLError, RecursionError) as exc:
            logger.warning("unreadable file in the output directory", extra={"path": str(path), "error": str(exc)})
            return None
        return docs[0] if len(docs) == 1 and isinstance(docs[0], dict) else None

    def owned(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        if not self.path.is_dir():
            return []
        found = []
        for path in sorted(self.path.glob("*.yaml")):
            doc = self._read(path)
            if doc is None or doc.get("kind") not in KINDS:
                continue
            have = (doc.get("metadata") or {}).get("labels") or {}
            if all(have.get(k) == v for k, v in labels.items()):
                found.append(doc)
        return found

    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        return self._read(self.path / file_name(obj))

    def apply(self, obj: dict[str, Any]) -> None:
        data = dump_yaml(obj)
        try:
            self._store.put(file_name(obj), data)
        except (OSError, StorageError) as exc:
            raise ApplyError(f"cannot write {self.path / file_name(obj)}: {exc}") from exc
        self._yaml.remember(data, [obj])  # the next listing reads these bytes: no need to parse them

    def delete(self, obj: dict[str, Any]) -> None:
        try:
            self._store.delete(file_name(obj))
        except (OSError, StorageError) as exc:
            raise ApplyError(f"cannot delete {self.path / file_name(obj)}: {exc}") from exc

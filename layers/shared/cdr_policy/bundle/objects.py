"""The Kubernetes objects inside a bundle.

Files ending in ``.yaml`` or ``.yml`` hold objects (one or more YAML documents each); every other file
(``report.json``, an index) travels with the bundle and is verified, but is not an object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import yaml

from cdr_policy.bundle.manifest import VerificationError
from cdr_policy.netprefix import canonical_text, folded
from cdr_policy.policy.serialize import load_yaml_documents

OBJECT_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, order=True)
class ObjectRef:
    """Identity of an object in a cluster, independent of the API version it is served under."""

    kind: str
    namespace: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"


def ref_of(obj: Mapping[str, Any]) -> ObjectRef:
    meta = obj.get("metadata") or {}
    return ObjectRef(kind=obj["kind"], namespace=meta.get("namespace") or None, name=meta["name"])


# Bounds on one object as a tree: our objects nest about ten levels and hold at most a few
# tens of thousands of nodes (a blocklist part's 8,000 addresses).
MAX_DEPTH = 32
MAX_NODES = 200_000
_SCALARS = (str, int, float, bool, type(None))


def check_tree(doc: Any, where: str) -> None:
    """Refuse a document that is not a plain JSON tree: a key that is not a string, a value that is
    not a JSON scalar, nested deeper than ``MAX_DEPTH``, more than ``MAX_NODES`` nodes, or a
    mapping or list reached twice (a YAML alias: our serializer writes
    none, and a 660-byte alias bomb expands to billions of nodes for whoever walks it). Iterative,
    and it stops at the first repeat, so the check itself stays cheap on hostile input."""
    seen: set[int] = set()
    stack = [(doc, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise VerificationError("bad_object", f"{where}: more than {MAX_NODES} values")
        if not isinstance(node, dict | list):
            if not isinstance(node, _SCALARS):  # YAML's timestamps, binary, sets: nothing of ours
                raise VerificationError("bad_object", f"{where}: a value that is not a JSON scalar")
            continue
        if isinstance(node, dict) and not all(isinstance(key, str) for key in node):
            raise VerificationError("bad_object", f"{where}: a mapping key that is not a string")
        if id(node) in seen:
            raise VerificationError("bad_object", f"{where}: YAML anchors and aliases are not accepted")
        seen.add(id(node))
        if depth > MAX_DEPTH:
            raise VerificationError("bad_object", f"{where}: nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children)


def _documents(path: str, data: bytes, load: Callable[[bytes], list[Any]]) -> Iterator[dict[str, Any]]:
    try:
        docs = load(data)
    except (yaml.YAMLError, RecursionError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise VerificationError("bad_object", f"{path}: not valid YAML{at}") from None
    for index, doc in enumerate(docs):
        where = f"{path} (document {index + 1})"
        check_tree(doc, where)
        if not isinstance(doc, dict):
            raise VerificationError("bad_object", f"{where}: expected a Kubernetes object, got {type(doc).__name__}")
        meta = doc.get("metadata")
        if not isinstance(doc.get("apiVersion"), str) or not isinstance(doc.get("kind"), str):
            raise VerificationError("bad_object", f"{where}: apiVersion and kind are required strings")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            raise VerificationError("bad_object", f"{where}: metadata.name is required")
        if "namespace" in meta and not isinstance(meta["namespace"], str):
            raise VerificationError("bad_object", f"{where}: metadata.namespace must be a string")
        yield doc


def placed_objects(
    files: Mapping[str, bytes], load: Callable[[bytes], list[Any]] = load_yaml_documents
) -> list[tuple[str, dict[str, Any]]]:
    """Every object in the bundle's YAML files with its place (``<path>, document <n>``), in path
    order, each file parsed by ``load`` (a reader's ``ParsedYaml.load``). Refuses malformed documents
    and two objects with the same kind, namespace and name."""
    objects: list[tuple[str, dict[str, Any]]] = []
    seen: dict[ObjectRef, str] = {}
    for path in sorted(files):
        if not path.endswith(OBJECT_SUFFIXES):
            continue
        for index, obj in enumerate(_documents(path, files[path], load), start=1):
            ref = ref_of(obj)
            if ref in seen:
                raise VerificationError(
                    "bad_object", f"two objects have the same kind, namespace and name ({seen[ref]} and {path})"
                )
            seen[ref] = path
            objects.append((f"{path}, document {index}", obj))
    return objects


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def prefixes(objects: Iterable[Mapping[str, Any]]) -> set[str]:
    """The canonical IP prefixes an object set names anywhere outside ``metadata`` (CIDR group
    entries, ``toCIDR``, Tetragon ``DAddr`` values, ...): the entries the change budget counts."""
    found: set[str] = set()
    for obj in objects:
        for key, value in obj.items():
            if key == "metadata":
                continue
            for text in _strings(value):
                prefix = _counted(text)
                if prefix is not None:
                    found.add(prefix)
    return found


@lru_cache(maxsize=1 << 15)
def _counted(text: str) -> str | None:
    """The canonical prefix ``text`` counts as (Tetragon lists every IPv4 prefix twice, plain and
    IPv4-mapped: ``folded`` counts it once), or None. Memoised: the agent counts the same prefixes in
    its live objects and in each new bundle."""
    prefix = folded(text)
    return None if prefix is None else canonical_text(prefix)


def file_name(obj: dict[str, Any]) -> str:
    ref = ref_of(obj)
    # Namespaces are DNS labels (no dots), so "<namespace>.<name>" cannot collide with another pair.
    stem = f"{ref.namespace}.{ref.name}" if ref.namespace else ref.name
    return f"{ref.kind.lower()}-{stem}.yaml"

"""Checking policy files: ``check_files`` and the ``cdr-policy validate PATH... [--crds DIR]`` command.

Paths may be files or directories (``*.yaml``, ``*.yml``, ``*.json``, searched recursively);
files may hold several YAML documents and ``kind: List`` objects. CiliumCIDRGroups are checked
against the never-block list when a deny rule among the checked objects references them, or when
they are our own blocklist groups: a group that only feeds allow rules may well list private ranges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdr_policy import layout
from cdr_policy.errors import ContractError, PolicyCheckError
from cdr_policy.policy.checker.check import CIDR_GROUP_KIND, CILIUM_POLICY_KINDS, check_object
from cdr_policy.policy.checker.common import BlockGuard, as_dict
from cdr_policy.policy.checker.problem import Problem, error, warning
from cdr_policy.policy.checker.schema import SchemaSet
from cdr_policy.policy.naming import COMPONENT_CIDR_GROUP, COMPONENT_KEY, MANAGED_BY, MANAGED_BY_KEY
from cdr_policy.policy.serialize import load_yaml_documents
from cdr_policy.schemas import fields_from_json, fields_to_json

_SUFFIXES = (".yaml", ".yml", ".json")
# The run report and the provenance index the CLI writes beside the policies: not Kubernetes objects.
NOT_OBJECTS = frozenset({layout.REPORT_FILE, layout.PROVENANCE_FILE})
COUNTS = ("objects", "errors", "warnings")  # a validate report's counts, derived from its problems


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files named on the command line, and the policy files in directories (``NOT_OBJECTS`` aside)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(
                sorted(
                    p for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIXES and p.name not in NOT_OBJECTS
                )
            )
        elif path.is_file():
            files.append(path)
        else:
            raise PolicyCheckError(f"{path}: no such file or directory")
    return files


def _objects(data: bytes) -> tuple[list[Any], list[Problem]]:
    try:
        documents = load_yaml_documents(data)
    except Exception as exc:  # any YAML error must surface as a problem of this file, not a crash
        return [], [error("file.yaml", "", f"cannot parse: {exc}")]
    objects: list[Any] = []
    for doc in documents:
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            objects.extend(doc["items"])
        else:
            objects.append(doc)
    if not objects:
        return [], [warning("file.empty", "", "no Kubernetes object in this file")]
    return objects, []


def _deny_group_refs(objects: Iterable[Any]) -> set[str]:
    refs: set[str] = set()
    for obj in objects:
        if not isinstance(obj, dict) or obj.get("kind") not in CILIUM_POLICY_KINDS:
            continue
        rules = [obj.get("spec")] + list(obj.get("specs") or [])
        for rule in rules:
            if not isinstance(rule, dict):
                continue
            for item in rule.get("egressDeny") or []:
                entries = item.get("toCIDRSet") or [] if isinstance(item, dict) else []
                refs.update(
                    e["cidrGroupRef"] for e in entries if isinstance(e, dict) and isinstance(e.get("cidrGroupRef"), str)
                )
    return refs


def _is_blocklist_group(obj: dict[str, Any], deny_refs: set[str]) -> bool:
    metadata = as_dict(obj.get("metadata"))
    labels = as_dict(metadata.get("labels"))
    ours = labels.get(MANAGED_BY_KEY) == MANAGED_BY and labels.get(COMPONENT_KEY) == COMPONENT_CIDR_GROUP
    return ours or metadata.get("name") in deny_refs


@dataclass(frozen=True)
class CheckedObject:
    """One object of a checked file: its position, its kind and name (when they are strings) and
    what is wrong with it."""

    index: int
    kind: str | None
    name: str | None
    problems: tuple[Problem, ...]


@dataclass(frozen=True)
class CheckedFile:
    """One checked file: what is wrong with the file itself, and its objects."""

    path: str
    problems: tuple[Problem, ...]
    objects: tuple[CheckedObject, ...]


@dataclass(frozen=True)
class ValidateReport:
    """What ``cdr-policy validate`` found (``--json`` prints ``to_json``): every file and object
    with its problems, their counts, and the CRDs' validation rules that could not be evaluated."""

    files: tuple[CheckedFile, ...]
    skipped_rules: tuple[str, ...]

    def _all_problems(self) -> list[Problem]:
        return [p for f in self.files for p in (*f.problems, *(p for o in f.objects for p in o.problems))]

    @property
    def objects(self) -> int:
        return sum(len(f.objects) for f in self.files)

    @property
    def errors(self) -> int:
        return sum(p.severity == "error" for p in self._all_problems())

    @property
    def warnings(self) -> int:
        return sum(p.severity == "warning" for p in self._all_problems())

    def to_json(self) -> dict[str, Any]:
        return {**fields_to_json(self), "objects": self.objects, "errors": self.errors, "warnings": self.warnings}

    @classmethod
    def from_json(cls, doc: Any) -> ValidateReport:
        """A report ``--json`` printed; ContractError naming the field (the counts must agree with the problems)."""
        what = "validate report"
        report = cls(**fields_from_json(cls, doc, what, derived=COUNTS))
        for count in COUNTS:
            if doc[count] != getattr(report, count):
                raise ContractError(f"malformed {what}: {count} does not agree with the files")
        return report


def check_files(paths: Iterable[str | Path], schemas: SchemaSet, *, guard: BlockGuard | None = None) -> ValidateReport:
    """Check every object in ``paths`` (files or directories)."""
    return check_contents(((str(p), p.read_bytes()) for p in _expand(paths)), schemas, guard=guard)


def check_contents(
    contents: Iterable[tuple[str, bytes]], schemas: SchemaSet | None, *, guard: BlockGuard | None = None
) -> ValidateReport:
    """``check_files`` on in-memory files: ``(name, bytes)`` pairs (``schemas`` None: checklist only)."""
    loaded = [(name, *_objects(data)) for name, data in contents]
    everything = [obj for _, objects, _ in loaded for obj in objects]
    deny_refs = _deny_group_refs(everything)
    group_names = {
        o["metadata"]["name"]
        for o in everything
        if isinstance(o, dict)
        and o.get("kind") == CIDR_GROUP_KIND
        and isinstance(o.get("metadata"), dict)
        and "name" in o["metadata"]
    }
    files = []
    for name, objects, file_problems in loaded:
        checked = []
        for index, obj in enumerate(objects):
            is_group = isinstance(obj, dict) and obj.get("kind") == CIDR_GROUP_KIND
            object_guard = guard if not is_group or _is_blocklist_group(obj, deny_refs) else None
            problems = check_object(obj, schemas, guard=object_guard)
            if group_names and isinstance(obj, dict) and obj.get("kind") in CILIUM_POLICY_KINDS:
                for ref in sorted(_deny_group_refs([obj]) - group_names):
                    problems.append(
                        warning(
                            "cilium.dangling-group",
                            "spec",
                            f"cidrGroupRef {ref} is not among the checked objects",
                        )
                    )
            kind = obj.get("kind") if isinstance(obj, dict) else None
            metadata = as_dict(obj.get("metadata")) if isinstance(obj, dict) else {}
            label = metadata.get("name")
            checked.append(
                CheckedObject(
                    index,
                    kind if isinstance(kind, str) else None,
                    label if isinstance(label, str) else None,
                    tuple(problems),
                )
            )
        files.append(CheckedFile(name, tuple(file_problems), tuple(checked)))
    skipped = schemas.skipped_rules if schemas is not None else set()
    return ValidateReport(tuple(files), tuple(sorted(f"{source}: {rule}" for source, rule in skipped)))

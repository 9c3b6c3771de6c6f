"""CRD schemas and a strict validator that behaves like the API server with ``fieldValidation=Strict``.

``SchemaSet`` holds the ``openAPIV3Schema`` of every served (group, version, kind), read from CRD
YAML files (``from_dir``) or from CRD objects (``from_crds``: the agent passes the CRDs it read from
the API server, so it checks against the versions it is about to apply to). A directory may hold
the same CRD for several releases (``cilium-main/`` and ``cilium-v1.16.5/``): an object must then
be valid for every one of them.

What the validator enforces, beyond plain JSON Schema (jsonschema does not know the Kubernetes
extensions, so the walk is our own):

- unknown fields are errors wherever the API server would prune them (``properties`` without
  ``additionalProperties`` and without ``x-kubernetes-preserve-unknown-fields``); branches of
  ``oneOf``/``anyOf``/``allOf`` only add value checks, as in structural schemas;
- ``x-kubernetes-int-or-string``, ``x-kubernetes-list-type: set|map`` (uniqueness), ``nullable``
  (the API server prunes a null in a non-nullable field: a warning, and the field counts as absent);
- ``format: cidr`` needs an explicit prefix length (``ParseCIDRSloppy``: leading zeros allowed),
  ``date-time``, ``int32``/``int64`` ranges; other formats are not checked by the API server either;
- ``x-kubernetes-validations`` in the CEL subset of ``cel.py``; other rules are skipped and listed in
  ``SchemaSet.skipped_rules``;
- ``metadata`` as ObjectMeta: known fields only, a DNS-1123 name, valid labels and annotations, a
  namespace exactly when the CRD is namespaced.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from cdr_policy import layout
from cdr_policy.errors import PolicyCheckError
from cdr_policy.policy.checker import cel
from cdr_policy.policy.checker.problem import Problem, error, warning
from cdr_policy.policy.naming import is_dns_label, is_dns_subdomain, is_label_key, is_label_value
from cdr_policy.policy.serialize import load_yaml_documents
from cdr_policy.storage import Store

_OBJECT_META = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "ownerReferences",
        "finalizers",
        "managedFields",
        "selfLink",
    }
)
_ANNOTATIONS_MAX_BYTES = 256 * 1024
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class CrdVersion:
    """One served version of one CRD, with the file or object it came from."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    deprecated: bool
    schema: dict[str, Any]
    source: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def _crds_in(documents: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """The CustomResourceDefinitions among ``documents``, also inside a ``kind: List`` (what
    ``kubectl get crd ... -o yaml`` writes)."""
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == "CustomResourceDefinition":
            yield doc
        elif doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            yield from _crds_in(doc["items"])


@dataclass
class SchemaSet:
    versions: dict[tuple[str, str, str], list[CrdVersion]] = field(default_factory=dict)
    # CEL rules outside the supported subset, seen during validation: (source, rule).
    skipped_rules: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def from_crds(cls, crds: Iterable[dict[str, Any]], source: str = "cluster") -> SchemaSet:
        schemas = cls()
        for crd in crds:
            schemas.add_crd(crd, source)
        return schemas

    @classmethod
    def from_dir(cls, path: str | Path) -> SchemaSet:
        """Every CustomResourceDefinition in ``path``: one file (such as ``kubectl get crd ... -o yaml``),
        or the ``*.yaml``/``*.yml``/``*.json`` files under a folder (recursively). Other documents
        (example policies next to the CRDs) are ignored."""
        root = Path(path)
        if root.is_file():
            files, base = [root], root.parent
        elif root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
            base = root
        else:
            what = "is not a file or folder" if root.exists() else "does not exist"
            raise PolicyCheckError(f"CRD path {root} {what}")
        schemas = cls()
        for file in files:
            try:
                documents = load_yaml_documents(file.read_bytes())
            except Exception as exc:  # a broken file must name itself, whatever the YAML error
                raise PolicyCheckError(f"cannot read {file}: {exc}") from exc
            for crd in _crds_in(documents):
                schemas.add_crd(crd, str(file.relative_to(base)))
        if not schemas.versions:
            raise PolicyCheckError(f"no CustomResourceDefinition found under {root}")
        return schemas

    @classmethod
    def from_store(cls, store: Store) -> SchemaSet | None:
        """The CRDs the operator uploaded under ``crds/`` of the state store (the target clusters'
        versions), or None when there are none."""
        schemas = None
        for key in store.list(layout.CRDS):
            if not key.endswith((".yaml", ".yml")):
                continue
            for crd in _crds_in(load_yaml_documents(store.get(key).data)):
                schemas = schemas or cls()
                schemas.add_crd(crd, f"{store.describe()}/{key}")
        return schemas

    def add_crd(self, crd: dict[str, Any], source: str) -> None:
        try:
            spec = crd["spec"]
            group, names, scope = spec["group"], spec["names"], spec["scope"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if not isinstance(schema, dict):
                    raise KeyError("openAPIV3Schema")
                entry = CrdVersion(
                    group=group,
                    version=version["name"],
                    kind=names["kind"],
                    plural=names["plural"],
                    namespaced=scope == "Namespaced",
                    deprecated=bool(version.get("deprecated", False)),
                    schema=schema,
                    source=source,
                )
                self.versions.setdefault((group, entry.version, entry.kind), []).append(entry)
        except (KeyError, TypeError) as exc:
            name = crd.get("metadata", {}).get("name", "?") if isinstance(crd, dict) else "?"
            raise PolicyCheckError(f"malformed CRD {name} in {source}: missing {exc}") from exc

    def kinds(self) -> list[str]:
        return sorted({f"{g}/{v} {k}" for g, v, k in self.versions})

    def lookup(self, api_version: str, kind: str) -> list[CrdVersion]:
        group, _, version = api_version.rpartition("/")
        return self.versions.get((group, version, kind), [])

    def validate(self, obj: Any) -> list[Problem]:
        """Schema problems of one object (empty list: valid for every CRD variant)."""
        if not isinstance(obj, dict):
            return [
                error(
                    "schema.not-an-object",
                    "",
                    f"a Kubernetes object must be a mapping, got {type(obj).__name__}",
                )
            ]
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            return [error("schema.type-meta", "", "apiVersion and kind must be strings")]
        variants = self.lookup(api_version, kind)
        if not variants:
            served = [f"{v.api_version}" for (g, _, k), vs in self.versions.items() if k == kind for v in vs]
            hint = f" (served: {', '.join(sorted(set(served)))})" if served else ""
            return [error("schema.unknown-kind", "", f"no CRD serves {api_version} {kind}{hint}")]
        where: dict[Problem, list[str]] = {}
        for variant in variants:
            found = _Walker(self, variant.source).object(obj, variant)
            if variant.deprecated:
                found.append(warning("schema.deprecated-version", "apiVersion", f"{api_version} {kind} is deprecated"))
            for problem in found:
                where.setdefault(problem, []).append(variant.source)
        problems = []
        for problem, sources in where.items():
            if len(sources) < len(variants):
                problem = Problem(
                    problem.severity, problem.code, problem.path, f"{problem.message} [{', '.join(sources)}]"
                )
            problems.append(problem)
        return sorted(problems, key=lambda p: (p.path, p.code, p.message))


class _Walker:
    def __init__(self, schemas: SchemaSet, source: str) -> None:
        self.schemas = schemas
        self.source = source

    def object(self, obj: dict[str, Any], crd: CrdVersion) -> list[Problem]:
        problems: list[Problem] = []
        # TypeMeta and ObjectMeta are the API server's own, not the CRD schema's: see _metadata.
        own = ("apiVersion", "kind", "metadata")
        root = dict(crd.schema)
        root["properties"] = {k: v for k, v in root.get("properties", {}).items() if k not in own}
        root["required"] = [k for k in root.get("required", []) if k not in own]
        body = {k: v for k, v in obj.items() if k not in own}
        self.value(body, root, "", problems, strict=True)
        problems.extend(_metadata(obj.get("metadata"), crd))
        return problems

    def value(self, value: Any, schema: dict[str, Any], path: str, problems: list[Problem], *, strict: bool) -> None:
        if value is None:
            if not schema.get("nullable", False) and ("type" in schema or "x-kubernetes-int-or-string" in schema):
                # The API server prunes nulls of non-nullable fields before validating: the field is absent.
                problems.append(warning("schema.null-pruned", path, "null is dropped by the API server (field absent)"))
            return
        if not self._type(value, schema, path, problems):
            return
        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(repr(v) for v in schema["enum"])
            problems.append(error("schema.enum", path, f"{value!r} is not one of {allowed}"))
        if isinstance(value, str):
            self._string(value, schema, path, problems)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self._number(value, schema, path, problems)
        elif isinstance(value, list):
            self._array(value, schema, path, problems, strict=strict)
        elif isinstance(value, dict):
            self._mapping(value, schema, path, problems, strict=strict)
        self._combinators(value, schema, path, problems)
        for rule in schema.get("x-kubernetes-validations", []):
            self._cel(value, rule, path, problems)

    def _type(self, value: Any, schema: dict[str, Any], path: str, problems: list[Problem]) -> bool:
        if schema.get("x-kubernetes-int-or-string"):
            ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
            expected = "an integer or a string"
        else:
            expected_type = schema.get("type")
            if expected_type is None:
                return True
            ok = {
                "object": isinstance(value, dict),
                "array": isinstance(value, list),
                "string": isinstance(value, str),
                "integer": isinstance(value, int) and not isinstance(value, bool),
                "number": isinstance(value, int | float) and not isinstance(value, bool),
                "boolean": isinstance(value, bool),
            }.get(expected_type, True)
            expected = f"of type {expected_type}"
        if not ok:
            problems.append(
                error("schema.type", path, f"must be {expected}, got {type(value).__name__} {_short(value)}")
            )
        return ok

    def _string(self, value: str, schema: dict[str, Any], path: str, problems: list[Problem]) -> None:
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(
                error("schema.max-length", path, f"longer than {schema['maxLength']} characters ({len(value)})")
            )
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(error("schema.min-length", path, f"shorter than {schema['minLength']} characters"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(error("schema.pattern", path, f"{_short(value)} does not match {schema['pattern']}"))
        reason = _format_problem(value, schema.get("format"))
        if reason:
            problems.append(error("schema.format", path, reason))

    def _number(self, value: float, schema: dict[str, Any], path: str, problems: list[Problem]) -> None:
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(error("schema.minimum", path, f"{value} is less than {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(error("schema.maximum", path, f"{value} is greater than {schema['maximum']}"))
        bounds = _INT_RANGES.get(schema.get("format", ""))
        if bounds and not bounds[0] <= value <= bounds[1]:
            problems.append(error("schema.format", path, f"{value} does not fit {schema['format']}"))

    def _array(
        self, value: list[Any], schema: dict[str, Any], path: str, problems: list[Problem], *, strict: bool
    ) -> None:
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(error("schema.max-items", path, f"more than {schema['maxItems']} items ({len(value)})"))
        if "minItems" in schema and len(value) < schema["minItems"]:
            problems.append(error("schema.min-items", path, f"fewer than {schema['minItems']} items"))
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                self.value(item, items, f"{path}[{i}]", problems, strict=strict)
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set":
            seen: set[str] = set()
            for i, item in enumerate(value):
                key = repr(item)
                if key in seen:
                    problems.append(
                        error("schema.duplicate", f"{path}[{i}]", f"duplicate entry {_short(item)} in a set")
                    )
                seen.add(key)
        elif list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen_keys: set[tuple[str, ...]] = set()
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    key_tuple = tuple(repr(item.get(k)) for k in keys)
                    if key_tuple in seen_keys:
                        problems.append(error("schema.duplicate", f"{path}[{i}]", f"duplicate map key {keys}"))
                    seen_keys.add(key_tuple)

    def _mapping(
        self,
        value: dict[str, Any],
        schema: dict[str, Any],
        path: str,
        problems: list[Problem],
        *,
        strict: bool,
    ) -> None:
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if value.get(key) is None and not properties.get(key, {}).get("nullable", False):
                problems.append(error("schema.required", _join(path, key), "required field is missing"))
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(error("schema.key", path, f"keys must be strings, got {key!r}"))
                continue
            child = _join(path, key)
            if key in properties:
                self.value(item, properties[key], child, problems, strict=strict)
            elif isinstance(additional, dict):
                self.value(item, additional, child, problems, strict=strict)
            elif additional is True or preserve:
                continue
            elif strict:
                known = ", ".join(sorted(properties)) or "none"
                problems.append(
                    error(
                        "schema.unknown-field",
                        child,
                        f"unknown field {key!r} (the API server would drop it; known: {known})",
                    )
                )
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            problems.append(error("schema.max-properties", path, f"more than {schema['maxProperties']} fields"))
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            problems.append(error("schema.min-properties", path, f"fewer than {schema['minProperties']} fields"))

    def _combinators(self, value: Any, schema: dict[str, Any], path: str, problems: list[Problem]) -> None:
        def passes(branch: dict[str, Any]) -> bool:
            found: list[Problem] = []
            self.value(value, branch, path, found, strict=False)
            return not found

        for branch in schema.get("allOf", []):
            self.value(value, branch, path, problems, strict=False)
        if "anyOf" in schema and not any(passes(b) for b in schema["anyOf"]):
            problems.append(
                error("schema.any-of", path, f"matches none of the allowed forms: {_describe(schema['anyOf'])}")
            )
        if "oneOf" in schema:
            matched = sum(passes(b) for b in schema["oneOf"])
            if matched != 1:
                problems.append(
                    error(
                        "schema.one-of",
                        path,
                        f"must match exactly one of {_describe(schema['oneOf'])}, matches {matched}",
                    )
                )
        if "not" in schema and passes(schema["not"]):
            problems.append(error("schema.not", path, "matches a forbidden form"))

    def _cel(self, value: Any, rule: dict[str, Any], path: str, problems: list[Problem]) -> None:
        text = rule.get("rule", "")
        try:
            check = cel.compile_rule(text)
        except cel.Unsupported:
            self.schemas.skipped_rules.add((self.source, text))
            return
        if not check(value):
            message = rule.get("message") or f"failed validation rule {text}"
            problems.append(error("schema.rule", path, message))


def _metadata(metadata: Any, crd: CrdVersion) -> list[Problem]:
    if not isinstance(metadata, dict):
        return [error("schema.metadata", "metadata", "metadata (with a name) is required")]
    problems = [
        error("schema.unknown-field", f"metadata.{key}", f"unknown ObjectMeta field {key!r}")
        for key in sorted(set(metadata) - _OBJECT_META)
    ]
    name = metadata.get("name")
    if not is_dns_subdomain(name):
        problems.append(
            error(
                "metadata.name",
                "metadata.name",
                f"{name!r} is not a DNS-1123 subdomain (lower-case alphanumerics, '-', '.')",
            )
        )
    namespace = metadata.get("namespace")
    if crd.namespaced and namespace is None:
        problems.append(
            warning(
                "metadata.namespace",
                "metadata.namespace",
                f"{crd.kind} is namespaced but names no namespace: it lands in whatever namespace the client uses",
            )
        )
    if not crd.namespaced and namespace is not None:
        problems.append(
            error(
                "metadata.namespace",
                "metadata.namespace",
                f"{crd.kind} is cluster-scoped: remove metadata.namespace",
            )
        )
    if namespace is not None and not is_dns_label(namespace):
        problems.append(error("metadata.namespace", "metadata.namespace", f"{namespace!r} is not a DNS-1123 label"))
    for field_name in ("labels", "annotations"):
        entries = metadata.get(field_name, {})
        if entries is None:
            continue
        if not isinstance(entries, dict):
            problems.append(error("schema.type", f"metadata.{field_name}", "must be a mapping of strings"))
            continue
        for key, value in entries.items():
            where = f"metadata.{field_name}[{key}]"
            if not is_label_key(key):
                problems.append(error(f"metadata.{field_name}", where, f"invalid key {key!r}"))
            if not isinstance(value, str):
                problems.append(error(f"metadata.{field_name}", where, "values must be strings"))
            elif field_name == "labels" and not is_label_value(value):
                problems.append(
                    error("metadata.labels", where, f"invalid label value {value!r} (<= 63 of [A-Za-z0-9._-])")
                )
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict):
        size = sum(len(str(k)) + len(str(v)) for k, v in annotations.items())
        if size > _ANNOTATIONS_MAX_BYTES:
            problems.append(
                error(
                    "metadata.annotations",
                    "metadata.annotations",
                    f"annotations total {size} bytes (> 256 KiB)",
                )
            )
    return problems


def parse_cidr_sloppy(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """``netutils.ParseCIDRSloppy``: an address, ``/``, a length; IPv4 octets may carry leading
    zeros; host bits may be set. None when it does not parse."""
    address, slash, length = value.partition("/")
    if not slash or not length.isdigit():
        return None
    if "." in address and ":" not in address:
        octets = address.split(".")
        if len(octets) != 4 or not all(o.isdigit() and len(o) <= 3 for o in octets):
            return None
        address = ".".join(str(int(o)) for o in octets)
    try:
        return ipaddress.ip_network(f"{address}/{int(length)}", strict=False)
    except ValueError:
        return None


# A bundle names each address in its Tetragon policy, its Cilium policy and its CIDR group, and the
# next bundle almost all of them again: each (value, format) is parsed once per process.
@lru_cache(maxsize=1 << 15)
def _format_problem(value: str, fmt: str | None) -> str | None:
    if fmt == "cidr" and parse_cidr_sloppy(value) is None:
        return f"{value!r} is not a CIDR with an explicit prefix length (e.g. 198.51.100.7/32)"
    if fmt == "date-time":
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return f"{value!r} is not an RFC 3339 date-time"
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(branches: list[dict[str, Any]]) -> str:
    forms = []
    for branch in branches:
        required = branch.get("required")
        forms.append("{" + ", ".join(required) + "}" if required else "a form")
    return " | ".join(forms)

"""JSON Schemas of the documents that cross stage boundaries (loaded once, cached), and the checks
both sides of each contract run against them.

The schemas are JSON Schema 2020-12. They are checked by this module's validator of the keywords they
use (``KEYWORDS``), not by the ``jsonschema`` package: every Lambda function checks a document on its
first call, and importing jsonschema (with attrs, referencing, rpds and the metaschemas of every
draft) was a large share of each cold start (``benchmarks/README.md``). A schema that uses
any other keyword is refused when it is loaded, so nothing is silently left unchecked, and the tests
compare this validator with jsonschema on every schema and on thousands of valid and broken
documents (``tests/unit/schemas/test_schemas.py``).

Messages name the place (``files/0/sha256``) and the rule, never the value: the documents carry
feed and CDR content.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from collections.abc import Collection, Iterator
from importlib import resources
from typing import Any, TypeVar

from cdr_policy import jsonio
from cdr_policy.errors import CdrPolicyError, ContractError

# What a schema may say: the assertions and applicators implemented below, and annotations.
KEYWORDS = frozenset(
    {
        "type",
        "const",
        "enum",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "additionalProperties",
        "propertyNames",
        "dependentRequired",
        "$ref",
        "allOf",
        "oneOf",
        "if",
        "then",
    }
)
ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description", "contentEncoding"})

Path = tuple[str | int, ...]
T = TypeVar("T")
_TYPES: dict[str, type] = {"string": str, "object": dict, "array": list, "boolean": bool, "null": type(None)}


class Schema:
    """One schema, refused at once if it says what this validator would not check."""

    def __init__(self, root: dict[str, Any], name: str) -> None:
        self.root = root
        self.name = name
        self._check(root, "#")

    def _check(self, schema: Any, where: str) -> None:
        """Refuse what this validator would not enforce: another keyword, a non-local ``$ref``."""
        if isinstance(schema, bool):
            return
        if not isinstance(schema, dict):
            raise CdrPolicyError(f"{self.name}: {where} is not a schema")
        unknown = set(schema) - KEYWORDS - ANNOTATIONS
        if unknown:
            raise CdrPolicyError(f"{self.name}: {where} uses {', '.join(sorted(unknown))}, which is not implemented")
        if "$ref" in schema:
            self._check(self._resolve(schema["$ref"], where), schema["$ref"])
        for key in ("properties", "$defs"):
            for name, sub in schema.get(key, {}).items():
                self._check(sub, f"{where}/{key}/{name}")
        for key in ("items", "additionalProperties", "propertyNames", "if", "then"):
            if key in schema:
                self._check(schema[key], f"{where}/{key}")
        for key in ("allOf", "oneOf"):
            for i, sub in enumerate(schema.get(key, [])):
                self._check(sub, f"{where}/{key}/{i}")

    def _resolve(self, ref: str, where: str = "") -> Any:
        if not ref.startswith("#"):
            raise CdrPolicyError(f"{self.name}: {where}: only local $refs are implemented")
        node: Any = self.root
        for part in filter(None, ref[1:].split("/")):
            key = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or key not in node:
                raise CdrPolicyError(f"{self.name}: {where}: $ref {ref} points nowhere")
            node = node[key]
        return node

    def errors(self, value: Any, schema: Any, path: Path) -> Iterator[tuple[Path, str]]:
        """``(path, message)`` for every keyword ``value`` breaks (each applies on its own, as in
        JSON Schema: ``pattern`` only to strings, ``required`` only to objects ...)."""
        if schema is True:
            return
        if schema is False:
            yield path, "is not allowed here"
            return
        if "$ref" in schema:
            yield from self.errors(value, self._resolve(schema["$ref"]), path)
        if "type" in schema:
            types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
            if not any(_is_type(value, t) for t in types):
                yield path, f"is not of type {' or '.join(types)}"
        if "const" in schema and not _equal(value, schema["const"]):
            yield path, f"is not {json.dumps(schema['const'])}"
        if "enum" in schema and not any(_equal(value, option) for option in schema["enum"]):
            yield path, f"is not one of {json.dumps(schema['enum'])}"
        if isinstance(value, str):
            yield from self._string(value, schema, path)
        if _is_type(value, "number"):
            if "minimum" in schema and value < schema["minimum"]:
                yield path, f"is less than the minimum of {schema['minimum']}"
            if "maximum" in schema and value > schema["maximum"]:
                yield path, f"is more than the maximum of {schema['maximum']}"
        if isinstance(value, list):
            yield from self._array(value, schema, path)
        if isinstance(value, dict):
            yield from self._object(value, schema, path)
        for sub in schema.get("allOf", ()):
            yield from self.errors(value, sub, path)
        if "oneOf" in schema:
            matches = sum(1 for sub in schema["oneOf"] if self.valid(value, sub))
            if matches != 1:
                yield path, "matches none of the oneOf schemas" if not matches else "matches more than one oneOf schema"
        if "if" in schema and "then" in schema and self.valid(value, schema["if"]):
            yield from self.errors(value, schema["then"], path)

    def valid(self, value: Any, schema: Any) -> bool:
        return next(self.errors(value, schema, ()), None) is None

    def _string(self, value: str, schema: dict[str, Any], path: Path) -> Iterator[tuple[Path, str]]:
        if "pattern" in schema and _regex(schema["pattern"]).search(value) is None:
            yield path, f"does not match {schema['pattern']}"
        if "minLength" in schema and len(value) < schema["minLength"]:
            yield path, f"is shorter than {schema['minLength']} characters"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            yield path, f"is longer than {schema['maxLength']} characters"

    def _array(self, value: list[Any], schema: dict[str, Any], path: Path) -> Iterator[tuple[Path, str]]:
        if "minItems" in schema and len(value) < schema["minItems"]:
            yield path, f"has fewer than {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            yield path, f"has more than {schema['maxItems']} items"
        if "items" in schema:
            for i, item in enumerate(value):
                yield from self.errors(item, schema["items"], (*path, i))

    def _object(self, value: dict[str, Any], schema: dict[str, Any], path: Path) -> Iterator[tuple[Path, str]]:
        for key in schema.get("required", ()):
            if key not in value:
                yield path, f"{key!r} is a required property"
        properties = schema.get("properties", {})
        for key, sub in properties.items():
            if key in value:
                yield from self.errors(value[key], sub, (*path, key))
        if "additionalProperties" in schema:
            extra = [key for key in value if key not in properties]
            if schema["additionalProperties"] is False:
                if extra:
                    yield path, f"has {len(extra)} propert{'y' if len(extra) == 1 else 'ies'} the schema does not allow"
            else:
                for key in extra:
                    yield from self.errors(value[key], schema["additionalProperties"], (*path, key))
        if "propertyNames" in schema:
            for key in value:
                for _, message in self.errors(key, schema["propertyNames"], path):
                    yield path, f"has a property name that {message}"
        for key, needed in schema.get("dependentRequired", {}).items():
            if key in value:
                for other in needed:
                    if other not in value:
                        yield path, f"{other!r} is required when {key!r} is present"


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":  # 1.0 is an integer in JSON Schema; True is not
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_equal, a, b))
    same_kind = type(a) is type(b) or (_is_type(a, "number") and _is_type(b, "number"))
    return same_kind and bool(a == b)


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@functools.cache
def _schema(name: str) -> Schema:
    return Schema(json.loads(resources.files(__package__).joinpath(name).read_text(encoding="utf-8")), name)


def schema_errors(document: Any, name: str) -> list[str]:
    """Every way ``document`` breaks schema ``name`` (``manifest.schema.json``) as ``path: message``;
    empty when it is valid."""
    schema = _schema(name)
    errors = sorted(schema.errors(document, schema.root, ()), key=lambda e: (list(map(str, e[0])), e[1]))
    return [f"{'/'.join(map(str, path)) or '<root>'}: {message}" for path, message in errors]


def load_checked(data: bytes, name: str) -> Any:
    """The JSON document in ``data`` when it matches schema ``name``; ValueError saying what is
    wrong (not JSON, or the first schema errors), never quoting the document."""
    try:
        doc = jsonio.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError("not JSON") from exc
    errors = schema_errors(doc, name)
    if errors:
        raise ValueError("; ".join(errors[:5]))
    return doc


def check_contract(document: Any, name: str, what: str) -> None:
    """The check every ``from_json`` of a contract runs first: ``document`` (however it was parsed)
    nests at most ``jsonio.MAX_DEPTH`` deep and matches schema ``name``. ContractError naming ``what``
    and the first places and rules it breaks (never a value)."""
    try:
        jsonio.check_depth(document, jsonio.MAX_DEPTH)
    except ValueError as exc:
        raise ContractError(f"malformed {what}: {exc}") from None
    errors = schema_errors(document, name)
    if errors:
        raise ContractError(f"malformed {what}: " + "; ".join(errors[:5]))


def parse_contract(data: bytes, name: str, what: str) -> Any:
    """The JSON document in ``data``, checked as ``check_contract`` does; ContractError otherwise."""
    try:
        document = jsonio.loads(data)
    except ValueError as exc:
        raise ContractError(f"malformed {what}: not JSON ({exc})") from None
    check_contract(document, name, what)
    return document


def validate(document: Any, name: str) -> None:
    """Raise CdrPolicyError listing how ``document`` breaks schema ``name``."""
    errors = schema_errors(document, name)
    if errors:
        raise CdrPolicyError(f"{name}: {len(errors)} violation(s): " + "; ".join(errors[:10]))


def fields_from_json(
    cls: type[Any],
    document: Any,
    what: str,
    *,
    nested: Collection[str] = (),
    given: Collection[str] = (),
    derived: Collection[str] = (),
) -> dict[str, Any]:
    """The fields of dataclass ``cls`` from ``document``, checked against the dataclass itself (its
    fields and their annotated types: ``str``, ``int``, ``float``, ``bool``, ``None``, literals,
    ``tuple[X, ...]``, ``dict[str, X]``, other such dataclasses, and their unions): the contract of
    a document without a schema file, so a new field is added in the dataclass alone. ``nested``:
    fields the caller reads itself (returned unchecked, left out); ``given``: fields the document
    does not carry; ``derived``: keys it carries beside the fields (computed from them, not read).
    ContractError naming ``what`` and the field (a list item or a map entry by position), never the
    value."""
    if not isinstance(document, dict):
        raise ContractError(f"malformed {what}: not an object")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in given]
    missing = [name for name in [*names, *derived] if name not in document]
    if missing:
        raise ContractError(f"malformed {what}: {missing[0]} is required")
    if len(document) != len(names) + len(derived):
        raise ContractError(f"malformed {what}: has a property the contract does not allow")
    return {name: _field(document[name], hints[name], what, name) for name in names if name not in nested}


def from_fields(cls: type[T], document: Any, what: str) -> T:
    """``cls`` made of ``document`` as ``fields_from_json`` reads it."""
    return cls(**fields_from_json(cls, document, what))


def fields_to_json(value: Any) -> dict[str, Any]:
    """A dataclass of such fields as its JSON document (what ``fields_from_json`` reads back)."""
    return typing.cast(dict[str, Any], _plain(dataclasses.asdict(value)))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _field(value: Any, hint: Any, what: str, name: str) -> Any:
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _field(value, options[0], what, name)
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis and isinstance(value, list):
        return tuple(_field(item, args[0], what, f"{name}/{i}") for i, item in enumerate(value))
    elif origin is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _field(v, args[1], what, f"{name}/{i}") for i, (k, v) in enumerate(value.items())}
    elif dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_fields(hint, value, f"{what}: {name}")
    allowed = args if origin in (typing.Union, types.UnionType) else (hint,)
    if not any(_is_a(value, t) for t in allowed):
        raise ContractError(f"malformed {what}: {name} is not of type {hint}")
    return value


def _is_a(value: Any, kind: Any) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):
        return isinstance(value, int | float if kind is float else int) and not isinstance(value, bool)
    if typing.get_origin(kind) is typing.Literal:
        return value in typing.get_args(kind)
    return isinstance(kind, type) and isinstance(value, kind)

"""The contracts' validator (``cdr_policy.schemas``) against ``jsonschema``, the reference
implementation: every keyword it implements on crafted schemas and values, the shipped schemas
themselves, and what it must refuse. (The documents the whole flow stores are compared in
``tests/integration/test_pipeline.py``.)"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema
import pytest

from cdr_policy import schemas
from cdr_policy.errors import CdrPolicyError

SCHEMA_FILES = sorted(p.name for p in resources.files("cdr_policy.schemas").iterdir() if p.name.endswith(".json"))

# (schema, values): each value is checked by both validators, which must agree.
CASES: list[tuple[dict[str, Any], list[Any]]] = [
    ({"type": "integer"}, [1, 1.0, 1.5, True, "1", None, 2**70]),
    ({"type": "number"}, [1, 1.5, True, "1"]),
    ({"type": ["string", "null"]}, ["a", None, 1, False]),
    ({"type": "object"}, [{}, [], "x"]),
    ({"type": "boolean"}, [True, 0]),
    ({"const": 1}, [1, 1.0, True, "1", [1]]),
    ({"const": True}, [True, 1, False]),
    ({"const": "planes-zlib-v1"}, ["planes-zlib-v1", "planes"]),
    ({"enum": ["a", 1, None]}, ["a", 1, 1.0, True, "b", None, False]),
    ({"pattern": "^a+$", "minLength": 2, "maxLength": 3}, ["aa", "a", "aaaa", "ab", 5, "xaa"]),
    ({"pattern": "b"}, ["abc", "ac"]),  # search, not match
    ({"pattern": "^\\d{2}$"}, ["12", "1a"]),
    ({"maxLength": 2}, ["é𝄞", "abc"]),  # code points
    ({"minimum": 0, "maximum": 10}, [0, -1, 10, 10.5, -0.5, "x", True, None]),
    ({"items": {"type": "string"}, "minItems": 1, "maxItems": 2}, [[], ["a"], ["a", 1], ["a", "b", "c"], "x"]),
    (
        {"required": ["a"], "properties": {"a": {"type": "string"}}, "additionalProperties": False},
        [{"a": "x"}, {}, {"a": 1}, {"a": "x", "b": 1, "c": 2}, [], "a"],
    ),
    ({"additionalProperties": {"type": "integer", "minimum": 1}}, [{"x": 1}, {"x": 0}, {"x": "1", "y": 2}, {}]),
    (
        {"properties": {"a": {"type": "integer"}}, "additionalProperties": {"type": "string"}},
        [{"a": 1, "b": "x"}, {"a": "1"}, {"b": 1}],
    ),
    ({"propertyNames": {"pattern": "^[a-z]+$"}}, [{"ab": 1}, {"A": 1, "b": 2}, {}]),
    ({"dependentRequired": {"a": ["b", "c"]}}, [{"a": 1, "b": 2, "c": 3}, {"a": 1}, {"b": 1}, {}, "a"]),
    ({"oneOf": [{"type": "string"}, {"type": "null"}]}, ["a", None, 1]),
    ({"oneOf": [{"type": "integer"}, {"minimum": 0}]}, [1, -1, 1.5, "x", -1.5]),
    ({"allOf": [{"type": "integer"}, {"minimum": 0}]}, [1, -1, "x"]),
    (
        {"if": {"required": ["p"]}, "then": {"properties": {"s": {"pattern": "^feed:"}, "e": {"maxItems": 0}}}},
        [{"p": 1, "s": "feed:x", "e": []}, {"p": 1, "s": "cdr"}, {"p": 1, "e": [1]}, {"s": "cdr", "e": [1]}],
    ),
    (
        {
            "allOf": [
                {"if": {"properties": {"k": {"const": "ip"}}}, "then": {"properties": {"v": {"pattern": "/"}}}},
                {"if": {"properties": {"k": {"const": "port"}}}, "then": {"properties": {"v": {"pattern": ":"}}}},
            ]
        },
        [{"k": "ip", "v": "1/2"}, {"k": "ip", "v": "x"}, {"k": "port", "v": "x"}, {"v": "x"}, {"k": "other"}],
    ),
    (
        {
            "$defs": {"n": {"type": "integer", "minimum": 0}, "s": {"$ref": "#/$defs/n"}},
            "properties": {"a": {"$ref": "#/$defs/s", "maximum": 3}, "b": {"items": {"$ref": "#/$defs/n"}}},
        },
        [{"a": 3, "b": [0, 1]}, {"a": 4}, {"a": -1}, {"a": "3"}, {"b": [1, -1, "x"]}],
    ),
]


def _ours(schema: dict[str, Any], value: Any) -> set[tuple[Any, ...]]:
    checker = schemas.Schema(schema, "test")
    return {path for path, _ in checker.errors(value, checker.root, ())}


def _reference(schema: dict[str, Any], value: Any) -> set[tuple[Any, ...]]:
    return {tuple(e.absolute_path) for e in jsonschema.Draft202012Validator(schema).iter_errors(value)}


@pytest.mark.parametrize(("schema", "values"), CASES)
def test_each_keyword_decides_as_jsonschema_does(schema: dict[str, Any], values: list[Any]) -> None:
    for value in values:
        assert _ours(schema, value) == _reference(schema, value), value


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node).union(*map(_keys, node.values()))
    return set().union(*map(_keys, node)) if isinstance(node, list) else set()


def test_crafted_cases_fail_somewhere() -> None:
    """The cases above hold invalid values for every keyword, not only valid ones."""
    failing = set().union(*(_keys(schema) for schema, values in CASES if any(_reference(schema, v) for v in values)))
    assert schemas.KEYWORDS - failing == set()


def test_boolean_subschemas() -> None:
    schema = {"properties": {"a": True, "b": False}}
    assert (_ours(schema, {"a": 1}), _ours(schema, {"b": 1})) == (set(), {("b",)})
    # jsonschema agrees on validity (it puts the error of a false subschema at the parent)
    assert [bool(_reference(schema, v)) for v in ({"a": 1}, {"b": 1})] == [False, True]


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_shipped_schemas_are_valid_json_schema_within_the_implemented_keywords(name: str) -> None:
    schema = schemas.Schema(json.loads(resources.files("cdr_policy.schemas").joinpath(name).read_text()), name)
    jsonschema.Draft202012Validator.check_schema(schema.root)
    assert schemas.schema_errors({}, name)  # every contract requires something


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ({"format": "date-time"}, "format"),
        ({"properties": {"a": {"uniqueItems": True}}}, "uniqueItems"),
        ({"if": {"type": "string"}, "then": {}, "else": {"minLength": 1}}, "else"),
        ({"$ref": "https://example.com/other.json"}, "only local"),
        ({"$ref": "#/$defs/missing"}, "points nowhere"),
        ({"items": [{"type": "string"}]}, "not a schema"),
    ],
)
def test_what_it_would_not_check_is_refused(schema: dict[str, Any], why: str) -> None:
    with pytest.raises(CdrPolicyError, match=why):
        schemas.Schema(schema, "test")


def test_messages_name_the_place_and_the_rule_never_the_value() -> None:
    secret = "203.0.113.9-from-a-feed"
    errors = schemas.schema_errors(
        {"schema_version": 1, "channel": secret, "files": [{"path": "a", "sha256": secret, "size": -1}], secret: 1},
        "manifest.schema.json",
    )
    assert "channel: does not match ^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$" in errors
    assert "<root>: has 1 property the schema does not allow" in errors  # the key is input too
    assert "files/0/size: is less than the minimum of 0" in errors
    assert not [e for e in errors if secret in e]
    with pytest.raises(
        CdrPolicyError, match=r"manifest.schema.json: 9 violation\(s\): <root>: 'channel' is a required property; "
    ):
        schemas.validate({}, "manifest.schema.json")
    with pytest.raises(ValueError, match="^not JSON$"):
        schemas.load_checked(secret.encode(), "manifest.schema.json")
    with pytest.raises(ValueError) as refused:
        schemas.load_checked(json.dumps({secret: secret}).encode(), "manifest.schema.json")
    assert secret not in str(refused.value)

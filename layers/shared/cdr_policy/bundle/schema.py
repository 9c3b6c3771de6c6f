"""JSON Schema checks of the documents in ``cdr_policy/schemas/`` (loaded once, cached)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    text = resources.files("cdr_policy").joinpath("schemas", name).read_text(encoding="utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_errors(document: Any, name: str) -> list[str]:
    """Every way ``document`` breaks schema ``name`` (``manifest.schema.json``) as ``path: message``;
    empty when it is valid."""
    errors = sorted(
        _validator(name).iter_errors(document), key=lambda e: (list(map(str, e.absolute_path)), e.message)
    )
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]

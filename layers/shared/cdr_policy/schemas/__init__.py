"""JSON Schemas of the documents that cross stage boundaries (loaded once, cached), and the checks
both sides of each contract run against them."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

from cdr_policy.errors import CdrPolicyError


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    schema = json.loads(resources.files(__package__).joinpath(name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_errors(document: Any, name: str) -> list[str]:
    """Every way ``document`` breaks schema ``name`` (``manifest.schema.json``) as ``path: message``;
    empty when it is valid."""
    errors = sorted(_validator(name).iter_errors(document), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def validate(document: Any, name: str) -> None:
    """Raise CdrPolicyError listing how ``document`` breaks schema ``name``."""
    errors = schema_errors(document, name)
    if errors:
        raise CdrPolicyError(f"{name}: {len(errors)} violation(s): " + "; ".join(errors[:10]))

"""JSON Schemas of the documents that cross stage boundaries."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema

from cdr_policy.errors import CdrPolicyError


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The schema ``<name>.schema.json`` shipped with the package."""
    return json.loads(resources.files(__package__).joinpath(f"{name}.schema.json").read_text())


def validate(name: str, document: Any) -> None:
    """Raise CdrPolicyError naming the first violation of schema ``name``."""
    try:
        jsonschema.validate(document, load(name))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise CdrPolicyError(f"{name} document invalid at {where}: {exc.message}") from exc

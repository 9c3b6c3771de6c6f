"""The agent status document (``status/<cluster-id>.json``, schema ``agent-status.schema.json``)."""

from __future__ import annotations

from typing import Any

from cdr_policy import jsonio
from cdr_policy.errors import BundleError
from cdr_policy.schemas import schema_errors

SCHEMA = "agent-status.schema.json"
SCHEMA_VERSION = 1


def read_status(data: bytes) -> dict[str, Any]:
    """Parse and validate a status document (the consumer side of the contract)."""
    try:
        doc = jsonio.loads(data)
    except ValueError as exc:
        raise BundleError(f"agent status is not valid JSON: {exc}") from exc
    errors = schema_errors(doc, SCHEMA)
    if errors:
        raise BundleError("malformed agent status: " + "; ".join(errors[:10]))
    status: dict[str, Any] = doc
    return status

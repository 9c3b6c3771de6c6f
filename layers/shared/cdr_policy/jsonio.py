"""Canonical JSON: sorted keys, no spaces, UTF-8. Same input, same bytes (and so the same digest)."""

from __future__ import annotations

import json
from typing import Any


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def dumps_pretty(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def loads(data: bytes | str) -> Any:
    return json.loads(data)

"""Canonical JSON: sorted keys, no spaces, UTF-8. Same input, same bytes (and so the same digest).

``loads`` is total on hostile input: whatever the bytes, it returns a document nested at most
``MAX_DEPTH`` deep or raises ``ValueError`` (never ``RecursionError``), so that no reader crashes on
200 kB of brackets planted in a bucket.
"""

from __future__ import annotations

import json
from typing import Any

# Every contract of the project nests fewer than ten levels.
MAX_DEPTH = 32


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def dumps_pretty(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The document; ValueError when it is not JSON (UTF-8) or nests deeper than ``max_depth``."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    check_depth(doc, max_depth)
    return doc


def check_depth(doc: Any, max_depth: int) -> None:
    """ValueError when ``doc`` (a tree of dicts and lists) nests deeper than ``max_depth``. Iterative,
    so that the check itself cannot run out of stack."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))

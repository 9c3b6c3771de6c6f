"""Deterministic YAML for the generated objects: same object, same bytes.

Key order is the order the compilers build (``apiVersion``, ``kind``, ``metadata``, ``spec``; fields
inside in a fixed order), lists keep the order the compilers sorted them into, there are no anchors
or aliases, no line wrapping, and strings that look like numbers or booleans (``"3"``,
``"0x10000000"``) or start with ``:`` (``::ffff:…``) are quoted so that they stay strings.

Speed: libyaml's emitter when it is installed (the same bytes as the Python one, three times
faster), and long lists of prefixes (a blocklist's 8,000 Tetragon values or 5,000 CIDR-group
entries) are written as text lines directly: the object is dumped with a placeholder token in the
list's place, and the token's line is replaced by the list's lines, exactly as the emitter writes
them (``- 198.51.100.0/24``, ``- '::ffff:198.51.100.0/120'``). The tests compare both ways.
"""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

import yaml

_BaseDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# A list written as lines: at least this many strings, each a prefix in canonical text.
FAST_LIST_MIN = 64
# Lines of prefix text (one regular expression over the joined list, not one call per value).
_PREFIX_LINES = re.compile(r"(?:(?:[0-9a-f][0-9a-f.:]*|::ffff:[0-9.]+)/[0-9]{1,3}\n)+")
_TOKEN = "cdrpolicyfastlist{:08d}"
_LEAD = re.compile(r"(?:  |- )*")


class _Dumper(_BaseDumper):  # type: ignore[valid-type,misc]
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # IPv4-mapped addresses (``::ffff:…``) are valid plain scalars, but a leading ``:`` trips some
    # YAML parsers: quote them so every reader sees the same string.
    style = "'" if value.startswith(":") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(obj: Any) -> bytes:
    lists: list[list[str]] = []
    obj = _swap_lists(obj, lists)
    text = yaml.dump(
        obj,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=10_000,
        explicit_start=False,
    )
    for index, values in enumerate(lists):
        token = _TOKEN.format(index)
        at = text.index(f": {token}\n")
        line_start = text.rfind("\n", 0, at) + 1
        # The key's column: past the indentation and the "- " of the sequence items it opens.
        indent = " " * len(_LEAD.match(text, line_start).group())  # type: ignore[union-attr]
        lines = "".join(f"{indent}- '{v}'\n" if v.startswith(":") else f"{indent}- {v}\n" for v in values)
        text = f"{text[:at]}:\n{lines}{text[at + len(token) + 3 :]}"
    return text.encode("utf-8")


def _prefix_texts(values: list[Any]) -> bool:
    """Is every value a string in prefix text (so that it is written as it is, or quoted when it
    starts with ``:``)?"""
    if not all(isinstance(v, str) for v in values):
        return False
    text = "\n".join(values) + "\n"
    # As many lines as values: no value may carry a line break of its own.
    return text.count("\n") == len(values) and _PREFIX_LINES.fullmatch(text) is not None


def _swap_lists(obj: Any, lists: list[list[str]]) -> Any:
    """A copy of ``obj`` in which every long list of prefixes that is a mapping value is replaced
    by a token (the lists are appended to ``lists``, the token says which)."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if isinstance(value, list) and len(value) >= FAST_LIST_MIN and _prefix_texts(value):
                out[key] = _TOKEN.format(len(lists))
                lists.append(value)
            else:
                out[key] = _swap_lists(value, lists)
        return out
    if isinstance(obj, list):
        return [_swap_lists(item, lists) for item in obj]
    return obj


_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
        # A plain scalar with a "/" (an address prefix, a path) is a string: no implicit type of YAML
        # 1.1 (bool, int, float, null, timestamp, merge, value) has one. Skipping their regular
        # expressions for the prefixes of a blocklist is a third of a bundle's parse.
        if kind is yaml.ScalarNode and implicit[0] and "/" in value:
            return _STR
        return str(super().resolve(kind, value, implicit))


def load_yaml_documents(text: str | bytes) -> list[Any]:
    """Every document of a (multi-document) YAML stream, empty documents left out (safe loader;
    libyaml's when available, which reads the 400 KB Cilium CRDs ten times faster)."""
    return [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]


class ParsedYaml:
    """``load_yaml_documents`` for a long-running reader that parses the same files again and again
    (the agent: its bundle's unchanged files at every new bundle, its applied files at every apply):
    each content parsed once, kept by its sha256 and handed out as a deep copy (a tenth of a parse), so
    no caller can change what the next one gets. Bounded: files of at most ``max_file_bytes``, at most
    ``max_bytes`` of source kept, the least recently used dropped first."""

    def __init__(self, *, max_bytes: int = 4 << 20, max_file_bytes: int = 512 << 10) -> None:
        self.max_bytes, self.max_file_bytes = max_bytes, max_file_bytes
        self._kept: dict[bytes, tuple[int, list[Any]]] = {}
        self._size = 0

    def load(self, data: bytes) -> list[Any]:
        if len(data) > self.max_file_bytes:
            return load_yaml_documents(data)
        key = hashlib.sha256(data).digest()
        kept = self._kept.get(key)
        docs = load_yaml_documents(data) if kept is None else kept[1]
        self._keep(key, len(data), docs)
        return copy.deepcopy(docs)

    def remember(self, data: bytes, docs: list[Any]) -> None:
        """``data`` is ``dump_yaml`` of ``docs`` (a writer's own file): what its parse will give."""
        if len(data) <= self.max_file_bytes:
            self._keep(hashlib.sha256(data).digest(), len(data), copy.deepcopy(docs))

    def _keep(self, key: bytes, size: int, docs: list[Any]) -> None:
        old = self._kept.pop(key, None)
        self._size += size - (old[0] if old else 0)
        self._kept[key] = (size, docs)  # the most recently used last
        while self._size > self.max_bytes and len(self._kept) > 1:
            self._size -= self._kept.pop(next(iter(self._kept)))[0]

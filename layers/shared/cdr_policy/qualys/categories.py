"""Qualys CDR category → behaviour rule, as data (``data/categories.yaml``, user-overridable).

Matching (documented in the YAML file's header as well): normalise the category (lower-case,
separators to ``_``, trailing MITRE suffix such as ``_T1552_005`` stripped); then the exact table
(separators ignored); then word-aligned substring rules, first match wins, in file order; then the
finding's MITRE technique ids. An entry whose rule is null is a deliberate "no behaviour policy".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from cdr_policy.config_text import load_yaml_mapping, read_text_file
from cdr_policy.errors import ConfigError
from cdr_policy.rules import RULES

MatchKind = Literal["exact", "substring", "technique"]
_SEPARATORS = re.compile(r"[^a-z0-9]+")
_MITRE_SUFFIX = re.compile(r"(?:_t\d{4}(?:_\d{3})*)+$")
_TECHNIQUE_ID = re.compile(r"^T\d{4}(?:\.\d{3})?$")
_SECTIONS = {"exact": "name", "substrings": "contains", "techniques": "id"}


def normalise_category(name: str) -> str:
    """``Container_escape_via_cgroup_T1611`` → ``container_escape_via_cgroup``."""
    words = _SEPARATORS.sub("_", name.lower()).strip("_")
    return _MITRE_SUFFIX.sub("", words)


def _compact(normalised: str) -> str:
    return normalised.replace("_", "")


@dataclass(frozen=True)
class CategoryMatch:
    rule: str | None  # None: a deliberate "no behaviour policy" entry
    kind: MatchKind
    pattern: str  # the entry that matched (name, substring or technique id, as written)
    why: str


@dataclass(frozen=True)
class _Entry:
    pattern: str
    rule: str | None
    why: str


class CategoryMapping:
    def __init__(
        self,
        exact: dict[str, _Entry],
        substrings: list[tuple[str, _Entry]],
        techniques: dict[str, _Entry],
        source: str,
    ) -> None:
        self._exact = exact
        self._substrings = substrings
        self._techniques = techniques
        self.source = source

    def __repr__(self) -> str:
        return (
            f"CategoryMapping(source={self.source!r}, exact={len(self._exact)}, "
            f"substrings={len(self._substrings)}, techniques={len(self._techniques)})"
        )

    def reachable_rules(self) -> set[str]:
        entries = [*self._exact.values(), *(e for _, e in self._substrings), *self._techniques.values()]
        return {e.rule for e in entries if e.rule is not None}

    def match(self, category: str, techniques: Iterable[str] = ()) -> CategoryMatch | None:
        """The entry that decides ``category`` (or, failing that, the finding's techniques); None if none."""
        name = normalise_category(category)
        entry = self._exact.get(_compact(name))
        if entry is not None:
            return CategoryMatch(entry.rule, "exact", entry.pattern, entry.why)
        padded = f"_{name}_"
        for words, entry in self._substrings:
            if f"_{words}_" in padded:
                return CategoryMatch(entry.rule, "substring", entry.pattern, entry.why)
        ids = set(techniques)
        ids |= {t.split(".")[0] for t in ids}
        for technique, entry in self._techniques.items():
            if technique in ids:
                return CategoryMatch(entry.rule, "technique", entry.pattern, entry.why)
        return None

    def rule_for(self, category: str, techniques: Iterable[str] = ()) -> str | None:
        m = self.match(category, techniques)
        return None if m is None else m.rule


def _entries(doc: dict[str, Any], section: str, where: str) -> list[tuple[str, _Entry]]:
    key = _SECTIONS[section]
    items = doc.get(section)
    if items is None:
        return []
    if not isinstance(items, list):
        raise ConfigError(f"{where}: '{section}' must be a list")
    out = []
    for i, item in enumerate(items, 1):
        at = f"{where}: {section}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{at} must be a mapping with {key}, rule and why")
        unknown = sorted(set(item) - {key, "rule", "why"})
        if unknown:
            raise ConfigError(f"{at}: unknown key(s) {', '.join(unknown)}")
        pattern, rule, why = item.get(key), item.get("rule"), item.get("why")
        if not isinstance(pattern, str) or not pattern.strip():
            raise ConfigError(f"{at}: '{key}' must be a non-empty string")
        if "rule" not in item:
            raise ConfigError(f"{at} ({pattern}): 'rule' is required (null means no behaviour policy)")
        if rule is not None and rule not in RULES:
            raise ConfigError(f"{at} ({pattern}): rule {rule!r} is not a known rule id ({', '.join(sorted(RULES))})")
        if not isinstance(why, str) or not why.strip() or "\n" in why.strip():
            raise ConfigError(f"{at} ({pattern}): 'why' must be a one-line rationale")
        out.append((pattern.strip(), _Entry(pattern.strip(), rule, why.strip())))
    return out


def parse_mapping(text: str, source: str) -> CategoryMapping:
    doc = load_yaml_mapping(text, source, "a mapping with version, exact, substrings, techniques")
    unknown = sorted(set(doc) - {"version", *_SECTIONS})
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}")
    if doc.get("version") != 1:
        raise ConfigError(f"{source}: unsupported version {doc.get('version')!r} (expected 1)")

    exact: dict[str, _Entry] = {}
    for pattern, entry in _entries(doc, "exact", source):
        key = _compact(normalise_category(pattern))
        if not key:
            raise ConfigError(f"{source}: exact name {pattern!r} is empty once normalised")
        if key in exact:
            raise ConfigError(f"{source}: exact names {exact[key].pattern!r} and {pattern!r} are the same category")
        exact[key] = entry
    substrings: list[tuple[str, _Entry]] = []
    seen: set[str] = set()
    for pattern, entry in _entries(doc, "substrings", source):
        words = _SEPARATORS.sub("_", pattern.lower()).strip("_")
        if not words:
            raise ConfigError(f"{source}: substring {pattern!r} is empty once normalised")
        if words in seen:
            raise ConfigError(f"{source}: substring {pattern!r} is listed twice")
        seen.add(words)
        substrings.append((words, entry))
    techniques: dict[str, _Entry] = {}
    for pattern, entry in _entries(doc, "techniques", source):
        technique = pattern.upper()
        if not _TECHNIQUE_ID.match(technique):
            raise ConfigError(f"{source}: technique {pattern!r} is not like T1234 or T1234.001")
        if technique in techniques:
            raise ConfigError(f"{source}: technique {technique} is listed twice")
        techniques[technique] = entry
    return CategoryMapping(exact, substrings, techniques, source)


@functools.lru_cache(maxsize=1)
def _builtin() -> CategoryMapping:
    ref = resources.files("cdr_policy") / "data" / "categories.yaml"
    return parse_mapping(ref.read_text(encoding="utf-8"), "built-in categories.yaml")


def load_mapping(path: str | None = None) -> CategoryMapping:
    """The shipped mapping, or the user's file at ``path`` (which replaces it entirely)."""
    if path is None:
        return _builtin()
    return parse_mapping(read_text_file(path, "category mapping"), path)

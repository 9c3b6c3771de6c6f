"""Bucket keys and the file names of a bundle are spelled in ``cdr_policy.layout`` only: built by its
functions, parsed by its functions, everywhere else in the library (docstrings and comments may
describe them)."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cdr_policy import layout
from tests.conftest import REPO

LIBRARY = REPO / "layers" / "shared" / "cdr_policy"
DIGEST, OTHER = "ab" * 32, "cd" * 32
# The file names of the layout, and its top-level prefixes, as they would appear in a string.
FILE_NAMES = (layout.REPORT_FILE, layout.BUNDLE_MANIFEST_FILE, layout.PROVENANCE_FILE, "manifest.json")
PREFIXES = tuple(
    p
    for p in vars(layout).values()
    if isinstance(p, str) and re.fullmatch(r"[a-z-]+/(?:[a-z-]+/)?", p) and p != layout.RENDERED_CHANNELS
)
# Files of other layouts that happen to share a name: the hit reader's local state folder and the
# hit-report ConfigMap's data key (neither is a bucket key nor a bundle file).
ELSEWHERE = {("hits/reader.py", "bundle.json"), ("hits/reports.py", "report.json")}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def spellings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each string constant, f-string parts included, that spells a layout file name
    or starts with a layout prefix; docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
            if any(name in text for name in FILE_NAMES) or text.startswith(PREFIXES):
                found.append((node.lineno, text))
    return found


def test_prefixes_are_found_in_the_layout() -> None:
    assert {layout.BUNDLES, layout.CHANNELS, layout.STATUS, layout.APPROVALS, layout.INDICATORS} <= set(PREFIXES)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in LIBRARY.rglob("*.py") if p != LIBRARY / "layout.py"),
    ids=lambda p: p.relative_to(LIBRARY).as_posix(),
)
def test_no_module_but_layout_spells_a_key(path: Path) -> None:
    relative = path.relative_to(LIBRARY).as_posix()
    found = [
        (line, text) for line, text in spellings(path) if not any(f in text for r, f in ELSEWHERE if r == relative)
    ]
    assert found == [], f"{relative}: spell these with cdr_policy.layout"


def test_the_check_finds_a_spelled_key(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""About bundles/<digest>/bundle.json."""\nKEY = f"bundles/{1}/report.json"\nX = "status/"\n')
    assert sorted(line for line, _ in spellings(module)) == [2, 2, 3]


def test_each_key_parses_back_to_what_built_it() -> None:
    assert layout.rendered_digest(layout.bundle_manifest_key(DIGEST)) == DIGEST
    assert layout.feed_set_name(layout.feed_set_key("tor-exit")) == "tor-exit"
    assert layout.status_cluster(layout.status_key("prod-eu-1")) == "prod-eu-1"
    created = "2026-12-07T10:00:00Z"
    assert layout.history_entry("prod", layout.history_key("prod", created, DIGEST)) == (created, DIGEST)


@pytest.mark.parametrize(
    ("parse", "key"),
    [
        (layout.rendered_digest, layout.bundle_file_key(DIGEST, layout.REPORT_FILE)),
        (layout.rendered_digest, layout.bundle_manifest_key("ab" * 31)),
        (layout.rendered_digest, layout.latest_render_key("prod")),
        (layout.feed_set_name, layout.feed_set_key("tor") + ".gz"),
        (layout.feed_set_name, f"{layout.INDICATORS_FEEDS}nested/tor.json"),
        (layout.feed_set_name, layout.reputation_set_key("abuseipdb")),
        (layout.status_cluster, f"{layout.STATUS}a/b.json"),
        (layout.status_cluster, f"{layout.STATUS}.json"),
        (layout.status_cluster, f"{layout.STATUS}prod.yaml"),
        (lambda k: layout.history_entry("prod", k), layout.history_key("staging", "t", DIGEST)),
        (lambda k: layout.history_entry("prod", k), layout.history_key("prod", "t", OTHER[:-1])),
        (lambda k: layout.history_entry("prod", k), f"{layout.history_prefix('prod')}{DIGEST}.json"),
    ],
)
def test_other_keys_parse_to_none(parse: Callable[[str], object], key: str) -> None:
    assert parse(key) is None

"""The product does not depend on the test tree: the library, the handlers, the fakes, the demo and the
benchmarks import nothing from ``tests`` (the fakes they share live in ``fakes/``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("layers", "functions", "fakes", "demo", "benchmarks")


def imports_of_tests(source: str) -> list[int]:
    """Line numbers of the imports from the ``tests`` package in ``source``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "tests" or name.startswith("tests.") for name in names):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("folder", PRODUCT)
def test_the_product_imports_nothing_from_the_tests(folder: str) -> None:
    found = {
        f"{path.relative_to(REPO)}:{line}"
        for path in sorted((REPO / folder).rglob("*.py"))
        for line in imports_of_tests(path.read_text())
    }
    assert not found, f"imports from tests/ (move what they need to fakes/): {sorted(found)}"


def test_the_scan_finds_an_import_of_the_tests() -> None:
    source = "import os\nfrom tests.unit.bundle.factory import T0\nimport tests.conftest as c\nfrom .tests import x\n"
    assert imports_of_tests(source) == [2, 3]

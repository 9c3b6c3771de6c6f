"""Fixtures of the policy tests: the upstream CRD schemas, loaded once."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdr_policy.policy.checker import SchemaSet


@pytest.fixture(scope="session")
def schemas(crds_dir: Path) -> SchemaSet:
    """Every CRD under ../shared/crds (Tetragon main, Cilium main and v1.16.5)."""
    return SchemaSet.from_dir(crds_dir)

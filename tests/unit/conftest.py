"""Fixtures shared by the unit tests of every package."""

from __future__ import annotations

import pytest

from cdr_policy.guards import NeverBlock


@pytest.fixture
def guard() -> NeverBlock:
    return NeverBlock()

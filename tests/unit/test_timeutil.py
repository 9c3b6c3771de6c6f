"""Durations as the flags and settings read them and as the messages and reports print them."""

from __future__ import annotations

import pytest

from cdr_policy.timeutil import format_duration, parse_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (5, "5s"), (90, "90s"), (300, "5m"), (5400, "90m"), (86400, "1d"), (90000, "25h"), (7 * 86400, "7d")],
)
def test_a_duration_prints_in_its_largest_whole_unit_and_reads_back(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_a_fraction_of_a_second_prints_as_seconds() -> None:
    assert format_duration(0.25) == "0.25s" and parse_duration("0.25") == 0.25

"""The checker's fast path for lists of prefixes finds exactly what the per-value check finds."""

from __future__ import annotations

import random

import pytest

from cdr_policy.guards import NeverBlock, parse_protected
from cdr_policy.policy.checker.common import check_cidr, check_cidrs

TRAPS = [
    "45.33.32.9/24",  # host bits
    "045.33.32.0/24",  # leading zero
    "10.1.0.0/16",  # inside a protected range
    "8.0.0.0/7",  # over-broad
    "8.8.0.0/16",  # covers 8.8.8.8
    "100.64.0.0/10",
    "1.1.1.1/32",
    "198.51.100.7/32",
    "45.33.32.0/33",
    "45.33.32.0",
    "2001:db8::/32",
    "2a00:1450::/32",
    "::ffff:45.33.32.0/120",
    "::ffff:45.33.32.0/0120",
    "::ffff:45.33.32.1/120",
    "::ffff:10.1.0.0/112",
    "::ffff:8.8.8.8/128",
    "::ffff:45.33.32.0/95",
    "::ffff:45.33.32.0/129",
    "::FFFF:45.33.32.0/120",
    "::ffff:2d21:2000/120",
    7,
    None,
    "",
]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("blocked", [True, False])
def test_fast_path_problems_equal_the_per_value_check(seed: int, blocked: bool) -> None:
    rng = random.Random(seed)
    values: list[object] = [
        f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0/{rng.choice([24, 28])}"
        for _ in range(300)
    ]
    values += TRAPS
    rng.shuffle(values)
    guard = NeverBlock(extra=parse_protected(["45.33.0.0/16"], "channel range"))

    def path(i: int) -> str:
        return f"values[{i}]"

    expected = [p for i, v in enumerate(values) for p in check_cidr(v, path(i), guard, blocked=blocked)]
    assert check_cidrs(values, path, guard, blocked=blocked)[0] == expected
    if blocked:
        assert any("channel range" in str(p) for p in expected)

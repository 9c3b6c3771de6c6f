"""The bulk integer tricks behind the million-line fast path, against plain Python."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdr_policy.netprefix import lanes
from cdr_policy.netprefix.lanes import adjacency_flags, pack_ipv6

ipv4 = st.integers(0, 2**32 - 1)


def _naive(values: list[int]) -> tuple[bytes, bytes]:
    pairs = list(zip(values, values[1:], strict=False))
    return bytes(b != a for a, b in pairs), bytes(b == a + 1 for a, b in pairs)


def pack_ipv4(values: list[int]) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(ipv4, st.integers(0, 40)), min_size=0, max_size=200))
def test_adjacency_flags_ipv4(values: list[int]) -> None:
    values.sort()
    assert adjacency_flags(pack_ipv4(values), 4) == _naive(values)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 2**128 - 1), st.integers(2**64 - 3, 2**64 + 3)), max_size=100))
def test_adjacency_flags_ipv6(values: list[int]) -> None:
    values.sort()
    assert adjacency_flags(pack_ipv6(values), 16) == _naive(values)


def test_chunk_and_block_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes, "_LANES_PER_STEP", 3)
    values = [5, 9, 7, 2**32 - 1, 6, 6, 0, 1, 2**31, 2**31 + 1, 8, 3]
    ordered = sorted(values)
    assert adjacency_flags(pack_ipv4(ordered), 4) == _naive(ordered)


def test_extremes() -> None:
    assert adjacency_flags(b"", 4) == (b"", b"") and adjacency_flags(pack_ipv4([7]), 4) == (b"", b"")
    top = [2**32 - 2, 2**32 - 1]
    assert adjacency_flags(pack_ipv4(top), 4) == (b"\x01", b"\x01")

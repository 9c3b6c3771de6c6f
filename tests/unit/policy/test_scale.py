"""A 200,000-prefix input renders into valid, sharded objects inside the budget, the cut reported."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cdr_policy.models import Indicator, IndicatorSet
from cdr_policy.policy.capacity import MAX_LISTED_LEFT_OUT
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet, check_object, errors_of
from cdr_policy.policy.checker.common import MAX_OBJECT_BYTES, object_size

from .factories import EXPIRES, FIRST_SEEN, LAST_SEEN, render

TOTAL = 200_000
CDR = 1_000


def _prefixes() -> Iterator[str]:
    # Every other address of 45.0.0.0/13 and 91.0.0.0/14: nothing aggregates, all public.
    for i in range(TOTAL):
        base = (45 << 24) if i < TOTAL // 2 else (91 << 24)
        n = base + 2 * (i % (TOTAL // 2))
        yield f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32"


def _sets() -> list[IndicatorSet]:
    cdr: list[Indicator] = []
    feed: list[Indicator] = []
    for i, value in enumerate(_prefixes()):
        source = "cdr" if i % (TOTAL // CDR) == 0 else "feed:big"
        ind = Indicator(value, "ip", "c2", [source], FIRST_SEEN, LAST_SEEN, EXPIRES, refs=[source], score=i % 101)
        (cdr if source == "cdr" else feed).append(ind)
    return [
        IndicatorSet(source="cdr", fetched_at=LAST_SEEN, status="ok", entries=cdr),
        IndicatorSet(source="feed:big", fetched_at=LAST_SEEN, status="ok", entries=feed),
    ]


@pytest.mark.slow
def test_200k_prefixes(schemas: SchemaSet) -> None:
    channel = ChannelSettings(name="prod", action="Sigkill", cilium_version="1.18")
    sets = _sets()
    started = time.monotonic()
    result = render(sets, channel, schemas)
    elapsed = time.monotonic() - started
    assert elapsed < 90, f"render took {elapsed:.1f}s"

    budget = result.report["budget"]
    assert budget["tetragon"] == {"limit": 50_000, "used": 50_000, "covered": 0, "left_out": 150_000, "kept_by_hits": 0}
    assert budget["cilium"] == {"limit": 50_000, "used": 50_000, "covered": 0, "left_out": 150_000, "kept_by_hits": 0}
    left = result.report["left_out"]
    assert result.report["left_out_total"] == 150_000
    assert len(left) == MAX_LISTED_LEFT_OUT  # the best-ranked of them listed, all counted
    assert left[0]["rank"] == 50_001 and left[-1]["rank"] == 51_000  # cut by rank, weakest out
    assert all(e["group"] == "threat-intel" for e in left)  # every CDR address kept

    kinds = [f.kind for f in result.files]
    assert kinds.count("CiliumCIDRGroup") == 1 + 10  # CDR: 1,000; feeds: 49,000 in groups of 5,000
    assert kinds.count("CiliumClusterwideNetworkPolicy") == 2
    assert kinds.count("TracingPolicy") == 1 + 13  # feeds: 49,000 in parts of 4,000
    for f in result.files:
        size = max(object_size(f.obj), len(f.to_bytes()))
        assert size <= MAX_OBJECT_BYTES, f"{f.filename}: {size} bytes"
        assert errors_of(check_object(f.obj, None)) == []  # schemas were checked by render
    tetragon_values = sum(
        len(m["values"])
        for f in result.files
        if f.kind == "TracingPolicy"
        for m in f.obj["spec"]["kprobes"][0]["selectors"][0]["matchArgs"]
    )
    assert tetragon_values == 2 * 50_000  # every IPv4 prefix with its mapped twin

"""The capacity budget: cut by rank, never at random; the aggregate fits; the rest is reported."""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdr_policy.errors import ConfigError
from cdr_policy.guards import NeverBlock
from cdr_policy.models import Indicator
from cdr_policy.policy.capacity import OVER_BUDGET, Cut, cut, listed_left_out
from cdr_policy.policy.channel import MAX_BUDGET_PREFIXES, ChannelSettings
from cdr_policy.policy.ranked import RankedTable, rank_ips

from .factories import NOW, cdr_set, feed_set, indicator, render


def _entries(indicators: list[Indicator]) -> RankedTable:
    return rank_ips(indicators, [], now=NOW, guard=NeverBlock()).table


def kept_values(result: Cut, group: str) -> list[str]:
    return [result.table.value(r) for r in result.kept_rows(group).tolist()]


def covered_values(result: Cut) -> list[str]:
    return [result.table.value(r) for r in np.flatnonzero(result.covered).tolist()]


def left_out(result: Cut) -> list[dict[str, Any]]:
    return listed_left_out({"engine": result})[0]


def test_everything_fits_under_the_limit() -> None:
    entries = _entries([indicator(f"45.33.32.{i}/32") for i in range(10)])
    result = cut(entries, 100)
    assert result.kept == {"cdr": ["45.33.32.0/29", "45.33.32.8/31"]}
    assert result.used == 2 and left_out(result) == []
    assert result.report() == {"limit": 100, "used": 2, "covered": 0, "left_out": 0, "kept_by_hits": 0}


def test_the_weakest_evidence_is_left_out_with_its_rank() -> None:
    strong = [indicator(f"45.33.{i}.1/32") for i in range(3)]  # CDR: ranked first
    weak = [indicator(f"185.220.{i}.1/32", sources=("feed:tor-exit",), category="tor") for i in range(5)]
    scored = indicator("91.92.93.94/32", sources=("feed:a", "feed:b"), category="c2", score=90)
    result = cut(_entries(weak + [scored] + strong), 5)
    assert result.used == 5
    assert kept_values(result, "cdr") == [
        "45.33.0.1/32",
        "45.33.1.1/32",
        "45.33.2.1/32",
    ]
    assert kept_values(result, "threat-intel") == ["91.92.93.94/32", "185.220.0.1/32"]
    assert [(e["value"], e["rank"], e["reason"]) for e in left_out(result)] == [
        ("185.220.1.1/32", 6, OVER_BUDGET),
        ("185.220.2.1/32", 7, OVER_BUDGET),
        ("185.220.3.1/32", 8, OVER_BUDGET),
        ("185.220.4.1/32", 9, OVER_BUDGET),
    ]


def test_aggregation_lets_more_entries_in_than_the_limit() -> None:
    # 8 adjacent /32s aggregate into one /29: all of them fit a budget of 2 prefixes.
    entries = _entries([indicator(f"45.33.32.{i}/32") for i in range(8)] + [indicator("46.0.0.1/32")])
    result = cut(entries, 2)
    assert result.kept == {"cdr": ["45.33.32.0/29", "46.0.0.1/32"]}
    assert left_out(result) == []


def test_entries_covered_by_a_kept_prefix_are_not_reported_as_left_out() -> None:
    covered = indicator("45.33.32.77/32", sources=("feed:x",), category="tor")
    entries = _entries([indicator("45.33.32.0/24"), indicator("46.1.1.0/24", sources=("feed:x",)), covered])
    result = cut(entries, 1)
    assert result.kept == {"cdr": ["45.33.32.0/24"]}
    assert [e["value"] for e in left_out(result)] == ["46.1.1.0/24"]
    assert covered_values(result) == ["45.33.32.77/32"]  # blocked through the CDR /24


def test_zero_budget_leaves_everything_out() -> None:
    result = cut(_entries([indicator("45.33.32.0/24")]), 0)
    assert result.kept == {} and len(left_out(result)) == 1


prefixes = st.builds(
    lambda a, length: str(ipaddress.ip_network((a, length), strict=False)),
    st.integers(min_value=0x2D000000, max_value=0x2DFFFFFF),
    st.integers(min_value=20, max_value=32),
)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(prefixes, min_size=1, max_size=60, unique=True),
    cdr_flags=st.lists(st.booleans(), min_size=60, max_size=60),
    limit=st.integers(min_value=0, max_value=40),
)
def test_cut_properties(values: list[str], cdr_flags: list[bool], limit: int) -> None:
    indicators = [
        indicator(v, sources=("cdr",) if flag else ("feed:x",), category="tor")
        for v, flag in zip(values, cdr_flags, strict=False)
    ]
    entries = _entries(indicators)
    result = cut(entries, limit)
    assert result.used <= limit
    kept = {v for group in ("cdr", "threat-intel") for v in kept_values(result, group)}
    left = {e["value"] for e in left_out(result)}
    covered = set(covered_values(result))
    assert kept | left | covered == set(values)  # nothing lost
    assert len(kept) + len(left) + len(covered) == len(values)  # nothing twice
    # A cut by rank: every kept entry ranks above every entry below the cut
    ranks = {entries.value(row): row + 1 for row in range(len(entries))}
    if kept and (left or covered):
        assert max(ranks[v] for v in kept) < min(ranks[v] for v in left | covered)
    # What is kept aggregates to exactly the union of the kept entries
    for group, group_prefixes in result.kept.items():
        mine = [ipaddress.IPv4Network(v) for v in kept_values(result, group)]  # the values are IPv4
        assert group_prefixes == [str(n) for n in ipaddress.collapse_addresses(mine)]


def test_render_reports_the_budget_and_what_was_left_out() -> None:
    sets = [
        cdr_set([indicator(f"45.33.{i}.0/24") for i in range(0, 10, 2)]),
        feed_set("tor-exit", [f"185.220.{i}.0/24" for i in range(0, 20, 2)], "tor"),
    ]
    channel = ChannelSettings(name="prod", tetragon_max_prefixes=8, cilium_max_prefixes=12)
    result = render(sets, channel)
    assert result.report["budget"] == {
        "tetragon": {"limit": 8, "used": 8, "covered": 0, "left_out": 7, "kept_by_hits": 0},
        "cilium": {"limit": 12, "used": 12, "covered": 0, "left_out": 3, "kept_by_hits": 0},
    }
    left = result.report["left_out"]
    assert [e["rank"] for e in left] == sorted(e["rank"] for e in left)
    assert left[-1]["engines"] == ["tetragon", "cilium"] and left[0]["engines"] == ["tetragon"]
    assert all(e["group"] == "threat-intel" and e["reason"] == "over budget" for e in left)


@pytest.mark.parametrize("engine", ["tetragon_max_prefixes", "cilium_max_prefixes"])
def test_a_budget_is_at_most_the_largest_measured_and_under_ciliums_ip_cache(engine: str) -> None:
    assert getattr(ChannelSettings.from_dict({"name": "prod", engine: MAX_BUDGET_PREFIXES}), engine) == 250_000
    with pytest.raises(ConfigError, match=f"channel prod: {engine} is at most 250,000 .*IP cache"):
        ChannelSettings.from_dict({"name": "prod", engine: MAX_BUDGET_PREFIXES + 1})

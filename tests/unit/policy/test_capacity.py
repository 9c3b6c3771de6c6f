"""The capacity budget: cut by rank, never at random; the aggregate fits; the rest is reported."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from cdr_policy.feeds.ranking import rank
from cdr_policy.policy.capacity import OVER_BUDGET, cut, rank_entries
from cdr_policy.policy.channel import ChannelSettings

from .factories import cdr_set, feed_set, indicator, render


def _entries(indicators):
    return rank_entries(rank(indicators), lambda i: "cdr" if "cdr" in i.sources else "threat-intel")


def test_everything_fits_under_the_limit():
    entries = _entries([indicator(f"45.33.32.{i}/32") for i in range(10)])
    result = cut(entries, 100)
    assert result.kept == {"cdr": ["45.33.32.0/29", "45.33.32.8/31"]}
    assert result.used == 2 and result.left_out == []
    assert result.report() == {"limit": 100, "used": 2, "covered": 0, "left_out": 0}


def test_the_weakest_evidence_is_left_out_with_its_rank():
    strong = [indicator(f"45.33.{i}.1/32") for i in range(3)]  # CDR: ranked first
    weak = [indicator(f"185.220.{i}.1/32", sources=("feed:tor-exit",), category="tor") for i in range(5)]
    scored = indicator("91.92.93.94/32", sources=("feed:a", "feed:b"), category="c2", score=90)
    result = cut(_entries(weak + [scored] + strong), 5)
    assert result.used == 5
    assert [i.value for i in result.kept_indicators["cdr"]] == [
        "45.33.0.1/32",
        "45.33.1.1/32",
        "45.33.2.1/32",
    ]
    assert [i.value for i in result.kept_indicators["threat-intel"]] == ["91.92.93.94/32", "185.220.0.1/32"]
    assert [(e["value"], e["rank"], e["reason"]) for e in result.left_out] == [
        ("185.220.1.1/32", 6, OVER_BUDGET),
        ("185.220.2.1/32", 7, OVER_BUDGET),
        ("185.220.3.1/32", 8, OVER_BUDGET),
        ("185.220.4.1/32", 9, OVER_BUDGET),
    ]


def test_aggregation_lets_more_entries_in_than_the_limit():
    # 8 adjacent /32s aggregate into one /29: all of them fit a budget of 2 prefixes.
    entries = _entries([indicator(f"45.33.32.{i}/32") for i in range(8)] + [indicator("46.0.0.1/32")])
    result = cut(entries, 2)
    assert result.kept == {"cdr": ["45.33.32.0/29", "46.0.0.1/32"]}
    assert result.left_out == []


def test_entries_covered_by_a_kept_prefix_are_not_reported_as_left_out():
    covered = indicator("45.33.32.77/32", sources=("feed:x",), category="tor")
    entries = _entries([indicator("45.33.32.0/24"), indicator("46.1.1.0/24", sources=("feed:x",)), covered])
    result = cut(entries, 1)
    assert result.kept == {"cdr": ["45.33.32.0/24"]}
    assert [e["value"] for e in result.left_out] == ["46.1.1.0/24"]
    assert [i.value for i in result.covered] == ["45.33.32.77/32"]  # blocked through the CDR /24


def test_zero_budget_leaves_everything_out():
    result = cut(_entries([indicator("45.33.32.0/24")]), 0)
    assert result.kept == {} and len(result.left_out) == 1


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
def test_cut_properties(values, cdr_flags, limit):
    indicators = [
        indicator(v, sources=("cdr",) if flag else ("feed:x",), category="tor")
        for v, flag in zip(values, cdr_flags, strict=False)
    ]
    entries = _entries(indicators)
    result = cut(entries, limit)
    assert result.used <= limit
    kept = {i.value for group in result.kept_indicators.values() for i in group}
    left = {e["value"] for e in result.left_out}
    covered = {i.value for i in result.covered}
    assert kept | left | covered == set(values)  # nothing lost
    assert len(kept) + len(left) + len(covered) == len(values)  # nothing twice
    # A cut by rank: every kept entry ranks above every entry below the cut
    ranks = {e.indicator.value: e.rank for e in entries}
    if kept and (left or covered):
        assert max(ranks[v] for v in kept) < min(ranks[v] for v in left | covered)
    # What is kept aggregates to exactly the union of the kept entries
    for group, group_prefixes in result.kept.items():
        mine = [ipaddress.ip_network(i.value) for i in result.kept_indicators[group]]
        assert group_prefixes == [str(n) for n in ipaddress.collapse_addresses(mine)]


def test_render_reports_the_budget_and_what_was_left_out():
    sets = [
        cdr_set([indicator(f"45.33.{i}.0/24") for i in range(0, 10, 2)]),
        feed_set("tor-exit", [f"185.220.{i}.0/24" for i in range(0, 20, 2)], "tor"),
    ]
    channel = ChannelSettings(name="prod", tetragon_max_prefixes=8, cilium_max_prefixes=12)
    result = render(sets, channel)
    assert result.report["budget"] == {
        "tetragon": {"limit": 8, "used": 8, "covered": 0, "left_out": 7},
        "cilium": {"limit": 12, "used": 12, "covered": 0, "left_out": 3},
    }
    left = result.report["left_out"]
    assert [e["rank"] for e in left] == sorted(e["rank"] for e in left)
    assert left[-1]["engines"] == ["tetragon", "cilium"] and left[0]["engines"] == ["tetragon"]
    assert all(e["group"] == "threat-intel" and e["reason"] == "over budget" for e in left)

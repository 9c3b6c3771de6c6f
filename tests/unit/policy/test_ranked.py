"""Compact feed sets in the render: merged by value with per-entry indicators, guarded, ranked
(agreement, category, CDR first) and annotated with their provenance, as arrays."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdr_policy.guards import NeverBlock, parse_protected
from cdr_policy.models import FeedPrefixes, Indicator, IndicatorSet
from cdr_policy.policy.capacity import cut
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.ranked import rank_ips

from .factories import EXPIRES, NOW, by_file, cdr_set, compact, indicator, render


def ranked_values(
    sets: list[IndicatorSet], indicators: Sequence[Indicator] = (), guard: NeverBlock | None = None
) -> list[str]:
    ranking = rank_ips(list(indicators), sets, now=NOW, guard=guard or NeverBlock())
    return [ranking.table.value(row) for row in range(len(ranking.table))]


def _prefixes(s: IndicatorSet) -> FeedPrefixes:
    """The compact prefixes of a feed set (every set ``compact`` makes has them)."""
    assert s.prefixes is not None
    return s.prefixes


def test_agreement_then_category_then_value_order() -> None:
    sets = [
        compact("tor", ["185.220.1.1/32", "185.220.0.0/24", "2a0b:f4c0::/32"], "tor"),
        compact("c2", ["91.92.93.94/32"], "c2"),
        compact("scan", ["185.220.1.1/32", "45.0.0.0/16"], "scanner"),
    ]
    assert ranked_values(sets) == [
        "185.220.1.1/32",  # two feeds agree
        "91.92.93.94/32",  # c2 outweighs scanner and tor
        "45.0.0.0/16",  # scanner
        "185.220.0.0/24",  # tor, IPv4 before IPv6
        "2a0b:f4c0::/32",
    ]


def test_a_cdr_detection_ranks_first_and_keeps_its_category() -> None:
    cdr = indicator("91.92.93.94/32", category="tor")
    assert ranked_values([compact("c2", ["45.0.0.0/16", "91.92.93.94/32"], "c2")], [cdr]) == [
        "91.92.93.94/32",
        "45.0.0.0/16",
    ]


def test_expired_sets_are_left_out() -> None:
    expired = compact("old", ["45.0.0.0/16"], expires_at="2026-01-10T16:00:00Z")
    assert ranked_values([expired, compact("new", ["46.0.0.0/16"])]) == ["46.0.0.0/16"]


def test_the_channel_guard_refuses_compact_prefixes_with_reason_and_sources() -> None:
    guard = NeverBlock(extra=parse_protected(["45.33.0.0/16"], "channel pod range"))
    sets = [compact("a", ["45.33.32.0/24", "46.0.0.0/16"]), compact("b", ["45.33.32.0/24", "45.0.0.0/8"])]
    ranking = rank_ips([], sets, now=NOW, guard=guard)
    assert [ranking.table.value(r) for r in range(len(ranking.table))] == ["46.0.0.0/16"]
    refused = {(r.value, r.source, r.reason) for r in ranking.rejected}
    assert refused == {
        ("45.33.32.0/24", "a,b", "inside never-block range: channel pod range"),
        ("45.0.0.0/8", "b", "covers never-block range: channel pod range"),
    }


def test_render_annotates_blocklists_with_the_compact_sources() -> None:
    sets = [
        cdr_set([indicator("91.92.93.94/32", refs=("finding-9",))]),
        compact("c2", ["91.92.93.94/32", "45.0.0.0/16"], "c2"),
        compact("tor", ["185.220.0.0/24"], "tor"),
    ]
    result = render(sets, ChannelSettings(name="prod", cilium_version="1.18"))
    files = by_file(result)
    cdr = files["cilium-cdr-blocklist.yaml"]["metadata"]["annotations"]
    ti = files["cilium-threat-intel-blocklist.yaml"]["metadata"]["annotations"]
    assert cdr["cdr-policy.io/sources"] == "c2=1,cdr=1"
    assert cdr["cdr-policy.io/refs"] == "c2,finding-9"
    assert ti["cdr-policy.io/sources"] == "c2=1,tor=1"
    assert result.report["indicators"]["ips"] == 3 and result.report["left_out_total"] == 0


def test_ipv6_addresses_aggregate_and_are_cut_by_rank() -> None:
    addresses = [f"2a00:1450::{i:x}/128" for i in range(8)] + ["2a00:1451::1/128", "2a00:1452::/48"]
    ranking = rank_ips(
        [], [compact("v6", addresses, "tor"), compact("c2", ["2a00:1451::1/128"], "c2")], now=NOW, guard=NeverBlock()
    )
    result = cut(ranking.table, 2)
    # Both feeds agree on 2a00:1451::1; then the addresses in order, while the aggregate fits.
    assert result.kept == {"threat-intel": ["2a00:1450::/127", "2a00:1451::1/128"]}
    left = [ranking.table.value(r) for r in np.flatnonzero(result.left_out).tolist()]
    assert left == [f"2a00:1450::{i:x}/128" for i in range(2, 8)] + ["2a00:1452::/48"]


def test_feed_prefixes_over_the_render_cap_are_left_out_strongest_sets_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for 5 feed prefixes: the c2 set (heaviest category) whole, then the first prefixes
    of the scanner set in value order; the tor set not at all. Each is counted per feed, and the
    channel's report adds them to what the budget left out."""
    from cdr_policy.policy import ranked

    monkeypatch.setattr(ranked, "MAX_RANKED_FEED_PREFIXES", 5)
    sets = [
        compact("tor", ["185.220.0.0/24", "185.220.1.0/24"], "tor"),
        compact("scan", ["45.0.0.0/16", "46.0.0.0/16", "47.0.0.0/16", "2a0b:f4c0::/32"], "scanner"),
        compact("c2", ["91.92.93.94/32", "91.92.93.96/32"], "c2"),
    ]
    ranking = rank_ips([], sets, now=NOW, guard=NeverBlock())
    values = [ranking.table.value(row) for row in range(len(ranking.table))]
    assert values == ["91.92.93.94/32", "91.92.93.96/32", "45.0.0.0/16", "46.0.0.0/16", "47.0.0.0/16"]
    assert ranking.unranked == {"scan": 1, "tor": 2}
    report = render(sets, ChannelSettings(name="staging")).report
    assert report["left_out_unranked"] == {"scan": 1, "tor": 2}
    assert report["left_out_total"] == 3 and report["indicators"]["ips"] == 8


def test_a_set_past_the_cap_is_held_back_as_it_loads_and_counted_as_unranked(monkeypatch: pytest.MonkeyPatch) -> None:
    """hold_to_room after each load keeps the held feed prefixes at the cap: the weaker set keeps
    its first prefixes in value order, a disabled or expired set none, and every set keeps its size."""
    from cdr_policy.policy import ranked

    monkeypatch.setattr(ranked, "MAX_RANKED_FEED_PREFIXES", 3)
    tor = compact("tor", ["185.220.0.0/24", "185.220.1.0/24", "2a0b:f4c0::/32"], "tor")
    c2 = compact("c2", ["91.92.93.94/32", "91.92.93.96/32"], "c2")
    old = compact("old", ["45.0.0.0/16"], expires_at="2026-01-10T16:00:00Z")
    off = compact("off", ["46.0.0.0/16"])
    off.status = "disabled"
    loaded: list[IndicatorSet] = []
    for s in (tor, c2, old, off):
        loaded.append(s)
        ranked.hold_to_room(loaded, now=NOW)
    held = [(len(_prefixes(s)), _prefixes(s).held_back, s.size) for s in loaded]
    assert held == [(1, 2, 3), (2, 0, 2), (0, 1, 1), (0, 1, 1)]
    assert _prefixes(tor).ipv4.strings() == ["185.220.0.0/24"] and not len(_prefixes(tor).ipv6)
    ranking = rank_ips([], [tor, c2, old], now=NOW, guard=NeverBlock())
    assert [ranking.table.value(row) for row in range(len(ranking.table))] == [
        "91.92.93.94/32",
        "91.92.93.96/32",
        "185.220.0.0/24",
    ]
    assert ranking.unranked == {"tor": 2}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["c2", "tor", "scanner", "attacker"]),
            st.lists(st.integers(0, 40), max_size=12, unique=True),  # addresses, shared among the sets
            st.sampled_from(["2026-01-10T12:00:00Z", "2026-01-10T13:00:00Z"]),
            st.sampled_from([EXPIRES, "2026-01-10T16:00:00Z"]),  # in force, or expired at NOW
            st.booleans(),  # disabled
        ),
        max_size=6,
    ),
    st.integers(0, 20),
    st.randoms(use_true_random=False),
)
def test_holding_back_while_loading_ranks_what_the_whole_sets_rank(
    specs: list[tuple[str, list[int], str, str, bool]], cap: int, rnd: random.Random
) -> None:
    """Whatever the order the sets load in, holding back after each load leaves at most ``cap``
    feed prefixes held, and the ranking and its unranked counts are those of the whole sets."""
    from cdr_policy.policy import ranked

    def build() -> list[IndicatorSet]:
        out = []
        for i, (category, addresses, last_seen, expires_at, disabled) in enumerate(specs):
            s = compact(f"f{i}", [f"203.0.{a}.1/32" if a % 3 else f"2a0b:f4c0:{a:x}::/48" for a in addresses])
            held = _prefixes(s)
            held.category, held.last_seen, held.expires_at = category, last_seen, expires_at
            s.status = "disabled" if disabled else "ok"
            out.append(s)
        return out

    def ranked_of(sets: list[IndicatorSet]) -> tuple[list[str], dict[str, int]]:
        ranking = rank_ips([], [s for s in sets if s.status != "disabled"], now=NOW, guard=NeverBlock())
        return [ranking.table.value(row) for row in range(len(ranking.table))], ranking.unranked

    whole = build()
    order = build()
    rnd.shuffle(order)
    loaded: list[IndicatorSet] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ranked, "MAX_RANKED_FEED_PREFIXES", cap)
        for s in order:
            loaded.append(s)
            ranked.hold_to_room(loaded, now=NOW)
            assert sum(len(_prefixes(x)) for x in loaded) <= cap
        assert [s.size for s in sorted(loaded, key=lambda s: s.source)] == [s.size for s in whole]
        assert ranked_of(loaded) == ranked_of(whole)

"""Aggregation equals ``ipaddress.collapse_addresses``; the never-block filter equals the guard
applied entry by entry; the merge across sources keeps provenance and drops what expired."""

from __future__ import annotations

import functools
import ipaddress
import random
from datetime import datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cdr_policy.feeds.aggregate import ingest
from cdr_policy.feeds.parse import ParsedFeed, parse_feed
from cdr_policy.guards import NeverBlock
from cdr_policy.models import Indicator, IndicatorSet
from cdr_policy.netprefix import BITS, last_address, sort_key, to_string
from cdr_policy.netprefix.aggregate import collapse, sort_addresses
from cdr_policy.policy.merge import merge_indicators
from cdr_policy.timeutil import iso

GUARD = NeverBlock()


def _reference(version: int, singles: list[int], nets: list[tuple[int, int]]) -> list[str]:
    bits = BITS[version]
    if version == 4:
        v4 = [ipaddress.IPv4Network((a, bits)) for a in singles] + [ipaddress.IPv4Network(n) for n in nets]
        return [str(n) for n in ipaddress.collapse_addresses(v4)]
    v6 = [ipaddress.IPv6Network((a, bits)) for a in singles] + [ipaddress.IPv6Network(n) for n in nets]
    return [str(n) for n in ipaddress.collapse_addresses(v6)]


@st.composite
def clustered(draw: st.DrawFn, version: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Addresses and prefixes packed into a small window, so that runs, duplicates, overlaps and
    adjacent prefixes are frequent."""
    bits = BITS[version]
    span = draw(st.sampled_from([4, 6, 10]))
    base = draw(st.integers(0, (1 << (bits - span)) - 1)) << span
    offsets = st.integers(0, (1 << span) - 1)
    singles = [base + o for o in draw(st.lists(offsets, max_size=80))]
    nets: list[tuple[int, int]] = []
    for o, length in draw(st.lists(st.tuples(offsets, st.integers(bits - span, bits)), max_size=8)):
        nets.append(((base + o) & ~((1 << (bits - length)) - 1), length))
    return singles, nets


@settings(max_examples=300, deadline=None)
@given(clustered(4))
def test_collapse_equals_collapse_addresses_ipv4(data: tuple[list[int], list[tuple[int, int]]]) -> None:
    singles, nets = data
    assert collapse(4, singles, nets).strings() == _reference(4, singles, nets)


@settings(max_examples=300, deadline=None)
@given(clustered(6))
def test_collapse_equals_collapse_addresses_ipv6(data: tuple[list[int], list[tuple[int, int]]]) -> None:
    singles, nets = data
    assert collapse(6, singles, nets).strings() == _reference(6, singles, nets)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=300))
def test_collapse_of_scattered_ipv4(singles: list[int]) -> None:
    assert collapse(4, singles).strings() == _reference(4, singles, [])


def test_collapse_edges_of_the_address_space() -> None:
    assert collapse(4, [0, 1, 2**32 - 1, 2**32 - 2]).strings() == ["0.0.0.0/31", "255.255.255.254/31"]
    assert collapse(4, range(256)).strings() == ["0.0.0.0/24"]
    assert collapse(4, [], [(0, 0), (5, 32)]).strings() == ["0.0.0.0/0"]
    assert collapse(6, [2**128 - 1], [(0, 1)]).strings() == ["::/1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"]
    assert collapse(4).strings() == [] and len(collapse(6)) == 0


def test_sort_addresses_keeps_duplicates_and_order() -> None:
    values = [3_000_000_000, 5, 3_000_000_000, 2**32 - 1, 0]
    assert [int(v) for v in sort_addresses(4, values)] == sorted(values)
    assert sort_addresses(6, [2**100, 1, 2**100]) == [1, 2**100, 2**100]


# --- never-block filter ----------------------------------------------------------------------------

_PROTECTED_NEAR = [
    ipaddress.ip_network(c)
    for c in ("8.8.8.0/24", "10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "192.168.0.0/16", "1.1.1.0/24", "0.0.0.0/8")
]


def _shifted(net: ipaddress.IPv4Network | ipaddress.IPv6Network, by: int) -> int:
    return int(net.network_address) + by


@st.composite
def near_protected(draw: st.DrawFn) -> ParsedFeed:
    """Parsed feeds whose entries sit in and around protected ranges (and a few over-broad ones)."""
    parsed = ParsedFeed(format="plain")
    for _ in range(draw(st.integers(0, 60))):
        net = draw(st.sampled_from(_PROTECTED_NEAR))
        low = int(net.network_address) - 512
        high = int(net.broadcast_address) + 512
        parsed.singles[4].append(min(max(draw(st.integers(low, high)), 0), 2**32 - 1))
    for _ in range(draw(st.integers(0, 30))):  # CIDRs anywhere, and in, around and over protected ranges
        length = draw(st.integers(0, 31))  # a /32 is a single address (ParsedFeed.singles)
        near = draw(st.sampled_from(_PROTECTED_NEAR))
        anchor = draw(
            st.one_of(
                st.integers(0, 2**32 - 1),
                st.integers(-(2**20), 2**20).map(functools.partial(_shifted, near)),
            )
        )
        value = min(max(anchor, 0), 2**32 - 1) & ~((1 << (32 - length)) - 1)
        parsed.networks[4].append(value, length)
    for _ in range(draw(st.integers(0, 10))):
        parsed.singles[6].append(draw(st.sampled_from([0, 1, 0xFE80 << 112, (0x2001 << 112) | 5, 2**128 - 1])))
    return parsed


GUARDS = {
    "default": GUARD,
    "no-minimum": NeverBlock(min_prefix={4: 0, 6: 0}),
    "strict-minimum": NeverBlock(min_prefix={4: 24, 6: 64}, extra=[("100.0.0.0/8", "node range")]),
}


@settings(max_examples=150, deadline=None)
@given(near_protected(), st.sampled_from(sorted(GUARDS)))
def test_filter_equals_the_guard_entry_by_entry(parsed: ParsedFeed, guard_name: str) -> None:
    guard = GUARDS[guard_name]
    result = ingest(parsed, guard, "test-feed")
    expected_refused: dict[str, str] = {}
    kept: dict[int, tuple[list[int], list[tuple[int, int]]]] = {4: ([], []), 6: ([], [])}
    for version in (4, 6):
        bits = BITS[version]
        for value in parsed.singles[version]:
            reason = guard.check_interval(version, value, value, bits)
            if reason:
                expected_refused[to_string(version, value, bits)] = reason
            else:
                kept[version][0].append(value)
        for net, length in parsed.networks[version].pairs():
            reason = guard.check_interval(version, net, last_address(version, net, length), length)
            if reason:
                expected_refused[to_string(version, net, length)] = reason
            else:
                kept[version][1].append((net, length))
    assert {r.value: r.reason for r in result.rejected} == expected_refused
    assert result.refused == len(result.rejected) == len(expected_refused)
    assert all(r.source == "test-feed" for r in result.rejected)
    for version in (4, 6):
        assert result.prefixes[version].strings() == _reference(version, *kept[version])
    # Listing only the first few: the same records, in address order, and the same count.
    few = ingest(parsed, guard, "test-feed", listed=3)
    ordered = sorted(result.rejected, key=lambda r: (":" in r.value, sort_key(r.value)))
    assert few.rejected == ordered[:3] and few.refused == result.refused


def test_poisoned_entries_are_rejected_with_reasons() -> None:
    parsed = parse_feed(b"8.8.8.8\n10.0.0.0/8\n0.0.0.0/0\n192.168.1.1\n1.1.1.1\n::1\n93.184.216.34\n")
    result = ingest(parsed, GUARD, "poisoned")
    reasons = {r.value: r.reason for r in result.rejected}
    assert reasons == {
        "0.0.0.0/0": "over-broad prefix (shorter than /8)",
        "1.1.1.1/32": "inside never-block range: public DNS resolver (Cloudflare)",
        "8.8.8.8/32": "inside never-block range: public DNS resolver (Google)",
        "10.0.0.0/8": "inside never-block range: private range (RFC 1918)",
        "192.168.1.1/32": "inside never-block range: private range (RFC 1918)",
        "::1/128": "inside never-block range: loopback",
    }
    assert result.prefixes[4].strings() == ["93.184.216.34/32"] and len(result.prefixes[6]) == 0


def test_a_million_refused_entries_stay_a_count_and_a_short_list() -> None:
    """A feed of a million private addresses and CIDRs: the refusals are counted, the first
    thousand listed in address order, and no record is made for the others."""
    rng = random.Random(7)
    lines = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}" for _ in range(900_000)]
    lines += [f"192.168.{rng.randrange(256)}.0/24" for _ in range(100_000)] + ["93.184.216.34", "93.184.216.34"]
    parsed = parse_feed("\n".join(lines).encode())
    result = ingest(parsed, GUARD, "huge", listed=1000)
    distinct = len(set(lines)) - 1
    assert result.refused == distinct and len(result.rejected) == 1000
    assert [r.value for r in result.rejected] == sorted((r.value for r in result.rejected), key=sort_key)
    assert result.rejected[0].value.startswith("10.") and result.prefixes[4].strings() == ["93.184.216.34/32"]
    assert all(r.reason == "inside never-block range: private range (RFC 1918)" for r in result.rejected)


def test_protected_ranges_of_the_channel_are_honoured() -> None:
    guard = NeverBlock(extra=[("93.184.216.0/24", "cluster node range")])
    result = ingest(parse_feed(b"93.184.216.34\n93.184.217.1\n"), guard, "f")
    assert [(r.value, r.reason) for r in result.rejected] == [
        ("93.184.216.34/32", "inside never-block range: cluster node range")
    ]


def test_real_blocklist_aggregates_like_collapse_addresses(shared_feeds_dir: Path) -> None:
    parsed = parse_feed((shared_feeds_dir / "blocklist_de_all.txt").read_bytes(), "plain")
    result = ingest(parsed, GUARD, "blocklist-de")
    assert (len(result.prefixes[4]), len(result.prefixes[6])) == (15_763, 471)
    assert result.prefixes[4].strings() == _reference(4, list(parsed.singles[4]), [])
    assert result.rejected == []


# --- merge across sources -----------------------------------------------------------------------------


def _ind(
    value: str,
    sources: list[str],
    category: str,
    first: str,
    last: str,
    expires: str,
    score: int | None = None,
    refs: list[str] | None = None,
) -> Indicator:
    return Indicator(
        value=value,
        kind="ip",
        category=category,
        sources=sources,
        first_seen=first,
        last_seen=last,
        expires_at=expires,
        refs=refs if refs is not None else list(sources),
        score=score,
    )


def test_merge_indicators_keeps_provenance_and_drops_expired(now: datetime) -> None:
    def t(hours: float) -> str:
        return iso(now + timedelta(hours=hours))

    feeds = IndicatorSet(
        source="feed:tor-exit",
        fetched_at=t(0),
        status="ok",
        entries=[
            _ind("198.18.0.1/32", ["tor-exit"], "tor", t(-5), t(-1), t(10)),
            _ind("203.0.113.0/24", ["tor-exit"], "tor", t(-50), t(-40), t(-1)),  # expired
            _ind("2001:db8::1/128", ["tor-exit"], "tor", t(-3), t(-3), t(3)),
        ],
    )
    other = IndicatorSet(
        source="feed:feodo-c2",
        fetched_at=t(0),
        status="stale",
        entries=[_ind("198.18.0.1/32", ["feodo-c2"], "c2", t(-9), t(-2), t(20), refs=["feodo-c2"])],
    )
    rep = IndicatorSet(
        source="abuseipdb",
        fetched_at=t(0),
        status="ok",
        entries=[_ind("198.18.0.1/32", ["abuseipdb"], "reputation", t(-1), t(0), t(5), score=87)],
    )
    cdr = IndicatorSet(
        source="cdr",
        fetched_at=t(0),
        status="ok",
        entries=[_ind("10.9.9.9/32", ["cdr"], "network_scanning", t(-2), t(-2), t(30), refs=["uuid-1"])],
    )
    merged = merge_indicators([feeds, other, rep, cdr], now)
    assert [m.value for m in merged] == ["10.9.9.9/32", "198.18.0.1/32", "2001:db8::1/128"]
    m = merged[1]
    assert m.sources == ["abuseipdb", "feodo-c2", "tor-exit"]
    assert m.refs == ["abuseipdb", "feodo-c2", "tor-exit"]
    assert (m.first_seen, m.last_seen, m.expires_at, m.score) == (t(-9), t(0), t(20), 87)
    assert m.category == "c2"  # the heaviest category wins
    assert feeds.entries[0].sources == ["tor-exit"]  # inputs are not modified


def test_merge_indicators_cdr_category_wins_and_refs_are_capped(now: datetime) -> None:
    def t(hours: float) -> str:
        return iso(now + timedelta(hours=hours))

    many = [f"uuid-{i:03d}" for i in range(50)]
    a = IndicatorSet("feed:x", t(0), "ok", entries=[_ind("192.0.2.1/32", ["x"], "c2", t(-1), t(-1), t(1))])
    b = IndicatorSet(
        "cdr", t(0), "ok", entries=[_ind("192.0.2.1/32", ["cdr"], "crypto_mining", t(-1), t(0), t(1), refs=many)]
    )
    (m,) = merge_indicators([a, b], now)
    assert m.category == "crypto_mining" and m.sources == ["cdr", "x"]
    assert len(m.refs) == 20 and m.refs == sorted(["x", *many])[:20]
    assert merge_indicators([b, a], now)[0].category == "crypto_mining"

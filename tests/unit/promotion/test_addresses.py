"""The address sets promotion judges with, held to ``ipaddress``: which changes a set holds whole
or touches, which changes hold an address, and the collapsed form a manifest records."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from cdr_policy.promotion.addresses import AddressSet, Spans

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@st.composite
def prefixes(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return str(ipaddress.ip_network((draw(st.integers(0x2D000000, 0x2D00FFFF)), draw(st.integers(20, 32))), False))
    address = 0x20010DB8 << 96 | draw(st.integers(0, 0xFFFF))
    return str(ipaddress.ip_network((address, draw(st.integers(112, 128))), strict=False))


def _nets(values: list[str]) -> list[Net]:
    return [ipaddress.ip_network(v) for v in values]


def _union(values: list[str]) -> list[Net]:
    nets = _nets(values)
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def _subnet_of(net: Net, other: Net) -> bool:
    """``net`` inside ``other`` (networks of different families are never inside each other)."""
    if isinstance(net, ipaddress.IPv4Network) and isinstance(other, ipaddress.IPv4Network):
        return net.subnet_of(other)
    if isinstance(net, ipaddress.IPv6Network) and isinstance(other, ipaddress.IPv6Network):
        return net.subnet_of(other)
    return False


@settings(max_examples=200, deadline=None)
@given(st.lists(prefixes(), max_size=12), st.lists(prefixes(), max_size=12, unique=True))
def test_covers_and_touches_agree_with_ipaddress(held: list[str], changes: list[str]) -> None:
    addresses = AddressSet.of_spans(Spans.of(held))
    spans = Spans.of(changes)
    union = _union(held)
    covers, touches = addresses.covers(spans).tolist(), addresses.touches(spans).tolist()
    for change, covered, touched in zip(_nets(changes), covers, touches, strict=True):
        same = [n for n in union if n.version == change.version]
        assert covered == any(_subnet_of(change, n) for n in same)
        assert touched == any(change.overlaps(n) for n in same)


@settings(max_examples=200, deadline=None)
@given(st.lists(prefixes(), max_size=16, unique=True), prefixes())
def test_the_changes_holding_an_address_or_a_range_are_all_found(changes: list[str], probe: str) -> None:
    spans = Spans.of(changes)
    target = ipaddress.ip_network(probe)
    found = spans.holding(target.version, int(target.network_address), int(target.broadcast_address))
    expected = [i for i, c in enumerate(_nets(changes)) if c.version == target.version and c.overlaps(target)]
    assert found == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(prefixes(), max_size=16), st.lists(prefixes(), max_size=16))
def test_the_recorded_form_is_the_collapsed_union(one: list[str], other: list[str]) -> None:
    union = AddressSet.of_spans(Spans.of(one)).union(AddressSet.of_spans(Spans.of(other)))
    expected = [str(n) for n in _union(one + other)]
    assert union.prefixes() == expected
    assert AddressSet.from_fields(union.to_fields()).prefixes() == expected
    first = _union(one)
    outside = [p for p in expected if not any(_subnet_of(ipaddress.ip_network(p), n) for n in first)]
    assert union.outside(AddressSet.of_spans(Spans.of(one))) == outside[:5]

"""The compact feed-set form: a round trip keeps every prefix and the provenance, the payload is
checked as a whole, and a truncated, reordered, overlapping or tampered set is refused."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from typing import Any

import numpy as np
import pytest

from cdr_policy.errors import CdrPolicyError
from cdr_policy.feeds.download import MAX_BYTES
from cdr_policy.feeds.persist import MAX_FEED_PREFIXES, dump_set, parse_set, render_fingerprint
from cdr_policy.models import FeedPrefixes, IndicatorSet, Rejection
from cdr_policy.netprefix.vector import V4, V6

V4_PREFIXES = [(0x5DB8D822, 31), (0x5DB8D828, 32), (0xCB007209, 32), (0xD0000000, 8)]
V6_PREFIXES = [(0x2A00_1450 << 96, 32), ((0x2A00_1451 << 96) | 1, 128)]


def compact_set(v4: list[tuple[int, int]] = V4_PREFIXES, v6: list[tuple[int, int]] = V6_PREFIXES) -> IndicatorSet:
    prefixes = FeedPrefixes(
        category="c2",
        last_seen="2026-01-02T03:04:05Z",
        expires_at="2026-01-04T03:04:05Z",
        ipv4=V4(np.array([n for n, _ in v4], np.uint32), np.array([p for _, p in v4], np.uint8)),
        ipv6=V6([n for n, _ in v6], bytes(p for _, p in v6)),
    )
    return IndicatorSet(
        source="feed:list",
        fetched_at="2026-01-02T03:04:05Z",
        status="ok",
        rejected=[Rejection("10.0.0.0/8", "list", "inside never-block range: private range (RFC 1918)")],
        stats={"entries": len(prefixes)},
        prefixes=prefixes,
    )


def _prefixes(s: IndicatorSet) -> FeedPrefixes:
    assert s.prefixes is not None
    return s.prefixes


def payload_of(doc: dict[str, Any]) -> bytes:
    return zlib.decompress(base64.b64decode(doc["prefixes"]["data"]))


def with_payload(doc: dict[str, Any], payload: bytes, *, digest: bool = True) -> bytes:
    doc = json.loads(json.dumps(doc))
    doc["prefixes"]["data"] = base64.b64encode(zlib.compress(payload)).decode()
    if digest:
        doc["prefixes"]["sha256"] = hashlib.sha256(payload).hexdigest()
    return json.dumps(doc).encode()


def test_round_trip_keeps_prefixes_order_and_provenance() -> None:
    original = compact_set()
    raw = dump_set(original)
    doc = json.loads(raw)
    assert doc["entries"] == [] and doc["prefixes"]["ipv4"] == 4 and doc["prefixes"]["ipv6"] == 2
    back = parse_set(raw, "test")
    assert back.prefixes is not None and back.size == 6
    assert back.prefixes.ipv4.strings() == ["93.184.216.34/31", "93.184.216.40/32", "203.0.114.9/32", "208.0.0.0/8"]
    assert back.prefixes.ipv6.strings() == ["2a00:1450::/32", "2a00:1451::1/128"]
    assert (back.prefixes.category, back.prefixes.last_seen, back.prefixes.expires_at) == (
        "c2",
        "2026-01-02T03:04:05Z",
        "2026-01-04T03:04:05Z",
    )
    assert back.rejected == original.rejected and back.stats == original.stats
    assert dump_set(back) == raw  # same set, same bytes
    assert render_fingerprint(back) == render_fingerprint(original)


def test_the_digest_is_over_the_payload_and_follows_every_prefix() -> None:
    doc = json.loads(dump_set(compact_set()))
    assert doc["prefixes"]["sha256"] == hashlib.sha256(payload_of(doc)).hexdigest()
    other = compact_set(v4=[*V4_PREFIXES[:3], (0xD1000000, 8)])
    assert json.loads(dump_set(other))["prefixes"]["sha256"] != doc["prefixes"]["sha256"]
    assert render_fingerprint(other) != render_fingerprint(compact_set())


def test_an_empty_compact_set_round_trips() -> None:
    back = parse_set(dump_set(compact_set(v4=[], v6=[])), "test")
    assert back.prefixes is not None and back.size == 0


def test_a_tampered_payload_is_refused() -> None:
    doc = json.loads(dump_set(compact_set()))
    payload = bytearray(payload_of(doc))
    payload[0] ^= 1
    with pytest.raises(CdrPolicyError, match="SHA-256"):
        parse_set(with_payload(doc, bytes(payload), digest=False), "test")


def test_a_truncated_payload_is_refused() -> None:
    doc = json.loads(dump_set(compact_set()))
    with pytest.raises(CdrPolicyError, match="counts say"):
        parse_set(with_payload(doc, payload_of(doc)[:-1]), "test")
    cut = json.loads(json.dumps(doc))
    cut["prefixes"]["data"] = base64.b64encode(base64.b64decode(doc["prefixes"]["data"])[:-4]).decode()
    with pytest.raises(CdrPolicyError, match="compact prefixes refused"):
        parse_set(json.dumps(cut).encode(), "test")


def test_a_count_that_disagrees_with_the_payload_is_refused() -> None:
    doc = json.loads(dump_set(compact_set()))
    doc["prefixes"]["ipv4"] = 3
    with pytest.raises(CdrPolicyError, match="counts say"):
        parse_set(json.dumps(doc).encode(), "test")


@pytest.mark.parametrize(
    ("v4", "why"),
    [
        ([V4_PREFIXES[1], V4_PREFIXES[0], *V4_PREFIXES[2:]], "not sorted and disjoint"),  # reordered
        ([V4_PREFIXES[0], V4_PREFIXES[0]], "not sorted and disjoint"),  # duplicated
        ([(0xD0000000, 8), (0xD0010000, 16)], "not sorted and disjoint"),  # overlapping
        ([(0xD0000001, 8)], "host bits"),
        ([(0xD0000000, 33)], "over 32"),
    ],
)
def test_a_set_out_of_order_or_not_canonical_is_refused_even_with_a_correct_digest(
    v4: list[tuple[int, int]], why: str
) -> None:
    bad = compact_set(v4=v4, v6=[])
    doc = json.loads(dump_set(compact_set(v4=[], v6=[])))
    doc["prefixes"]["ipv4"] = len(v4)
    payload = json.loads(dump_set(bad))  # pack does not sort: it writes what it is given
    with pytest.raises(CdrPolicyError, match=why):
        parse_set(with_payload(doc, payload_of(payload)), "test")


@pytest.mark.parametrize("step", [1, 2, 3])
@pytest.mark.parametrize(
    ("at", "prefix", "why"),
    [(i, V4_PREFIXES[i - 1], "not sorted and disjoint") for i in range(1, 4)]
    + [(i, (V4_PREFIXES[i][0] | 1, 8), "host bits") for i in range(4)],
)
def test_the_ipv4_checks_run_in_steps_and_miss_nothing_at_a_seam(
    monkeypatch: pytest.MonkeyPatch, step: int, at: int, prefix: tuple[int, int], why: str
) -> None:
    """The IPv4 checks go a step of prefixes at a time (their temporaries stay small): a fault at
    any place, a seam between steps included, is refused; the good set loads in any step."""
    from cdr_policy.netprefix import vector

    monkeypatch.setattr(vector, "_CHECK_STEP", step)
    assert (
        _prefixes(parse_set(dump_set(compact_set(v6=[])), "test")).ipv4.strings()
        == _prefixes(compact_set()).ipv4.strings()
    )
    v4 = list(V4_PREFIXES)
    v4[at] = prefix
    doc = json.loads(dump_set(compact_set(v4=[], v6=[])))
    doc["prefixes"]["ipv4"] = len(v4)
    with pytest.raises(CdrPolicyError, match=why):
        parse_set(with_payload(doc, payload_of(json.loads(dump_set(compact_set(v4=v4, v6=[]))))), "test")


def test_reordered_ipv6_is_refused() -> None:
    doc = json.loads(dump_set(compact_set(v6=[V6_PREFIXES[1], V6_PREFIXES[0]])))
    with pytest.raises(CdrPolicyError, match="IPv6 prefixes are not sorted"):
        parse_set(json.dumps(doc).encode(), "test")


def test_a_compact_set_with_per_entry_records_or_a_cdr_source_breaks_the_schema() -> None:
    doc = json.loads(dump_set(compact_set()))
    doc["source"] = "cdr"
    with pytest.raises(CdrPolicyError, match="indicator-set.schema.json"):
        parse_set(json.dumps(doc).encode(), "test")


def test_the_per_entry_form_is_kept_for_cdr_sets() -> None:
    s = IndicatorSet(source="cdr", fetched_at="2026-01-02T03:04:05Z", status="ok")
    assert "prefixes" not in json.loads(dump_set(s))
    with pytest.raises(ValueError, match="dump_set"):
        compact_set().to_dict()


def test_a_count_beyond_any_feed_download_is_refused_before_inflating() -> None:
    assert MAX_FEED_PREFIXES == MAX_BYTES // 8
    doc = json.loads(dump_set(compact_set()))
    doc["prefixes"]["ipv4"] = MAX_FEED_PREFIXES
    with pytest.raises(CdrPolicyError, match="more than"):
        parse_set(json.dumps(doc).encode(), "test")


def test_a_set_a_render_held_back_prefixes_of_is_never_stored() -> None:
    held = compact_set()
    _prefixes(held).held_back = 1
    with pytest.raises(ValueError, match="held back"):
        dump_set(held)

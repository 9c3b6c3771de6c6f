"""The provenance index a render ships in its bundle (``policy.provenance`` builds it,
``bundle.provenance`` is its format): each aggregated prefix, port and rule with the feeds, finding
ids and categories of what it covers and the objects holding it; compact, bounded, deterministic,
and refused whole when one byte is wrong."""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from cdr_policy import jsonio
from cdr_policy.bundle import provenance
from cdr_policy.bundle.manifest import VerificationError
from cdr_policy.bundle.provenance import Provenance, ProvenanceIndex, read_index
from cdr_policy.models import FeedPrefixes, IndicatorSet
from cdr_policy.netprefix import folded
from cdr_policy.netprefix.vector import V4, V6
from cdr_policy.policy import provenance as builder
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.render import RenderResult
from tests.unit.policy.factories import NOW, behaviour, cdr_set, feed_set, indicator, render


def _sets() -> list[IndicatorSet]:
    return [
        cdr_set(
            [
                indicator("45.33.32.156/32", refs=("uuid-a", "uuid-b")),
                indicator("2a00:1450::1/128", refs=("uuid-c",), category="Crypto_Mining_Pool"),
                indicator("tcp/4444", kind="port", refs=("uuid-p",)),
            ],
            [behaviour("crypto_mining", ["xmrig"])],
        ),
        feed_set("feodo", ["185.100.0.0/25", "185.100.0.128/25", "45.33.32.156/32"], category="c2"),
        feed_set("tor", ["185.220.101.5/32"], category="tor"),
    ]


def _lookup(index: ProvenanceIndex, engine: str, name: str, address: str) -> tuple[str, Provenance]:
    held = index.holds(engine, name)
    blocklist, holder = held.blocklist, held.holder
    prefix = folded(address)
    assert blocklist is not None and holder is not None and prefix is not None
    found = blocklist.find(prefix.version, prefix.network)
    assert found is not None and holder.first <= found < holder.first + holder.count
    return blocklist.prefix(found), index.classes[int(blocklist.classes[found])]


def test_each_prefix_carries_its_feeds_findings_and_categories() -> None:
    result = render(_sets(), ChannelSettings(name="prod", action="Sigkill"))
    index = read_index(result.provenance.to_bytes())
    labels = {f.name: f.obj["metadata"]["labels"] for f in result.files}
    names = {f"{lb['cdr-policy.io/component']}/{lb.get('cdr-policy.io/blocklist')}": n for n, lb in labels.items()}
    tp_cdr = names["tetragon-blocklist/cdr"]
    prefix, cls = _lookup(index, "tetragon", tp_cdr, "45.33.32.156")
    assert prefix == "45.33.32.156/32"
    assert (cls.feeds, cls.findings, cls.categories, cls.category, cls.source) == (
        ("feodo",),
        ("uuid-a", "uuid-b"),
        ("c2",),
        "c2",
        "cdr",
    )
    prefix, cls = _lookup(index, "tetragon", tp_cdr, "2a00:1450::1")
    assert (prefix, cls.findings, cls.category, cls.feeds) == (
        "2a00:1450::1/128",
        ("uuid-c",),
        "Crypto_Mining_Pool",
        (),
    )
    # Two /25s of one feed aggregate into a /24 that shares the feed's class with the feed's other prefix.
    ccnp = names["cilium-blocklist/threat-intel"]
    prefix, cls = _lookup(index, "cilium", ccnp, "185.100.0.200")
    assert (prefix, cls.feeds, cls.findings, cls.source) == ("185.100.0.0/24", ("feodo",), (), "feed")
    _, tor = _lookup(index, "cilium", ccnp, "185.220.101.5")
    assert (tor.feeds, tor.category) == (("tor",), "tor")
    # Ports and rules.
    (port,) = index.ports
    assert port.port == "tcp/4444" and index.classes[port.klass].findings == ("uuid-p",)
    assert {o.engine for o in port.objects} == {"tetragon"}  # Cilium denies ports only with deny_ports_to_world
    (rule,) = index.rules
    assert rule.rule == "crypto_mining"
    assert index.classes[rule.klass].findings == ("uuid-crypto_mining-1", "uuid-crypto_mining-2")
    assert index.classes[rule.klass].categories == ("Category_For_crypto_mining",)
    assert index.detail == "workload" and index.channel == "prod"


def test_both_engines_share_one_list_when_their_budgets_cut_alike() -> None:
    alike = read_index(render(_sets()).provenance.to_bytes())
    assert sorted(b.group for b in alike.blocklists) == ["cdr", "threat-intel"]
    assert all({h.ref.engine for h in b.holders} == {"tetragon", "cilium"} for b in alike.blocklists)
    apart = read_index(render(_sets(), ChannelSettings(name="prod", cilium_max_prefixes=2)).provenance.to_bytes())
    ti = [b for b in apart.blocklists if b.group == "threat-intel"]
    assert sorted(len(b) for b in ti) == [2]  # Cilium holds no threat-intel prefix; Tetragon both
    assert {h.ref.engine for h in ti[0].holders} == {"tetragon"}


def test_tetragon_parts_hold_their_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "PREFIXES_PER_POLICY", 2)
    monkeypatch.setattr("cdr_policy.policy.tetragon.PREFIXES_PER_POLICY", 2)
    values = [f"185.{i}.0.1/32" for i in range(1, 6)]
    index = read_index(render([feed_set("feodo", values)]).provenance.to_bytes())
    (blocklist,) = index.blocklists
    parts = sorted((h.first, h.count) for h in blocklist.holders if h.ref.engine == "tetragon")
    assert parts == [(0, 2), (2, 2), (4, 1)]


def test_feed_prefixes_of_a_compact_set_share_one_class_whatever_their_number() -> None:
    n = 100_000
    networks = (np.arange(n, dtype=np.uint32) * 4 + (185 << 24)).astype(np.uint32)
    compact = IndicatorSet(
        source="feed:big",
        fetched_at="2026-01-10T16:00:00Z",
        status="ok",
        prefixes=FeedPrefixes(
            "malware",
            "2026-01-10T12:00:00Z",
            "2026-01-17T12:00:00Z",
            V4(networks, np.full(n, 32, dtype=np.uint8)),
            V6([], b""),
        ),
    )
    channel = ChannelSettings(name="prod", tetragon_max_prefixes=250_000, cilium_max_prefixes=250_000)
    data = render([compact], channel).provenance.to_bytes()
    index = read_index(data)
    assert len(index.classes) == 1 and index.classes[0].feeds == ("big",)
    assert len(index.blocklists[0]) == n
    assert len(data) < 6 * n  # a few bytes a prefix, never a JSON object each


def test_the_index_is_deterministic() -> None:
    assert render(_sets()).provenance.to_bytes() == render(_sets()).provenance.to_bytes()


def test_past_the_class_cap_prefixes_keep_feeds_and_categories_and_count_their_findings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(builder, "MAX_CLASSES", 3)
    sets = [cdr_set([indicator(f"45.33.32.{i}/32", refs=(f"uuid-{i}",)) for i in (1, 3, 5, 7, 9)])]
    index = read_index(render(sets).provenance.to_bytes())
    assert [c.findings for c in index.classes] == [("uuid-1",), ("uuid-3",), ()]  # best-ranked first
    spilled = index.classes[2]
    assert (spilled.findings_more, spilled.source, spilled.categories) == (3, "cdr", ("c2",))
    (blocklist,) = index.blocklists
    assert blocklist.classes.tolist() == [0, 1, 2, 2, 2]


def _doc(result: RenderResult) -> dict[str, Any]:
    doc: dict[str, Any] = jsonio.loads(result.provenance.to_bytes())
    return doc


@pytest.mark.parametrize(
    "tamper, why",
    [
        (lambda d: d["blocklists"][0]["objects"][0].update(count=99), "range"),
        (lambda d: d["blocklists"][0]["prefixes"].update(sha256="0" * 64), "SHA-256"),
        (
            lambda d: d["blocklists"][0]["classes"].update(data=base64.b64encode(zlib.compress(b"\0" * 4)).decode()),
            "class",
        ),
        (lambda d: d["ports"][0].update({"class": 42}), "class"),
        (lambda d: d["rules"][0]["objects"].append(d["ports"][0]["objects"][0]), "more than one purpose"),
        (lambda d: d.update(detail="everything"), "detail"),
        (lambda d: d["classes"][0].update(findings=["x"] * 21), "findings"),
    ],
)
def test_a_tampered_index_is_refused_whole(tamper: Callable[[dict[str, Any]], object], why: str) -> None:
    doc = _doc(render(_sets()))
    tamper(doc)
    with pytest.raises(VerificationError, match=why) as caught:
        read_index(json.dumps(doc).encode())
    assert caught.value.code == "bad_object"


@pytest.mark.parametrize("data", [b"", b"[]", b"{" * 100_000, b"\xff\xfe", b"1" * (provenance.MAX_INDEX_BYTES + 1)])
def test_hostile_bytes_are_refused_with_one_message(data: bytes) -> None:
    with pytest.raises(VerificationError):
        read_index(data)


def test_the_bundle_lists_and_signs_the_index() -> None:
    from cdr_policy.bundle.assemble import assemble

    result = render(_sets())
    bundle = assemble(result.files, ChannelSettings(name="prod"), now=NOW, index=result.provenance)
    assert bundle.files[provenance.PATH] == result.provenance.to_bytes()
    assert provenance.PATH in {e.path for e in bundle.manifest.files}

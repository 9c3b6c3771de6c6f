"""Property-based: whatever the indicator sets, categories and channel settings, every emitted
object passes the CRD schemas (strict) and the checklist, and the output is deterministic."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdr_policy.guards import NeverBlock
from cdr_policy.models import Behaviour, Indicator, IndicatorKind, IndicatorSet
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet, check_object, errors_of
from cdr_policy.rules import RULES

from .factories import EXPIRES, FIRST_SEEN, LAST_SEEN, file_bytes, render

SOURCES = ["cdr", "feed:feodo-c2", "feed:tor-exit", "abuseipdb"]
CATEGORIES = [
    "c2",
    "tor",
    "scanner",
    "attacker",
    "compromised",
    "malware",
    "Cloud_Credentials",
    "unknown-category",
]

ipv4 = st.one_of(
    # mostly public space, where most prefixes pass the never-block list ...
    st.builds(
        lambda a, n: str(ipaddress.IPv4Network((a, n), strict=False)),
        st.integers(min_value=0x0B000000, max_value=0x5FFFFFFF),
        st.integers(min_value=16, max_value=32),
    ),
    # ... and anything at all, bogons, private ranges and over-broad prefixes included
    st.builds(
        lambda a, n: str(ipaddress.IPv4Network((a, n), strict=False)),
        st.integers(min_value=0, max_value=2**32 - 1),
        st.integers(min_value=0, max_value=32),
    ),
)
ipv6 = st.builds(
    lambda a, n: str(ipaddress.IPv6Network((a, n), strict=False)),
    st.integers(min_value=0x2000 << 112, max_value=(0x3FFF << 112) - 1),
    st.integers(min_value=16, max_value=128),
)
ports = st.builds(lambda p, n: f"{p}/{n}", st.sampled_from(["tcp", "udp"]), st.integers(min_value=1, max_value=65535))
domains = st.builds(
    lambda a, b: f"{a}.{b}",
    st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True),
    st.sampled_from(["com", "net", "example"]),
)


@st.composite
def indicators(draw: st.DrawFn) -> Indicator:
    kinds: list[IndicatorKind] = ["ip", "ip", "ip", "domain", "port"]
    kind = draw(st.sampled_from(kinds))
    value = draw({"ip": st.one_of(ipv4, ipv6), "domain": domains, "port": ports}[kind])
    sources = sorted(set(draw(st.lists(st.sampled_from(SOURCES), min_size=1, max_size=3))))
    return Indicator(
        value=value,
        kind=kind,
        category=draw(st.sampled_from(CATEGORIES)),
        sources=sources,
        first_seen=FIRST_SEEN,
        last_seen=LAST_SEEN,
        expires_at=EXPIRES,
        refs=draw(st.lists(st.from_regex(r"[a-f0-9]{8}", fullmatch=True), max_size=3)),
        score=draw(st.one_of(st.none(), st.integers(min_value=0, max_value=100))),
    )


process_names = st.one_of(
    st.sampled_from(["nmap", "/usr/bin/masscan", "bash", "python3", "curl", "xmrig", "kubectl", "sh -c x"]),
    st.text(alphabet="abcXYZ019._+-/ :", min_size=1, max_size=20),
)


@st.composite
def behaviours(draw: st.DrawFn) -> list[Behaviour]:
    rules = draw(st.lists(st.sampled_from(sorted(RULES)), max_size=6, unique=True))
    return [
        Behaviour(
            rule=rule,
            categories={draw(st.sampled_from(CATEGORIES)): draw(st.integers(min_value=1, max_value=99))},
            processes=draw(st.lists(process_names, max_size=20)),
            refs=draw(st.lists(st.from_regex(r"[a-f0-9]{12}", fullmatch=True), max_size=30)),
            first_seen=FIRST_SEEN,
            last_seen=LAST_SEEN,
            expires_at=EXPIRES,
        )
        for rule in rules
    ]


@st.composite
def channels(draw: st.DrawFn) -> ChannelSettings:
    return ChannelSettings(
        name=draw(st.sampled_from(["prod", "staging", "eu-1"])),
        action=draw(st.sampled_from(["Post", "Sigkill", "Override"])),
        cilium_version=draw(st.sampled_from(["1.16", "1.17.2", "1.18", "1.20"])),
        tetragon_max_prefixes=draw(st.integers(min_value=1, max_value=15)),
        cilium_max_prefixes=draw(st.integers(min_value=1, max_value=15)),
        namespaces=tuple(draw(st.lists(st.sampled_from(["payments", "web", "batch"]), max_size=2, unique=True))),
        pod_labels=draw(st.sampled_from([{}, {"app": "api"}, {"tier": "front", "app.kubernetes.io/name": "x"}])),
        protected_cidrs=tuple(draw(st.lists(ipv4, max_size=2))),
        threat_intel=draw(st.booleans()),
        tetragon_network_hook=draw(st.sampled_from(["tcp_connect", "security_socket_connect"])),
        deny_ports_to_world=draw(st.booleans()),
        promoted_rules=tuple(
            draw(st.lists(st.sampled_from(["container_escape", "discovery"]), max_size=2, unique=True))
        ),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cdr_entries=st.lists(indicators(), max_size=40),
    feed_entries=st.lists(indicators(), max_size=60),
    cdr_behaviours=behaviours(),
    channel=channels(),
)
def test_every_emitted_object_passes_the_checker(
    schemas: SchemaSet,
    cdr_entries: list[Indicator],
    feed_entries: list[Indicator],
    cdr_behaviours: list[Behaviour],
    channel: ChannelSettings,
) -> None:
    sets = [
        IndicatorSet(source="cdr", fetched_at=LAST_SEEN, status="ok", entries=cdr_entries, behaviours=cdr_behaviours),
        IndicatorSet(source="feed:mixed", fetched_at=LAST_SEEN, status="ok", entries=feed_entries),
    ]
    result = render(sets, channel, schemas)  # raises PolicyCheckError on any checker error
    guard = NeverBlock()
    for f in result.files:
        assert errors_of(check_object(f.obj, schemas, guard=guard)) == [], f.filename
        assert len(f.obj["metadata"]["name"]) <= 63
        assert f.obj["metadata"]["labels"]["cdr-policy.io/channel"] == channel.name
    assert len({f.filename for f in result.files}) == len(result.files)
    keys = {(f.kind, f.obj["metadata"].get("namespace"), f.name) for f in result.files}
    assert len(keys) == len(result.files)
    groups = {f.name for f in result.files if f.kind == "CiliumCIDRGroup"}
    refs = {
        ref["cidrGroupRef"]
        for f in result.files
        if f.kind == "CiliumClusterwideNetworkPolicy"
        for item in f.obj["spec"]["egressDeny"]
        for ref in item.get("toCIDRSet", [])
        if "cidrGroupRef" in ref
    }
    assert refs == groups  # every group referenced, no dangling reference
    budget = result.report["budget"]
    assert budget["tetragon"]["used"] <= channel.tetragon_max_prefixes
    assert budget["cilium"]["used"] <= budget["cilium"]["limit"]
    assert file_bytes(render(sets, channel)) == file_bytes(result)

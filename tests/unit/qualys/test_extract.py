"""IOC extraction: where values come from, canonical forms, the never-block filter, provenance, behaviours."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from cdr_policy.guards import NeverBlock
from cdr_policy.models import IndicatorSet
from cdr_policy.qualys.extract import (
    BLOCKABLE_PORTS,
    REF_CAP,
    CdrAccumulator,
    canonical_domain,
    parse_address,
)
from cdr_policy.qualys.findings import Finding, parse_finding

NOW = datetime(2026, 1, 11, tzinfo=UTC)
TTL = timedelta(hours=24)
SCHEMA = Path(__file__).resolve().parents[3] / "layers/shared/cdr_policy/schemas/indicator-set.schema.json"


def finding(
    uuid: str = "u-1",
    category: str = "Network_Scanning_Utility",
    ts: str | None = "2026-01-10T12:00:00Z",
    **fields: object,
) -> Finding:
    f = parse_finding({"uuid": uuid, "threatCategory": category, "timestamp": ts, **fields})
    assert isinstance(f, Finding)
    return f


@pytest.fixture
def acc(guard: NeverBlock) -> CdrAccumulator:
    return CdrAccumulator(guard=guard, ttl=TTL, now=NOW)


def values(acc: CdrAccumulator, kind: str) -> list[str]:
    return sorted(v for k, v in acc.entries if k == kind)


def rejected(acc: CdrAccumulator) -> set[tuple[str, str]]:
    return {(r.value, r.reason.split(":")[0]) for r in acc.rejected_now.values()}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("45.61.136.7", "45.61.136.7"),
        (" 45.61.136.7 ", "45.61.136.7"),
        ("45.61.136.7:4444", "45.61.136.7"),
        ("45.61.136.7/32", "45.61.136.7"),
        ("[2a0b:f000::15]:443", "2a0b:f000::15"),
        ("2A0B:F000::15", "2a0b:f000::15"),
        ("::ffff:45.61.136.7", "45.61.136.7"),
        ("[::ffff:45.61.136.7]:80", "45.61.136.7"),
        ("fe80::1%eth0", "fe80::1"),
        ("2a0b:f000::15/128", "2a0b:f000::15"),
    ],
)
def test_parse_address(text: str, expected: str) -> None:
    assert parse_address(text) == ipaddress.ip_address(expected)


@pytest.mark.parametrize(
    "text",
    [
        "45.61.136.0/24",
        "i-0abc12345def67890",
        "arn:aws:ec2:us-east-1:1:instance/i-1",
        "999.1.1.1",
        "45.61.136.7:",
        "host:443",
        "",
        None,
        42,
        ["1.2.3.4"],
        "1.2.3.4" * 20,
    ],
)
def test_not_an_address(text: object) -> None:
    assert parse_address(text) is None


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Evil.Example.", "evil.example"),
        ("bücher-pool.example", "xn--bcher-pool-9db.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("a-b.c-d.example", "a-b.c-d.example"),
    ],
)
def test_canonical_domain(name: str, expected: str) -> None:
    assert canonical_domain(name) == (expected, None)


@pytest.mark.parametrize(
    "name",
    [
        "localhost_only",
        "nodots",
        "-bad.example",
        "bad-.example",
        "a..example",
        "1.2.3.999",
        "sp ace.example",
        "x" * 64 + ".example",
        ("a" * 60 + ".") * 5 + "example",
        "under_score.example",
        "",
        "   ",
        7,
    ],
)
def test_invalid_domain(name: str | int) -> None:
    domain, reason = canonical_domain(name)
    assert domain is None and reason


def test_ips_from_every_documented_field(acc: CdrAccumulator) -> None:
    acc.add(
        finding(
            destinationIp="45.61.136.7",
            triggeredResource="45.95.169.12:443",
            affectedResource="2a0b:f000::15",
        ),
        None,
    )
    acc.add(finding(uuid="u-2", triggeredResource="/usr/bin/curl", affectedResource="i-0abc"), None)
    assert values(acc, "ip") == ["2a0b:f000::15/128", "45.61.136.7/32", "45.95.169.12/32"]
    assert not acc.rejected_now  # resource ids are simply not addresses


def test_never_block_applied_with_reasons(acc: CdrAccumulator) -> None:
    for i, ip in enumerate(
        [
            "10.1.2.3",
            "169.254.169.254",
            "fd00:ec2::254",
            "8.8.8.8",
            "192.0.2.10",
            "100.64.1.1",
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "224.0.0.251",
            "2001:db8::1",
        ]
    ):
        acc.add(finding(uuid=f"u-{i}", destinationIp=ip), None)
    assert acc.entries == {}
    reasons = {r.value: r.reason for r in acc.rejected_now.values()}
    assert reasons["10.1.2.3/32"] == "inside never-block range: private range (RFC 1918)"
    assert reasons["169.254.169.254/32"].startswith("inside never-block range: link-local")
    assert reasons["fd00:ec2::254/128"].startswith("inside never-block range: unique local")
    assert reasons["8.8.8.8/32"] == "inside never-block range: public DNS resolver (Google)"
    assert reasons["192.0.2.10/32"].startswith("inside never-block range: documentation")
    assert reasons["100.64.1.1/32"].startswith("inside never-block range: carrier-grade NAT")
    assert len(reasons) == 11
    assert all(r.source == "cdr" for r in acc.rejected_now.values())


def test_ipv4_mapped_folds_into_the_ipv4_indicator(acc: CdrAccumulator) -> None:
    acc.add(finding(uuid="u-1", destinationIp="45.61.136.7"), None)
    acc.add(finding(uuid="u-2", destinationIp="::ffff:45.61.136.7"), None)
    assert values(acc, "ip") == ["45.61.136.7/32"]
    assert acc.entries[("ip", "45.61.136.7/32")].refs == ["u-1", "u-2"]


def test_destination_ip_that_is_not_an_address_is_rejected(acc: CdrAccumulator) -> None:
    acc.add(finding(destinationIp="evil.example"), None)
    acc.add(finding(uuid="u-2", destinationIp={"ip": "1.2.3.4"}), None)
    assert rejected(acc) == {
        ("evil.example", "destinationIp is not an IP address"),
        ("<dict>", "destinationIp is not an IP address"),
    }


def test_domains(acc: CdrAccumulator) -> None:
    acc.add(finding(networkInformation={"domain": "Pool.Example."}), None)
    acc.add(
        finding(
            uuid="u-2",
            networkInformation=[
                {"domain": "bücher.example"},
                {"domain": "metadata.google.internal"},
                {"domain": "not a domain"},
                {"other": 1},
                "junk",
            ],
        ),
        None,
    )
    acc.add(finding(uuid="u-3", networkInformation={"domain": "45.9.20.100"}), None)  # an address in the domain field
    acc.add(finding(uuid="u-4", networkInformation={"domain": "gateway.qg2.apps.qualys.com"}), None)
    acc.add(finding(uuid="u-5", networkInformation="pool.example"), None)  # not the documented shape: ignored
    assert values(acc, "domain") == ["pool.example", "xn--bcher-kva.example"]
    assert values(acc, "ip") == ["45.9.20.100/32"]
    assert rejected(acc) == {
        ("metadata.google.internal", "never-block domain"),
        ("gateway.qg2.apps.qualys.com", "never-block domain"),
        ("not a domain", "domain needs at least two labels and at most 253 characters"),
    }


@pytest.mark.parametrize("port", sorted(BLOCKABLE_PORTS))
def test_blockable_ports(acc: CdrAccumulator, port: int) -> None:
    acc.add(finding(destinationPort=port), None)
    assert values(acc, "port") == [f"tcp/{port}"]


def test_other_ports_are_reported_not_blocked(acc: CdrAccumulator) -> None:
    for i, port in enumerate([443, 53.0, "80", 70000, 0, "https", True]):
        acc.add(finding(uuid=f"u-{i}", destinationPort=port), None)
    acc.add(finding(uuid="u-9", destinationPort="4444"), None)
    assert values(acc, "port") == ["tcp/4444"]
    assert rejected(acc) == {
        ("tcp/443", "not a known backdoor or mining-pool port"),
        ("tcp/53", "not a known backdoor or mining-pool port"),
        ("tcp/80", "not a known backdoor or mining-pool port"),
        ("70000", "destinationPort is not a port number"),
        ("0", "destinationPort is not a port number"),
        ("https", "destinationPort is not a port number"),
        ("True", "destinationPort is not a port number"),
    }


def test_provenance_and_expiry(acc: CdrAccumulator) -> None:
    acc.add(finding(uuid="u-2", ts="2026-01-10T15:00:00Z", destinationIp="45.61.136.7"), None)
    acc.add(
        finding(
            uuid="u-1",
            category="Networking_C2_Communication",
            ts="2026-01-10T09:30:00.750Z",
            destinationIp="45.61.136.7",
        ),
        None,
    )
    entry = acc.entries[("ip", "45.61.136.7/32")]
    assert entry.kind == "ip" and entry.sources == ["cdr"]
    assert entry.category == "Network_Scanning_Utility"  # the first finding that produced it
    assert entry.refs == ["u-2", "u-1"]
    assert (entry.first_seen, entry.last_seen) == ("2026-01-10T09:30:00Z", "2026-01-10T15:00:00Z")
    assert entry.expires_at == "2026-01-11T15:00:00Z"  # last_seen + ttl


def test_missing_or_future_time_uses_the_fetch_time(acc: CdrAccumulator) -> None:
    acc.add(finding(uuid="u-1", ts=None, destinationIp="45.61.136.7"), None)
    acc.add(finding(uuid="u-2", ts="2030-01-01T00:00:00Z", destinationIp="45.95.169.12"), None)
    for key in (("ip", "45.61.136.7/32"), ("ip", "45.95.169.12/32")):
        assert acc.entries[key].last_seen == "2026-01-11T00:00:00Z"
        assert acc.entries[key].expires_at == "2026-01-12T00:00:00Z"


def test_refs_are_capped_to_the_most_recent(acc: CdrAccumulator) -> None:
    for i in range(REF_CAP + 10):
        acc.add(finding(uuid=f"u-{i:03d}", destinationIp="45.61.136.7"), "network_scanning")
    entry = acc.entries[("ip", "45.61.136.7/32")]
    assert entry.refs == [f"u-{i:03d}" for i in range(10, REF_CAP + 10)]
    assert acc.behaviours["network_scanning"].refs == entry.refs
    assert acc.behaviours["network_scanning"].categories == {"Network_Scanning_Utility": REF_CAP + 10}


def test_behaviours(acc: CdrAccumulator) -> None:
    acc.add(
        finding(
            uuid="u-1",
            category="Cloud_Credentials_Accessed_By_Network_Utility",
            processName="wget",
            ts="2026-01-10T10:00:00Z",
        ),
        "cloud_credentials",
    )
    acc.add(
        finding(
            uuid="u-2",
            category="Cloud_Credentials_Accessed_By_Network_Utility",
            processName="curl",
            ts="2026-01-10T08:00:00Z",
        ),
        "cloud_credentials",
    )
    acc.add(
        finding(
            uuid="u-3",
            category="Cloud_credentials_accessed_by_network_utility_T1552_005",
            processName="curl",
            ts="2026-01-10T09:00:00Z",
        ),
        "cloud_credentials",
    )
    acc.add(finding(uuid="u-4", category="Unknown"), None)
    assert list(acc.behaviours) == ["cloud_credentials"]
    b = acc.behaviours["cloud_credentials"]
    assert b.categories == {
        "Cloud_Credentials_Accessed_By_Network_Utility": 2,
        "Cloud_credentials_accessed_by_network_utility_T1552_005": 1,
    }
    assert b.processes == ["curl", "wget"]
    assert b.refs == ["u-1", "u-2", "u-3"]
    assert (b.first_seen, b.last_seen, b.expires_at) == (
        "2026-01-10T08:00:00Z",
        "2026-01-10T10:00:00Z",
        "2026-01-11T10:00:00Z",
    )


def test_seed_drops_what_expired(guard: NeverBlock) -> None:
    old = CdrAccumulator(guard=guard, ttl=TTL, now=NOW)
    old.add(finding(uuid="u-1", ts="2026-01-10T01:00:00Z", destinationIp="45.61.136.7"), "network_scanning")
    old.add(finding(uuid="u-2", ts="2026-01-10T20:00:00Z", destinationIp="45.95.169.12"), None)
    old.add(finding(uuid="u-3", ts="2026-01-10T01:00:00Z", destinationIp="10.0.0.1"), None)
    stored = old.indicator_set(NOW, {})
    later = CdrAccumulator(guard=guard, ttl=TTL, now=NOW + timedelta(hours=2))
    later.seed(IndicatorSet.from_dict(stored.to_dict()), dict(old.rejections))
    assert list(later.entries) == [("ip", "45.95.169.12/32")]
    assert later.behaviours == {}
    assert later.expired == 2
    assert later.alive_rejections() == []  # the 10.0.0.1 rejection aged out with its TTL


def test_indicator_set_is_valid_and_deterministic(guard: NeverBlock) -> None:
    def build(order: list[int]) -> IndicatorSet:
        acc = CdrAccumulator(guard=guard, ttl=TTL, now=NOW)
        items = [
            finding(
                uuid="u-1",
                destinationIp="45.61.136.7",
                destinationPort=4444,
                networkInformation={"domain": "c2.example"},
            ),
            finding(uuid="u-2", destinationIp="2a0b:f000::15", destinationPort=443),
            finding(uuid="u-3", destinationIp="10.0.0.1", category="Crypto_Mining", processName="xmrig"),
        ]
        for i in order:
            acc.add(items[i], "network_scanning" if i < 2 else "crypto_mining")
        return acc.indicator_set(NOW, {"checkpoint": "x"})

    a, b = build([0, 1, 2]), build([2, 1, 0])
    da, db = a.to_dict(), b.to_dict()
    assert [e["value"] for e in da["entries"]] == [
        "c2.example",
        "2a0b:f000::15/128",
        "45.61.136.7/32",
        "tcp/4444",
    ]
    assert [e["value"] for e in da["entries"]] == [e["value"] for e in db["entries"]]
    assert [x["rule"] for x in da["behaviours"]] == ["crypto_mining", "network_scanning"]
    assert da["stats"] == {"checkpoint": "x", "ips": 2, "domains": 1, "ports": 1, "behaviours": 2}
    assert da["status"] == "ok" and da["source"] == "cdr"
    jsonschema.validate(da, json.loads(SCHEMA.read_text()))
    assert IndicatorSet.from_dict(da).to_dict() == da
    empty = CdrAccumulator(guard=guard, ttl=TTL, now=NOW).indicator_set(NOW, {})
    assert empty.status == "empty"


def test_report_only_findings_change_nothing(acc: CdrAccumulator) -> None:
    acc.add(finding(uuid="u-1", destinationIp="45.61.136.7", destinationPort=443), "network_scanning")
    entries = {k: v.to_dict() for k, v in acc.entries.items()}
    behaviours = {k: v.to_dict() for k, v in acc.behaviours.items()}
    ledger = dict(acc.rejections)
    acc.touched.clear()
    acc.rejected_now.clear()
    acc.add(
        finding(
            uuid="u-1",
            ts="2026-01-10T20:00:00Z",
            destinationIp="45.61.136.7",
            destinationPort=443,
            networkInformation={"domain": "new.example"},
        ),
        "network_scanning",
        merge=False,
    )
    assert {k: v.to_dict() for k, v in acc.entries.items()} == entries
    assert {k: v.to_dict() for k, v in acc.behaviours.items()} == behaviours
    assert acc.rejections == ledger
    assert acc.touched == {("ip", "45.61.136.7/32"), ("domain", "new.example")}
    assert [r.value for r in acc.rejected_now.values()] == ["tcp/443"]


POD = {
    "io.kubernetes.pod.namespace": "shop",
    "io.kubernetes.pod.name": "web-7c9d8f6b5-x2k4q",
    "io.kubernetes.pod.uid": "0c8f2e0a-1111-2222-3333-444455556666",
    "app": "web",
    "app.kubernetes.io/part-of": "shop",
    "pod-template-hash": "7c9d8f6b5",
}


def test_sightings_record_the_workload_of_each_process_name(acc: CdrAccumulator) -> None:
    acc.add(finding(uuid="u-1", processName="/tmp/.x/nginx", podLabels=POD, deploymentName="web"), "crypto_mining")
    acc.add(finding(uuid="u-2", processName="nginx", podLabels=POD, deploymentName="web"), "crypto_mining")
    acc.add(finding(uuid="u-3", processName="nginx"), "crypto_mining")  # no workload named
    acc.add(finding(uuid="u-4", processName="nginx -c /tmp/x"), "crypto_mining")  # not a bare name
    b = acc.behaviours["crypto_mining"]
    assert [s.to_dict() for s in b.sightings] == [
        {
            "process": "nginx",
            "namespace": "shop",
            "deployment": "web",
            "labels": {"app": "web", "app.kubernetes.io/part-of": "shop"},  # runtime and per-pod labels left out
            "findings": 2,
            "last_seen": "2026-01-10T12:00:00Z",
            "expires_at": "2026-01-11T12:00:00Z",
        },
        {
            "process": "nginx",
            "namespace": None,
            "deployment": None,
            "labels": None,
            "findings": 1,
            "last_seen": "2026-01-10T12:00:00Z",
            "expires_at": "2026-01-11T12:00:00Z",
        },
    ]
    stored = acc.indicator_set(NOW, {}).to_dict()
    jsonschema.validate(stored, json.loads(SCHEMA.read_text()))
    assert IndicatorSet.from_dict(stored).to_dict() == stored


@pytest.mark.parametrize(
    "pod_labels",
    [
        {**POD, "app": "web; rm -rf /"},  # a value Kubernetes would refuse
        {**POD, "bad key!": "x"},
        {**POD, **{f"team.example/l{i}": "x" for i in range(16)}},  # more than 16 own labels
        {"io.kubernetes.pod.namespace": "shop", "pod-template-hash": "abc"},  # no label of its own
        ["app=web"],
        "app=web",
    ],
)
def test_labels_that_would_widen_or_break_a_selector_are_not_stored(acc: CdrAccumulator, pod_labels: object) -> None:
    acc.add(finding(processName="nginx", podLabels=pod_labels), "crypto_mining")
    [s] = acc.behaviours["crypto_mining"].sightings
    assert s.labels is None
    assert s.namespace == ("shop" if isinstance(pod_labels, dict) else None)


def test_a_namespace_that_is_not_a_kubernetes_name_is_not_stored(acc: CdrAccumulator) -> None:
    acc.add(
        finding(processName="nginx", podLabels={**POD, "io.kubernetes.pod.namespace": "Shop/../x"}), "crypto_mining"
    )
    [s] = acc.behaviours["crypto_mining"].sightings
    assert s.namespace is None and s.labels == {"app": "web", "app.kubernetes.io/part-of": "shop"}


def test_sightings_expire_with_their_findings(guard: NeverBlock) -> None:
    old = CdrAccumulator(guard=guard, ttl=TTL, now=NOW)
    old.add(finding(uuid="u-1", ts="2026-01-10T01:00:00Z", processName="kxmr", podLabels=POD), "crypto_mining")
    old.add(finding(uuid="u-2", ts="2026-01-10T20:00:00Z", processName="kxmr2", podLabels=POD), "crypto_mining")
    stored = old.indicator_set(NOW, {})
    later = CdrAccumulator(guard=guard, ttl=TTL, now=NOW + timedelta(hours=2))
    later.seed(IndicatorSet.from_dict(stored.to_dict()), {})
    assert [s.process for s in later.behaviours["crypto_mining"].sightings] == ["kxmr2"]

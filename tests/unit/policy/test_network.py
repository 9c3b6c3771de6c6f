"""Network blocklists: Tetragon (tcp_connect / security_socket_connect) and Cilium (CCG + CCNP)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import pytest

from cdr_policy.errors import ConfigError
from cdr_policy.models import IndicatorSet
from cdr_policy.policy import cilium, tetragon
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet, check_object, errors_of
from cdr_policy.policy.naming import COMPONENT_CIDR_GROUP
from cdr_policy.policy.output import ObjectMeta

from .factories import by_file, cdr_set, feed_set, indicator, render

CDR_IPS = ["45.33.32.0/24", "45.33.33.7/32", "2a00:1450:4001::/48"]
FEED_IPS = [f"185.220.101.{i}/32" for i in range(0, 40, 2)]


def _sets(ports: Sequence[str] = ("tcp/4444", "udp/5353")) -> list[IndicatorSet]:
    cdr = cdr_set([indicator(v) for v in CDR_IPS] + [indicator(p, "port") for p in ports])
    return [cdr, feed_set("tor-exit", FEED_IPS, "tor")]


def _values(obj: dict[str, Any], operator: str) -> list[str]:
    return [
        v
        for kp in obj["spec"]["kprobes"]
        for s in kp["selectors"]
        for m in s.get("matchArgs", [])
        if m["operator"] == operator
        for v in m["values"]
    ]


def test_original_file_names_and_order() -> None:
    result = render(_sets())
    assert [f.filename for f in result.files] == [
        "cilium-cdr-blocklist-cidrs-001.yaml",
        "cilium-threat-intel-blocklist-cidrs-001.yaml",
        "cdr-dynamic-blocklist.yaml",
        "cilium-cdr-blocklist.yaml",
        "cilium-threat-intel-blocklist.yaml",
        "threat-intel-blocklist.yaml",
    ]


def test_tcp_connect_blocklist_has_one_daddr_filter_with_mapped_twins(schemas: SchemaSet) -> None:
    files = by_file(render(_sets(), ChannelSettings(name="prod", action="Sigkill"), schemas))
    cdr = files["cdr-dynamic-blocklist.yaml"]
    [hook] = cdr["spec"]["kprobes"]
    assert hook["call"] == "tcp_connect" and hook["syscall"] is False and hook["args"] == [{"index": 0, "type": "sock"}]
    address, ports = hook["selectors"]
    assert address["matchArgs"] == [
        {
            "index": 0,
            "operator": "DAddr",
            "values": [
                "45.33.32.0/24",
                "45.33.33.7/32",
                "2a00:1450:4001::/48",
                "::ffff:45.33.32.0/120",
                "::ffff:45.33.33.7/128",
            ],
        }
    ]
    assert address["matchActions"] == [{"action": "Sigkill"}]
    # Ports are audited unless the channel denies them towards the world; UDP is invisible to tcp_connect.
    assert ports["matchArgs"] == [{"index": 0, "operator": "DPort", "values": ["4444"]}]
    assert ports["matchActions"] == [{"action": "Post", "rateLimit": "1m"}]
    assert "NotDAddr" not in str(files)
    feed = files["threat-intel-blocklist.yaml"]
    [feed_hook] = feed["spec"]["kprobes"]
    [selector] = feed_hook["selectors"]  # no ports in the threat-intel list
    values = selector["matchArgs"][0]["values"]
    collapsed = [str(n) for n in ipaddress.collapse_addresses(ipaddress.IPv4Network(v) for v in FEED_IPS)]
    v4 = [v for v in values if not v.startswith("::ffff:")]
    assert v4 == collapsed and len(values) == 2 * len(collapsed)
    assert [
        f"::ffff:{ipaddress.ip_network(v).network_address}/{96 + ipaddress.ip_network(v).prefixlen}" for v in v4
    ] == [v for v in values if v.startswith("::ffff:")]


def test_security_socket_connect_variant_refuses_the_connect(schemas: SchemaSet) -> None:
    channel = ChannelSettings(
        name="prod",
        action="Override",
        tetragon_network_hook="security_socket_connect",
        deny_ports_to_world=True,
    )
    obj = by_file(render(_sets(), channel, schemas))["cdr-dynamic-blocklist.yaml"]
    [hook] = obj["spec"]["kprobes"]
    assert hook["call"] == "security_socket_connect"
    assert hook["args"] == [{"index": 0, "type": "socket"}, {"index": 1, "type": "sockaddr"}]
    address, tcp, udp = hook["selectors"]
    assert address["matchArgs"][0]["operator"] == "SAddr" and address["matchArgs"][0]["index"] == 1
    assert address["matchActions"] == [{"action": "Override", "argError": -1}]
    assert tcp["matchArgs"] == [
        {"index": 0, "operator": "Protocol", "values": ["IPPROTO_TCP"]},
        {"index": 1, "operator": "SPort", "values": ["4444"]},
    ]
    assert udp["matchArgs"][0]["values"] == ["IPPROTO_UDP"] and udp["matchActions"][0]["action"] == "Override"
    assert {"name": "disable-kprobe-multi", "value": "1"} in obj["spec"]["options"]


def test_override_channel_falls_back_to_sigkill_on_tcp_connect() -> None:
    obj = by_file(render(_sets(), ChannelSettings(name="prod", action="Override")))["cdr-dynamic-blocklist.yaml"]
    assert obj["spec"]["kprobes"][0]["selectors"][0]["matchActions"] == [{"action": "Sigkill"}]
    assert {"name": "disable-kprobe-multi", "value": "1"} not in obj["spec"]["options"]


def test_large_tetragon_lists_are_split_into_parts(schemas: SchemaSet) -> None:
    prefixes = [f"45.{i // 256}.{i % 256}.0/24" for i in range(0, 2 * tetragon.PREFIXES_PER_POLICY + 10, 2)]
    channel = ChannelSettings(name="prod", action="Sigkill")
    files = tetragon.network_blocklist(
        channel,
        prefixes=prefixes,
        meta=ObjectMeta(labels={"app.kubernetes.io/managed-by": "cdr-policy"}),
        purpose="threat-intel-blocklist",
        base="threat-intel-blocklist",
        message="m",
        tags=["t"],
    )
    assert [f.filename for f in files] == ["threat-intel-blocklist.yaml", "threat-intel-blocklist-2.yaml"]
    assert [f.entries for f in files] == [tetragon.PREFIXES_PER_POLICY, 5]
    assert files[1].obj["metadata"]["annotations"]["cdr-policy.io/shard"] == "2/2"
    for f in files:
        assert errors_of(check_object(f.obj, schemas)) == []
    assert sum(len(_values(f.obj, "DAddr")) for f in files) == 2 * len(prefixes)


def test_cilium_policy_references_groups_and_never_default_denies(schemas: SchemaSet) -> None:
    files = by_file(render(_sets(), ChannelSettings(name="prod", cilium_version="1.17"), schemas))
    group = files["cilium-cdr-blocklist-cidrs-001.yaml"]
    assert group["apiVersion"] == "cilium.io/v2alpha1"
    assert group["spec"]["externalCIDRs"] == CDR_IPS
    assert group["metadata"]["labels"]["cdr-policy.io/component"] == COMPONENT_CIDR_GROUP
    policy = files["cilium-cdr-blocklist.yaml"]
    assert policy["spec"]["enableDefaultDeny"] == {"egress": False, "ingress": False}
    assert policy["spec"]["endpointSelector"] == {}
    assert policy["spec"]["egressDeny"] == [{"toCIDRSet": [{"cidrGroupRef": group["metadata"]["name"]}]}]
    assert "toFQDNs" not in str(files)


def test_ccg_api_version_follows_the_channel() -> None:
    assert cilium.group_api_version(ChannelSettings(name="a", cilium_version="1.17.3")) == "cilium.io/v2alpha1"
    assert cilium.group_api_version(ChannelSettings(name="a", cilium_version="1.18")) == "cilium.io/v2"
    files = by_file(render(_sets(), ChannelSettings(name="prod", cilium_version="1.19")))
    assert files["cilium-cdr-blocklist-cidrs-001.yaml"]["apiVersion"] == "cilium.io/v2"


def test_cilium_before_1_17_uses_plain_cidrs_within_a_small_budget(schemas: SchemaSet) -> None:
    channel = ChannelSettings(name="old", cilium_version="1.16.5")
    result = render(_sets(), channel, schemas)
    files = by_file(result)
    assert not any(f.kind == "CiliumCIDRGroup" for f in result.files)
    assert files["cilium-cdr-blocklist.yaml"]["spec"]["egressDeny"] == [{"toCIDRSet": [{"cidr": v} for v in CDR_IPS]}]
    assert result.report["budget"]["cilium"]["limit"] == cilium.LEGACY_MAX_PREFIXES


def test_cilium_before_1_16_is_refused() -> None:
    with pytest.raises(ConfigError, match="enableDefaultDeny"):
        render(_sets(), ChannelSettings(name="old", cilium_version="1.15"))


def test_ports_are_denied_to_the_world_only_when_configured(schemas: SchemaSet) -> None:
    files = by_file(render(_sets(), ChannelSettings(name="prod")))
    assert "toEntities" not in str(files["cilium-cdr-blocklist.yaml"])
    many = [f"tcp/{p}" for p in range(20000, 20045)]
    channel = ChannelSettings(name="prod", deny_ports_to_world=True)
    result = render(_sets(ports=many), channel, schemas)
    items = by_file(result)["cilium-cdr-blocklist.yaml"]["spec"]["egressDeny"]
    assert list(items[0]) == ["toCIDRSet"]
    assert [len(i["toPorts"][0]["ports"]) for i in items[1:]] == [40, 5]
    assert all(i["toEntities"] == ["world"] for i in items[1:])
    assert result.report["ports"]["cilium"] == "deny towards the world"


def test_never_block_ports_are_refused() -> None:
    result = render(
        _sets(ports=("tcp/443", "udp/53", "tcp/4444")), ChannelSettings(name="prod", deny_ports_to_world=True)
    )
    reasons = {r["value"]: r["reason"] for r in result.report["rejected"]}
    assert reasons["tcp/443"] == "never-block port: HTTPS" and reasons["udp/53"] == "never-block port: DNS"
    assert result.report["ports"]["values"] == ["tcp/4444"]


def test_cilium_scoping_by_namespace_and_labels(schemas: SchemaSet) -> None:
    channel = ChannelSettings(name="prod", namespaces=("web", "api"), pod_labels={"tier": "front"})
    files = by_file(render(_sets(), channel, schemas))
    assert files["cilium-cdr-blocklist.yaml"]["spec"]["endpointSelector"] == {
        "matchLabels": {"tier": "front"},
        "matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["api", "web"]}],
    }
    assert "cdr-dynamic-blocklist-api.yaml" in files and "cdr-dynamic-blocklist-web.yaml" in files


def test_groups_are_sharded(schemas: SchemaSet) -> None:
    prefixes = [f"45.{i // 256}.{i % 256}.0/24" for i in range(0, 2 * cilium.PREFIXES_PER_GROUP + 2, 2)]
    channel = ChannelSettings(name="prod")
    meta = ObjectMeta(labels={"app.kubernetes.io/managed-by": "cdr-policy"})
    files = cilium.blocklist(
        channel, prefixes=prefixes, meta=meta, group_meta=meta, purpose="feed", base="b", description="d"
    )
    assert [f.filename for f in files] == ["b-cidrs-001.yaml", "b-cidrs-002.yaml", "b.yaml"]
    assert [f.entries for f in files] == [cilium.PREFIXES_PER_GROUP, 1, len(prefixes)]
    refs = files[-1].obj["spec"]["egressDeny"][0]["toCIDRSet"]
    assert refs == [{"cidrGroupRef": files[0].name}, {"cidrGroupRef": files[1].name}]
    for f in files:
        assert errors_of(check_object(f.obj, schemas)) == []
    assert (
        cilium.blocklist(channel, prefixes=[], meta=meta, group_meta=meta, purpose="f", base="b", description="d") == []
    )

"""Cilium blocklists: a CiliumClusterwideNetworkPolicy with ``egressDeny`` to CiliumCIDRGroups.

Following docs/ENFORCEMENT.md §2.7:

- Prefixes go into ``CiliumCIDRGroup``s of at most 5,000 entries (~235 KiB in the worst case of
  full-length IPv6 /128s, far under etcd's 1.5 MiB and our 512 KiB ceiling); on Cilium >= 1.17 a
  group costs about one security identity whatever its size.
- One CCNP per blocklist (``cdr`` and ``threat-intel``) references its groups with
  ``toCIDRSet: [{cidrGroupRef: …}]`` in a single L3-only ``egressDeny`` item and sets
  ``enableDefaultDeny: {egress: false, ingress: false}``, so that the selected endpoints do not fall
  into default-deny (Cilium >= 1.16). Groups are listed before the policies in the output, so
  they are applied first and deleted last (a dangling reference selects nothing from 1.16).
- ``CiliumCIDRGroup`` is ``cilium.io/v2alpha1`` before 1.18 and ``cilium.io/v2`` from 1.18.
- **Before 1.17** every prefix is its own identity and policy-map entry, whatever the grouping
  (CCG references were translated into plain CIDR rules). The fallback therefore writes the
  prefixes as plain ``toCIDRSet: [{cidr: …}]`` entries in the policy itself and caps the budget
  at ``LEGACY_MAX_PREFIXES`` (1,000, the original operator's cap), well inside the default
  16,384-entry policy map it shares with the endpoints' other policies.
- **Before 1.16** there is no ``enableDefaultDeny``: a deny-only policy would cut every selected
  pod off. Such channels are refused with a ``ConfigError``.
- Scope: ``endpointSelector: {}`` (every endpoint) or the channel's pod labels and namespaces
  (``k8s:io.kubernetes.pod.namespace In [...]``).
- Ports: port indicators become ``toEntities: [world]`` + ``toPorts`` items (at most 40 ports per
  entry) only when the channel sets ``deny_ports_to_world``: such a rule denies the port towards
  the whole internet. Otherwise they are left to the Tetragon audit selector and reported.
- Every object carries the channel's declared version (annotation ``cdr-policy.io/cilium-version``):
  the agent's pre-flight compares it with what the cluster serves before applying anything.
- Never ``toFQDNs`` in ``egressDeny`` (the field does not exist there; the API server would drop it
  and leave an empty, default-deny rule). Domains are handled in ``cdr_policy.policy.domains``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdr_policy.errors import ConfigError
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.naming import (
    CILIUM_VERSION,
    COMPONENT_CIDR_GROUP,
    COMPONENT_KEY,
    SHARD,
    assign_name,
    group_filename,
)
from cdr_policy.policy.output import ObjectMeta, PolicyFile
from cdr_policy.policy.tetragon import NAMESPACE_LABEL

POLICY_API_VERSION = "cilium.io/v2"
PREFIXES_PER_GROUP = 5_000
LEGACY_MAX_PREFIXES = 1_000
MAX_PORTS_PER_RULE = 40


def require_supported(channel: ChannelSettings) -> None:
    if channel.cilium < (1, 16):
        raise ConfigError(
            f"channel {channel.name}: Cilium {channel.cilium_version} has no enableDefaultDeny, "
            "so a deny-only policy would put every selected pod into default-deny; "
            "upgrade to Cilium >= 1.16 or set cilium_version"
        )


def group_api_version(channel: ChannelSettings) -> str:
    return "cilium.io/v2" if channel.cilium >= (1, 18) else "cilium.io/v2alpha1"


def uses_groups(channel: ChannelSettings) -> bool:
    return channel.cilium >= (1, 17)


def prefix_limit(channel: ChannelSettings) -> int:
    """The channel's Cilium budget, capped for the pre-1.17 fallback."""
    if uses_groups(channel):
        return channel.cilium_max_prefixes
    return min(channel.cilium_max_prefixes, LEGACY_MAX_PREFIXES)


def _annotations(channel: ChannelSettings, annotations: dict[str, str]) -> dict[str, str]:
    return dict(sorted({**annotations, CILIUM_VERSION: channel.cilium_version}.items()))


def endpoint_selector(channel: ChannelSettings) -> dict[str, Any]:
    selector: dict[str, Any] = {}
    if channel.pod_labels:
        selector["matchLabels"] = dict(sorted(channel.pod_labels.items()))
    if channel.namespaces:
        selector["matchExpressions"] = [
            {"key": NAMESPACE_LABEL, "operator": "In", "values": sorted(channel.namespaces)}
        ]
    return selector


def _port_items(ports: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    entries = [{"port": str(number), "protocol": protocol.upper()} for protocol, number in ports]
    return [
        {"toEntities": ["world"], "toPorts": [{"ports": entries[i : i + MAX_PORTS_PER_RULE]}]}
        for i in range(0, len(entries), MAX_PORTS_PER_RULE)
    ]


def blocklist(
    channel: ChannelSettings,
    *,
    prefixes: Sequence[str],
    ports: Sequence[tuple[str, int]] = (),
    meta: ObjectMeta,
    group_meta: ObjectMeta,
    purpose: str,
    base: str,
    description: str,
) -> list[PolicyFile]:
    """CCG shards (first) and the CCNP that denies egress to them; ``ports`` (``("tcp", 4444)``)
    are denied towards the world only with ``deny_ports_to_world``. Empty input, no objects."""
    require_supported(channel)
    ports = list(ports) if channel.deny_ports_to_world else []
    if not prefixes and not ports:
        return []
    files: list[PolicyFile] = []
    items: list[dict[str, Any]] = []
    if prefixes and uses_groups(channel):
        refs = []
        chunks = [list(prefixes[i : i + PREFIXES_PER_GROUP]) for i in range(0, len(prefixes), PREFIXES_PER_GROUP)]
        for index, chunk in enumerate(chunks, start=1):
            group = _group(channel, chunk, group_meta, index, len(chunks), f"{purpose}-{index:03d}")
            files.append(
                PolicyFile(group_filename(base, index), group["kind"], group["metadata"]["name"], group, len(chunk))
            )
            refs.append({"cidrGroupRef": group["metadata"]["name"]})
        items.append({"toCIDRSet": refs})
    elif prefixes:
        items.append({"toCIDRSet": [{"cidr": p} for p in prefixes]})
    items.extend(_port_items(ports))
    policy: dict[str, Any] = {
        "apiVersion": POLICY_API_VERSION,
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {
            "name": "",
            "labels": dict(meta.labels),
            "annotations": _annotations(channel, meta.annotations),
        },
        "spec": {
            "description": description,
            "endpointSelector": endpoint_selector(channel),
            "enableDefaultDeny": {"egress": False, "ingress": False},
            "egressDeny": items,
        },
    }
    name = assign_name(policy, f"{purpose}-blocklist")
    files.append(PolicyFile(f"{base}.yaml", policy["kind"], name, policy, len(prefixes) + len(ports)))
    return files


def _group(
    channel: ChannelSettings, chunk: list[str], meta: ObjectMeta, index: int, total: int, purpose: str
) -> dict[str, Any]:
    labels = dict(meta.labels)
    labels[COMPONENT_KEY] = COMPONENT_CIDR_GROUP
    annotations = {**meta.annotations, SHARD: f"{index}/{total}"}
    group = {
        "apiVersion": group_api_version(channel),
        "kind": "CiliumCIDRGroup",
        "metadata": {"name": "", "labels": labels, "annotations": _annotations(channel, annotations)},
        "spec": {"externalCIDRs": chunk},
    }
    assign_name(group, purpose)
    return group

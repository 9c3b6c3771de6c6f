"""The object kinds the agent applies and prunes, and the order it does so in.

CiliumCIDRGroups go first and are deleted last: a policy whose ``cidrGroupRef`` points at a missing
group selects nothing (Cilium >= 1.16) or everything (before 1.16), so the groups must exist before
any policy that references them and outlive it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdr_policy.policy.naming import CHANNEL_KEY, MANAGED_BY, MANAGED_BY_KEY


@dataclass(frozen=True)
class Kind:
    name: str
    plural: str
    namespaced: bool
    # apiVersions the agent accepts, in the order it tries them when listing (newest first).
    api_versions: tuple[str, ...]
    # Apply order: lower first; deletes run in the reverse order.
    rank: int
    # Tetragon unloads a policy before loading its update (tetragon#4322).
    tetragon: bool = False


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("CiliumCIDRGroup", "ciliumcidrgroups", False, ("cilium.io/v2", "cilium.io/v2alpha1"), 0),
        Kind("CiliumClusterwideNetworkPolicy", "ciliumclusterwidenetworkpolicies", False, ("cilium.io/v2",), 1),
        Kind("CiliumNetworkPolicy", "ciliumnetworkpolicies", True, ("cilium.io/v2",), 1),
        Kind("TracingPolicy", "tracingpolicies", False, ("cilium.io/v1alpha1",), 1, tetragon=True),
        Kind(
            "TracingPolicyNamespaced",
            "tracingpoliciesnamespaced",
            True,
            ("cilium.io/v1alpha1",),
            1,
            tetragon=True,
        ),
    )
}


# What the agent stamps on every object it applies (from a verified bundle): its generation and
# expiry, and a hash of its content.
GENERATION_ANNOTATION = "cdr-policy.io/generation"
BUNDLE_EXPIRES_ANNOTATION = "cdr-policy.io/bundle-expires-at"
CONTENT_HASH_ANNOTATION = "cdr-policy.io/content-hash"


def ownership_labels(channel: str) -> dict[str, str]:
    """The labels that mark an object as ours; the agent prunes only objects carrying all of them."""
    return {MANAGED_BY_KEY: MANAGED_BY, CHANNEL_KEY: channel}


def stamped_by_agent(obj: Mapping[str, Any], channel: str) -> bool:
    """An object this channel's agent applied (its stamps are there), whatever its labels say now: one
    whose ownership labels were stripped is still ours to repair, never another owner's to leave."""
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    labels = metadata.get("labels") or {}
    other_channel = labels.get(CHANNEL_KEY) not in (None, channel)
    return GENERATION_ANNOTATION in annotations and CONTENT_HASH_ANNOTATION in annotations and not other_channel

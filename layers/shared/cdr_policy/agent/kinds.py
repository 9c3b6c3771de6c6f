"""The object kinds the agent applies and prunes, and the order it does so in.

CiliumCIDRGroups go first and are deleted last: a policy whose ``cidrGroupRef`` points at a missing
group selects nothing (Cilium >= 1.16) or everything (before 1.16), so the groups must exist before
any policy that references them and outlive it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdr_policy.bundle.manifest import VerificationError
from cdr_policy.policy.naming import CHANNEL_KEY, MANAGED_BY, MANAGED_BY_KEY, is_dns_label, is_dns_subdomain


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


def ownership_labels(channel: str) -> dict[str, str]:
    """The labels that mark an object as ours; the agent prunes only objects carrying all of them."""
    return {MANAGED_BY_KEY: MANAGED_BY, CHANNEL_KEY: channel}


def kind_of(obj: Mapping[str, Any]) -> Kind:
    """The supported kind of ``obj``; VerificationError (``bad_object``) for anything else."""
    kind = KINDS.get(obj.get("kind", ""))
    name = (obj.get("metadata") or {}).get("name")
    if kind is None:
        raise VerificationError(
            "bad_object",
            f"{obj.get('kind')}/{name}: kind not supported (supported: {', '.join(sorted(KINDS))})",
        )
    if obj.get("apiVersion") not in kind.api_versions:
        raise VerificationError(
            "bad_object",
            f"{kind.name}/{name}: apiVersion {obj.get('apiVersion')!r} is not one of {', '.join(kind.api_versions)}",
        )
    if not is_dns_subdomain(name):
        raise VerificationError("bad_object", f"{kind.name}/{name!r}: metadata.name is not a DNS-1123 subdomain")
    namespace = (obj.get("metadata") or {}).get("namespace")
    if namespace is not None and not is_dns_label(namespace):
        raise VerificationError(
            "bad_object", f"{kind.name}/{name}: metadata.namespace {namespace!r} is not a DNS label"
        )
    has_namespace = bool(namespace)
    if kind.namespaced != has_namespace:
        need = "needs" if kind.namespaced else "must not have"
        raise VerificationError("bad_object", f"{kind.name}/{name}: {need} metadata.namespace")
    return kind

"""Cluster pre-flight: before anything is applied, check that the cluster will do with the Cilium
objects what they say. ``reconcile`` runs it (the one apply path of the sync agent and of the CLI's
``--apply``) whenever the applier can read the cluster (``ClusterReader``: the Kubernetes applier; a
directory has no cluster to ask). Tetragon objects are never held back by it.

What is read (the agent's RBAC grants exactly this: ``get`` on the ``cilium-config`` ConfigMap in
the Cilium namespace, plus the CustomResourceDefinitions it already lists):

1. ``enable-non-default-deny-policies`` in ``cilium-config`` (namespace ``CDR_POLICY_CILIUM_NAMESPACE``,
   default ``kube-system``). When it is off, Cilium ignores ``enableDefaultDeny: {egress: false}``
   and forces default-deny on every endpoint a policy selects (``Rule.Sanitize``): our deny
   policies, which select every pod, would cut all egress, DNS and in-cluster traffic included. The
   Cilium objects are refused and the deny policies this owner already has in the cluster are
   **withdrawn**, since they do the same harm now. Key absent: the default, on (Cilium 1.16 has no
   such flag and honours ``enableDefaultDeny``). A value Cilium would not parse as true counts as off.
   A ConfigMap that is missing or cannot be read: refused (withheld), nothing withdrawn.
2. Served versions: every Cilium object's ``apiVersion`` must be served (``CiliumCIDRGroup``
   ``cilium.io/v2`` from 1.18, ``v2alpha1`` before), and a CCNP schema that lacks ``enableDefaultDeny``
   (Cilium < 1.16) refuses the deny policies.
3. The channel's declared Cilium version (``cdr-policy.io/cilium-version`` on the objects) against
   the range the cluster's CRDs reveal (CCG ``v2`` served: >= 1.18; only ``v2alpha1``: 1.14-1.17;
   ``cidrGroupSelector`` in the CCNP schema: >= 1.17; ``enableDefaultDeny``: >= 1.16). A cluster
   older than declared holds the Cilium part back (fields it does not know, prefixes it would turn
   into one identity each); a newer one is reported and applied.

Outcome for the Cilium part: ``apply``, ``withhold`` (not applied; what is live stays, the last
known good) or ``withdraw`` (not applied; this owner's live Cilium objects are deleted).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from cdr_policy.agent.applier import ApplyError
from cdr_policy.agent.kinds import KINDS
from cdr_policy.agent.status import CiliumEffect, PreflightFinding, PreflightReport, Severity
from cdr_policy.policy.channel import parse_version
from cdr_policy.policy.naming import CILIUM_VERSION

CILIUM_CONFIG = "cilium-config"
NON_DEFAULT_DENY_KEY = "enable-non-default-deny-policies"
APPLY: CiliumEffect = "apply"
WITHHOLD: CiliumEffect = "withhold"
WITHDRAW: CiliumEffect = "withdraw"
CILIUM_POLICY_KINDS = frozenset({"CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"})
_GROUP = "cilium.io"
_CCNP_CRD = "ciliumclusterwidenetworkpolicies.cilium.io"
_CCG_CRD = "ciliumcidrgroups.cilium.io"
# strconv.ParseBool, which Cilium's configuration (viper/cast) uses for the ConfigMap's strings
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FIX = (
    'set enable-non-default-deny-policies: "true" in the cilium-config ConfigMap (Helm '
    "enableNonDefaultDenyPolicies: true, the default) and restart the Cilium agents"
)

Version = tuple[int, int]


@runtime_checkable
class ClusterReader(Protocol):
    """What the pre-flight needs of an applier that talks to a cluster."""

    cilium_namespace: str

    def crds(self) -> list[dict[str, Any]]: ...

    def config_map(self, namespace: str, name: str) -> dict[str, str] | None: ...


@dataclass(frozen=True)
class Finding:
    code: str
    # "error": holds the Cilium part back (``effect`` says how); "warning": reported only
    severity: Severity
    message: str
    effect: CiliumEffect = APPLY

    def report(self) -> PreflightFinding:
        return PreflightFinding(self.code, self.severity, self.message)


@dataclass(frozen=True)
class Preflight:
    findings: tuple[Finding, ...] = ()
    cluster: dict[str, Any] = field(default_factory=dict)

    @property
    def cilium(self) -> CiliumEffect:
        """``apply``, ``withhold`` or ``withdraw`` (see the module docstring)."""
        effects = {f.effect for f in self.findings}
        return WITHDRAW if WITHDRAW in effects else WITHHOLD if WITHHOLD in effects else APPLY

    def holds_back(self, obj: Mapping[str, Any]) -> bool:
        return self.cilium != APPLY and is_cilium(obj)

    def reason(self) -> str:
        return "; ".join(f.message for f in self.findings if f.severity == "error")

    def report(self) -> PreflightReport:
        """As the agent status reports it."""
        return PreflightReport(self.cilium, tuple(f.report() for f in self.findings), dict(self.cluster))

    def to_log(self) -> dict[str, Any]:
        return {
            "cilium": self.cilium,
            "findings": [dataclasses.asdict(f.report()) for f in self.findings],
            "cluster": dict(self.cluster),
        }


def is_cilium(obj: Mapping[str, Any]) -> bool:
    kind = KINDS.get(str(obj.get("kind")))
    return kind is not None and not kind.tetragon


def run_preflight(applier: object, objects: Sequence[Mapping[str, Any]]) -> Preflight | None:
    """The pre-flight of ``objects`` against the cluster behind ``applier``; None when the applier
    has no cluster to read (a directory). Reads nothing when there is no Cilium object."""
    if not isinstance(applier, ClusterReader):
        return None
    cilium = [o for o in objects if is_cilium(o)]
    if not cilium:
        return Preflight()
    findings: list[Finding] = []
    cluster: dict[str, Any] = {"cilium_namespace": applier.cilium_namespace}
    try:
        crds = {str((c.get("metadata") or {}).get("name")): c for c in applier.crds()}
    except ApplyError as exc:
        findings.append(Finding("crds-unreadable", "error", f"cannot read the Cilium CRDs: {exc}", WITHHOLD))
        crds = None
    if crds is not None:
        findings.extend(_check_versions(crds, cilium, cluster))
    if any(o.get("kind") in CILIUM_POLICY_KINDS for o in cilium):
        findings.extend(_check_default_deny(applier, cluster))
    return Preflight(tuple(findings), cluster)


# -- served versions and the declared Cilium version ------------------------------------------------


def _served(crd: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    if crd is None:
        return {}
    versions = (crd.get("spec") or {}).get("versions") or []
    return {str(v.get("name")): v for v in versions if isinstance(v, dict) and v.get("served", True)}


def _schema_has(version: Mapping[str, Any] | None, path: Sequence[str]) -> bool | None:
    """Whether the version's schema declares the property at ``path`` (``items`` steps into
    arrays); None when the schema does not say (no schema, or unknown fields preserved)."""
    node: Any = ((version or {}).get("schema") or {}).get("openAPIV3Schema")
    for step in path:
        if not isinstance(node, dict):
            return None
        if step == "items":
            node = node.get("items")
            continue
        properties = node.get("properties")
        if properties is None:
            return None
        node = properties.get(step)
        if node is None:
            return False
    return node is not None


def _cluster_range(crds: Mapping[str, dict[str, Any]]) -> tuple[Version, Version | None, list[str]]:
    """The Cilium versions the CRDs are consistent with: (lowest, highest or None) and the evidence."""
    low: Version = (1, 0)
    high: Version | None = None
    evidence = []

    def at_most(v: Version) -> None:
        nonlocal high
        high = v if high is None else min(high, v)

    ccg = _served(crds.get(_CCG_CRD))
    if "v2" in ccg:
        low = max(low, (1, 18))
        evidence.append("CiliumCIDRGroup cilium.io/v2 served (>= 1.18)")
    elif "v2alpha1" in ccg:
        low = max(low, (1, 14))
        at_most((1, 17))
        evidence.append("CiliumCIDRGroup served as v2alpha1 only (1.14-1.17)")
    elif _CCNP_CRD in crds:
        at_most((1, 13))
        evidence.append("no CiliumCIDRGroup CRD (< 1.14)")
    ccnp = _served(crds.get(_CCNP_CRD)).get("v2")
    selector = _schema_has(ccnp, ("spec", "egressDeny", "items", "toCIDRSet", "items", "cidrGroupSelector"))
    default_deny = _schema_has(ccnp, ("spec", "enableDefaultDeny"))
    if selector:
        low = max(low, (1, 17))
        evidence.append("cidrGroupSelector in the CCNP schema (>= 1.17)")
    elif selector is False:
        at_most((1, 16))
        evidence.append("no cidrGroupSelector in the CCNP schema (< 1.17)")
    if default_deny:
        low = max(low, (1, 16))
    elif default_deny is False:
        at_most((1, 15))
        evidence.append("no enableDefaultDeny in the CCNP schema (< 1.16)")
    return low, high, evidence


def _text(low: Version, high: Version | None) -> str:
    if high is None:
        return f">= {low[0]}.{low[1]}"
    if low == high:
        return f"{low[0]}.{low[1]}"
    return f"{low[0]}.{low[1]}-{high[0]}.{high[1]}"


def _declared(objects: Iterable[Mapping[str, Any]]) -> list[Version]:
    found = set()
    for obj in objects:
        version = parse_version(((obj.get("metadata") or {}).get("annotations") or {}).get(CILIUM_VERSION))
        if version is not None:
            found.add(version)
    return sorted(found)


def _check_versions(
    crds: Mapping[str, dict[str, Any]], objects: Sequence[Mapping[str, Any]], cluster: dict[str, Any]
) -> list[Finding]:
    findings = []
    if _CCNP_CRD not in crds:
        return [Finding("cilium-missing", "error", "the cluster has no Cilium CRDs: is Cilium installed?", WITHHOLD)]
    served_by_kind = {
        str(((crd.get("spec") or {}).get("names") or {}).get("kind")): set(_served(crd))
        for crd in crds.values()
        if (crd.get("spec") or {}).get("group") == _GROUP
    }
    cluster["cidr_group_versions"] = sorted(served_by_kind.get("CiliumCIDRGroup", set()))
    for api_version in sorted({f"{o.get('apiVersion')} {o.get('kind')}" for o in objects}):
        group_version, kind = api_version.split(" ", 1)
        if group_version.partition("/")[2] not in served_by_kind.get(kind, set()):
            findings.append(
                Finding(
                    "not-served",
                    "error",
                    f"{kind} {group_version} is not served by this cluster "
                    f"(served: {', '.join(sorted(served_by_kind.get(kind, set()))) or 'none'})",
                    WITHHOLD,
                )
            )
    low, high, evidence = _cluster_range(crds)
    cluster["cilium_versions"] = _text(low, high)
    cluster["evidence"] = evidence
    if high is not None and high < (1, 16) and any(o.get("kind") in CILIUM_POLICY_KINDS for o in objects):
        findings.append(
            Finding(
                "no-enable-default-deny",
                "error",
                f"the cluster's Cilium ({_text(low, high)}) has no enableDefaultDeny: a deny policy would put "
                "every selected pod into default-deny; upgrade Cilium to >= 1.16",
                WITHHOLD,
            )
        )
    declared = _declared(objects)
    cluster["declared_cilium_version"] = ", ".join(f"{a}.{b}" for a, b in declared) or None
    for version in declared:
        shown = f"{version[0]}.{version[1]}"
        if high is not None and version > high:
            findings.append(
                Finding(
                    "version-mismatch",
                    "error",
                    f"the channel targets Cilium {shown} but the cluster serves Cilium {_text(low, high)} "
                    f"({'; '.join(evidence)}): set the channel's cilium_version to what the cluster runs",
                    WITHHOLD,
                )
            )
        elif version < low:
            findings.append(
                Finding(
                    "version-mismatch",
                    "warning",
                    f"the channel targets Cilium {shown} but the cluster serves Cilium {_text(low, high)} "
                    f"({'; '.join(evidence)}): applied; raise the channel's cilium_version to use what it offers",
                )
            )
    return findings


# -- enable-non-default-deny-policies ----------------------------------------------------------------


def _check_default_deny(applier: ClusterReader, cluster: dict[str, Any]) -> list[Finding]:
    where = f"{applier.cilium_namespace}/{CILIUM_CONFIG}"
    try:
        data = applier.config_map(applier.cilium_namespace, CILIUM_CONFIG)
    except ApplyError as exc:
        return [
            Finding(
                "cilium-config-unreadable",
                "error",
                f"cannot read the ConfigMap {where} to check {NON_DEFAULT_DENY_KEY}: {exc}",
                WITHHOLD,
            )
        ]
    if data is None:
        return [
            Finding(
                "cilium-config-missing",
                "error",
                f"no ConfigMap {where}: cannot check {NON_DEFAULT_DENY_KEY} (set "
                "CDR_POLICY_CILIUM_NAMESPACE to the namespace Cilium runs in)",
                WITHHOLD,
            )
        ]
    value = data.get(NON_DEFAULT_DENY_KEY)
    cluster[NON_DEFAULT_DENY_KEY] = value
    if value is None or value.strip() in _TRUE:
        return []
    return [
        Finding(
            "non-default-deny-off",
            "error",
            f"{NON_DEFAULT_DENY_KEY} is not true in {where}: Cilium ignores enableDefaultDeny, so the deny "
            f"policies would put every selected pod into egress default-deny (all egress cut, DNS included); "
            f"refused and withdrawn. To enforce them, {_FIX}",
            WITHDRAW,
        )
    ]

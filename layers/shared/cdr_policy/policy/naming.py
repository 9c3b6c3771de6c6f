"""Names, labels, annotations and file names of the generated objects, and the Kubernetes rules
they follow (also used by the checker and the channel settings).

Object names are ``<kind>-<purpose>-<hash8>``: ``tp-cloud-creds-1f0c9a2e``, ``ccg-cdr-003-5d41c0aa``.
``hash8`` is the start of the sha256 of the object's canonical JSON without its name, its
annotations and the bundle label (which the bundle stage adds afterwards). The same content always
gets the same name and any change to what is enforced gets a new one: the sync agent applies the
new object before it deletes the old one, which avoids Tetragon's unload-then-load gap
(docs/ENFORCEMENT.md §1.6). Provenance and expiry (annotations) change on every CDR fetch; they are
updated in place and do not rename, so unchanged policies are not reloaded on every node. Names
stay within 63 characters so that they can be reused as label values.

Labels (ownership; the agent prunes by the first two):

| Label | Value |
|---|---|
| ``app.kubernetes.io/managed-by`` | ``cdr-policy`` |
| ``cdr-policy.io/channel`` | the channel name |
| ``cdr-policy.io/component`` | ``behaviour``, ``tetragon-blocklist``, ``cilium-blocklist``, ``cidr-group`` |
| ``cdr-policy.io/blocklist`` | ``cdr`` or ``threat-intel`` (network objects) |
| ``cdr-policy.io/rule`` | the behaviour rule id (behaviour policies) |
| ``cdr-policy.io/scope`` | ``workload`` (a rule's evidence in one workload) or ``audit`` (its audited evidence) |
| ``cdr-policy.io/bundle`` | left free: the bundle stage sets the bundle digest |

Annotations: ``cdr-policy.io/expires-at`` (the latest expiry of what the object carries, taken from
the indicators, never from the clock), ``cdr-policy.io/sources``, ``cdr-policy.io/entries``,
``cdr-policy.io/categories``, ``cdr-policy.io/refs`` (first finding ids), ``cdr-policy.io/mitre``,
``cdr-policy.io/evidence`` (observed process names added to a rule), ``cdr-policy.io/workload``
(the fingerprint of the workload a policy is scoped to), ``cdr-policy.io/shard``,
``cdr-policy.io/kernel-override-helper`` (``"true"`` on a Tetragon policy with Override on a syscall
hook: its channel declared ``kernel: {override_helper: true}``) and ``cdr-policy.io/cilium-version``
(on Cilium objects: the channel's declared ``cilium_version``, which the agent's pre-flight compares
with what the cluster serves).

Output files (one object per file; the original operator's names are kept where it had them):

| File | Kind (short) | Content | Original |
|---|---|---|---|
| ``cdr-block-<rule>-<yyyymmdd>.yaml`` | TracingPolicy | a behaviour (1) | ``cdr-block-cloud-creds-…`` |
| ``cdr-block-<rule>-<yyyymmdd>-<namespace>-<workload>.yaml`` | TracingPolicy | evidence in one workload | new |
| ``cdr-audit-<rule>-<yyyymmdd>.yaml`` | TracingPolicy | evidence only audited (Post) | new |
| ``cdr-dynamic-blocklist.yaml`` | TracingPolicy | CDR-extracted IPs (+ audited ports) | same name |
| ``threat-intel-blocklist.yaml`` | TracingPolicy | threat-intel feed and reputation IPs | same name |
| ``cilium-cdr-blocklist.yaml`` | CCNP | egress deny to the CDR groups | same name |
| ``cilium-cdr-blocklist-cidrs-<nnn>.yaml`` | CiliumCIDRGroup | CDR prefixes, one shard | new |
| ``cilium-threat-intel-blocklist.yaml`` | CCNP | egress deny to the threat-intel groups | new |
| ``cilium-threat-intel-blocklist-cidrs-<nnn>.yaml`` | CiliumCIDRGroup | feed prefixes | new |

(1) ``<rule>`` is ``cloud-creds``, ``network-scan``, ``container-escape``, ``crypto-mining`` (the
original's names) or the rule id with ``-`` for ``_``. CCNP = CiliumClusterwideNetworkPolicy;
``<workload>`` is the first 8 hex digits of the workload's fingerprint.

``<yyyymmdd>`` is the day the behaviour was first seen, which stays the same from one render to
the next (the original used the run date, which changed every file every day). A Tetragon blocklist
too large for one object is split: the first part keeps the name above, the next ones are
``…-2.yaml``, ``…-3.yaml``. With per-namespace scoping each Tetragon file gets a ``-<namespace>``
suffix (one ``TracingPolicyNamespaced`` per namespace).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from cdr_policy import jsonio

MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY = "cdr-policy"
CHANNEL_KEY = "cdr-policy.io/channel"
COMPONENT_KEY = "cdr-policy.io/component"
BLOCKLIST_KEY = "cdr-policy.io/blocklist"
RULE_KEY = "cdr-policy.io/rule"
SCOPE_KEY = "cdr-policy.io/scope"
SCOPE_WORKLOAD = "workload"
SCOPE_AUDIT = "audit"
BUNDLE_KEY = "cdr-policy.io/bundle"

EXPIRES_AT = "cdr-policy.io/expires-at"
SOURCES = "cdr-policy.io/sources"
ENTRIES = "cdr-policy.io/entries"
CATEGORIES = "cdr-policy.io/categories"
REFS = "cdr-policy.io/refs"
MITRE = "cdr-policy.io/mitre"
EVIDENCE = "cdr-policy.io/evidence"
WORKLOAD = "cdr-policy.io/workload"
SHARD = "cdr-policy.io/shard"
# Declarations the checker and the sync agent read from the objects themselves (they travel signed
# in the bundle, so they hold wherever the objects go).
KERNEL_OVERRIDE_HELPER = "cdr-policy.io/kernel-override-helper"
CILIUM_VERSION = "cdr-policy.io/cilium-version"

COMPONENT_BEHAVIOUR = "behaviour"
COMPONENT_TETRAGON_BLOCKLIST = "tetragon-blocklist"
COMPONENT_CILIUM_BLOCKLIST = "cilium-blocklist"
COMPONENT_CIDR_GROUP = "cidr-group"

KIND_ABBREVIATION = {
    "TracingPolicy": "tp",
    "TracingPolicyNamespaced": "tpn",
    "CiliumClusterwideNetworkPolicy": "ccnp",
    "CiliumNetworkPolicy": "cnp",
    "CiliumCIDRGroup": "ccg",
}

# The original operator's file names for its four behaviour categories.
_RULE_SLUGS = {
    "cloud_credentials": "cloud-creds",
    "network_scanning": "network-scan",
    "container_escape": "container-escape",
    "crypto_mining": "crypto-mining",
}

MAX_NAME = 63
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def is_dns_subdomain(value: object) -> bool:
    """DNS-1123 subdomain: what the API server requires of a custom resource's name."""
    return isinstance(value, str) and len(value) <= 253 and bool(_SUBDOMAIN.match(value))


def is_dns_label(value: object) -> bool:
    """DNS-1123 label (namespace names)."""
    return isinstance(value, str) and len(value) <= 63 and bool(_DNS_LABEL.match(value))


# Namespaces of the cluster's own machinery (Kubernetes, the CNI, Tetragon, this operator, meshes
# and their controllers): evidence is never enforced there, only audited.
SYSTEM_NAMESPACES = frozenset(
    {
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "cdr-policy-system",
        "qualys-system",
        "cilium",
        "cilium-system",
        "tetragon",
        "calico-system",
        "tigera-operator",
        "istio-system",
        "linkerd",
        "cert-manager",
    }
)
SYSTEM_NAMESPACE_PREFIXES = ("kube-", "openshift", "gke-", "gmp-", "eks-", "aws-", "amazon-", "azure-")


def is_system_namespace(namespace: str) -> bool:
    """A namespace of the cluster's own machinery, where evidence is never enforced."""
    return namespace in SYSTEM_NAMESPACES or namespace.startswith(SYSTEM_NAMESPACE_PREFIXES)


def is_label_key(key: object) -> bool:
    """Label or annotation key: optional DNS-subdomain prefix (<= 253) and ``/``, then a name <= 63."""
    if not isinstance(key, str):
        return False
    prefix, slash, name = key.rpartition("/")
    if slash and not is_dns_subdomain(prefix):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.match(name))


def is_label_value(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def rule_slug(rule: str) -> str:
    return _RULE_SLUGS.get(rule, _slug(rule))


def content_digest(obj: dict[str, Any]) -> str:
    """sha256 (hex) of the object's canonical JSON, without ``metadata.name``, the annotations and
    the bundle label."""
    metadata = {k: v for k, v in obj.get("metadata", {}).items() if k not in ("name", "annotations")}
    if "labels" in metadata:
        metadata["labels"] = {k: v for k, v in metadata["labels"].items() if k != BUNDLE_KEY}
    body = {**obj, "metadata": metadata} if "metadata" in obj else obj
    return hashlib.sha256(jsonio.dumps(body)).hexdigest()


def assign_name(obj: dict[str, Any], purpose: str) -> str:
    """Set ``metadata.name`` to ``<kind>-<purpose>-<hash8>`` (at most 63 characters) and return it."""
    abbreviation = KIND_ABBREVIATION[obj["kind"]]
    digest = content_digest(obj)[:8]
    room = MAX_NAME - len(abbreviation) - len(digest) - 2
    slug = _slug(purpose)[:room].strip("-")
    name = f"{abbreviation}-{slug}-{digest}" if slug else f"{abbreviation}-{digest}"
    obj["metadata"]["name"] = name
    return name


_GENERATED = re.compile(r"^(" + "|".join(KIND_ABBREVIATION.values()) + r")-([a-z0-9-]+-)?[0-9a-f]{8}$")


def is_generated_name(name: str) -> bool:
    """A name ``assign_name`` could have given (``<kind>-<purpose>-<hash8>``)."""
    return len(name) <= MAX_NAME and bool(_GENERATED.match(name))


def ownership_labels(channel: str, component: str, **extra: str) -> dict[str, str]:
    labels = {MANAGED_BY_KEY: MANAGED_BY, CHANNEL_KEY: channel, COMPONENT_KEY: component}
    for key, value in extra.items():
        labels[f"cdr-policy.io/{key}"] = value
    for key, value in labels.items():
        if not is_label_key(key) or not is_label_value(value):
            raise ValueError(f"invalid label {key}={value!r}")
    return labels


def part_filename(base: str, part: int, namespace: str | None = None) -> str:
    """``base.yaml`` for part 1, ``base-<part>.yaml`` after it; ``-<namespace>`` when namespaced."""
    name = base if part == 1 else f"{base}-{part}"
    if namespace:
        name = f"{name}-{namespace}"
    return f"{name}.yaml"


def behaviour_base(rule: str, first_seen: str) -> str:
    """``cdr-block-<rule>-<yyyymmdd>`` from the behaviour's first-seen timestamp (``2026-01-10T…``)."""
    day = first_seen[:10].replace("-", "")
    if not re.fullmatch(r"\d{8}", day):
        raise ValueError(f"first_seen {first_seen!r} is not an ISO timestamp")
    return f"cdr-block-{rule_slug(rule)}-{day}"


def audit_base(rule: str, first_seen: str) -> str:
    """``cdr-audit-<rule>-<yyyymmdd>``: the audit-only policy of a rule's evidence names."""
    return behaviour_base(rule, first_seen).replace("cdr-block-", "cdr-audit-", 1)


def workload_filename(base: str, namespace: str, workload: str) -> str:
    """``<base>-<namespace>-<workload[:8]>.yaml``: a rule's policy for one workload."""
    return f"{base}-{namespace}-{workload[:8]}.yaml"


def group_filename(base: str, index: int) -> str:
    """CiliumCIDRGroup shard file: ``<base>-cidrs-<nnn>.yaml`` (1-based)."""
    return f"{base}-cidrs-{index:03d}.yaml"

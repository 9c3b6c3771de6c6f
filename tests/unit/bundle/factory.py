"""Builders for bundles in tests: objects shaped like the renderer's, rendered into a state store the
way Render does (files + ``bundle.json``), and published into a distribution store."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cdr_policy import jsonio, layout
from cdr_policy.bundle.approvals import grant
from cdr_policy.bundle.manifest import Manifest, Settings, VerificationError, build_manifest
from cdr_policy.bundle.signing import Signer, statement
from cdr_policy.policy.serialize import dump_yaml
from cdr_policy.storage import NotFound, Store
from cdr_policy.timeutil import iso

T0 = datetime(2026, 1, 10, 16, 0, tzinfo=UTC)
TTL = timedelta(hours=72)
SOURCE = "ab" * 32
SETTINGS = Settings(action="Post", mode="monitor", cilium_version="1.18")


def labels(channel: str, **extra: str) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "cdr-policy", "cdr-policy.io/channel": channel, **extra}


def _component(component: str, **extra: str) -> dict[str, str]:
    return {"cdr-policy.io/component": component, **extra}


def ccg(name: str, cidrs: list[str], channel: str = "prod", api_version: str = "cilium.io/v2") -> dict[str, Any]:
    """A CiliumCIDRGroup in the shape ``policy.cilium`` emits (the names are the test's)."""
    return {
        "apiVersion": api_version,
        "kind": "CiliumCIDRGroup",
        "metadata": {
            "name": name,
            "labels": labels(channel, **_component("cidr-group", **{"cdr-policy.io/blocklist": "cdr"})),
        },
        "spec": {"externalCIDRs": list(cidrs)},
    }


def ccnp(name: str, groups: list[str], channel: str = "prod") -> dict[str, Any]:
    """The cluster-wide egress deny to ``groups``, in the shape ``policy.cilium`` emits."""
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {
            "name": name,
            "labels": labels(channel, **_component("cilium-blocklist", **{"cdr-policy.io/blocklist": "cdr"})),
        },
        "spec": {
            "description": "cdr-policy: deny egress to the cdr blocklist",
            "endpointSelector": {},
            "enableDefaultDeny": {"egress": False, "ingress": False},
            "egressDeny": [{"toCIDRSet": [{"cidrGroupRef": g} for g in groups]}],
        },
    }


def _with_mapped_twins(addrs: list[str]) -> list[str]:
    """Every IPv4 prefix also in its IPv4-mapped IPv6 form, as the renderer emits them (tetragon#4618)."""
    out = list(addrs)
    for addr in addrs:
        net = ipaddress.ip_network(addr)
        if net.version == 4:
            out.append(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
    return out


def _tracing(name: str, component: dict[str, str], channel: str, kprobe: dict[str, Any], mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": name, "labels": labels(channel, **component)},
        "spec": {"podSelector": {}, "options": [{"name": "policy-mode", "value": mode}], "kprobes": [kprobe]},
    }


def tracing_policy(
    name: str, addrs: Sequence[str] = (), channel: str = "prod", action: str = "Post", mode: str = "monitor"
) -> dict[str, Any]:
    """A Tetragon blocklist in the shape ``policy.tetragon`` emits (``tcp_connect``, one ``DAddr``)."""
    actions = [{"action": "Post", "rateLimit": "1m"}] if action == "Post" else [{"action": action}]
    kprobe = {
        "call": "tcp_connect",
        "syscall": False,
        "message": "cdr-policy: connection to a CDR-flagged address",
        "tags": ["cdr-policy", "cdr", "network"],
        "args": [{"index": 0, "type": "sock"}],
        "selectors": [
            {
                "matchArgs": [{"index": 0, "operator": "DAddr", "values": _with_mapped_twins(list(addrs))}],
                "matchActions": actions,
            }
        ],
    }
    component = _component("tetragon-blocklist", **{"cdr-policy.io/blocklist": "cdr"})
    return _tracing(name, component, channel, kprobe, mode)


def behaviour_policy(rule: str, channel: str = "prod", program: str | None = None) -> dict[str, Any]:
    """A behaviour TracingPolicy as the renderer labels it (component ``behaviour``, its rule id):
    an audited exec block of ``/<program>`` (default: the rule id with ``-`` for ``_``)."""
    kprobe = {
        "call": "security_bprm_check",
        "syscall": False,
        "message": f"cdr-policy {rule}",
        "tags": ["cdr-policy", rule.replace("_", "-")],
        "args": [{"index": 0, "type": "linux_binprm"}],
        "selectors": [
            {
                "matchArgs": [{"index": 0, "operator": "Postfix", "values": [f"/{program or rule.replace('_', '-')}"]}],
                "matchActions": [{"action": "Post", "rateLimit": "1m"}],
            }
        ],
    }
    return _tracing(
        f"tp-{rule.replace('_', '-')}",
        _component("behaviour", **{"cdr-policy.io/rule": rule}),
        channel,
        kprobe,
        "monitor",
    )


def files_of(objects: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    return {path: dump_yaml(obj) for path, obj in objects.items()}


def network_bundle(prefixes: list[str], channel: str = "prod", tag: str = "a") -> dict[str, bytes]:
    """A CIDR group + the policy that references it + a Tetragon blocklist, all carrying ``prefixes``."""
    group = f"ccg-blocklist-{tag}"
    return files_of(
        {
            "cilium-cdr-blocklist-cidrs-001.yaml": ccg(group, prefixes, channel),
            "cilium-cdr-blocklist.yaml": ccnp(f"ccnp-blocklist-{tag}", [group], channel),
            "cdr-dynamic-blocklist.yaml": tracing_policy(f"tp-blocklist-{tag}", prefixes, channel),
        }
    )


def ips(start: int, count: int) -> list[str]:
    """``count`` distinct public /32s (45.0.0.0/8 is not in any never-block range)."""
    return [f"45.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/32" for i in range(start, start + count)]


def render(
    state: Store,
    files: dict[str, bytes],
    *,
    channel: str = "prod",
    created: datetime = T0,
    ttl: timedelta = TTL,
    counts: dict[str, int] | None = None,
    settings: Settings = SETTINGS,
) -> str:
    """Write ``files`` and their unsigned manifest under ``bundles/<digest>/`` as Render does
    (``settings``: the channel's, which Publish and the agent compare with the objects)."""
    manifest = build_manifest(
        files,
        channel=channel,
        settings=settings,
        counts=counts if counts is not None else {"files": len(files)},
        created_at=iso(created),
        expires_at=iso(created + ttl),
        source_digest=SOURCE,
    )
    for path, data in files.items():
        state.put(layout.bundle_file_key(manifest.digest, path), data)
    state.put(layout.bundle_manifest_key(manifest.digest), manifest.to_bytes())
    return manifest.digest


def plant_signed(
    dist: Store,
    files: dict[str, bytes],
    signer: Signer,
    *,
    channel: str = "prod",
    generation: int = 1,
    created: datetime = T0,
    ttl: timedelta = TTL,
    settings: Settings = SETTINGS,
) -> str:
    """Put ``files`` and a manifest signed with the channel's key straight into the distribution
    store, as a compromised signer or a buggy Publish would (nothing Publish checks stands in the
    way). Returns the digest."""
    manifest = build_manifest(
        files,
        channel=channel,
        settings=settings,
        counts={"files": len(files)},
        created_at=iso(created),
        expires_at=iso(created + ttl),
        source_digest=SOURCE,
    )
    for path, data in files.items():
        dist.put(layout.published_file_key(channel, manifest.digest, path), data)
    signed = sign_document({**manifest.to_json(), "generation": generation}, signer)
    dist.put(layout.channel_manifest_key(channel), jsonio.dumps_pretty(signed))
    return manifest.digest


def approve(
    state: Store, dist: Store, approver: Signer, digest: str, *, channel: str = "prod", now: datetime = T0
) -> str:
    """As the approver: grant ``digest`` as the replacement of what ``dist`` ships for ``channel``
    (as ``cdr-policy channel approve`` does). Returns the grant's key."""
    try:
        previous: str | None = Manifest.parse(dist.get(layout.channel_manifest_key(channel)).data, channel).digest
    except (NotFound, VerificationError):
        previous = None  # nothing usable shipped: the grant is for that
    signed = grant(channel, digest, previous, signer=approver, now=now)
    state.put(signed.key, jsonio.dumps_pretty(signed.to_json()))
    return signed.key


def sign_document(document: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """A manifest document signed as it is, valid or not (for tests of what verifies a signed but
    tampered, malformed or hostile manifest)."""
    import base64

    body = {k: v for k, v in document.items() if k not in ("signature", "key_id", "signature_algorithm")}
    signature, key_id = signer.sign(statement(body))
    return {
        **body,
        "signature": base64.b64encode(signature).decode(),
        "key_id": key_id,
        "signature_algorithm": "ECDSA_SHA_256",
    }


def unsigned_document(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in ("signature", "key_id", "signature_algorithm")}

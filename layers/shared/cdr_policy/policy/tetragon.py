"""Tetragon building blocks: actions per hook, connect hooks, scoping, and the network blocklists.

Actions. A channel's action maps onto what each hook allows (docs/ENFORCEMENT.md §1.6):

| Channel | syscall kprobe | ``security_*`` kprobe | other kernel fn (``tcp_connect``) |
|---|---|---|---|
| ``Post`` | ``Post`` + ``policy-mode: monitor`` | same | same |
| ``Sigkill`` | ``Sigkill`` | ``Sigkill`` | ``Sigkill`` |
| ``Override`` | ``Sigkill`` (1) | ``Override argError -1`` + ``disable-kprobe-multi: "1"`` | ``Sigkill`` (refused) |

(1) ``Override argError -1`` only when the channel declares ``kernel: {override_helper: true}``:
Override on a syscall needs the ``bpf_override_return`` helper, and Tetragon refuses the *whole*
policy on a kernel without it (Debian's stock 6.1 and 6.12 kernels, for instance). Such a policy
carries the annotation ``cdr-policy.io/kernel-override-helper: "true"``, the declaration the checker
asks for wherever it runs (render, publish, the agent, ``cdr-policy validate``).

Enforcing policies carry ``policy-mode: enforce`` unless a rule must start in monitor mode.

Scoping (§1.8). Never the null selectors that also select host processes: without namespaces a
cluster-scoped ``TracingPolicy`` with ``podSelector: {}`` (all pods) or ``podSelector.matchLabels``
(the channel's ``pod_labels``); with namespaces one ``TracingPolicyNamespaced`` per namespace. The
evidence of one workload (``policy.scoping``): a ``TracingPolicy`` whose ``podSelector`` names the
workload's labels and, with ``k8s:io.kubernetes.pod.namespace In``, its namespace.

Network blocklists (§1.2). One hook per policy with every prefix in a single address filter, each
IPv4 prefix also in its IPv4-mapped form (#4618); never ``NotDAddr``. The channel picks the hook:

- ``tcp_connect`` (default): ``sock`` argument, ``DAddr``; Sigkill only, so the SYN may already be
  out when the process dies; TCP only (UDP is out of scope for this hook).
- ``security_socket_connect``: ``sockaddr`` argument, whose destination is matched with ``SAddr``
  (the type has no destination operators); ``Override`` refuses the ``connect()`` itself, for TCP
  and connected UDP alike, so not one packet leaves. Needs fmod_ret (kernel >= 5.7) and
  ``disable-kprobe-multi``.

A list too large for one object (about 4,000 prefixes, ~256 KiB) is split into several policies,
each with its own hook. Port indicators go into a second selector: audited (``Post``) unless the
channel sets ``deny_ports_to_world``, because a port block applies to every destination.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cdr_policy.netprefix import tetragon_values
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.naming import KERNEL_OVERRIDE_HELPER, SHARD, assign_name, part_filename
from cdr_policy.policy.output import ObjectMeta, PolicyFile

API_VERSION = "cilium.io/v1alpha1"
NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
SYSCALL, SECURITY, KERNEL = "syscall", "security", "kernel"
# Prefixes per Tetragon blocklist object: worst case ~64 bytes of YAML per IPv4 prefix and its
# mapped twin, so a full part stays near 256 KiB, half our 512 KiB per-object ceiling.
PREFIXES_PER_POLICY = 4_000
EPERM = -1
POST_RATE_LIMIT = "1m"


@dataclass(frozen=True)
class Enforcement:
    """How the selectors of one policy act."""

    action: str  # the channel's: Post, Sigkill or Override
    monitor: bool  # policy-mode monitor (always for Post)
    override_helper: bool = False  # the channel's kernel.override_helper: Override on syscalls too

    @classmethod
    def for_channel(
        cls, channel: ChannelSettings, *, start_in_monitor: bool = False, audit_only: bool = False
    ) -> Enforcement:
        action = "Post" if audit_only else channel.action
        return cls(
            action=action,
            monitor=action == "Post" or start_in_monitor,
            override_helper=channel.kernel.override_helper,
        )

    def actions(self, hook_class: str, *, audit: bool = False) -> list[dict[str, Any]]:
        """The selector's actions on a hook of ``hook_class``; ``audit`` forces ``Post``. Events are
        rate-limited to one per minute per process and selector, so an audit never floods."""
        if audit or self.action == "Post":
            return [{"action": "Post", "rateLimit": POST_RATE_LIMIT}]
        if self.action == "Override" and (hook_class == SECURITY or (hook_class == SYSCALL and self.override_helper)):
            return [{"action": "Override", "argError": EPERM}]
        return [{"action": "Sigkill"}]


def kprobe(
    call: str,
    hook_class: str,
    args: Sequence[tuple[int, str]],
    selectors: list[dict[str, Any]],
    *,
    message: str,
    tags: Sequence[str],
) -> dict[str, Any]:
    if not 1 <= len(selectors) <= 5:
        raise ValueError(f"{call}: {len(selectors)} selectors (1 to 5)")
    if len(message) > 256 or len(tags) > 16:
        raise ValueError(f"{call}: message over 256 characters or more than 16 tags")
    hook: dict[str, Any] = {
        "call": call,
        "syscall": hook_class == SYSCALL,
        "message": message,
        "tags": list(tags),
    }
    if args:
        hook["args"] = [{"index": index, "type": arg_type} for index, arg_type in args]
    hook["selectors"] = selectors
    return hook


def selector(
    actions: list[dict[str, Any]],
    match_args: Sequence[dict[str, Any]] = (),
    binaries: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One selector; ``binaries`` are caller names matched with ``Postfix /<name>``."""
    out: dict[str, Any] = {}
    if match_args:
        out["matchArgs"] = list(match_args)
    if binaries:
        out["matchBinaries"] = [{"operator": "Postfix", "values": [f"/{b}" for b in binaries]}]
    if extra:
        out.update(extra)
    out["matchActions"] = actions
    return out


def match(index: int, operator: str, values: Sequence[str | int]) -> dict[str, Any]:
    return {"index": index, "operator": operator, "values": [str(v) for v in values]}


@dataclass(frozen=True)
class ConnectMatch:
    """One connect selector: destinations (prefixes), destination ports and/or calling binaries."""

    prefixes: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    protocol: str = "tcp"
    callers: tuple[str, ...] = ()
    audit: bool = False


def connect_kprobe(
    channel: ChannelSettings,
    enforcement: Enforcement,
    matches: Sequence[ConnectMatch],
    *,
    message: str,
    tags: Sequence[str],
) -> dict[str, Any]:
    """A connect hook on the channel's ``tetragon_network_hook`` with one selector per match."""
    selectors = []
    if channel.tetragon_network_hook == "tcp_connect":
        for m in matches:
            if m.protocol != "tcp":
                raise ValueError("tcp_connect sees TCP only")
            args = []
            if m.prefixes:
                args.append(match(0, "DAddr", tetragon_values(list(m.prefixes))))
            if m.ports:
                args.append(match(0, "DPort", m.ports))
            selectors.append(selector(enforcement.actions(KERNEL, audit=m.audit), args, m.callers))
        return kprobe("tcp_connect", KERNEL, [(0, "sock")], selectors, message=message, tags=tags)
    for m in matches:
        args = []
        if m.ports:
            args.append(match(0, "Protocol", ["IPPROTO_TCP" if m.protocol == "tcp" else "IPPROTO_UDP"]))
        if m.prefixes:
            args.append(match(1, "SAddr", tetragon_values(list(m.prefixes))))
        if m.ports:
            args.append(match(1, "SPort", m.ports))
        selectors.append(selector(enforcement.actions(SECURITY, audit=m.audit), args, m.callers))
    return kprobe(
        "security_socket_connect",
        SECURITY,
        [(0, "socket"), (1, "sockaddr")],
        selectors,
        message=message,
        tags=tags,
    )


def _overrides(kp: dict[str, Any]) -> bool:
    return any(a.get("action") == "Override" for s in kp["selectors"] for a in s["matchActions"])


def options(enforcement: Enforcement, kprobes: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    if any(kp["call"].startswith("security_") and not kp["syscall"] and _overrides(kp) for kp in kprobes):
        out.append({"name": "disable-kprobe-multi", "value": "1"})
    out.append({"name": "policy-mode", "value": "monitor" if enforcement.monitor else "enforce"})
    return out


def pod_selector(channel: ChannelSettings, *, spare_namespaces: Sequence[str] = ()) -> dict[str, Any]:
    """``{}`` (all pods, never host processes) or the channel's labels; ``spare_namespaces`` are
    left out (cluster-scoped policies only)."""
    out: dict[str, Any] = {}
    if channel.pod_labels:
        out["matchLabels"] = dict(sorted(channel.pod_labels.items()))
    if spare_namespaces and not channel.namespaces:
        out["matchExpressions"] = [{"key": NAMESPACE_LABEL, "operator": "NotIn", "values": sorted(spare_namespaces)}]
    return out


def workload_selector(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    """The pods of one workload: all of its ``labels`` and its namespace (``In``, the namespace key
    Tetragon documents for ``podSelector``). A cluster-scoped policy with this selector acts only
    there, and applies cleanly in every cluster of a channel, with or without that namespace."""
    if not labels:
        raise ValueError("a workload selector needs the workload's pod labels: without them it is every pod there")
    return {
        "matchLabels": dict(sorted(labels.items())),
        "matchExpressions": [{"key": NAMESPACE_LABEL, "operator": "In", "values": [namespace]}],
    }


def tracing_policies(
    channel: ChannelSettings,
    *,
    kprobes: list[dict[str, Any]],
    enforcement: Enforcement,
    meta: ObjectMeta,
    purpose: str,
    base: str,
    part: int = 1,
    entries: int = 0,
    spare_namespaces: Sequence[str] = (),
) -> list[PolicyFile]:
    """The scoped policy objects for one set of hooks: one TracingPolicy, or one
    TracingPolicyNamespaced per channel namespace. Names come from the content."""
    selects = pod_selector(channel, spare_namespaces=spare_namespaces)
    targets: list[str | None] = list(channel.namespaces) or [None]
    return [
        tracing_policy(
            namespace, selects, kprobes, enforcement, meta, purpose, part_filename(base, part, namespace), entries
        )
        for namespace in targets
    ]


def tracing_policy(
    namespace: str | None,
    selects: dict[str, Any],
    kprobes: list[dict[str, Any]],
    enforcement: Enforcement,
    meta: ObjectMeta,
    purpose: str,
    filename: str,
    entries: int,
) -> PolicyFile:
    """One policy object: a ``TracingPolicyNamespaced`` in ``namespace``, or a ``TracingPolicy``
    without one, acting in the pods ``selects`` selects. Its name comes from its content."""
    calls = [kp["call"] for kp in kprobes]
    if len(set(calls)) != len(calls):
        raise ValueError(f"{purpose}: a symbol is hooked twice in one policy: {calls}")
    annotations = dict(meta.annotations)
    if any(kp["syscall"] and _overrides(kp) for kp in kprobes):
        annotations[KERNEL_OVERRIDE_HELPER] = "true"  # declared by the channel (kernel.override_helper)
    metadata: dict[str, Any] = {"name": ""}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = dict(meta.labels)
    metadata["annotations"] = dict(sorted(annotations.items()))
    kind = "TracingPolicyNamespaced" if namespace else "TracingPolicy"
    spec = {
        "podSelector": copy.deepcopy(selects),
        "options": options(enforcement, kprobes),
        "kprobes": copy.deepcopy(kprobes),
    }
    obj = {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}
    name = assign_name(obj, purpose)
    return PolicyFile(filename, kind, name, obj, entries)


def network_blocklist(
    channel: ChannelSettings,
    *,
    prefixes: Sequence[str],
    tcp_ports: Sequence[int] = (),
    udp_ports: Sequence[int] = (),
    meta: ObjectMeta,
    purpose: str,
    base: str,
    message: str,
    tags: Sequence[str],
) -> list[PolicyFile]:
    """Blocklist policies for sorted, aggregated ``prefixes`` (split in parts of
    ``PREFIXES_PER_POLICY``); ports go into the first part. UDP ports need
    ``security_socket_connect`` (callers leave them out on ``tcp_connect``)."""
    enforcement = Enforcement.for_channel(channel)
    audit_ports = not channel.deny_ports_to_world
    chunks = [list(prefixes[i : i + PREFIXES_PER_POLICY]) for i in range(0, len(prefixes), PREFIXES_PER_POLICY)]
    if not chunks and (tcp_ports or udp_ports):
        chunks = [[]]
    files: list[PolicyFile] = []
    for part, chunk in enumerate(chunks, start=1):
        matches = [ConnectMatch(prefixes=tuple(chunk))] if chunk else []
        if part == 1 and tcp_ports:
            matches.append(ConnectMatch(ports=tuple(tcp_ports), audit=audit_ports))
        if part == 1 and udp_ports:
            matches.append(ConnectMatch(ports=tuple(udp_ports), protocol="udp", audit=audit_ports))
        kp = connect_kprobe(channel, enforcement, matches, message=message, tags=tags)
        annotations = dict(meta.annotations)
        if len(chunks) > 1:
            annotations[SHARD] = f"{part}/{len(chunks)}"
        part_meta = ObjectMeta(labels=meta.labels, annotations=annotations)
        count = len(chunk) + (len(tcp_ports) + len(udp_ports) if part == 1 else 0)
        files.extend(
            tracing_policies(
                channel,
                kprobes=[kp],
                enforcement=enforcement,
                meta=part_meta,
                purpose=f"{purpose}-{part}" if len(chunks) > 1 else purpose,
                base=base,
                part=part,
                entries=count,
            )
        )
    return files

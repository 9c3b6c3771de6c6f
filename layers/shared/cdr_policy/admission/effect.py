"""What an admitted object does, and whether it may: the second half of admission.

The grammar (``admission.grammar``) has established that an object is one of our shapes; this module
reads what it *does* — every destination it can block, every program it can kill, and where — and
refuses effects that can take a fleet down, whoever rendered or signed the bundle
(docs/ENFORCEMENT.md §6.2):

- **Addresses** (both engines, whatever the action: an audit channel's content is what an
  enforcing channel takes next): every prefix a Tetragon address filter or a Cilium deny names,
  CIDR groups included, IPv4-mapped twins folded to IPv4, is outside the never-block list and the
  protected ranges of the channel or cluster (``Protection.guard``). The one exception is the
  instance metadata service, which the ``cloud_credentials`` rule blocks for named programs only:
  a never-block address is admitted when it is a metadata-service address and the selector kills
  only positively named callers.
- **Ports**: a kill on ports without an address filter (Tetragon) or a deny of ports to the world
  (Cilium) never names a never-block port (DNS, HTTP(S), the cluster's own: ``policy.ports``) or a
  port the channel or cluster protects.
- **Program starts** (``security_bprm_check``): a kill always names its targets; a named target
  killed in every pod, for every caller, is never a shell, interpreter, runtime, server, proxy,
  database, agent or kernel thread (``policy.binaries.refuse_cluster_wide``). A scope counts as
  narrow only when it is a positive match: named callers (``matchBinaries Postfix``), pod labels or
  namespaces; ``NotIn`` scopes and empty selectors are everything.
- **Connections of programs**: a kill on every connection of its callers (no address or port
  filter) names shells or programs that may be killed in every pod, never everyday ones.
- **Namespace and runtime hooks** (``sys_setns``, ``sys_unshare``, ``create_user_ns``): a kill in
  every pod of the cluster spares ``kube-system``, where the CNI and the runtime helpers run.
- **Files**: a kill on file operations names a specific place: a directory of at least two levels
  (``/var/log/``), or a directory together with the entry's name.

``BundleEffect`` sums up what the bundle blocks per engine (the canonical prefixes) and which
programs its enforcing exec rules kill: what the change budget compares, per engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdr_policy.admission.grammar import (
    ADDRESS_POSITIONS,
    CCNP,
    CIDR_GROUP,
    HOOKS,
    NAMESPACE_KEY,
    PORT_POSITIONS,
    TRACING_POLICY,
)
from cdr_policy.admission.refusal import Refusals
from cdr_policy.netprefix import parse_explicit, tetragon_values, unmap
from cdr_policy.policy.behaviours import IMDS, SHELLS
from cdr_policy.policy.binaries import refuse_cluster_wide
from cdr_policy.policy.checker.common import BlockGuard, Screen
from cdr_policy.policy.ports import port_refusal

# The instance metadata service (IPv4 and the IPv6 one of EC2), with the IPv4 address's mapped
# twin: never-block addresses that the cloud_credentials rule blocks for named network utilities.
METADATA_SERVICE = frozenset(tetragon_values(IMDS))
RUNTIME_HOOKS = frozenset({"sys_setns", "sys_unshare", "create_user_ns"})
KILLING = frozenset({"Sigkill", "Override"})
PATH_HOOKS = frozenset(
    {
        "security_file_permission",
        "security_path_truncate",
        "security_path_unlink",
        "security_path_rename",
        "security_path_link",
        "security_path_symlink",
    }
)
TETRAGON, CILIUM = "tetragon", "cilium"
Interval = tuple[int, int, int] | None


@dataclass(frozen=True)
class Protection:
    """What no bundle may block: ``guard`` (the never-block list plus the channel's or the cluster's
    own ranges) and ``ports`` (``("tcp", 8080)``) beyond the never-block ports."""

    guard: BlockGuard
    ports: frozenset[tuple[str, int]] = frozenset()


@dataclass
class BundleEffect:
    """What a bundle blocks and kills: canonical prefixes per engine (IPv4-mapped twins folded) and
    the programs its enforcing exec rules kill (``/name``)."""

    prefixes: dict[str, set[str]] = field(default_factory=lambda: {TETRAGON: set(), CILIUM: set()})
    programs: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Scope:
    """Where a selector acts: ``pods`` is ``every`` (every pod), ``most`` (every pod outside some
    namespaces) or ``selected`` (pod labels or namespaces); ``callers`` the programs it is limited to
    (None: any program)."""

    pods: str
    callers: frozenset[str] | None

    @property
    def everywhere(self) -> bool:
        return self.pods != "selected" and self.callers is None


class Judge:
    """Judges the effect of every admitted object of one bundle (``judge``), then the bundle's CIDR
    groups through the policies that reference them."""

    def __init__(self, protection: Protection, refusals: Refusals) -> None:
        self.protection = protection
        self.refusals = refusals
        self.screen = Screen(protection.guard)
        self.effect = BundleEffect()
        self._groups: dict[str, str] = {}  # name -> where
        self._referenced: set[str] = set()
        self.intervals: Mapping[int, Sequence[Interval]] = {}

    def refuse(self, where: str, path: str, code: str, reason: str) -> None:
        self.refusals.add(where, path, code, reason)

    def judge(self, obj: dict[str, Any], where: str, intervals: Mapping[int, Sequence[Interval]]) -> None:
        """Judge one admitted object; ``intervals``: what the grammar read of its address lists."""
        self.intervals = intervals
        kind = obj["kind"]
        if kind == CIDR_GROUP:
            cidrs = obj["spec"]["externalCIDRs"]
            self._groups[obj["metadata"]["name"]] = where
            self._addresses(cidrs, where, "spec.externalCIDRs", CILIUM, None)
        elif kind == CCNP:
            self._ccnp(obj, where)
        else:
            self._tracing_policy(obj, where)

    def finish(self) -> BundleEffect:
        """The CIDR groups no policy of the bundle references."""
        for name, where in sorted(self._groups.items()):
            if name not in self._referenced:
                self.refuse(where, "", "effect.unreferenced-group", "a CIDR group no policy of the bundle denies")
        return self.effect

    # -- addresses and ports ---------------------------------------------------------------------------

    def _addresses(self, values: list[str], where: str, path: str, engine: str, scope: _Scope | None) -> None:
        """Every value outside the protected ranges (``scope``: the Tetragon selector's, for the
        metadata-service exception), and into the bundle's prefixes."""
        found = self.effect.prefixes[engine]
        read = self.intervals.get(id(values)) or [None] * len(values)
        for value, interval in zip(values, read, strict=True):
            if interval is not None and self.screen.passes_interval(*interval):
                if not value.startswith("::ffff:"):
                    found.add(value)
                continue
            prefix, reason = parse_explicit(value)
            if prefix is None or reason:  # the grammar admitted canonical prefixes only
                self.refuse(where, path, "effect.address", "not a canonical prefix")
                continue
            inner = unmap(prefix)
            refusal = self.protection.guard.check_interval(inner.version, inner.network, inner.last, inner.length)
            if refusal and not (value in METADATA_SERVICE and scope is not None and scope.callers):
                self.refuse(where, path, "effect.never-block", f"blocks a protected range: {refusal}")
            if inner is prefix:
                found.add(value)

    def _ports(self, ports: list[tuple[str, int]], where: str, path: str) -> None:
        for protocol, port in ports:
            refusal = port_refusal((protocol, port), self.protection.ports)
            if refusal:
                self.refuse(where, path, "effect.port", f"denies {protocol}/{port} to every destination: {refusal}")

    # -- Cilium ----------------------------------------------------------------------------------------

    def _ccnp(self, obj: dict[str, Any], where: str) -> None:
        for i, item in enumerate(obj["spec"]["egressDeny"]):
            path = f"spec.egressDeny[{i}]"
            if "toEntities" in item:
                ports = [(p["protocol"].lower(), int(p["port"])) for p in item["toPorts"][0]["ports"]]
                self._ports(ports, where, f"{path}.toPorts")
                continue
            entries = item["toCIDRSet"]
            if "cidrGroupRef" in entries[0]:
                self._referenced.update(e["cidrGroupRef"] for e in entries)
            else:
                self._addresses([e["cidr"] for e in entries], where, f"{path}.toCIDRSet", CILIUM, None)

    # -- Tetragon --------------------------------------------------------------------------------------

    def _tracing_policy(self, obj: dict[str, Any], where: str) -> None:
        spec = obj["spec"]
        pods = _pods(obj)
        for i, kprobe in enumerate(spec["kprobes"]):
            call = kprobe["call"]
            for j, selector in enumerate(kprobe["selectors"]):
                path = f"spec.kprobes[{i}].selectors[{j}]"
                binaries = selector.get("matchBinaries")
                callers = frozenset(v[1:] for v in binaries[0]["values"]) if binaries else None
                scope = _Scope(pods, callers)
                kills = selector["matchActions"][0]["action"] in KILLING
                self._selector(call, selector, scope, kills, where, path)

    def _selector(
        self,
        call: str,
        selector: dict[str, Any],
        scope: _Scope,
        kills: bool,
        where: str,
        path: str,
    ) -> None:
        matches = selector.get("matchArgs", [])
        addressed = [m for m in matches if (call, m["index"], m["operator"]) in ADDRESS_POSITIONS]
        ports = [int(v) for m in matches if (call, m["index"], m["operator"]) in PORT_POSITIONS for v in m["values"]]
        for match in addressed:
            self._addresses(match["values"], where, f"{path}.matchArgs", TETRAGON, scope)
        if call in ("tcp_connect", "security_socket_connect"):
            if kills and not addressed and ports:
                protocols = _protocols(call, matches)
                self._ports([(p, n) for p in protocols for n in ports], where, f"{path}.matchArgs")
            if kills and not addressed and not ports:
                self._connect_callers(scope, where, path)
        elif call == "security_bprm_check":
            self._exec(selector, scope, kills, where, path)
        elif call in RUNTIME_HOOKS and kills and scope.pods == "every":
            self.refuse(where, path, "effect.runtime-hook", f"kills every {call} in every pod, kube-system included")
        elif call in PATH_HOOKS and kills:
            self._paths(call, matches, where, path)

    def _connect_callers(self, scope: _Scope, where: str, path: str) -> None:
        """A kill on every connection of its callers: shells (reverse shells), or programs that may
        be killed everywhere."""
        if scope.callers is None:
            self.refuse(where, path, "effect.connect", "kills every connection of every program")
            return
        if scope.pods == "selected":
            return
        for name in sorted(scope.callers - set(SHELLS)):
            if refuse_cluster_wide(name):
                self.refuse(where, path, "effect.connect", "kills every connection of an everyday program")
                return

    def _exec(self, selector: dict[str, Any], scope: _Scope, kills: bool, where: str, path: str) -> None:
        matches = selector.get("matchArgs", [])
        if not kills:
            return
        if not matches:
            self.refuse(where, path, "effect.exec", "kills program starts without naming the programs")
            return
        for match in matches:
            if match["operator"] != "Postfix":
                continue  # Prefix: the catalogue's staging directories (the grammar's census)
            self.effect.programs.update(match["values"])
            if not scope.everywhere:
                continue
            for value in match["values"]:
                reason = refuse_cluster_wide(value[1:])
                if reason:
                    self.refuse(
                        where,
                        f"{path}.matchArgs",
                        "effect.exec",
                        f"kills a program in every pod for every caller: {reason}",
                    )
                    return

    def _paths(self, call: str, matches: list[dict[str, Any]], where: str, path: str) -> None:
        """A kill on file operations names a specific place."""
        named = any(m["operator"] == "Postfix" for m in matches)
        types = dict(HOOKS[call].args)
        for match in matches:
            if match["operator"] not in ("Equal", "Prefix") or types[match["index"]] not in ("file", "path"):
                continue
            for value in match["values"]:
                depth = len([part for part in value.split("/") if part])
                if depth < 2 and not named:
                    self.refuse(where, f"{path}.matchArgs", "effect.path", f"{call} on a whole top-level directory")
                    return


def _pods(obj: dict[str, Any]) -> str:
    """``every`` pod, ``most`` (every pod outside some namespaces) or ``selected`` ones."""
    if obj["kind"] != TRACING_POLICY:
        return "selected"  # a namespaced policy acts in its namespace only
    selector = obj["spec"]["podSelector"]
    if selector.get("matchLabels"):
        return "selected"
    expressions = selector.get("matchExpressions") or []
    for expression in expressions:
        if expression["key"] == NAMESPACE_KEY and expression["operator"] == "In":
            return "selected"
    spared = {v for e in expressions if e["operator"] == "NotIn" for v in e["values"]}
    return "most" if "kube-system" in spared else "every"


def _protocols(call: str, matches: list[dict[str, Any]]) -> list[str]:
    if call == "tcp_connect":
        return ["tcp"]
    chosen = [v for m in matches if m["operator"] == "Protocol" for v in m["values"]]
    if not chosen:
        return ["tcp", "udp"]
    return ["tcp" if v == "IPPROTO_TCP" else "udp" for v in chosen]

"""Per-channel render settings: what a group of clusters receives and how strictly.

A channel is a named stream of bundles (``staging``, ``prod``); every cluster's agent follows one.
Settings are validated once when loaded; unknown keys and bad values are errors.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from cdr_policy import jsonio
from cdr_policy.errors import ConfigError
from cdr_policy.layout import is_channel_name
from cdr_policy.policy.naming import is_label_key, is_label_value, is_system_namespace
from cdr_policy.policy.ports import parse_port
from cdr_policy.rules import RULES
from cdr_policy.timeutil import format_duration, parse_duration

Action = Literal["Post", "Sigkill", "Override"]
ACTIONS: tuple[Action, ...] = ("Post", "Sigkill", "Override")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")
NETWORK_HOOKS = ("tcp_connect", "security_socket_connect")
DOMAIN_MODES = ("report", "resolve")
# What the clusters of a channel may report of the workloads behind their hits (``cdr_policy.hits``):
# nothing at all, namespaces, namespaces and workloads (Deployment, DaemonSet ... names), or also pods.
HIT_DETAILS = ("off", "namespace", "workload", "pod")
# The largest capacity budget of either engine. Cilium puts every prefix of a CiliumCIDRGroup in
# its IP cache, which holds 512,000 entries per node by default with the cluster's own endpoints;
# and the bundle two such budgets make (about 21 MB in 128 files, from a feed of four million
# addresses) is measured to keep Render, Publish and the sync agent inside their 512 MB (docs/configuration.md;
# ``make bench`` (e)).
MAX_BUDGET_PREFIXES = 250_000
# A bundle lives at most 30 days: longer voids the expiry that makes a cut-off cluster stop
# enforcing stale blocks. At least twice the re-render period (``check_lifetime``): Publish re-signs
# a bundle past half its lifetime, at the first render after that.
MAX_BUNDLE_TTL_HOURS = 30 * 24
# How many distinct workloads must have run a name before evidence kills it cluster-wide
# (``policy.scoping``): at least two, or one finding would be enough.
EVIDENCE_MIN_WORKLOADS = (2, 1000)
# The longest soak and watch: the clusters keep their hit rows for 7 days (``hits.aggregate``), so
# no evidence is older than that.
MAX_EVIDENCE_SECONDS = 7 * 86400
# The hit details a promotion needs of its audit channel's clusters: the workloads it counts and
# the namespaces it protects.
PROMOTION_DETAILS = ("workload", "pod")


def parse_version(text: object) -> tuple[int, int] | None:
    """``"1.17"`` or ``"1.17.3"`` as ``(1, 17)``; None for anything else."""
    m = _VERSION.match(text) if isinstance(text, str) else None
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class KernelCapabilities:
    """What the kernels of a channel's nodes are declared to support (``kernel:`` in the channel
    settings). Safe by default: nothing beyond what Tetragon's enforcement needs everywhere."""

    # The bpf_override_return helper (CONFIG_BPF_KPROBE_OVERRIDE, which needs
    # CONFIG_FUNCTION_ERROR_INJECTION). Without it Tetragon refuses a whole policy that puts Override
    # on a syscall hook ("bpf_override_return helper not available"); Debian's stock 6.1 and 6.12
    # kernels lack it. False: syscall hooks get Sigkill, Override stays on security_* hooks (fmod_ret).
    # Find out on a node: ``grep BPF_KPROBE_OVERRIDE /boot/config-$(uname -r)`` or ``tetra probe``
    # (``override_return: true``).
    override_helper: bool = False

    @classmethod
    def from_dict(cls, d: Any, channel: str) -> KernelCapabilities:
        if not isinstance(d, dict):
            raise ConfigError(f"channel {channel}: kernel must be a mapping like {{override_helper: false}}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"channel {channel}: unknown kernel setting(s) {', '.join(unknown)}")
        for key, value in d.items():
            if not isinstance(value, bool):
                raise ConfigError(f"channel {channel}: kernel.{key} must be true or false")
        return cls(**d)


def _duration(value: object, where: str, *, low: float, high: float) -> int:
    """Whole seconds of a duration setting (``24h``, ``90m``, ``2d``, or a number of seconds)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(
            f"{where} must be a duration like 24h, got {'a boolean' if isinstance(value, bool) else _shown(value)}"
        )
    try:
        seconds = parse_duration(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not low <= seconds <= high:
        span = f"{format_duration(low)}..{format_duration(high)}"
        raise ConfigError(f"{where} must be {span}, got {format_duration(seconds)}")
    return int(seconds)


def _count(value: object, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{where} must be a whole number {low}..{high}, got {_shown(value)}")
    return value


def _settings(d: object, known: tuple[str, ...], where: str, example: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping like {example}")
    unknown = sorted(str(k) for k in set(d) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)[:200]}")
    return d


@dataclass(frozen=True)
class Watch:
    """After an enforcing channel took promoted changes (``promote.watch``): for ``window_s`` after
    each publish, the denied or killed events those changes caused across the fleet. More than
    ``max_workloads_hit`` distinct workloads, or (from ``min_events`` events on) more events per
    minute than ``max_rate_increase`` times the channel's own rate before the publish, trips it:
    the channel promotes nothing more while it lasts and, with ``rollback``, the changes of that
    publish are taken out again (``cdr_policy.promotion.watch``)."""

    window_s: int = 86400
    max_workloads_hit: int = 3
    max_rate_increase: float = 2.0
    min_events: int = 20
    rollback: bool = False

    KEYS = ("for", "max_workloads_hit", "max_rate_increase", "min_events", "rollback")

    @classmethod
    def from_dict(cls, d: object, channel: str) -> Watch:
        where = f"channel {channel}: promote.watch"
        doc = _settings(d, cls.KEYS, where, "{for: 24h, max_workloads_hit: 3, rollback: true}")
        out = cls()
        if "for" in doc:
            out = replace(out, window_s=_duration(doc["for"], f"{where}.for", low=60, high=MAX_EVIDENCE_SECONDS))
        if "max_workloads_hit" in doc:
            out = replace(
                out, max_workloads_hit=_count(doc["max_workloads_hit"], f"{where}.max_workloads_hit", 0, 1000)
            )
        if "max_rate_increase" in doc:
            rate = doc["max_rate_increase"]
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 1 <= rate <= 1000:
                raise ConfigError(f"{where}.max_rate_increase must be a number 1..1000, got {_shown(rate)}")
            out = replace(out, max_rate_increase=float(rate))
        if "min_events" in doc:
            out = replace(out, min_events=_count(doc["min_events"], f"{where}.min_events", 1, 1_000_000))
        if "rollback" in doc:
            if not isinstance(doc["rollback"], bool):
                raise ConfigError(f"{where}.rollback must be true or false")
            out = replace(out, rollback=doc["rollback"])
        return out


@dataclass(frozen=True)
class Promotion:
    """An enforcing channel takes a change (new prefixes, ports, or new or changed behaviour rules)
    only after its audit channel ``source`` shipped it for ``soak_s``, with at least
    ``min_clusters_reporting`` of that channel's clusters reporting fresh hits, and while what it
    would have blocked there stays within the limits: at most ``max_workloads_hit`` distinct
    workloads, none in ``protected_namespaces`` (``cdr_policy.promotion``). Removals and expiries
    are never held."""

    source: str
    soak_s: int = 86400
    max_workloads_hit: int = 3
    protected_namespaces: tuple[str, ...] = ()
    min_clusters_reporting: int = 1
    watch: Watch | None = None

    KEYS = ("from", "soak", "max_workloads_hit", "protected_namespaces", "min_clusters_reporting", "watch")

    @classmethod
    def from_dict(cls, d: object, channel: str) -> Promotion:
        where = f"channel {channel}: promote"
        example = "{from: staging, soak: 24h, max_workloads_hit: 3}"
        doc = _settings(d, cls.KEYS, where, example)
        source = doc.get("from")
        if not is_channel_name(source):
            raise ConfigError(f"{where}.from must name the audit channel it follows, like {example}")
        namespaces = doc.get("protected_namespaces", [])
        if not isinstance(namespaces, list) or len(namespaces) > 64:
            raise ConfigError(f"{where}.protected_namespaces must be a list of at most 64 namespaces")
        for ns in namespaces:
            if not isinstance(ns, str) or not _LABEL.match(ns):
                shown = repr(ns[:64]) if isinstance(ns, str) else _shown(ns)
                raise ConfigError(f"{where}.protected_namespaces: {shown} is not a namespace name")
        return cls(
            source=str(source),
            soak_s=_duration(doc.get("soak", "24h"), f"{where}.soak", low=0, high=MAX_EVIDENCE_SECONDS),
            max_workloads_hit=_count(doc.get("max_workloads_hit", 3), f"{where}.max_workloads_hit", 0, 1000),
            protected_namespaces=tuple(sorted(set(namespaces))),
            min_clusters_reporting=_count(
                doc.get("min_clusters_reporting", 1), f"{where}.min_clusters_reporting", 1, 1000
            ),
            watch=Watch.from_dict(doc["watch"], channel) if "watch" in doc else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as ``channels.yaml`` says them (durations in seconds)."""
        out: dict[str, Any] = {
            "from": self.source,
            "soak": self.soak_s,
            "max_workloads_hit": self.max_workloads_hit,
            "protected_namespaces": list(self.protected_namespaces),
            "min_clusters_reporting": self.min_clusters_reporting,
        }
        if self.watch is not None:
            w = self.watch
            out["watch"] = {
                "for": w.window_s,
                "max_workloads_hit": w.max_workloads_hit,
                "max_rate_increase": w.max_rate_increase,
                "min_events": w.min_events,
                "rollback": w.rollback,
            }
        return out


@dataclass(frozen=True)
class ChannelSettings:
    name: str
    # Post = audit (Tetragon policy-mode monitor); Sigkill/Override = enforce.
    action: Action = "Post"
    # Target Cilium version of the clusters on this channel: picks the CiliumCIDRGroup API version
    # (v2alpha1 before 1.18, v2 from 1.18) and the pre-1.17 fallback.
    cilium_version: str = "1.17"
    # Capacity budgets, in prefixes, after aggregation. The ranked set is cut by rank to fit.
    # At most MAX_BUDGET_PREFIXES each.
    tetragon_max_prefixes: int = 50_000
    cilium_max_prefixes: int = 50_000
    # Scoping. Empty namespaces: cluster-scoped TracingPolicy with ``podSelector`` (all pods, no host).
    namespaces: tuple[str, ...] = ()
    pod_labels: dict[str, str] = field(default_factory=dict)
    # The cluster's own pod, service and node CIDRs: never blocked (CIDR rules do not apply there).
    protected_cidrs: tuple[str, ...] = ()
    # Ports (``tcp/8080``) no deny of this channel may name, beyond the never-block ports
    # (``policy.ports``): a port block applies to every destination.
    protected_ports: tuple[str, ...] = ()
    # Bundles expire so that a cluster cut off from the bucket stops enforcing stale blocks.
    # Between twice the re-render period and MAX_BUNDLE_TTL_HOURS.
    bundle_ttl_hours: int = 72
    # A process name CDR saw is killed cluster-wide only when it was seen in this many distinct
    # workloads (and is not a common server, agent or kernel-thread name); otherwise only in the
    # workloads where it was seen, or audited (policy.scoping).
    evidence_min_workloads: int = 3
    # Threat-intel feeds go into this channel's network blocklists (CDR indicators always do).
    threat_intel: bool = True
    # Tetragon hook of the network blocklists: "tcp_connect" (kernel function, sock argument, DAddr;
    # Sigkill only, the SYN may already be out) or "security_socket_connect" (LSM function, sockaddr
    # argument matched with SAddr; Override refuses the connect() itself, TCP and UDP).
    tetragon_network_hook: str = "tcp_connect"
    # Port indicators deny the port towards the whole internet only when this is set; otherwise they
    # are audited (Tetragon Post) and reported.
    deny_ports_to_world: bool = False
    # Domain indicators: "report" (listed in the report, not enforced) or "resolve" (resolved at
    # render time into short-lived /32 and /128 entries; see cdr_policy.policy.domains).
    domain_enforcement: str = "report"
    # Rules that start in Tetragon monitor mode because container runtimes and CNI plugins trigger
    # the same hooks (container_escape). Listing a rule here promotes it to the channel's action.
    promoted_rules: tuple[str, ...] = ()
    # Kernel capabilities the channel's nodes are declared to have (see KernelCapabilities).
    kernel: KernelCapabilities = field(default_factory=KernelCapabilities)
    # What the channel's clusters report of their hits (HIT_DETAILS): carried signed in the bundle's
    # provenance index, so a cluster's readers and the fleet commands hold to it.
    hit_detail: str = "workload"
    # An enforcing channel that takes changes only once its audit channel has watched them (see
    # Promotion); None: it takes whatever its render holds.
    promote: Promotion | None = None

    def __post_init__(self) -> None:
        if not is_channel_name(self.name):
            raise ConfigError(f"channel name {self.name!r}: use 1-32 lower-case letters, digits or '-'")
        if self.action not in ACTIONS:
            raise ConfigError(f"channel {self.name}: action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if parse_version(self.cilium_version) is None:
            raise ConfigError(f"channel {self.name}: cilium_version {self.cilium_version!r} is not like '1.17'")
        for attr in ("tetragon_max_prefixes", "cilium_max_prefixes", "bundle_ttl_hours", "evidence_min_workloads"):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"channel {self.name}: {attr} must be a positive integer, got {_shown(value)}")
        if self.bundle_ttl_hours > MAX_BUNDLE_TTL_HOURS:
            raise ConfigError(
                f"channel {self.name}: bundle_ttl_hours is at most {MAX_BUNDLE_TTL_HOURS} (30 days), got "
                f"{_shown(self.bundle_ttl_hours)} (a longer lifetime voids the expiry that stops a cut-off cluster "
                "enforcing stale blocks)"
            )
        low, high = EVIDENCE_MIN_WORKLOADS
        if not low <= self.evidence_min_workloads <= high:
            raise ConfigError(
                f"channel {self.name}: evidence_min_workloads must be {low}..{high}, "
                f"got {_shown(self.evidence_min_workloads)}"
            )
        for attr in ("tetragon_max_prefixes", "cilium_max_prefixes"):
            if getattr(self, attr) > MAX_BUDGET_PREFIXES:
                raise ConfigError(
                    f"channel {self.name}: {attr} is at most {MAX_BUDGET_PREFIXES:,} (Cilium's IP cache holds "
                    "512,000 entries per node by default, the cluster's own among them, and a bundle that size "
                    "is the largest Render, Publish and the sync agent are measured to handle in their memory)"
                )
        for ns in self.namespaces:
            if not _LABEL.match(ns):
                raise ConfigError(f"channel {self.name}: namespace {ns!r} is not a DNS-1123 label")
            if is_system_namespace(ns):
                raise ConfigError(
                    f"channel {self.name}: namespace {ns} is one of the cluster's own (kube-*, the CNI, Tetragon, "
                    "this operator): its policies never go there"
                )
        for key, value in self.pod_labels.items():
            if not is_label_key(key) or not is_label_value(value):
                raise ConfigError(f"channel {self.name}: pod label {key!r}={value!r} is not a valid Kubernetes label")
        for port in self.protected_ports:
            try:
                parse_port(port)
            except ValueError as exc:
                raise ConfigError(f"channel {self.name}: protected_ports: {exc}") from None
        if self.tetragon_network_hook not in NETWORK_HOOKS:
            raise ConfigError(
                f"channel {self.name}: tetragon_network_hook {self.tetragon_network_hook!r} is not one of "
                f"{', '.join(NETWORK_HOOKS)}"
            )
        if self.domain_enforcement not in DOMAIN_MODES:
            raise ConfigError(
                f"channel {self.name}: domain_enforcement {self.domain_enforcement!r} is not one of "
                f"{', '.join(DOMAIN_MODES)}"
            )
        if self.hit_detail not in HIT_DETAILS:
            raise ConfigError(
                f"channel {self.name}: hit_detail {self.hit_detail!r} is not one of {', '.join(HIT_DETAILS)}"
            )
        for attr in ("threat_intel", "deny_ports_to_world"):
            if not isinstance(getattr(self, attr), bool):
                raise ConfigError(f"channel {self.name}: {attr} must be true or false")
        if not isinstance(self.kernel, KernelCapabilities):
            raise ConfigError(f"channel {self.name}: kernel must be a mapping like {{override_helper: false}}")
        if self.promote is not None and not isinstance(self.promote, Promotion):
            raise ConfigError(f"channel {self.name}: promote must be a mapping like {{from: staging, soak: 24h}}")
        if self.promote is not None and not self.enforce:
            raise ConfigError(
                f"channel {self.name}: promote is for an enforcing channel (action Sigkill or Override), "
                "and this one audits (Post)"
            )
        unknown_rules = sorted(set(self.promoted_rules) - set(RULES))
        if unknown_rules:
            raise ConfigError(f"channel {self.name}: promoted_rules has unknown rule id(s) {', '.join(unknown_rules)}")

    def check_lifetime(self, refresh_hours: float) -> None:
        """``bundle_ttl_hours`` against the re-render period (hours): at least twice as long, so
        that a render comes after half the lifetime and before the end (Publish re-signs then)."""
        if self.bundle_ttl_hours < 2 * refresh_hours:
            raise ConfigError(
                f"channel {self.name}: bundle_ttl_hours {self.bundle_ttl_hours} is less than twice the re-render "
                f"period ({refresh_hours:g} h): agents would drop every policy before the next render re-signs it"
            )

    @property
    def enforce(self) -> bool:
        return self.action != "Post"

    @property
    def cilium(self) -> tuple[int, int]:
        version = parse_version(self.cilium_version)
        assert version  # validated in __post_init__
        return version

    def fingerprint(self) -> str:
        """sha256 of every setting: a bundle rendered with other settings than the channel has now
        carries another one (Publish refuses it)."""
        return hashlib.sha256(jsonio.dumps(self.to_dict())).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # absent rather than null: channels without promotion keep the fingerprints they had
        del d["promote"]
        if self.promote is not None:
            d["promote"] = self.promote.to_dict()
        d["namespaces"] = list(self.namespaces)
        d["protected_cidrs"] = list(self.protected_cidrs)
        d["protected_ports"] = list(self.protected_ports)
        d["promoted_rules"] = list(self.promoted_rules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelSettings:
        if not isinstance(d, dict):
            raise ConfigError(f"channel settings must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"channel {d.get('name', '?')}: unknown setting(s) {', '.join(unknown)}")
        if "name" not in d:
            raise ConfigError("channel settings need a 'name'")
        kwargs = dict(d)
        for key in ("namespaces", "protected_cidrs", "protected_ports", "promoted_rules"):
            if key in kwargs:
                if not isinstance(kwargs[key], list | tuple):
                    raise ConfigError(f"channel {d['name']}: {key} must be a list")
                kwargs[key] = tuple(kwargs[key])
        if "pod_labels" in kwargs and not isinstance(kwargs["pod_labels"], dict):
            raise ConfigError(f"channel {d['name']}: pod_labels must be a mapping")
        if "kernel" in kwargs:
            kwargs["kernel"] = KernelCapabilities.from_dict(kwargs["kernel"], d["name"])
        if "promote" in kwargs:
            kwargs["promote"] = Promotion.from_dict(kwargs["promote"], d["name"])
        return cls(**kwargs)


def _shown(value: object) -> str:
    """A bad setting's value in a message: numbers as they are (bounded), anything else by type."""
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 10**12:
        return repr(value)
    return f"a {type(value).__name__}" if not isinstance(value, int | float) else "a number out of range"


def check_promotions(channels: list[ChannelSettings]) -> None:
    """Each ``promote.from`` names another configured channel that audits (``Post``) and lets its
    clusters report the workloads behind their hits; ConfigError otherwise."""
    by_name = {c.name: c for c in channels}
    for channel in channels:
        if channel.promote is None:
            continue
        where = f"channel {channel.name}: promote.from"
        source = by_name.get(channel.promote.source)
        if source is None or source is channel:
            raise ConfigError(f"{where} must name another configured channel, not {channel.promote.source}")
        if source.enforce:
            raise ConfigError(
                f"{where}: {source.name} enforces ({source.action}); a change is promoted from an audit channel "
                "(action Post), whose hits say what it would have blocked"
            )
        if source.hit_detail not in PROMOTION_DETAILS:
            raise ConfigError(
                f"{where}: {source.name} reports its hits with hit_detail {source.hit_detail}; promotion counts "
                f"the workloads hit, so it needs {' or '.join(PROMOTION_DETAILS)}"
            )
        if channel.promote.watch is not None and channel.hit_detail not in PROMOTION_DETAILS:
            raise ConfigError(
                f"channel {channel.name}: promote.watch counts the workloads the channel's changes hit, so its own "
                f"hit_detail must be {' or '.join(PROMOTION_DETAILS)}, not {channel.hit_detail}"
            )


def default_channels() -> list[ChannelSettings]:
    """The out-of-the-box pair. Both audit: enforcement is an explicit per-channel choice."""
    return [ChannelSettings(name="staging"), ChannelSettings(name="prod")]

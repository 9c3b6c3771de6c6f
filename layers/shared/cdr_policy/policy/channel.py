"""Per-channel render settings: what a group of clusters receives and how strictly.

A channel is a named stream of bundles (``staging``, ``prod``); every cluster's agent follows one.
Settings are validated once when loaded; unknown keys and bad values are errors.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cdr_policy.errors import ConfigError

ACTIONS = ("Post", "Sigkill", "Override")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")


@dataclass(frozen=True)
class ChannelSettings:
    name: str
    # Post = audit (Tetragon policy-mode monitor); Sigkill/Override = enforce.
    action: str = "Post"
    # Target Cilium version of the clusters on this channel: picks the CiliumCIDRGroup API version
    # (v2alpha1 before 1.18, v2 from 1.18) and the pre-1.17 fallback.
    cilium_version: str = "1.17"
    # Capacity budgets, in prefixes, after aggregation. The ranked set is cut by rank to fit.
    tetragon_max_prefixes: int = 50_000
    cilium_max_prefixes: int = 50_000
    # Scoping. Empty namespaces: cluster-scoped TracingPolicy with ``podSelector`` (all pods, no host).
    namespaces: tuple[str, ...] = ()
    pod_labels: dict[str, str] = field(default_factory=dict)
    # The cluster's own pod, service and node CIDRs: never blocked (CIDR rules do not apply there).
    protected_cidrs: tuple[str, ...] = ()
    # Bundles expire so that a cluster cut off from the bucket stops enforcing stale blocks.
    bundle_ttl_hours: int = 72
    # Threat-intel feeds go into this channel's network blocklists (CDR indicators always do).
    threat_intel: bool = True

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"channel name {self.name!r}: use 1-32 lower-case letters, digits or '-'")
        if self.action not in ACTIONS:
            raise ConfigError(f"channel {self.name}: action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if not _VERSION.match(self.cilium_version):
            raise ConfigError(f"channel {self.name}: cilium_version {self.cilium_version!r} is not like '1.17'")
        for attr in ("tetragon_max_prefixes", "cilium_max_prefixes", "bundle_ttl_hours"):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"channel {self.name}: {attr} must be a positive integer, got {value!r}")
        for ns in self.namespaces:
            if not _LABEL.match(ns):
                raise ConfigError(f"channel {self.name}: namespace {ns!r} is not a DNS-1123 label")

    @property
    def enforce(self) -> bool:
        return self.action != "Post"

    @property
    def cilium(self) -> tuple[int, int]:
        m = _VERSION.match(self.cilium_version)
        assert m  # validated in __post_init__
        return int(m.group(1)), int(m.group(2))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["namespaces"] = list(self.namespaces)
        d["protected_cidrs"] = list(self.protected_cidrs)
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
        for key in ("namespaces", "protected_cidrs"):
            if key in kwargs:
                if not isinstance(kwargs[key], list | tuple):
                    raise ConfigError(f"channel {d['name']}: {key} must be a list")
                kwargs[key] = tuple(kwargs[key])
        if "pod_labels" in kwargs and not isinstance(kwargs["pod_labels"], dict):
            raise ConfigError(f"channel {d['name']}: pod_labels must be a mapping")
        return cls(**kwargs)


def default_channels() -> list[ChannelSettings]:
    """The out-of-the-box pair. Both audit: enforcement is an explicit per-channel choice."""
    return [ChannelSettings(name="staging"), ChannelSettings(name="prod")]

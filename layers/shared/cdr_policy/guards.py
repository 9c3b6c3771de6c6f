"""The never-block list (docs/ENFORCEMENT.md §4), applied after every source and again before rendering.

A prefix is refused when it is inside a protected range, when it covers one (blocking
8.0.0.0/8 would block 8.8.8.8), or when it is broader than the configured minimum prefix length.
Checks run on integer intervals with ``bisect`` so that a million entries stay cheap.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# (cidr, reason). Reasons are short and stable: they end up in report.json.
BUILTIN_PROTECTED: tuple[tuple[str, str], ...] = (
    # IPv4 special-purpose and bogon ranges (RFC 6890 and friends)
    ("0.0.0.0/8", "bogon: this-network (RFC 1122)"),
    ("10.0.0.0/8", "private range (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (includes the instance metadata service)"),
    ("172.16.0.0/12", "private range (RFC 1918)"),
    ("192.0.0.0/24", "bogon: IETF protocol assignments"),
    ("192.0.2.0/24", "documentation range (TEST-NET-1)"),
    ("192.88.99.0/24", "bogon: 6to4 relay anycast"),
    ("192.168.0.0/16", "private range (RFC 1918)"),
    ("198.18.0.0/15", "bogon: benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation range (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation range (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "bogon: reserved / broadcast"),
    # IPv6
    ("::/128", "unspecified address"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped space (blocked through its IPv4 form)"),
    ("64:ff9b::/96", "NAT64 well-known prefix"),
    ("64:ff9b:1::/48", "NAT64 local-use prefix"),
    ("100::/64", "discard-only range"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation range"),
    ("fc00::/7", "unique local addresses (includes fd00:ec2::254, the IMDS)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
    # Major public DNS resolvers: blocking them breaks name resolution for whole clusters.
    ("1.1.1.1/32", "public DNS resolver (Cloudflare)"),
    ("1.0.0.1/32", "public DNS resolver (Cloudflare)"),
    ("8.8.8.8/32", "public DNS resolver (Google)"),
    ("8.8.4.4/32", "public DNS resolver (Google)"),
    ("9.9.9.9/32", "public DNS resolver (Quad9)"),
    ("149.112.112.112/32", "public DNS resolver (Quad9)"),
    ("208.67.222.222/32", "public DNS resolver (OpenDNS)"),
    ("208.67.220.220/32", "public DNS resolver (OpenDNS)"),
    ("94.140.14.14/32", "public DNS resolver (AdGuard)"),
    ("94.140.15.15/32", "public DNS resolver (AdGuard)"),
    ("64.6.64.6/32", "public DNS resolver (Verisign)"),
    ("64.6.65.6/32", "public DNS resolver (Verisign)"),
    ("4.2.2.1/32", "public DNS resolver (Level3)"),
    ("4.2.2.2/32", "public DNS resolver (Level3)"),
    ("2001:4860:4860::8888/128", "public DNS resolver (Google)"),
    ("2001:4860:4860::8844/128", "public DNS resolver (Google)"),
    ("2606:4700:4700::1111/128", "public DNS resolver (Cloudflare)"),
    ("2606:4700:4700::1001/128", "public DNS resolver (Cloudflare)"),
    ("2620:fe::fe/128", "public DNS resolver (Quad9)"),
    ("2620:fe::9/128", "public DNS resolver (Quad9)"),
    ("2620:119:35::35/128", "public DNS resolver (OpenDNS)"),
    ("2620:119:53::53/128", "public DNS resolver (OpenDNS)"),
)

# Domains (and their subdomains) that the system itself depends on.
BUILTIN_PROTECTED_DOMAINS: tuple[tuple[str, str], ...] = (
    ("localhost", "local name"),
    ("local", "mDNS / local name"),
    ("cluster.local", "in-cluster service name"),
    ("svc", "in-cluster service name"),
    ("internal", "private name space"),
    ("amazonaws.com", "AWS endpoint used by the pipeline"),
    ("aws.amazon.com", "AWS endpoint used by the pipeline"),
    ("qualys.com", "Qualys gateway"),
    ("qualys.eu", "Qualys gateway"),
    ("qualys.it", "Qualys gateway"),
    ("qualys.in", "Qualys gateway"),
    ("qualys.ca", "Qualys gateway"),
    ("qualys.ae", "Qualys gateway"),
    ("qualys.co.uk", "Qualys gateway"),
    ("qualys.com.au", "Qualys gateway"),
    ("qualysksa.com", "Qualys gateway"),
    ("qualys.us", "Qualys gateway"),
    ("abuseipdb.com", "reputation service used by the pipeline"),
)

DEFAULT_MIN_PREFIX = {4: 8, 6: 32}


@dataclass(frozen=True)
class _Table:
    """Sorted, non-overlapping protected intervals for one address family."""

    starts: list[int]
    ends: list[int]
    reasons: list[str]


def _build_table(items: list[tuple[IPNetwork, str]]) -> _Table:
    # Keep each range's own reason; overlapping ranges stay separate entries sorted by start,
    # and the lookup walks back over candidates, so overlaps are handled without merging.
    items = sorted(items, key=lambda it: (int(it[0].network_address), -int(it[0].broadcast_address)))
    return _Table(
        starts=[int(n.network_address) for n, _ in items],
        ends=[int(n.broadcast_address) for n, _ in items],
        reasons=[r for _, r in items],
    )


class NeverBlock:
    """Decides whether a prefix or domain may be blocked. ``None`` means yes; a string is the reason not to."""

    def __init__(
        self,
        extra: Iterable[tuple[str, str]] = (),
        extra_domains: Iterable[tuple[str, str]] = (),
        min_prefix: dict[int, int] | None = None,
    ) -> None:
        by_family: dict[int, list[tuple[IPNetwork, str]]] = {4: [], 6: []}
        for cidr, reason in (*BUILTIN_PROTECTED, *extra):
            net = ipaddress.ip_network(cidr, strict=False)
            by_family[net.version].append((net, reason))
        self._tables = {v: _build_table(items) for v, items in by_family.items()}
        # The widest protected range per family bounds how far back a containment search must look.
        self._max_span = {
            v: max((t.ends[i] - t.starts[i] for i in range(len(t.starts))), default=0) for v, t in self._tables.items()
        }
        self._domains = {d.lower().strip("."): r for d, r in (*BUILTIN_PROTECTED_DOMAINS, *extra_domains)}
        self.min_prefix = dict(DEFAULT_MIN_PREFIX if min_prefix is None else min_prefix)

    def check_interval(self, version: int, first: int, last: int, prefixlen: int) -> str | None:
        """Reason to refuse the prefix ``first..last`` (``prefixlen`` bits), or None."""
        if prefixlen < self.min_prefix[version]:
            return f"over-broad prefix (shorter than /{self.min_prefix[version]})"
        t = self._tables[version]
        # Candidates are protected ranges that start at or before ``last``; one of them overlaps
        # the prefix when its end is at or after ``first``. Ranges are sorted by start, so walk
        # back only as far as the widest range could reach.
        i = bisect.bisect_right(t.starts, last) - 1
        floor = first - self._max_span[version]
        while i >= 0 and t.starts[i] >= floor:
            if t.ends[i] >= first:
                if t.starts[i] <= first and t.ends[i] >= last:
                    return f"inside never-block range: {t.reasons[i]}"
                return f"covers never-block range: {t.reasons[i]}"
            i -= 1
        return None

    def check_network(self, net: IPNetwork) -> str | None:
        return self.check_interval(net.version, int(net.network_address), int(net.broadcast_address), net.prefixlen)

    def check_domain(self, name: str) -> str | None:
        labels = name.lower().strip(".").split(".")
        for i in range(len(labels)):
            suffix = ".".join(labels[i:])
            if suffix in self._domains:
                return f"never-block domain: {self._domains[suffix]} ({suffix})"
        return None


def parse_protected(entries: Iterable[str], reason: str) -> list[tuple[str, str]]:
    """Turn configured CIDRs (pod, service and node ranges, own endpoints) into guard entries.

    Raises ValueError naming the bad entry, so configuration errors surface at start-up.
    """
    out = []
    for raw in entries:
        try:
            net = ipaddress.ip_network(raw.strip(), strict=False)
        except ValueError as exc:
            raise ValueError(f"invalid protected CIDR {raw!r}: {exc}") from exc
        out.append((str(net), reason))
    return out

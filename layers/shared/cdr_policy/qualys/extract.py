"""From findings to indicators (IPs, domains, ports) and behaviours, with provenance.

Where indicators come from (reference §11.4, what the original operator read):
- IPs: ``destinationIp`` (must be an address: anything else is rejected), and ``triggeredResource``
  / ``affectedResource`` when they hold an address (they often hold resource ids, which are skipped).
  ``1.2.3.4:443`` and ``[2001:db8::1]:443`` lose their port; IPv4-mapped IPv6 folds to IPv4; the
  value is a ``/32`` or ``/128`` prefix.
- Domains: ``networkInformation.domain`` (an object or a list of objects), IDNA-encoded, lower-case,
  validated label by label. An address in that field is treated as an IP.
- Ports: ``destinationPort`` as ``tcp/<n>``, kept only when it is one of :data:`BLOCKABLE_PORTS`:
  the original's "suspicious" backdoor ports plus its mining-pool ports. Any other port is ordinary
  traffic (443, 53, ...) whose blocking would break workloads, so it is reported as rejected.
Every address and domain then passes the never-block guard (docs/ENFORCEMENT.md §4); what it refuses is
reported with the guard's reason. Nothing is dropped without a :class:`Rejection`.

Provenance: each indicator keeps the category of the first finding that produced it, the finding
uuids (the most recent :data:`REF_CAP`), first/last seen from the findings' timestamps (the fetch
time for a finding without one; never later than the fetch time) and ``expires_at = last_seen + ttl``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cdr_policy.guards import NeverBlock
from cdr_policy.models import Behaviour, Indicator, IndicatorSet, Rejection, Sighting
from cdr_policy.policy.binaries import bare_name, is_executable_name
from cdr_policy.qualys.findings import Finding, clean_text
from cdr_policy.timeutil import iso, parse_iso

SOURCE = "cdr"
REF_CAP = 50
PROCESS_CAP = 50
# Workload sightings kept per behaviour (the most recent; indicator-set.schema.json says the same).
SIGHTING_CAP = 256
PORT_PROTOCOL = "tcp"  # destinationPort carries no protocol; the CDR network detections seen are TCP

# port -> why blocking it is useful. The original's suspicious set (blocker.go) and the mining-pool
# ports of its crypto-mining policy (generator.go).
BLOCKABLE_PORTS: dict[int, str] = {
    1337: "backdoor",
    3333: "mining pool (stratum)",
    4444: "backdoor / mining pool (Metasploit default)",
    5555: "backdoor / mining pool",
    6666: "backdoor / IRC botnet",
    6667: "IRC botnet command and control",
    8443: "backdoor (suspicious when flagged by CDR)",
    9001: "Tor relay",
    9050: "Tor SOCKS",
    12345: "NetBus backdoor",
    14433: "mining pool (stratum over TLS)",
    14444: "mining pool (stratum over TLS)",
    27374: "SubSeven backdoor",
    31337: "Back Orifice backdoor",
}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_IPV4_WITH_PORT = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$")
_BRACKETED_V6 = re.compile(r"^\[([^\]]+)\](?::(\d{1,5}))?$")


def parse_address(value: Any) -> IPAddress | None:
    """An address from ``1.2.3.4``, ``1.2.3.4:443``, ``[::1]:443``, ``2001:db8::1``, ``1.2.3.4/32``;
    IPv4-mapped IPv6 folded to IPv4; zone ids dropped. None when the value is not one address."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    m = _BRACKETED_V6.match(text) or _IPV4_WITH_PORT.match(text)
    if m:
        text = m.group(1)
    prefix = None
    if "/" in text:
        text, _, prefix = text.partition("/")
    text = text.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if prefix is not None and prefix != str(addr.max_prefixlen):
        return None  # a network, not one address: findings name hosts
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr


def canonical_prefix(addr: IPAddress) -> str:
    return f"{addr}/{addr.max_prefixlen}"


def canonical_domain(value: Any) -> tuple[str | None, str | None]:
    """(domain, None) for a valid name, (None, reason) otherwise. IDNA, lower-case, no trailing dot."""
    if not isinstance(value, str) or not value.strip():
        return None, "domain is empty or not a string"
    text = value.strip().rstrip(".")
    try:
        ascii_name = text.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        return None, "domain is not a valid (IDNA) host name"
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or len(labels) < 2:
        return None, "domain needs at least two labels and at most 253 characters"
    if not all(_LABEL.match(label) for label in labels):
        return None, "domain has an invalid label"
    if labels[-1].isdigit():
        return None, "domain has a numeric top-level label"
    return ascii_name, None


def parse_port(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) else None


def _shown(value: Any) -> str:
    """How a refused raw value appears in the report: bounded text, or its type for structures."""
    if isinstance(value, bool | int | float):
        return str(value)
    return clean_text(value, 64) or (f"<{type(value).__name__}>" if not isinstance(value, str) else "<blank>")


def _domains(network_information: Any) -> list[Any]:
    items = network_information if isinstance(network_information, list) else [network_information]
    return [item.get("domain") for item in items if isinstance(item, dict) and item.get("domain") is not None]


def _later(a: str, b: str) -> str:
    return a if parse_iso(a) >= parse_iso(b) else b


def _earlier(a: str, b: str) -> str:
    return a if parse_iso(a) <= parse_iso(b) else b


def _append_refs(refs: list[str], new: Iterable[str], cap: int) -> list[str]:
    merged = list(refs)
    present = set(merged)
    for ref in new:
        if ref not in present:
            merged.append(ref)
            present.add(ref)
    return merged[-cap:]


@dataclass(frozen=True)
class Extracted:
    """What one finding yields: blockable values and refused ones (value, reason), in field order."""

    indicators: list[tuple[str, str]]  # (kind, canonical value)
    rejections: list[tuple[str, str]]  # (value as shown, reason)


def extract_iocs(finding: Finding, guard: NeverBlock) -> Extracted:
    """The indicators of one finding, checked against the never-block guard. Pure: no state."""
    indicators: list[tuple[str, str]] = []
    rejections: list[tuple[str, str]] = []
    raw = finding.raw

    def address(addr: IPAddress) -> None:
        value = canonical_prefix(addr)
        reason = guard.check_network(ipaddress.ip_network(value))
        if reason:
            rejections.append((value, reason))
        else:
            indicators.append(("ip", value))

    destination = raw.get("destinationIp")
    if destination not in (None, ""):
        addr = parse_address(destination)
        if addr is None:
            rejections.append((_shown(destination), "destinationIp is not an IP address"))
        else:
            address(addr)
    for key in ("triggeredResource", "affectedResource"):
        addr = parse_address(raw.get(key))
        if addr is not None:
            address(addr)

    for value in _domains(raw.get("networkInformation")):
        addr = parse_address(value)
        if addr is not None:
            address(addr)
            continue
        domain, problem = canonical_domain(value)
        if domain is None:
            rejections.append((_shown(value), problem or "invalid domain"))
            continue
        reason = guard.check_domain(domain)
        if reason:
            rejections.append((domain, reason))
        else:
            indicators.append(("domain", domain))

    raw_port = raw.get("destinationPort")
    if raw_port not in (None, ""):
        port = parse_port(raw_port)
        if port is None or not 1 <= port <= 65535:
            rejections.append((_shown(raw_port), "destinationPort is not a port number"))
        elif port not in BLOCKABLE_PORTS:
            rejections.append(
                (
                    f"{PORT_PROTOCOL}/{port}",
                    "not a known backdoor or mining-pool port: blocking it would break ordinary traffic",
                )
            )
        else:
            indicators.append(("port", f"{PORT_PROTOCOL}/{port}"))
    return Extracted(indicators, rejections)


def _sighted(sightings: list[Sighting], finding: Finding, seen: str, expires: str) -> list[Sighting]:
    """``sightings`` with the finding's process in its workload counted (a process name that is not
    a bare executable name is never stored here); the ``SIGHTING_CAP`` most recent are kept."""
    name = bare_name(finding.process_name) if finding.process_name else None
    if name is None or not is_executable_name(name):
        return sightings
    workload = finding.workload
    new = Sighting(name, workload.namespace, workload.deployment, workload.labels, 1, seen, expires)
    by_key = {s.key: s for s in sightings}
    existing = by_key.get(new.key)
    if existing is None:
        by_key[new.key] = new
    else:
        existing.findings += 1
        existing.last_seen = _later(existing.last_seen, seen)
        existing.expires_at = _later(existing.expires_at, expires)
    kept = sorted(by_key.values(), key=lambda s: (parse_iso(s.last_seen), repr(s.key)), reverse=True)[:SIGHTING_CAP]
    return sorted(kept, key=lambda s: repr(s.key))


@dataclass
class CdrAccumulator:
    """The CDR indicator set being built: seeded with what is stored, fed one finding at a time.

    Merging the same finding twice would count its behaviour twice, so the caller de-duplicates by
    uuid first. ``touched`` and ``rejected_now`` record what this run's findings yielded, for the report.
    """

    guard: NeverBlock
    ttl: timedelta
    now: datetime
    entries: dict[tuple[str, str], Indicator] = field(default_factory=dict)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    # (value, reason) -> last time a finding produced this rejection (a ledger kept with TTL)
    rejections: dict[tuple[str, str], str] = field(default_factory=dict)
    touched: set[tuple[str, str]] = field(default_factory=set)
    rejected_now: dict[tuple[str, str], Rejection] = field(default_factory=dict)
    expired: int = 0

    # -- seeding ------------------------------------------------------------------------------
    def seed(self, current: IndicatorSet | None, rejections: dict[tuple[str, str], str]) -> None:
        """Start from the stored set, dropping everything whose ``expires_at`` has passed."""
        if current is not None:
            for entry in current.entries:
                if parse_iso(entry.expires_at) <= self.now:
                    self.expired += 1
                else:
                    self.entries[(entry.kind, entry.value)] = entry
            for behaviour in current.behaviours:
                if parse_iso(behaviour.expires_at) <= self.now:
                    self.expired += 1
                else:
                    behaviour.sightings = [s for s in behaviour.sightings if parse_iso(s.expires_at) > self.now]
                    self.behaviours[behaviour.rule] = behaviour
        horizon = self.now - self.ttl
        self.rejections = {key: seen for key, seen in rejections.items() if parse_iso(seen) > horizon}

    # -- feeding ------------------------------------------------------------------------------
    def add(self, finding: Finding, rule: str | None, *, merge: bool = True) -> None:
        """Record what ``finding`` yields for this run's report; with ``merge``, also fold it into
        the set (indicators, rejection ledger, behaviour). ``merge=False`` is for a finding an
        earlier run already merged: reported again, never counted twice."""
        when = min(finding.timestamp or self.now, self.now)
        seen, expires = iso(when), iso(when + self.ttl)
        extracted = extract_iocs(finding, self.guard)
        for value, reason in extracted.rejections:
            key = (value, reason)
            self.rejected_now.setdefault(key, Rejection(value=value, source=SOURCE, reason=reason))
            if merge:
                previous = self.rejections.get(key)
                self.rejections[key] = seen if previous is None else _later(previous, seen)
        for kind, value in extracted.indicators:
            self.touched.add((kind, value))
            if merge:
                self._indicator(kind, value, finding, seen, expires)
        if merge and rule is not None:
            self._behaviour(rule, finding, seen, expires)

    def _indicator(self, kind: str, value: str, finding: Finding, seen: str, expires: str) -> None:
        key = (kind, value)
        existing = self.entries.get(key)
        if existing is None:
            self.entries[key] = Indicator(
                value=value,
                kind=kind,  # type: ignore[arg-type]
                category=finding.category,
                sources=[SOURCE],
                first_seen=seen,
                last_seen=seen,
                expires_at=expires,
                refs=[finding.uuid],
            )
            return
        existing.first_seen = _earlier(existing.first_seen, seen)
        existing.last_seen = _later(existing.last_seen, seen)
        existing.expires_at = _later(existing.expires_at, expires)
        existing.sources = sorted({*existing.sources, SOURCE})
        existing.refs = _append_refs(existing.refs, [finding.uuid], REF_CAP)

    def _behaviour(self, rule: str, finding: Finding, seen: str, expires: str) -> None:
        processes = [finding.process_name] if finding.process_name else []
        existing = self.behaviours.get(rule)
        if existing is None:
            self.behaviours[rule] = Behaviour(
                rule=rule,
                categories={finding.category: 1},
                processes=processes,
                refs=[finding.uuid],
                first_seen=seen,
                last_seen=seen,
                expires_at=expires,
                sightings=_sighted([], finding, seen, expires),
            )
            return
        existing.sightings = _sighted(existing.sightings, finding, seen, expires)
        existing.categories[finding.category] = existing.categories.get(finding.category, 0) + 1
        existing.categories = dict(sorted(existing.categories.items()))
        existing.processes = sorted({*existing.processes, *processes})[:PROCESS_CAP]
        existing.refs = _append_refs(existing.refs, [finding.uuid], REF_CAP)
        existing.first_seen = _earlier(existing.first_seen, seen)
        existing.last_seen = _later(existing.last_seen, seen)
        existing.expires_at = _later(existing.expires_at, expires)

    # -- results ------------------------------------------------------------------------------
    def alive_rejections(self) -> list[Rejection]:
        return [Rejection(value=v, source=SOURCE, reason=r) for v, r in sorted(self.rejections)]

    def indicator_set(self, fetched_at: datetime, stats: dict[str, Any]) -> IndicatorSet:
        entries = [self.entries[k] for k in sorted(self.entries)]
        behaviours = [self.behaviours[k] for k in sorted(self.behaviours)]
        counts = {kind: sum(1 for k, _ in self.entries if k == kind) for kind in ("ip", "domain", "port")}
        return IndicatorSet(
            source=SOURCE,
            fetched_at=iso(fetched_at),
            status="ok" if entries or behaviours else "empty",
            entries=entries,
            behaviours=behaviours,
            rejected=self.alive_rejections(),
            stats={
                **stats,
                "ips": counts["ip"],
                "domains": counts["domain"],
                "ports": counts["port"],
                "behaviours": len(behaviours),
            },
        )

    def touched_counts(self) -> dict[str, int]:
        return {
            "ips": sum(1 for kind, _ in self.touched if kind == "ip"),
            "domains": sum(1 for kind, _ in self.touched if kind == "domain"),
            "ports": sum(1 for kind, _ in self.touched if kind == "port"),
        }

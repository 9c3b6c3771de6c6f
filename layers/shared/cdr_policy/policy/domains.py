"""Domain indicators: how (and whether) they are enforced.

Neither engine can deny a domain safely. Cilium has no ``toFQDNs`` in ``egressDeny`` (the field
does not exist there and the maintainers declined it, cilium/cilium#35494), and an FQDN allow
already lets through other names that share an address (#31803). Tetragon sees addresses at
``connect()``, not names. So a domain is either reported or turned into addresses, per channel
(``domain_enforcement``):

- ``report`` (default): domains are listed in the run report (value, sources, expiry) and not
  enforced. Nothing can go wrong, and nothing is blocked: the report says so.
- ``resolve``: each domain that passes the never-block list is resolved at render time (an
  injectable resolver; by default the system resolver) and its addresses become ``/32``/``/128``
  indicators with the domain's provenance, expiring after ``RESOLVED_TTL`` (or earlier, with the
  domain), so that a stale resolution stops being enforced at the next renders. Each address then
  goes through the never-block list like any other. A domain that resolves to more than
  ``MAX_ADDRESSES`` addresses is most likely served by a CDN or a large load-balancer pool, where
  blocking the addresses would cut off bystanders: it is refused, with the reason. Failures to
  resolve are reported, not fatal.

Trade-off of ``resolve``: the addresses are only what this resolver saw at render time (attackers
rotate them; shared hosting puts innocent sites on the same address) and the bundle changes when
the answers change. It blocks what the domain pointed to, for the CDR detections that matter most,
at the risk of collateral blocks that ``MAX_ADDRESSES`` and the short TTL only limit.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cdr_policy.models import MAX_REFS, Indicator, Rejection
from cdr_policy.observability import logger
from cdr_policy.timeutil import iso, parse_iso

Resolver = Callable[[str], Sequence[str]]
RESOLVED_TTL = timedelta(hours=6)
MAX_ADDRESSES = 8


def system_resolver(name: str) -> list[str]:
    """Addresses of ``name`` from the system resolver (A and AAAA)."""
    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


@dataclass
class DomainOutcome:
    indicators: list[Indicator] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def handle_domains(
    domains: Sequence[Indicator],
    *,
    mode: str,
    now: datetime,
    refuse_domain: Callable[[str], str | None],
    resolver: Resolver | None,
) -> DomainOutcome:
    """Report or resolve ``domains`` (see the module docstring). ``refuse_domain`` is the never-block
    check (``NeverBlock.check_domain``); resolved addresses are checked later with the other IPs."""
    outcome = DomainOutcome()
    listed = [
        {"value": d.value, "sources": sorted(d.sources), "expires_at": d.expires_at}
        for d in sorted(domains, key=lambda d: d.value)
    ]
    if mode == "report":
        outcome.report = {
            "mode": "report",
            "count": len(listed),
            "enforced": 0,
            "note": "domains are not enforced on this channel (domain_enforcement: report)",
            "domains": listed,
        }
        return outcome
    resolve = resolver or system_resolver
    resolved: list[dict[str, Any]] = []
    for domain in sorted(domains, key=lambda d: d.value):
        source = ",".join(sorted(domain.sources))
        refusal = refuse_domain(domain.value)
        if refusal:
            outcome.rejected.append(Rejection(domain.value, source, refusal))
            continue
        try:
            addresses = sorted({str(ipaddress.ip_address(a)) for a in resolve(domain.value)}, key=_address_order)
        except (OSError, UnicodeError, ValueError) as exc:
            outcome.rejected.append(Rejection(domain.value, source, f"not resolved: {exc}"))
            logger.info("domain not resolved", extra={"domain": domain.value, "error": str(exc)})
            continue
        if not addresses:
            outcome.rejected.append(Rejection(domain.value, source, "not resolved: no address"))
            continue
        if len(addresses) > MAX_ADDRESSES:
            outcome.rejected.append(
                Rejection(
                    domain.value,
                    source,
                    f"resolves to {len(addresses)} addresses (> {MAX_ADDRESSES}): shared or CDN hosting",
                )
            )
            continue
        expires = iso(min(parse_iso(domain.expires_at), now + RESOLVED_TTL))
        for address in addresses:
            outcome.indicators.append(_address_indicator(domain, address, expires))
        resolved.append({"value": domain.value, "addresses": addresses, "expires_at": expires})
    outcome.report = {
        "mode": "resolve",
        "count": len(listed),
        "enforced": len(resolved),
        "note": f"resolved at render time into /32 and /128 entries that expire within {RESOLVED_TTL}",
        "resolved": resolved,
    }
    return outcome


def _address_order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def _address_indicator(domain: Indicator, address: str, expires_at: str) -> Indicator:
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return Indicator(
        value=f"{ip}/{ip.max_prefixlen}",
        kind="ip",
        category=domain.category,
        sources=sorted(domain.sources),
        first_seen=domain.first_seen,
        last_seen=domain.last_seen,
        expires_at=expires_at,
        refs=sorted({f"domain:{domain.value}", *domain.refs})[:MAX_REFS],
        score=domain.score,
    )

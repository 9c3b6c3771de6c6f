"""Evidence ranking for the capacity budget.

When a channel's blocklist holds more prefixes than its budget, the policy compiler keeps the
strongest evidence and reports the rest as left out; it never cuts at random. ``rank`` orders
indicators best first by these keys, in this order:

1. **CDR detection** (``"cdr"`` among the sources): seen in our own workloads, so it comes first.
2. **Agreement**: the number of distinct sources listing the value. Two feeds that agree beat one.
3. **Reputation score**: AbuseIPDB ``abuseConfidenceScore`` (0-100); no score counts as 0.
4. **Category weight** (``CATEGORY_WEIGHTS``): ``c2`` (live command-and-control: a connection
   means a compromised workload reaching its operator) > ``malware`` (distribution sites) >
   ``compromised`` (known-infected hosts) > ``attacker`` (observed brute force and exploitation,
   short-lived) > ``reputation`` (crowd-sourced abuse reports) > ``spam`` > ``scanner``
   (reconnaissance, mostly inbound noise) > ``tor`` (anonymity network with heavy legitimate
   use) > ``other`` and anything unknown.
5. **Recency**: the later ``last_seen`` first.
6. **Value**: kind, then numeric prefix order (IPv4 before IPv6), so that ties break the same way
   on every run.
"""

from __future__ import annotations

from cdr_policy.models import Indicator
from cdr_policy.netprefix import sort_key
from cdr_policy.timeutil import parse_iso

CATEGORY_WEIGHTS: dict[str, int] = {
    "c2": 80,
    "malware": 70,
    "compromised": 60,
    "attacker": 50,
    "reputation": 40,
    "spam": 30,
    "scanner": 20,
    "tor": 10,
    "other": 0,
}


def category_weight(category: str) -> int:
    return CATEGORY_WEIGHTS.get(category, 0)


def evidence_key(ind: Indicator) -> tuple:
    """Sort key, smaller is stronger evidence (see the module docstring for the order)."""
    return (
        0 if "cdr" in ind.sources else 1,
        -len(set(ind.sources)),
        -(ind.score or 0),
        -category_weight(ind.category),
        -int(parse_iso(ind.last_seen).timestamp()),
        ind.kind,
        _value_key(ind),
    )


def rank(indicators: list[Indicator]) -> list[Indicator]:
    """Indicators best evidence first (a new list)."""
    return sorted(indicators, key=evidence_key)


def _value_key(ind: Indicator) -> tuple:
    if ind.kind == "ip":
        try:
            return (sort_key(ind.value), ind.value)
        except ValueError:
            pass
    return ((99, 0, 0), ind.value)

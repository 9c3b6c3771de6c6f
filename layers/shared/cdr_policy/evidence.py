"""Evidence ranking for the capacity budget: the weight of each threat category (feeds declare one;
CDR detections map onto them), shared by the feed configuration and the policy compiler.

When a channel's blocklist holds more prefixes than its budget, the policy compiler keeps the
strongest evidence and reports the rest as left out; it never cuts at random. It orders
indicators best first (``cdr_policy.policy.ranked``, on arrays) by these keys, in this order:

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

"""Evidence ranking for the capacity budget (order documented in ``cdr_policy.evidence``,
computed on arrays by ``cdr_policy.policy.ranked``)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from cdr_policy.evidence import CATEGORY_WEIGHTS, category_weight
from cdr_policy.models import Indicator
from cdr_policy.policy.ranked import rank_ips

NOW = datetime(2026, 3, 2, tzinfo=UTC)


class NothingProtected:
    """A guard that allows every prefix (these tests use documentation ranges)."""

    def check_interval(self, version: int, first: int, last: int, prefixlen: int) -> str | None:
        return None

    def protected_ranges(self, version: int) -> list[tuple[int, int]]:
        return []

    def min_prefix_length(self, version: int) -> int:
        return 0


def rank(indicators: list[Indicator]) -> list[str]:
    table = rank_ips(indicators, [], now=NOW, guard=NothingProtected()).table
    return [table.value(row) for row in range(len(table))]


def ind(
    value: str,
    sources: list[str],
    category: str = "attacker",
    last: str = "2026-03-01T10:00:00Z",
    score: int | None = None,
) -> Indicator:
    return Indicator(
        value=value,
        kind="ip",
        category=category,
        sources=sources,
        first_seen="2026-02-01T00:00:00Z",
        last_seen=last,
        expires_at="2026-04-01T00:00:00Z",
        refs=[],
        score=score,
    )


def test_documented_order() -> None:
    expected = [
        ind("203.0.113.9/32", ["cdr"], "network_scanning", last="2026-01-01T00:00:00Z"),  # CDR beats everything
        ind("198.51.100.1/32", ["blocklist-de", "cinsscore", "tor-exit"], "tor"),  # three sources agree
        ind("198.51.100.2/32", ["abuseipdb", "blocklist-de"], "attacker", score=100),  # two, with a score
        ind("198.51.100.3/32", ["emerging-threats", "feodo-c2"], "c2"),  # two, no score, heavier category
        ind("198.51.100.4/32", ["blocklist-de", "cinsscore"], "attacker"),
        ind("198.51.100.5/32", ["abuseipdb"], "reputation", score=99),  # one source, highest score
        ind("198.51.100.6/32", ["feodo-c2"], "c2"),  # category order for single-source entries
        ind("198.51.100.7/32", ["emerging-threats"], "compromised", last="2026-03-01T11:00:00Z"),
        ind("198.51.100.8/32", ["emerging-threats"], "compromised", last="2026-03-01T09:00:00Z"),  # older
        ind("198.51.100.9/32", ["blocklist-de"], "attacker"),
        ind("198.51.100.10/32", ["cinsscore"], "scanner"),
        ind("2001:db8::1/128", ["tor-exit"], "tor"),  # ties break on the value: IPv4 before IPv6
        ind("2001:db8::2/128", ["tor-exit"], "tor"),
        ind("198.51.100.11/32", ["custom"], "something-new"),  # unknown categories weigh nothing
    ]
    shuffled = expected[:]
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert rank(shuffled) == [i.value for i in expected]


def test_value_tie_break_is_numeric_and_deterministic() -> None:
    a, b = ind("9.9.9.10/32", ["x"]), ind("10.0.0.1/32", ["x"])
    assert rank([b, a]) == rank([a, b]) == ["9.9.9.10/32", "10.0.0.1/32"]


def test_duplicate_sources_count_once() -> None:
    assert rank([ind("1.2.3.4/32", ["x", "x"]), ind("1.2.3.3/32", ["y"])]) == ["1.2.3.3/32", "1.2.3.4/32"]


def test_category_weights_follow_the_documented_order() -> None:
    order = ["c2", "malware", "compromised", "attacker", "reputation", "spam", "scanner", "tor", "other"]
    assert sorted(CATEGORY_WEIGHTS, key=lambda c: -CATEGORY_WEIGHTS[c]) == order
    assert category_weight("unheard-of") == 0

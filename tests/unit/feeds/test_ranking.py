"""Evidence ranking for the capacity budget (order documented in ``cdr_policy.feeds.ranking``)."""

from __future__ import annotations

import random

from cdr_policy.feeds.ranking import CATEGORY_WEIGHTS, category_weight, evidence_key, rank
from cdr_policy.models import Indicator


def ind(value: str, sources: list[str], category: str = "attacker", last: str = "2026-03-01T10:00:00Z", score=None):
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
        assert [i.value for i in rank(shuffled)] == [i.value for i in expected]


def test_value_tie_break_is_numeric_and_deterministic() -> None:
    a, b = ind("9.9.9.10/32", ["x"]), ind("10.0.0.1/32", ["x"])
    assert [i.value for i in rank([b, a])] == ["9.9.9.10/32", "10.0.0.1/32"]
    assert evidence_key(a) < evidence_key(b)


def test_duplicate_sources_count_once() -> None:
    assert evidence_key(ind("1.2.3.4/32", ["x", "x"]))[1] == -1


def test_category_weights_follow_the_documented_order() -> None:
    order = ["c2", "malware", "compromised", "attacker", "reputation", "spam", "scanner", "tor", "other"]
    assert sorted(CATEGORY_WEIGHTS, key=lambda c: -CATEGORY_WEIGHTS[c]) == order
    assert category_weight("unheard-of") == 0


def test_rank_returns_a_new_list() -> None:
    items = [ind("1.2.3.5/32", ["x"]), ind("1.2.3.4/32", ["x"])]
    ranked = rank(items)
    assert ranked is not items and [i.value for i in items] == ["1.2.3.5/32", "1.2.3.4/32"]

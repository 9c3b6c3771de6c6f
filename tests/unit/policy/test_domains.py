"""Domain indicators: reported by default, resolved into short-lived entries on request."""

from __future__ import annotations

import socket

import pytest

from cdr_policy.models import IndicatorSet
from cdr_policy.policy import domains
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet

from .factories import NOW, by_file, cdr_set, indicator, render

RESOLVE = ChannelSettings(name="prod", domain_enforcement="resolve")


class FakeResolver:
    def __init__(self, answers: dict[str, list[str] | Exception]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, name: str) -> list[str]:
        self.asked.append(name)
        answer = self.answers[name]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _sets(*names: str) -> list[IndicatorSet]:
    return [cdr_set([indicator(n, "domain") for n in names] + [indicator("45.33.32.0/24")])]


def test_domains_are_reported_not_enforced_by_default() -> None:
    result = render(_sets("evil.example", "c2.example"))
    assert result.report["domains"]["mode"] == "report"
    assert result.report["domains"]["enforced"] == 0
    assert [d["value"] for d in result.report["domains"]["domains"]] == ["c2.example", "evil.example"]
    assert "evil.example" not in str([f.obj for f in result.files])


def test_resolve_mode_blocks_the_addresses_for_a_short_time(schemas: SchemaSet) -> None:
    resolver = FakeResolver({"evil.example": ["45.33.40.1", "2a00:1450:4001::5", "::ffff:45.33.40.2"]})
    result = render(_sets("evil.example"), RESOLVE, schemas, resolver=resolver)
    files = by_file(result)
    group = files["cilium-cdr-blocklist-cidrs-001.yaml"]["spec"]["externalCIDRs"]
    assert group == ["45.33.32.0/24", "45.33.40.1/32", "45.33.40.2/32", "2a00:1450:4001::5/128"]
    [entry] = result.report["domains"]["resolved"]
    assert entry["expires_at"] == "2026-01-10T22:45:00Z"  # now + 6 h, earlier than the domain's expiry
    daddr = files["cdr-dynamic-blocklist.yaml"]["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["values"]
    assert "::ffff:45.33.40.1/128" in daddr


def test_resolution_is_guarded() -> None:
    resolver = FakeResolver(
        {
            "internal-looking.example": ["10.1.2.3"],  # private: refused like any other prefix
            "cdn.example": [f"45.34.0.{i}" for i in range(domains.MAX_ADDRESSES + 1)],
            "gone.example": socket.gaierror("Name or service not known"),
            "empty.example": [],
        }
    )
    names = ["internal-looking.example", "cdn.example", "gone.example", "empty.example", "api.amazonaws.com"]
    result = render(_sets(*names), RESOLVE, resolver=resolver)
    reasons = {r["value"]: r["reason"] for r in result.report["rejected"]}
    assert reasons["10.1.2.3/32"].startswith("inside never-block range: private range")
    assert reasons["cdn.example"].startswith("resolves to 9 addresses")
    assert reasons["gone.example"].startswith("not resolved:")
    assert reasons["empty.example"] == "not resolved: no address"
    assert reasons["api.amazonaws.com"].startswith("never-block domain")
    assert "api.amazonaws.com" not in resolver.asked  # never-block domains are not even resolved
    assert result.report["domains"]["enforced"] == 1


def test_handle_domains_without_domains() -> None:
    outcome = domains.handle_domains([], mode="resolve", now=NOW, refuse_domain=lambda d: None, resolver=lambda d: [])
    assert outcome.indicators == [] and outcome.report["count"] == 0


@pytest.mark.parametrize("mode", ["report", "resolve"])
def test_channel_accepts_only_known_modes(mode: str) -> None:
    assert ChannelSettings(name="x", domain_enforcement=mode).domain_enforcement == mode


def test_system_resolver_reads_the_hosts_file() -> None:
    assert "127.0.0.1" in domains.system_resolver("localhost")

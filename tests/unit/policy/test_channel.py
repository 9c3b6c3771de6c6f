"""Channel settings that bound what a bundle does over time and on evidence."""

from __future__ import annotations

import pytest

from cdr_policy.errors import ConfigError
from cdr_policy.policy.channel import MAX_BUNDLE_TTL_HOURS, ChannelSettings


def test_bundle_lifetime_is_at_most_30_days_and_at_least_twice_the_re_render_period() -> None:
    assert ChannelSettings.from_dict({"name": "prod", "bundle_ttl_hours": MAX_BUNDLE_TTL_HOURS}).bundle_ttl_hours == 720
    with pytest.raises(ConfigError, match="bundle_ttl_hours is at most 720"):
        ChannelSettings.from_dict({"name": "prod", "bundle_ttl_hours": MAX_BUNDLE_TTL_HOURS + 1})
    channel = ChannelSettings.from_dict({"name": "prod", "bundle_ttl_hours": 12})
    channel.check_lifetime(6)
    with pytest.raises(ConfigError, match=r"bundle_ttl_hours 12 is less than twice the re-render period \(6.5 h\)"):
        channel.check_lifetime(6.5)


@pytest.mark.parametrize("value", [1, 0, 1001, "3", 2.5, True])
def test_evidence_needs_at_least_two_workloads(value: str | float | bool) -> None:
    with pytest.raises(ConfigError, match="evidence_min_workloads"):
        ChannelSettings.from_dict({"name": "prod", "evidence_min_workloads": value})
    assert ChannelSettings.from_dict({"name": "prod", "evidence_min_workloads": 2}).evidence_min_workloads == 2


CHANNELS = """channels:
- {name: staging}
- {name: prod, action: Sigkill, promote: %s}
"""


def _parsed(promote: str) -> list[ChannelSettings]:
    from cdr_policy.documents import parse_channels

    return parse_channels(CHANNELS % promote, "config/channels.yaml", refresh_hours=6)


def test_promotion_settings_read_as_the_issue_writes_them() -> None:
    channels = _parsed(
        "{from: staging, soak: 24h, max_workloads_hit: 3, protected_namespaces: [kube-system, payments], "
        "min_clusters_reporting: 2, watch: {for: 12h, max_rate_increase: 3, rollback: true}}"
    )
    promote = channels[1].promote
    assert promote is not None and promote.to_dict() == {
        "from": "staging",
        "soak": 86400,
        "max_workloads_hit": 3,
        "protected_namespaces": ["kube-system", "payments"],
        "min_clusters_reporting": 2,
        "watch": {"for": 43200, "max_workloads_hit": 3, "max_rate_increase": 3.0, "min_events": 20, "rollback": True},
    }
    # part of the channel's fingerprint (a render with other settings is superseded); absent, the fingerprint
    # is what it was before promotion existed
    assert channels[1].fingerprint() != ChannelSettings.from_dict({"name": "prod", "action": "Sigkill"}).fingerprint()
    assert "promote" not in channels[0].to_dict()


@pytest.mark.parametrize(
    ("promote", "message"),
    [
        ("{from: prod}", "promote.from must name another configured channel, not prod"),
        ("{from: qa}", "promote.from must name another configured channel, not qa"),
        ("{soak: 24h}", "promote.from must name the audit channel it follows"),
        ("{from: staging, soak: 8d}", "promote.soak must be 0s..7d, got 8d"),
        ("{from: staging, soak: yes}", "promote.soak must be a duration like 24h, got a boolean"),
        ("{from: staging, soak: soon}", "promote.soak: invalid duration"),
        ("{from: staging, max_workloads_hit: -1}", "promote.max_workloads_hit must be a whole number 0..1000"),
        ("{from: staging, min_clusters_reporting: 0}", "promote.min_clusters_reporting must be a whole number 1..1000"),
        ("{from: staging, protected_namespaces: [Pay_Ments]}", "promote.protected_namespaces: 'Pay_Ments' is not a"),
        ("{from: staging, protected_namespaces: payments}", "promote.protected_namespaces must be a list"),
        ("{from: staging, speed: 3}", "promote: unknown setting(s) speed"),
        ("{from: staging, watch: {for: 1s}}", "promote.watch.for must be 1m..7d, got 1s"),
        (
            "{from: staging, watch: {max_rate_increase: 0.5}}",
            "promote.watch.max_rate_increase must be a number 1..1000",
        ),
        ("{from: staging, watch: {rollback: sometimes}}", "promote.watch.rollback must be true or false"),
        ("[staging]", "promote must be a mapping like {from: staging"),
    ],
)
def test_promotion_settings_are_refused_with_one_line_naming_the_setting(promote: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _parsed(promote)
    text = str(refused.value)
    assert text.startswith("config/channels.yaml: ") and "channel prod: " in text and message in text
    assert "\n" not in text


def test_a_channel_is_promoted_from_an_audit_channel_that_reports_workloads() -> None:
    from cdr_policy.documents import parse_channels

    def refused(text: str) -> str:
        with pytest.raises(ConfigError) as error:
            parse_channels(text, "c.yaml", refresh_hours=6)
        return str(error.value)

    assert "staging enforces (Sigkill)" in refused(
        "channels:\n- {name: staging, action: Sigkill}\n- {name: prod, action: Sigkill, promote: {from: staging}}\n"
    )
    assert "promote is for an enforcing channel" in refused(
        "channels:\n- {name: staging}\n- {name: prod, promote: {from: staging}}\n"
    )
    assert "reports its hits with hit_detail namespace" in refused(
        "channels:\n- {name: staging, hit_detail: namespace}\n"
        "- {name: prod, action: Sigkill, promote: {from: staging}}\n"
    )
    assert "its own hit_detail must be workload or pod, not off" in refused(
        "channels:\n- {name: staging}\n"
        "- {name: prod, action: Sigkill, hit_detail: 'off', promote: {from: staging, watch: {for: 1h}}}\n"
    )

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

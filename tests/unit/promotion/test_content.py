"""What two channels can compare of a rule: the fingerprint of what its objects match, whatever
the channel's action, policy mode and scoping; a new name it matches is a new version."""

from __future__ import annotations

import pytest

from cdr_policy.guards import NeverBlock
from cdr_policy.models import IndicatorSet
from cdr_policy.policy.channel import ChannelSettings, KernelCapabilities
from cdr_policy.policy.render import compile_policies
from cdr_policy.promotion.content import rule_fingerprints
from cdr_policy.rules import RULES
from tests.unit.policy.factories import NOW, behaviour, sighting

AUDIT = ChannelSettings("staging")


def fingerprints(channel: ChannelSettings, processes: dict[str, list[str]] | None = None) -> dict[str, str]:
    names = processes or {}
    behaviours = [behaviour(rule, names.get(rule, ["xmrig"] if rule == "crypto_mining" else [])) for rule in RULES]
    cdr = IndicatorSet(source="cdr", fetched_at="2026-01-10T16:00:00Z", status="ok", behaviours=behaviours)
    result = compile_policies([cdr], channel, now=NOW, guard=NeverBlock())
    return rule_fingerprints(f.obj for f in result.files)


@pytest.mark.parametrize(
    "enforcing",
    [
        ChannelSettings("prod", action="Sigkill"),
        ChannelSettings("prod", action="Override"),
        ChannelSettings("prod", action="Override", kernel=KernelCapabilities(override_helper=True)),
        ChannelSettings("prod", action="Sigkill", namespaces=("shop", "payments"), pod_labels={"tier": "web"}),
        ChannelSettings("prod", action="Sigkill", promoted_rules=("container_escape",)),
    ],
)
def test_every_rule_matches_alike_on_the_audit_channel_and_an_enforcing_one(enforcing: ChannelSettings) -> None:
    audit = fingerprints(AUDIT)
    assert set(audit) == set(RULES)
    assert fingerprints(enforcing) == audit


def test_a_name_a_rule_newly_matches_is_a_new_version_and_a_workload_scope_counts() -> None:
    before = fingerprints(AUDIT)
    after = fingerprints(AUDIT, {"crypto_mining": ["xmrig", "cpuminer-opt"]})
    assert {r for r in RULES if before[r] != after[r]} == {"crypto_mining"}

    def placed(namespaces: tuple[str, str]) -> dict[str, str]:
        seen = [
            sighting("cpuminer-opt", ns, deployment=name) for ns, name in zip(namespaces, ("web", "job"), strict=True)
        ]
        cdr = IndicatorSet("cdr", "2026-01-10T16:00:00Z", "ok", behaviours=[behaviour("crypto_mining", sightings=seen)])
        return rule_fingerprints(f.obj for f in compile_policies([cdr], AUDIT, now=NOW, guard=NeverBlock()).files)

    # the name seen in two workloads is enforced in each of them: where they run is what it matches
    assert placed(("shop", "batch")) != placed(("shop", "ops"))

"""compile_policies end to end: inputs, guards, report, determinism, refusal to ship."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from cdr_policy.errors import PolicyCheckError
from cdr_policy.guards import NeverBlock
from cdr_policy.models import IndicatorSet
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.policy.render import compile_policies
from cdr_policy.policy.tetragon import ConnectMatch

from .factories import NOW, behaviour, by_file, cdr_set, feed_set, file_bytes, indicator, render


def _inputs() -> list[IndicatorSet]:
    cdr = cdr_set(
        [
            indicator("45.33.32.0/24", refs=("f-2", "f-1")),
            indicator("8.8.8.8/32"),  # public resolver: never blocked
            indicator("10.20.0.0/16"),  # private range
            indicator("2a00:1450:4001::/48"),
            indicator("tcp/4444", "port"),
            indicator("evil.example", "domain"),
        ],
        [behaviour("cloud_credentials", ["curl"]), behaviour("network_scanning", ["masscan"])],
    )
    feeds = [
        feed_set("tor-exit", [f"185.220.101.{i}/32" for i in range(16)], "tor"),
        feed_set("feodo-c2", ["45.33.32.0/24", "91.92.93.0/24"], "c2"),
    ]
    return [cdr, *feeds]


def test_render_end_to_end(schemas: SchemaSet) -> None:
    result = render(_inputs(), ChannelSettings(name="prod", action="Sigkill"), schemas)
    names = [f.filename for f in result.files]
    assert names == [
        "cilium-cdr-blocklist-cidrs-001.yaml",
        "cilium-threat-intel-blocklist-cidrs-001.yaml",
        "cdr-block-cloud-creds-20260109.yaml",
        "cdr-block-network-scan-20260109.yaml",
        "cdr-dynamic-blocklist.yaml",
        "cilium-cdr-blocklist.yaml",
        "cilium-threat-intel-blocklist.yaml",
        "threat-intel-blocklist.yaml",
    ]
    report = result.report
    assert report["channel"] == {
        "name": "prod",
        "action": "Sigkill",
        "cilium_version": "1.17",
        "kernel": {"override_helper": False},
    }
    assert report["sources"] == {"used": ["cdr", "feed:feodo-c2", "feed:tor-exit"], "excluded": []}
    assert report["indicators"] == {"ips": 21, "domains": 1, "ports": 1}
    assert {r["value"]: r["reason"] for r in report["rejected"]} == {
        "8.8.8.8/32": "inside never-block range: public DNS resolver (Google)",
        "10.20.0.0/16": "inside never-block range: private range (RFC 1918)",
    }
    assert [p["file"] for p in report["policies"]] == names
    assert report["checks"]["errors"] == 0 and report["checks"]["schemas"] is True
    files = by_file(result)
    # An address in a CDR detection and in a feed goes to the CDR blocklist only, with both sources.
    assert files["cilium-cdr-blocklist-cidrs-001.yaml"]["spec"]["externalCIDRs"] == [
        "45.33.32.0/24",
        "2a00:1450:4001::/48",
    ]
    assert files["cilium-threat-intel-blocklist-cidrs-001.yaml"]["spec"]["externalCIDRs"] == [
        "91.92.93.0/24",
        "185.220.101.0/28",
    ]
    annotations = files["cdr-dynamic-blocklist.yaml"]["metadata"]["annotations"]
    assert annotations["cdr-policy.io/sources"] == "cdr=3,feed:feodo-c2=1"
    assert annotations["cdr-policy.io/refs"] == "f-1,f-2,feodo-c2,finding-1"  # findings and feeds
    assert annotations["cdr-policy.io/entries"] == "2"
    assert annotations["cdr-policy.io/expires-at"] == "2026-01-17T12:00:00Z"
    assert files["threat-intel-blocklist.yaml"]["metadata"]["labels"]["cdr-policy.io/blocklist"] == "threat-intel"


def test_same_input_same_bytes_and_order_does_not_matter() -> None:
    first = file_bytes(render(_inputs()))
    assert file_bytes(render(_inputs())) == first
    for seed in range(3):
        shuffled = _inputs()
        rnd = random.Random(seed)
        rnd.shuffle(shuffled)
        for s in shuffled:
            rnd.shuffle(s.entries)
            rnd.shuffle(s.behaviours)
        result = render(shuffled)
        assert file_bytes(result) == first
        assert list(file_bytes(result)) == list(first)


def test_channel_protected_ranges_are_never_blocked() -> None:
    channel = ChannelSettings(name="prod", protected_cidrs=("45.33.0.0/16",))
    result = render(_inputs(), channel)
    reasons = {r["value"]: r["reason"] for r in result.report["rejected"]}
    assert reasons["45.33.32.0/24"] == "inside never-block range: protected range of channel prod"
    assert "45.33.32.0/24" not in str([f.obj for f in result.files])


def test_threat_intel_off_keeps_only_cdr_indicators() -> None:
    result = render(_inputs(), ChannelSettings(name="prod", threat_intel=False))
    assert result.report["sources"] == {"used": ["cdr"], "excluded": ["feed:feodo-c2", "feed:tor-exit"]}
    assert not [f for f in result.files if "threat-intel" in f.filename]


def test_disabled_sets_are_ignored_and_stale_ones_still_count() -> None:
    sets = [
        feed_set("a", ["91.92.93.0/24"], status="disabled"),
        feed_set("b", ["91.92.94.0/24"], status="stale"),
    ]
    result = render(sets)
    assert result.report["sources"] == {"used": ["feed:b"], "excluded": ["feed:a"]}
    assert by_file(result)["cilium-threat-intel-blocklist-cidrs-001.yaml"]["spec"]["externalCIDRs"] == ["91.92.94.0/24"]


def test_expired_entries_and_behaviours_are_dropped_unknown_rules_reported() -> None:
    expired = "2026-01-10T00:00:00Z"
    sets = [
        cdr_set(
            [indicator("45.33.32.0/24", expires_at=expired)],
            [behaviour("crypto_mining", expires_at=expired), behaviour("no_such_rule")],
        )
    ]
    result = render(sets)
    assert result.files == []
    assert result.report["rejected"] == [
        {
            "value": "no_such_rule",
            "source": "cdr",
            "reason": "unknown behaviour rule (not in cdr_policy.rules)",
        }
    ]


def test_behaviours_of_the_same_rule_are_merged() -> None:
    a = behaviour("network_scanning", ["masscan"], first_seen="2026-01-08T00:00:00Z")
    b = behaviour("network_scanning", ["zmap", "nmap"])
    b.categories = {"Network_Scanning_Utility": 2}
    result = render([cdr_set(behaviours=[a]), cdr_set(behaviours=[b])])
    [f] = result.files
    assert f.filename == "cdr-block-network-scan-20260108.yaml"
    assert f.obj["metadata"]["annotations"]["cdr-policy.io/categories"] == (
        "Category_For_network_scanning=3,Network_Scanning_Utility=2"
    )
    evidence = result.report["behaviours"][0]["evidence"]
    assert [(r["process"], r["placement"]) for r in evidence] == [
        ("masscan", "rule"),
        ("nmap", "rule"),
        ("zmap", "rule"),
    ]


def test_an_object_the_target_cluster_cannot_serve_is_refused(crds_dir: Path) -> None:
    # A 1.18 channel emits cilium.io/v2 CiliumCIDRGroups; Cilium 1.16.5's CRDs do not serve them.
    old = SchemaSet.from_dir(crds_dir / "cilium-v1.16.5")
    channel = ChannelSettings(name="prod", cilium_version="1.18")
    with pytest.raises(PolicyCheckError, match="no CRD serves cilium.io/v2 CiliumCIDRGroup"):
        render(_inputs(), channel, old)


def test_checklist_errors_stop_the_render_even_without_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    from cdr_policy.policy import behaviours

    # an Override on tcp_connect: the agent would refuse to load it
    def broken(ctx: behaviours.Context) -> list[dict[str, Any]]:
        kp = behaviours.connect(ctx, ConnectMatch(ports=(3333,)))
        kp["selectors"][0]["matchActions"] = [{"action": "Override", "argError": -1}]
        return [kp]

    monkeypatch.setitem(behaviours.CATALOGUE, "crypto_mining", behaviours.RuleSpec(broken))
    with pytest.raises(PolicyCheckError, match="tetragon.override-hook"):
        render([cdr_set(behaviours=[behaviour("crypto_mining")])], ChannelSettings(name="prod", action="Sigkill"))


def test_caller_guard_entries_apply() -> None:
    guard = NeverBlock(extra=[("91.92.0.0/16", "own endpoint")])
    result = compile_policies(_inputs(), ChannelSettings(name="prod"), now=NOW, guard=guard)
    assert {
        "value": "91.92.93.0/24",
        "source": "feed:feodo-c2",
        "reason": "inside never-block range: own endpoint",
    } in (result.report["rejected"])


def test_empty_input_renders_nothing() -> None:
    result = render([IndicatorSet(source="cdr", fetched_at="2026-01-10T00:00:00Z", status="empty")])
    assert result.files == [] and result.report["budget"]["tetragon"]["used"] == 0


def test_provenance_changes_update_in_place_enforcement_changes_rename() -> None:
    first = render(_inputs())
    later = _inputs()
    for s in later:
        for e in s.entries:
            e.expires_at = "2026-01-20T00:00:00Z"
    second = render(later)
    assert [f.name for f in second.files] == [f.name for f in first.files]
    assert file_bytes(second) != file_bytes(first)
    more = _inputs()
    more[1].entries.append(indicator("185.220.102.1/32", sources=("feed:tor-exit",), category="tor"))
    renamed = {f.filename for f in render(more).files} & {f.filename for f in first.files}
    changed = {f.filename for f in render(more).files if f.name not in {g.name for g in first.files}}
    assert changed == {
        "cilium-threat-intel-blocklist-cidrs-001.yaml",
        "cilium-threat-intel-blocklist.yaml",
        "threat-intel-blocklist.yaml",
    }
    assert renamed == {f.filename for f in first.files}


def test_policy_summaries_carry_entry_counts() -> None:
    result = render(_inputs())
    entries = {p["file"]: p["entries"] for p in result.report["policies"]}
    assert entries["cilium-threat-intel-blocklist-cidrs-001.yaml"] == 2
    assert entries["cdr-dynamic-blocklist.yaml"] == 3  # two prefixes and one port

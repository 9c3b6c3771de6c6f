"""Issue 10 as a new user tries it, scaled down: one feed of 50,000 addresses served over loopback
through ``--feeds`` and a channel with a small capacity budget. The run finishes, stores the feed
set in the compact form, writes policies that pass the CRDs and the checklist inside the budget,
and reports what the budget left out (counted, the best-ranked listed). The million-address case
is ``make bench`` (part b)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import yaml

from benchmarks.generate import generate_addresses
from cdr_policy import layout
from cdr_policy.cli import main
from cdr_policy.feeds.persist import parse_set
from cdr_policy.policy.capacity import MAX_LISTED_LEFT_OUT
from cdr_policy.policy.checker import SchemaSet, check_files
from cdr_policy.storage import LocalStore
from cdr_policy.timeutil import utcnow
from demo.runner import FINDINGS
from fakes.feeds import FeedServer
from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway

pytestmark = pytest.mark.integration

ADDRESSES = 50_000
BUDGET = {"tetragon_max_prefixes": 3_000, "cilium_max_prefixes": 4_000}


def test_a_large_feed_renders_inside_the_budget_and_reports_the_rest(
    tmp_path: Path, crds_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    feed = generate_addresses(www / "big.txt", ADDRESSES, seed=5)
    channel = tmp_path / "channel.yaml"
    channel.write_text(yaml.safe_dump({"channels": [{"name": "prod", "cilium_version": "1.18", **BUDGET}]}))
    out, state = tmp_path / "out", tmp_path / "state"
    with FakeQualysGateway(FINDINGS, rebase_to=utcnow()) as gateway, FeedServer(root=www) as server:
        feeds = tmp_path / "feeds.yaml"
        feeds.write_text(
            yaml.safe_dump({"feeds": [{"name": "big", "url": server.url("/big.txt"), "category": "attacker"}]})
        )
        env = {
            "QUALYS_USERNAME": DEMO_USERNAME,
            "QUALYS_PASSWORD": DEMO_PASSWORD,
            "QUALYS_GATEWAY_URL": gateway.url,
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
        }
        argv = [
            "--once",
            "--threat-intel",
            f"--feeds={feeds}",
            f"--channel={channel}",
            f"--output={out}",
            f"--state-dir={state}",
            f"--crds={crds_dir}",
        ]
        assert main(argv, env) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out

    # The feed set is stored compactly and reads back whole.
    stored = LocalStore(state).get(layout.feed_set_key("big")).data
    feed_set = parse_set(stored, "big")
    assert feed_set.prefixes is not None and feed_set.entries == []
    expected = list(ipaddress.collapse_addresses(ipaddress.IPv4Network(a) for a in feed.read_text().split()))
    assert feed_set.prefixes.ipv4.strings() == [str(n) for n in expected]
    assert len(stored) < 12 * len(expected)  # a few bytes per prefix, not a JSON object each

    # Valid policies inside the budget.
    report = json.loads((out / "report.json").read_text())
    files = sorted(out.glob("*.yaml"))
    checked = check_files(files, SchemaSet.from_dir(crds_dir))
    assert checked.errors == 0, checked
    assert report["budget"]["tetragon"]["used"] <= BUDGET["tetragon_max_prefixes"]
    assert report["budget"]["cilium"]["used"] <= BUDGET["cilium_max_prefixes"]
    objects = [yaml.safe_load(f.read_text()) for f in files]
    blocked = {c for o in objects if o["kind"] == "CiliumCIDRGroup" for c in o["spec"]["externalCIDRs"]}
    assert len(blocked) == report["budget"]["cilium"]["used"]

    # What the budget left out is counted and the best-ranked of it listed, never silently dropped.
    left = report["left_out"]
    total = report["left_out_total"]
    # Tetragon's smaller budget leaves out a superset of what Cilium's does.
    assert total == report["budget"]["tetragon"]["left_out"] > len(expected) - BUDGET["tetragon_max_prefixes"] - 100
    assert len(left) == min(total, MAX_LISTED_LEFT_OUT)
    assert [e["rank"] for e in left] == sorted(e["rank"] for e in left)
    assert {e["reason"] for e in left} == {"over budget"}
    for entry in left:  # the larger Cilium budget keeps what only Tetragon's left out
        assert (entry["value"] in blocked) == (entry["engines"] == ["tetragon"])
    assert f"Capacity budget: {total} prefix(es) left out" in printed
    assert report["feeds"]["big"]["entries"] == len(expected)

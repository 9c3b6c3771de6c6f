"""Issue 4 as a new user tries it: the real feed samples (``../shared/feeds``) served over loopback
through ``--feeds``, the counts in ``report.json`` checked against the files themselves, poisoned
entries refused with their reasons, then one feed answering with an HTML page: its last good copy
stays in force and the report says why."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import yaml

from cdr_policy.cli import main
from cdr_policy.timeutil import utcnow
from demo.runner import FINDINGS
from fakes.feeds import FeedServer
from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway

pytestmark = pytest.mark.integration

POISON = ["8.8.8.8", "10.0.0.0/8", "0.0.0.0/0", "192.168.1.1"]


def _expected(lines: list[str]) -> dict[str, int]:
    """Count the addresses of a one-per-line file independently of our parser."""
    counts = {"ipv4": 0, "ipv6": 0}
    for line in lines:
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        counts["ipv4" if ipaddress.ip_address(token).version == 4 else "ipv6"] += 1
    return counts


@pytest.fixture
def feed_dir(shared_feeds_dir: Path, tmp_path: Path) -> Path:
    """The real samples, plus a copy of blocklist.de with poisoned entries appended (ours)."""
    root = tmp_path / "feeds"
    root.mkdir()
    for name in ("tor_torbulkexitlist.txt", "et_compromised-ips.txt", "blocklist_de_all.txt", "feodo_ipblocklist.csv"):
        (root / name).write_bytes((shared_feeds_dir / name).read_bytes())
    poisoned = (shared_feeds_dir / "blocklist_de_all.txt").read_text() + "\n" + "\n".join(POISON) + "\n"
    (root / "blocklist_poisoned.txt").write_text(poisoned)
    return root


def test_real_feeds_counts_poison_and_an_html_page(
    feed_dir: Path, shared_feeds_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feeds_yaml = tmp_path / "feeds.yaml"
    with FakeQualysGateway(FINDINGS, rebase_to=utcnow()) as gateway, FeedServer(root=feed_dir) as server:
        feeds_yaml.write_text(
            yaml.safe_dump(
                {
                    "feeds": [
                        {"name": "tor-exit", "url": server.url("/tor_torbulkexitlist.txt"), "category": "tor"},
                        {
                            "name": "emerging-threats",
                            "url": server.url("/et_compromised-ips.txt"),
                            "category": "compromised",
                        },
                        {"name": "blocklist-de", "url": server.url("/blocklist_poisoned.txt"), "category": "attacker"},
                        {
                            "name": "feodo-c2",
                            "url": server.url("/feodo_ipblocklist.csv"),
                            "category": "c2",
                            "format": "feodo-csv",
                        },
                    ]
                }
            )
        )
        env = {
            "QUALYS_USERNAME": DEMO_USERNAME,
            "QUALYS_PASSWORD": DEMO_PASSWORD,
            "QUALYS_GATEWAY_URL": gateway.url,
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
        }
        argv = ["--once", "--threat-intel", f"--feeds={feeds_yaml}", f"--output={tmp_path / 'out'}"]
        assert main(argv, env) == 0, capsys.readouterr().err
        first = json.loads((tmp_path / "out" / "report.json").read_text())

        # The counts match the files.
        for name, file in (
            ("tor-exit", "tor_torbulkexitlist.txt"),
            ("emerging-threats", "et_compromised-ips.txt"),
            ("blocklist-de", "blocklist_de_all.txt"),
        ):
            expected = _expected((shared_feeds_dir / file).read_text().splitlines())
            stats = first["feeds"][name]["stats"]
            extra_v4 = len(POISON) if name == "blocklist-de" else 0
            assert stats["ipv4"] == expected["ipv4"] + extra_v4, name
            assert stats["ipv6"] == expected["ipv6"], name
            assert first["feeds"][name]["status"] == "ok"
        assert first["feeds"]["blocklist-de"]["stats"]["ipv6"] == 471
        feodo = first["feeds"]["feodo-c2"]
        assert feodo["status"] == "ok" and feodo["stats"]["trailer"] == 28

        # Poisoned entries are refused, each with its reason.
        reasons = {r["value"]: r["reason"] for r in first["rejected"] if r["source"] == "blocklist-de"}
        assert "public DNS resolver" in reasons["8.8.8.8/32"]
        assert "private range" in reasons["10.0.0.0/8"]
        assert "over-broad" in reasons["0.0.0.0/0"]
        assert "private range" in reasons["192.168.1.1/32"]

        # The next download of blocklist.de is an HTML page with status 200.
        server.route("/blocklist_poisoned.txt", html=True)
        assert main(argv, env) == 1, "a stale feed makes the run finish with a problem"
        out = capsys.readouterr().out
        second = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "Kept the last good copy of blocklist-de (" in out and "this download failed: " in out
    stale = second["feeds"]["blocklist-de"]
    assert stale["status"] == "stale"
    assert "html" in stale["error"].lower()
    assert stale["entries"] == first["feeds"]["blocklist-de"]["entries"], "the last good copy stays in force"
    ti = yaml.safe_load((tmp_path / "out" / "threat-intel-blocklist.yaml").read_text())
    selectors = [s for hook in ti["spec"]["kprobes"] for s in hook["selectors"]]
    values = {v for s in selectors for a in s["matchArgs"] for v in a["values"]}
    one_blocklist_de_ip = next(
        line.strip() for line in (shared_feeds_dir / "blocklist_de_all.txt").read_text().splitlines() if "." in line
    )
    assert any(ipaddress.ip_address(one_blocklist_de_ip) in ipaddress.ip_network(v) for v in values)

"""``cdr-policy`` as a user runs it: the original operator's invocations against a gateway (the
loopback fake), threat-intel feeds served over loopback, ``--apply`` against a fake API server,
controller mode, and ``validate``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from cdr_policy import schemas
from fakes.feeds import DEMO_FEED_FILES, DEMO_FEEDS_DIR, FeedServer, demo_feeds_yaml
from fakes.kube import FakeKubeAPI, write_kubeconfig
from fakes.loopback import free_port
from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway
from tests.integration.support import objects, run

REPO = Path(__file__).resolve().parents[2]
ORIGINAL_FILES = {"cdr-dynamic-blocklist.yaml", "cilium-cdr-blocklist.yaml"}


def test_original_once_invocation_prints_the_summary_and_writes_policies_and_report(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "policies"
    code, out, err = run(["--once", "--hours=24", f"--output={out_dir}"], env, capsys)
    assert code == 0, err
    for line in (
        "=== Policy Generation Run:",
        "Fetching CDR events (last 24 hours)...",
        "Found 20 events",
        "Event categories:",
        "  Cloud_Credentials_Accessed_By_Network_Utility: 3",
        "Generating behavior-based policies...",
        "Extracting network indicators from events...",
        "Extracted: 5 IPs, 4 domains, 4 ports",
        "Done.",
    ):
        assert line in out
    files = objects(out_dir)
    assert ORIGINAL_FILES <= set(files)
    assert any(name.startswith("cdr-block-cloud-creds-") for name in files)
    assert any(name.startswith("cdr-block-network-scan-") for name in files)
    assert "threat-intel-blocklist.yaml" not in files, "feeds only with --threat-intel"
    report = json.loads((out_dir / "report.json").read_text())
    schemas.validate(report, "report.schema.json")
    assert report["events"]["fetched"] == 20 and report["events"]["unique"] == 18
    assert report["events"]["by_category"]["Network_Scanning_Utility"] == 2
    assert report["events"]["unmapped_categories"] == {"Suspicious_Unlisted_Activity": 1}
    assert report["indicators"] == {"ips": 5, "domains": 4, "ports": 4}
    assert {p["file"] for p in report["policies"]} == set(files)
    # Audit by default: every TracingPolicy in monitor mode, no enforcing action.
    for obj in files.values():
        if obj["kind"] == "TracingPolicy":
            assert {"name": "policy-mode", "value": "monitor"} in obj["spec"]["options"]
    assert '"Sigkill"' not in json.dumps(list(files.values()))


def test_sigkill_enforces_and_gateway_flag_overrides_environment(
    env: dict[str, str], gateway: FakeQualysGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "p"
    env = {**env, "QUALYS_GATEWAY_URL": "https://gateway.invalid.example"}
    code, _, err = run(["--once", "--action=Sigkill", f"--gateway={gateway.url}", f"--output={out_dir}"], env, capsys)
    assert code == 0, err
    assert '"Sigkill"' in json.dumps(list(objects(out_dir).values()))


def test_threat_intel_with_a_feed_file_matches_the_files(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FeedServer(root=DEMO_FEEDS_DIR) as feeds:
        feed_file = tmp_path / "feeds.yaml"
        feed_file.write_text(demo_feeds_yaml(feeds.url("/")))
        out_dir = tmp_path / "ti"
        code, out, err = run(
            ["--once", "--threat-intel", f"--feeds={feed_file}", "--reputation-threshold=50", f"--output={out_dir}"],
            env,
            capsys,
        )
    assert code == 0, err
    assert "Loading threat intelligence feeds..." in out and "Known bad IPs:" in out
    assert "threat-intel-blocklist.yaml" in objects(out_dir)
    report = json.loads((out_dir / "report.json").read_text())
    for name in DEMO_FEED_FILES:
        assert report["feeds"][name]["status"] == "ok"
        stats = report["feeds"][name]["stats"]
        listed = stats["ipv4"] + stats["ipv6"] + stats["cidr"]
        merged = report["feeds"][name]["entries"]
        assert f"Loaded {name}: {listed} entries in {merged} prefixes after merging" in out
    reasons = {(r["value"], r["reason"].split(":")[0]) for r in report["rejected"]}
    assert ("0.0.0.0/0", "over-broad prefix (shorter than /8)") in reasons
    assert any(v == "1.1.1.1/32" and r == "inside never-block range" for v, r in reasons)
    assert report["feeds"]["abuseipdb"]["status"] == "disabled"


def test_a_file_feed_pointed_at_a_secrets_file_leaks_nothing(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``file://`` feed at a ``.env``: its lines are rejected and reported by line number and
    fingerprint only; the secret reaches neither report.json, the stored sets nor the output."""
    secret = "hunter2-do-not-leak"
    dotenv = tmp_path / ".env"
    addresses = "".join(f"45.61.137.{i}\n" for i in range(1, 40))
    dotenv.write_text(f"QUALYS_USERNAME=ops\nQUALYS_PASSWORD={secret}\n{addresses}")
    feed_file = tmp_path / "feeds.yaml"
    feed_file.write_text(f"feeds:\n  - {{name: dotenv, url: 'file://{dotenv}', category: c2, can_be_empty: true}}\n")
    out_dir = tmp_path / "leak"
    code, out, err = run(["--once", "--threat-intel", f"--feeds={feed_file}", f"--output={out_dir}"], env, capsys)
    report = (out_dir / "report.json").read_text()
    assert json.loads(report)["feeds"]["dotenv"]["stats"]["rejected_parse"] == 2
    stored = "".join(p.read_text(errors="replace") for p in (tmp_path / "cache").rglob("*.json"))
    for text in (report, stored, out, err):
        assert secret not in text and "QUALYS_PASSWORD" not in text
    assert "line 2 sha256:" in report


def test_configuration_errors_are_clear_and_exit_2(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = {k: v for k, v in env.items() if k not in ("QUALYS_USERNAME", "QUALYS_PASSWORD")}
    code, _, err = run(["--once", f"--output={tmp_path}"], bare, capsys)
    assert code == 2 and "QUALYS_USERNAME" in err
    no_gateway = {k: v for k, v in env.items() if k != "QUALYS_GATEWAY_URL"}
    code, _, err = run(["--once", "--platform=XX9", f"--output={tmp_path}"], no_gateway, capsys)
    assert code == 2 and "XX9" in err and "US1" in err
    code, _, err = run(["--once", f"--output={tmp_path}"], no_gateway, capsys)
    assert code == 2 and "--platform" in err
    code, _, err = run(["--once", "--gateway=http://gateway.example.com", f"--output={tmp_path}"], env, capsys)
    assert code == 2 and "http" in err


def test_apply_really_applies_and_prunes_only_its_own_objects(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeKubeAPI() as api:
        foreign = {
            "apiVersion": "cilium.io/v1alpha1",
            "kind": "TracingPolicy",
            "metadata": {"name": "someone-elses", "labels": {"team": "platform"}},
            "spec": {"podSelector": {}},
        }
        api.add_object(foreign)
        kube_env = {**env, "KUBECONFIG": str(api.write_kubeconfig(tmp_path / "kubeconfig"))}
        code, out, err = run(["--once", "--apply", f"--output={tmp_path / 'a'}"], kube_env, capsys)
        assert code == 0, err
        assert "Applying to kubernetes" in out
        applied = [o for o in api.objects() if o["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by")]
        assert len(applied) == len(objects(tmp_path / "a"))
        applies = [op for op in api.operations if op.verb == "apply"]
        assert applies and all(op.params.get("fieldValidation") == "Strict" for op in applies)
        assert any(o["metadata"]["name"] == "someone-elses" for o in api.objects())


def test_apply_holds_cilium_back_when_non_default_deny_policies_are_off(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    off = {("kube-system", "cilium-config"): {"enable-non-default-deny-policies": "false"}}
    with FakeKubeAPI(config_maps=off) as api:
        kube_env = {**env, "KUBECONFIG": str(api.write_kubeconfig(tmp_path / "kubeconfig"))}
        code, out, err = run(["--once", "--apply", f"--output={tmp_path / 'a'}"], kube_env, capsys)
        assert code == 1, err
        assert {o["kind"] for o in api.objects()} == {"TracingPolicy"}, "Tetragon applied, Cilium held back"
        assert [op.verb for op in api.operations].index("configmap") < [op.verb for op in api.operations].index(
            "apply"
        ), "checked before anything is applied"
    written = {obj["kind"] for obj in objects(tmp_path / "a").values()}
    assert "CiliumClusterwideNetworkPolicy" in written, "the files are still written for review"
    assert "Error: preflight CiliumClusterwideNetworkPolicy/" in out
    assert "enable-non-default-deny-policies" in out and "Done, with 1 problem(s)" in out


def test_validate_subcommand(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], crds_dir: Path
) -> None:
    out_dir = tmp_path / "v"
    assert run(["--once", f"--output={out_dir}"], env, capsys)[0] == 0
    code, out, _ = run(["validate", str(out_dir), "--crds", str(crds_dir)], env, capsys)
    assert code == 0, out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumClusterwideNetworkPolicy",
                "metadata": {"name": "Block_FQDN"},
                "spec": {"endpointSelector": {}, "egressDeny": [{"toFQDNs": [{"matchName": "evil.example"}]}]},
            }
        )
    )
    code, out, _ = run(["validate", str(bad), "--crds", str(crds_dir)], env, capsys)
    assert code == 1
    assert "toFQDNs" in out


def test_controller_mode_runs_every_interval_until_stopped(env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdr_policy.cli", "--interval=5s", f"--output={tmp_path / 'c'}"],
        env={**os.environ, **env, "PYTHONPATH": str(REPO / "layers/shared")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tmp_path / "c" / "report.json").exists():
            time.sleep(0.2)
        time.sleep(6)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert "Controller mode: running every 5s" in out, err
    assert out.count("=== Policy Generation Run:") >= 2
    # The second run resumes from the checkpoint: nothing new, nothing counted twice.
    assert "Found 20 events" in out


def test_a_hostile_gateway_still_yields_every_finding_exactly_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 3 as a user sees it: >1,000 findings over several windows and pages, a token that
    expires mid-run, rate limiting with the gateway's headers, duplicates and malformed findings."""
    import ipaddress
    from collections import Counter
    from datetime import timedelta

    from cdr_policy.timeutil import utcnow
    from fakes.qualys import synthetic_findings

    now = utcnow()
    findings = synthetic_findings(
        1300, start=now - timedelta(hours=20), end=now - timedelta(minutes=5), seed=7, malformed_every=97
    )
    duplicates = [f for f in findings[:40] if isinstance(f, dict) and "uuid" in f][:15]
    items = findings + duplicates
    good = [f for f in findings if isinstance(f, dict) and "uuid" in f and "threatCategory" in f]
    with FakeQualysGateway(items, rate_limit_every=4, rate_limit_wait_s=0) as gw:

        def expire_mid_run() -> None:  # the gateway revokes the token after a few pages
            deadline = time.monotonic() + 30
            while len(gw.findings_requests()) < 5 and time.monotonic() < deadline:
                time.sleep(0.005)
            gw.expire_tokens()

        expirer = threading.Thread(target=expire_mid_run, daemon=True)
        expirer.start()
        env = {
            "QUALYS_USERNAME": DEMO_USERNAME,
            "QUALYS_PASSWORD": DEMO_PASSWORD,
            "QUALYS_GATEWAY_URL": gw.url,
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
        }
        out_dir = tmp_path / "out"
        code, out, err = run(["--once", "--hours=24", f"--output={out_dir}"], env, capsys)
        assert code == 0, err
        expirer.join()
        statuses = Counter(r.status for r in gw.findings_requests())
        tokens = gw.tokens_issued
    assert statuses[429] > 0, "the gateway rate-limited"
    assert statuses[401] > 0 and tokens >= 2, "the token expired mid-run and was renewed"
    report = json.loads((out_dir / "report.json").read_text())
    assert report["events"]["unique"] == len(good)
    assert report["events"]["duplicates"] == len(duplicates)
    assert report["events"]["malformed"] == len(items) - len(good) - len(duplicates)
    assert report["events"]["by_category"] == dict(Counter(f["threatCategory"] for f in good))

    addresses = {f["destinationIp"] for f in good if "destinationIp" in f}
    public = {ip for ip in addresses if ipaddress.ip_address(ip).is_global}
    private = addresses - public
    assert public and private
    files = objects(out_dir)
    cilium = {c for o in files.values() if o["kind"] == "CiliumCIDRGroup" for c in o["spec"]["externalCIDRs"]}
    tetragon = {
        v
        for name, o in files.items()
        if name.startswith("cdr-dynamic-blocklist")
        for hook in o["spec"]["kprobes"]
        for sel in hook["selectors"]
        for arg in sel.get("matchArgs", [])
        if arg["operator"] == "DAddr"
        for v in arg["values"]
    }

    def covered(ip: str, prefixes: set[str]) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in ipaddress.ip_network(p) for p in prefixes)

    assert all(covered(ip, cilium) and covered(ip, tetragon) for ip in public)
    assert not any(covered(ip, cilium) or covered(ip, tetragon) for ip in private)


def _channel_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "channel.yaml"
    path.write_text(text)
    return path


def test_a_channel_files_action_applies_unless_the_flag_contradicts_it(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21 point 10 (and point 7: a file of one channel's settings, without ``channels:``)."""
    one = _channel_file(tmp_path, "{name: prod, action: Sigkill, cilium_version: '1.18'}\n")
    out_dir = tmp_path / "p"
    code, _, err = run(["--once", f"--channel={one}", f"--output={out_dir}"], env, capsys)
    assert code == 0, err
    blocklist = objects(out_dir)["cdr-dynamic-blocklist.yaml"]
    assert {"name": "policy-mode", "value": "monitor"} not in blocklist["spec"].get("options", [])
    assert '"Sigkill"' in json.dumps(blocklist), "the file's action, although --action defaults to Post"

    code, _, err = run(["--once", f"--channel={one}", "--action=Post", f"--output={out_dir}"], env, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"error: --action Post contradicts 'action: Sigkill' in the channel file {one}" in err
    assert run(["--once", f"--channel={one}", "--action=Sigkill", f"--output={out_dir}"], env, capsys)[0] == 0

    listed = _channel_file(tmp_path, "channels: [{name: prod, threat_intel: false}]\n")
    code, _, err = run(["--once", f"--channel={listed}", "--threat-intel", f"--output={out_dir}"], env, capsys)
    assert code == 2 and "--threat-intel contradicts 'threat_intel: false' in the channel file" in err


def test_a_channel_files_threat_intel_loads_the_feeds_and_its_messages_say_what_happened(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21 points 6 and 10: the file's ``threat_intel: true`` applies without the flag; a feed
    that fails with no earlier copy says so (not "kept last good copy"), one that fails after a good
    download keeps it; counts say entries and prefixes; "download failed" once."""
    with FeedServer(root=DEMO_FEEDS_DIR) as feeds:
        feed_file = tmp_path / "feeds.yaml"
        feed_file.write_text(
            "feeds:\n"
            f"  - {{name: good, url: '{feeds.url('/blocklist_de_all.txt')}', category: attacker}}\n"
            f"  - {{name: broken, url: '{feeds.url('/missing.txt')}', category: attacker}}\n"
        )
        channel = _channel_file(tmp_path, "{name: local, threat_intel: true}\n")
        argv = ["--once", f"--channel={channel}", f"--feeds={feed_file}", f"--output={tmp_path / 'p'}"]
        code, out, err = run(argv, env, capsys)
        assert code == 1, err  # a feed failed: done with problems
        assert "Loading threat intelligence feeds..." in out
        assert re.search(r"Loaded good: \d+ entries in \d+ prefixes after merging", out), out
        assert "Nothing from broken: HTTP 404 from " in out and "no earlier good copy to keep" in out
        assert "Kept" not in out and "download failed: download failed" not in out

        feeds.route("/blocklist_de_all.txt", status=503, body=b"down")
        code, out, _ = run(argv, env, capsys)
    assert code == 1
    assert re.search(r"Kept the last good copy of good \(\d+ prefixes\): this download failed: HTTP 503 from ", out)


def test_crds_given_as_one_file(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], crds_dir: Path
) -> None:
    """Issue 21 point 7: ``--crds FILE`` said "does not exist" for an existing file."""
    docs = [p.read_text() for p in sorted(crds_dir.glob("*.yaml"))]
    docs += [p.read_text() for p in sorted((crds_dir / "cilium-main").glob("*.yaml"))]
    all_crds = tmp_path / "all.yaml"
    all_crds.write_text("\n---\n".join(docs))
    out_dir = tmp_path / "p"
    code, _, err = run(["--once", f"--crds={all_crds}", f"--output={out_dir}"], env, capsys)
    assert code == 0, err
    code, out, _ = run(["validate", str(out_dir), "--crds", str(all_crds)], env, capsys)
    assert code == 0 and f"checked against {all_crds}" in out
    # One file without the Cilium CRDs: the checker's list of errors is one line
    tetragon_only = crds_dir / "tetragon_cilium.io_tracingpolicies.yaml"
    code, _, err = run(["--once", f"--crds={tetragon_only}", f"--output={out_dir}"], env, capsys)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "refusing to ship 2 checker error(s): cilium-cdr-blocklist-cidrs-001.yaml (CiliumCIDRGroup/" in err


def test_apply_against_an_unreachable_api_server_says_it_in_one_line(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21 point 7: bare ``stamina.retry_scheduled`` lines on standard error."""
    port = free_port()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", "t")
    code, out, err = run(
        ["--once", "--apply", f"--output={tmp_path / 'p'}"], {**env, "KUBECONFIG": str(kubeconfig)}, capsys
    )
    assert code == 1 and "stamina" not in err and "Traceback" not in err, err
    assert "Applying to kubernetes http://127.0.0.1:" in out
    assert err.startswith("cdr-policy: error: ") and len(err.splitlines()) == 1, err
    assert f"no answer from http://127.0.0.1:{port}" in err

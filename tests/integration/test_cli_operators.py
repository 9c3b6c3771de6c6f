"""What an operator running ``cdr-policy`` must never hit: a bad flag or path found only after the
whole Qualys fetch, a traceback instead of one line, a long wait on an unreachable gateway, one
tenant's state in another tenant's policies, a half-written output folder after an interruption,
and a traceback when a fake's port is taken."""

from __future__ import annotations

import errno
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from cdr_policy.cli.fleet import BundleDiff, ChannelRow, FleetStatusRow
from cdr_policy.feeds.config import load_feeds
from cdr_policy.timeutil import utcnow
from demo.runner import FINDINGS
from fakes.feeds import DEMO_FEEDS_DIR, FeedServer, demo_feeds_yaml
from fakes.kube import FakeKubeAPI
from fakes.loopback import free_port
from fakes.qualys import FakeQualysGateway, load_findings
from tests.integration.support import agent_args, run

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture
def feed_files_env(tmp_path: Path) -> Iterator[Path]:
    """A --feeds file for the demo feeds, served over loopback for the test."""
    with FeedServer(root=DEMO_FEEDS_DIR) as feeds:
        path = tmp_path / "feeds.yaml"
        path.write_text(demo_feeds_yaml(feeds.url("/")))
        yield path


# case -> (the arguments, given the test's folder; words of the one error line)
BAD: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "output is a file": (lambda t: ["--once", f"--output={t / 'afile'}"], "is a file, not a folder"),
    "output under /proc": (lambda t: ["--once", "--output=/proc/cdr-policy-test/x"], "--output"),
    "state dir is a file": (lambda t: ["--once", f"--state-dir={t / 'afile'}"], "--state-dir"),
    "crds missing": (lambda t: ["--once", f"--crds={t / 'nowhere'}"], "--crds"),
    "apply without a cluster": (lambda t: ["--once", "--apply"], "kube"),
    "unknown platform with a gateway": (lambda t: ["--once", "--platform=FOO"], "unknown Qualys platform"),
    "feeds not UTF-8": (lambda t: ["--once", "--threat-intel", f"--feeds={t / 'latin1.yaml'}"], "not UTF-8"),
    "hours not a number": (lambda t: ["--once", "--hours=lots"], "--hours"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_flags_and_paths_get_one_line_and_exit_2_before_any_request(
    case: str, env: dict[str, str], gateway: FakeQualysGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "latin1.yaml").write_bytes("feeds:\n  - name: caf\xe9\n".encode("latin-1"))
    argv, words = BAD[case]
    code, out, err = run(argv(tmp_path), env, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("cdr-policy: error: ") and words.lower() in lines[0].lower()
    assert "Traceback" not in err and gateway.requests == []


def test_an_unreachable_gateway_fails_fast_naming_the_host_and_the_cause(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    started = time.monotonic()
    code, out, err = run(
        ["--once", f"--output={tmp_path / 'p'}"], {**env, "QUALYS_GATEWAY_URL": f"http://127.0.0.1:{port}"}, capsys
    )
    elapsed = time.monotonic() - started
    # Besides the structured log of the one retry, one line for the person at the terminal.
    lines = [line for line in err.strip().splitlines() if not line.startswith("{")]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("cdr-policy: error: ")
    assert f"127.0.0.1:{port}" in lines[0] and "refused" in lines[0].lower()
    assert elapsed < 10


def test_two_tenants_with_the_default_state_folder_never_mix(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = load_findings(FINDINGS)
    now = utcnow()
    only_b = [f for f in items if isinstance(f, dict) and f.get("category") == items[0].get("category")][:1]
    with (
        FakeQualysGateway(items, rebase_to=now) as a,
        FakeQualysGateway(only_b, rebase_to=now - timedelta(minutes=1)) as b,
    ):
        code_a, _, err_a = run(["--once", f"--output={tmp_path / 'a'}"], {**env, "QUALYS_GATEWAY_URL": a.url}, capsys)
        code_b, _, err_b = run(["--once", f"--output={tmp_path / 'b'}"], {**env, "QUALYS_GATEWAY_URL": b.url}, capsys)
    assert code_a == 0 and code_b == 0, err_a + err_b
    report_a = json.loads((tmp_path / "a" / "report.json").read_text())
    report_b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report_a["events"]["unique"] > 1
    assert report_b["events"]["unique"] == 1
    assert len(report_b["behaviours"]) <= 1 < len(report_a["behaviours"])
    tenants = sorted(p.name for p in (tmp_path / "cache" / "cdr-policy" / "state").iterdir())
    assert len(tenants) == 2 and all(t.startswith("127.0.0.1-") for t in tenants)


def test_an_interrupted_write_leaves_the_previous_complete_set(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "policies"
    (tmp_path / "policies").mkdir()
    (out_dir / "kustomization.yaml").write_text("resources: []\n")  # the user's own file survives
    assert run(["--once", f"--output={out_dir}"], env, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    assert "report.json" in before and "kustomization.yaml" in before and len(before) > 5

    written: list[str] = []
    real_write = Path.write_bytes

    def write_then_interrupt(self: Path, data: bytes) -> int:
        written.append(self.name)
        if len(written) == 4:
            raise KeyboardInterrupt
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_then_interrupt)  # the class cli.output writes with
    code, _, _ = run(["--once", "--threat-intel", f"--output={out_dir}"], env, capsys)
    monkeypatch.undo()
    assert code == 130 and len(written) == 4
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before

    assert run(["--once", f"--output={out_dir}"], env, capsys)[0] == 0
    assert (out_dir / "kustomization.yaml").read_text() == "resources: []\n"
    assert not list(tmp_path.glob(".policies.*"))


def test_a_mount_point_is_filled_in_place(
    env: dict[str, str],
    feed_files_env: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CronJob's ``--output=/policies`` is an emptyDir under a read-only root: the folder cannot be
    swapped (a mount point cannot be renamed, its parent is read-only), so its content is replaced.
    (tests/infra/test_image.py runs that command line in the image, on a real mount.)"""
    out_dir = tmp_path / "policies"
    out_dir.mkdir()
    (out_dir / "kustomization.yaml").write_text("resources: []\n")
    real_ismount, real_rename = os.path.ismount, Path.rename

    def rename(self: Path, target: Path) -> Path:
        if self == out_dir:
            raise OSError(errno.EBUSY, "Device or resource busy")  # what renaming a mount point gets
        return real_rename(self, target)

    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out_dir or real_ismount(p))
    monkeypatch.setattr(Path, "rename", rename)
    assert run(["--once", "--threat-intel", f"--feeds={feed_files_env}", f"--output={out_dir}"], env, capsys)[0] == 0
    with_feeds = {p.name for p in out_dir.iterdir()}
    assert run(["--once", f"--output={out_dir}"], env, capsys)[0] == 0
    without_feeds = {p.name for p in out_dir.iterdir()}

    assert "kustomization.yaml" in without_feeds and "report.json" in without_feeds
    assert without_feeds < with_feeds, "the feeds' policies of the first run are gone"
    assert not [p for p in without_feeds if p.startswith(".")]
    assert not list(tmp_path.glob(".policies.*")), "nothing is written beside the mount point"


@pytest.mark.parametrize("module", ["fakes.feeds", "fakes.qualys"])
def test_a_taken_port_is_one_line_not_a_traceback(module: str) -> None:
    with FeedServer() as taken:
        port = taken.base_url.rsplit(":", 1)[1]
        proc = subprocess.run(
            [sys.executable, "-m", module, f"--port={port}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: cannot listen on 127.0.0.1:" in lines[0], proc.stderr


def test_the_feed_servers_standard_output_is_a_feeds_file() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fakes.feeds"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        text = "".join(proc.stdout.readline() for _ in demo_feeds_yaml("http://x").splitlines())
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    feeds = load_feeds(text, origin="captured standard output")
    assert len(feeds) == 5 and all(f.url.startswith("http://127.0.0.1:") for f in feeds)


def test_validate_reads_the_crds_from_the_current_cluster(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], crds_dir: Path
) -> None:
    out_dir = tmp_path / "policies"
    assert run(["--once", "--action=Sigkill", f"--output={out_dir}"], env, capsys)[0] == 0
    crds = [
        doc
        for p in sorted([*crds_dir.glob("*.yaml"), *(crds_dir / "cilium-main").glob("*.yaml")])
        for doc in yaml.safe_load_all(p.read_text())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]
    with FakeKubeAPI(crds=crds) as api:
        kube_env = {**env, "KUBECONFIG": str(api.write_kubeconfig(tmp_path / "kubeconfig"))}
        code, out, err = run(["validate", "--kubernetes", str(out_dir)], kube_env, capsys)
        assert api.ops("crds"), "the CRDs were read from the API server"
    assert code == 0, out + err
    assert f"checked against kubernetes {api.url}: 0 error(s)" in out

    # No cluster to read: one line, exit 2.
    code, out, err = run(
        ["validate", "--kubernetes", str(out_dir)], {**env, "KUBECONFIG": str(tmp_path / "none")}, capsys
    )
    assert code == 2 and err.startswith("cdr-policy: error: validate: ") and len(err.splitlines()) == 1


def test_progress_shows_on_a_terminal_and_not_elsewhere(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import pty

    code, out, err = run(["--once", f"--output={tmp_path / 'quiet'}"], env, capsys)
    assert code == 0 and "... page" not in out + err

    leader, follower = pty.openpty()
    proc = subprocess.run(
        [sys.executable, "-m", "cdr_policy.cli", "--once", f"--output={tmp_path / 'tty'}"],
        env={**os.environ, **env, "PYTHONPATH": str(REPO / "layers/shared")},
        stdout=subprocess.PIPE,
        stderr=follower,
        timeout=120,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert b"... page 1, " in shown and b"findings" in shown
    assert b"... page" not in proc.stdout


def test_a_signed_channel_made_by_the_cli_feeds_the_agents_directory_mode(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, channel, applied = tmp_path / "keys", tmp_path / "channel", tmp_path / "applied"
    code, out, _ = run(["keygen", f"--out={keys}"], env, capsys)
    assert code == 0 and (keys / "bundle-signing.pem").stat().st_mode & 0o077 == 0
    assert run(["--once", "--action=Sigkill", f"--output={tmp_path / 'policies'}"], env, capsys)[0] == 0

    code, out, err = run(["publish", f"--to={channel}", f"--key={keys / 'bundle-signing.pem'}"], env, capsys)
    assert code == 0 and out.startswith("published: channel local"), out + err
    assert (channel / "channels" / "local" / "manifest.json").is_file()

    agent = agent_args(channel, keys, tmp_path, "--once")
    code, out, err = run(agent, env, capsys)
    assert code == 0 and out.startswith("applied"), out + err
    policies = sorted(p.name for p in (tmp_path / "policies").glob("*.yaml"))
    assert sorted(p.name for p in applied.rglob("*.yaml")) and len(list(applied.rglob("*.yaml"))) == len(policies)

    # A new bundle signed with a key the agent does not trust: refused, nothing changes.
    other = tmp_path / "other"
    run(["keygen", f"--out={other}"], env, capsys)
    assert run(["--once", "--action=Post", f"--output={tmp_path / 'policies'}"], env, capsys)[0] == 0
    publish_other = ["publish", f"--to={channel}", f"--key={other / 'bundle-signing.pem'}"]
    code, out, err = run(publish_other, env, capsys)
    # Publish builds only on a channel manifest it can verify: an approver approves a new key's first
    # bundle once, as the replacement of nothing usable.
    assert code == 1 and out.startswith("held:") and "bad signature" in out, out + err
    (pointer,) = Path(env["XDG_CACHE_HOME"]).rglob("bundles/channels/local.json")
    state_dir = pointer.parent.parent.parent
    digest = json.loads(pointer.read_text())["digest"]
    approver = tmp_path / "approver"
    run(["keygen", f"--out={approver}"], env, capsys)
    approve = ["channel", "approve", "local", digest, f"--state={state_dir}", f"--dist={channel}", "--replacing=none"]
    assert run([*approve, f"--key={approver / 'bundle-signing.pem'}"], env, capsys)[0] == 0
    code, out, err = run([*publish_other, f"--approver-key={approver / 'bundle-signing.pub'}"], env, capsys)
    assert code == 0 and out.startswith("published:"), out + err
    before = {p: p.read_bytes() for p in applied.rglob("*.yaml")}
    code, out, err = run(agent, env, capsys)
    assert code == 1 and out.startswith("refused"), out + err
    hint = out.splitlines()[1].strip()  # the next command, to copy
    assert hint.startswith("next: the channel's generations signed by this key: cdr-policy channel history local")
    code, history, _ = run(shlex.split(hint.split(": ")[-1])[1:], env, capsys)
    assert code == 0 and "1 history entr(ies) skipped: not signed by this key" in history
    assert {p: p.read_bytes() for p in applied.rglob("*.yaml")} == before


def test_fleet_commands_on_a_folder(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], feed_files_env: Path
) -> None:
    keys, channel, state = tmp_path / "keys", tmp_path / "channel", tmp_path / "state"
    key = str(keys / "bundle-signing.pem")
    run(["keygen", f"--out={keys}"], env, capsys)
    once = ["--once", "--action=Sigkill", f"--state-dir={state}", f"--output={tmp_path / 'policies'}"]
    assert run(once, env, capsys)[0] == 0
    assert run(["publish", f"--to={channel}", f"--key={key}", f"--state-dir={state}"], env, capsys)[0] == 0
    first = json.loads((channel / "channels/local/manifest.json").read_text())["digest"]
    agent = agent_args(channel, keys, tmp_path, "--once")
    assert run(agent, env, capsys)[0] == 0

    # Threat intel multiplies the prefixes: the change budget holds the bundle.
    assert run([*once, "--threat-intel", f"--feeds={feed_files_env}"], env, capsys)[0] == 0
    code, out, _ = run(["publish", f"--to={channel}", f"--key={key}", f"--state-dir={state}"], env, capsys)
    assert code == 1 and out.startswith("held:")

    code, out, _ = run(["channel", "diff", "local", f"--dist={channel}", f"--state={state}", "--json"], env, capsys)
    diff = BundleDiff.from_json(json.loads(out))
    assert diff.shipping == first and len(diff.prefixes.added) > 100 and not diff.prefixes.removed
    added = diff.prefixes.added[0]
    assert added.objects and added.scope == "prefix"
    # issue 21 point 5: each prefix's own feeds (from the bundle's provenance index), not its object's
    own = {e.provenance.get("feeds") for e in diff.prefixes.added}
    assert all(e.scope == "prefix" for e in diff.prefixes.added) and len(own) > 1
    assert all(feeds and "=" not in feeds for feeds in own), own
    code, summary, _ = run(["channel", "diff", "local", f"--dist={channel}", f"--state={state}"], env, capsys)
    assert code == 0 and "prefix(es) added from feeds=" in summary and "objects' provenance" not in summary
    assert any(o.object.startswith("CiliumCIDRGroup/") for o in diff.objects.added)

    approver = tmp_path / "approver"
    run(["keygen", f"--out={approver}"], env, capsys)
    approve = ["channel", "approve", "local", diff.candidate, f"--state={state}", f"--dist={channel}"]
    code, out, _ = run([*approve, "--reason=reviewed", f"--key={approver / 'bundle-signing.pem'}"], env, capsys)
    assert code == 0 and out.startswith("approved:")
    publish = ["publish", f"--to={channel}", f"--key={key}", f"--state-dir={state}"]
    code, out, _ = run([*publish, f"--approver-key={approver / 'bundle-signing.pub'}"], env, capsys)
    assert code == 0 and out.startswith("published:")

    code, out, _ = run(["fleet", "status", f"--dist={channel}", "--json"], env, capsys)
    (row,) = map(FleetStatusRow.from_json, json.loads(out))
    assert row.cluster_id == "laptop" and row.applied_digest == first and row.behind
    assert run(agent, env, capsys)[0] == 0
    (row,) = map(
        FleetStatusRow.from_json, json.loads(run(["fleet", "status", f"--dist={channel}", "--json"], env, capsys)[1])
    )
    assert row.applied_digest == diff.candidate and not row.behind

    # A status written under another cluster's name is not that cluster's word.
    forged = {**json.loads((channel / "status/laptop.json").read_text()), "cluster_id": "laptop"}
    (channel / "status/prod-eu.json").write_text(json.dumps(forged))
    code, out, _ = run(["fleet", "status", f"--dist={channel}"], env, capsys)
    assert "laptop" in out and "prod-eu" not in out

    code, out, _ = run(
        ["channel", "rollback", "local", f"--to={first}", f"--dist={channel}", f"--key={key}"], env, capsys
    )
    assert code == 0 and "now ships" in out
    listed = map(
        ChannelRow.from_json, json.loads(run(["channel", "list", f"--dist={channel}", "--json"], env, capsys)[1])
    )
    assert [(c.channel, c.digest) for c in listed] == [("local", first)]
    assert run(agent, env, capsys)[0] == 0
    (row,) = map(
        FleetStatusRow.from_json, json.loads(run(["fleet", "status", f"--dist={channel}", "--json"], env, capsys)[1])
    )
    assert row.applied_digest == first and not row.behind


def test_the_running_agent_serves_metrics_and_probes(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import signal

    import httpx

    keys, channel = tmp_path / "keys", tmp_path / "channel"
    run(["keygen", f"--out={keys}"], env, capsys)
    assert run(["--once", f"--output={tmp_path / 'policies'}"], env, capsys)[0] == 0
    assert run(["publish", f"--to={channel}", f"--key={keys / 'bundle-signing.pem'}"], env, capsys)[0] == 0
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cdr_policy.cli",
            *agent_args(channel, keys, tmp_path),
            "--interval=1s",
            f"--metrics-port={port}",
            "--metrics-host=127.0.0.1",
        ],
        env={**os.environ, **env, "PYTHONPATH": str(REPO / "layers/shared")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base, deadline, ready = f"http://127.0.0.1:{port}", time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200
        assert httpx.get(f"{base}/healthz").status_code == 200
        text = httpx.get(f"{base}/metrics").text
        assert 'cdr_policy_agent_polls_total{channel="local",result="applied"} 1' in text
        assert 'cdr_policy_agent_bundle_applied_info{channel="local",digest="' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0

"""``cdr-policy agent``: arguments, one-shot runs and exit codes; and the duration parser it uses."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cdr_policy import layout
from cdr_policy.admission import protection
from cdr_policy.agent import cli
from cdr_policy.agent.kube import KubeApplier
from cdr_policy.bundle.loader import load_bundle, read_manifest
from cdr_policy.bundle.signing import LocalSigner
from cdr_policy.stages.publish import publish_bundle
from cdr_policy.storage import LocalStore
from cdr_policy.timeutil import parse_duration, utcnow
from tests.unit.bundle.factory import ips, network_bundle, render


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cdr-policy agent")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def once_into(
    out: Path, *, dist: LocalStore, key: Path, state_dir: Path, extra: Sequence[str] = ()
) -> argparse.Namespace:
    """A one-shot run of channel ``prod`` as cluster ``laptop``, written to the directory ``out``."""
    return parse(
        "--bucket", str(dist.root), "--channel", "prod", "--cluster-id", "laptop", "--public-key", str(key),
        "--output-dir", str(out), "--state-dir", str(state_dir), "--once", *extra,
    )  # fmt: skip


@pytest.fixture
def public_key(tmp_path: Path, signer: LocalSigner) -> Path:
    path = tmp_path / "bundle-signing.pub"
    path.write_text(signer.public_key_pem())
    return path


@pytest.fixture
def published(state: LocalStore, dist: LocalStore, signer: LocalSigner) -> str:
    now = utcnow()
    digest = render(state, network_bundle(ips(0, 10)), created=now)
    publish_bundle(state, dist, channel="prod", digest=digest, signer=signer, now=now, change_budget_percent=50)
    return digest


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("2d", 172800),
        ("90", 90),
        ("1.5h", 5400),
        (" 10S ", 10),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "1h 30m", "-1s", "s1", "1h-5m"])
def test_parse_duration_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_arguments_and_defaults(tmp_path: Path) -> None:
    base = (
        "--bucket",
        "s3://dist",
        "--channel",
        "prod",
        "--cluster-id",
        "eks-1",
        "--public-key",
        "k.pem",
        "--kubernetes",
    )
    args = parse(*base)
    assert (cli.poll_interval(args), args.once, args.kubernetes, args.output_dir, args.state_dir) == (
        60.0,
        False,
        True,
        None,
        None,
    )
    # the fast profile (template.yaml Profile) polls every 10 s; --interval wins over either
    assert cli.poll_interval(parse(*base, "--profile", "fast")) == 10.0
    assert cli.poll_interval(parse(*base, "--profile", "fast", "--interval", "30s")) == 30.0
    args = parse(
        "--bucket",
        "d",
        "--channel",
        "prod",
        "--cluster-id",
        "c",
        "--public-key",
        "k",
        "--output-dir",
        str(tmp_path),
        "--interval",
        "5m",
        "--once",
    )
    assert (cli.poll_interval(args), args.once, args.output_dir) == (300.0, True, tmp_path)


@pytest.mark.parametrize(
    "extra",
    [
        ["--interval", "soon", "--kubernetes"],
        ["--interval", "500ms", "--kubernetes"],
        [],  # neither --kubernetes nor --output-dir
        ["--kubernetes", "--output-dir", "x"],
    ],
)
def test_bad_arguments_are_refused(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("--bucket", "d", "--channel", "prod", "--cluster-id", "c", "--public-key", "k", *extra)
    assert exc.value.code == 2


def test_once_into_a_directory(
    published: str, dist: LocalStore, public_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = once_into(out, dist=dist, key=public_key, state_dir=tmp_path / "state-dir")

    assert cli.run(args) == 0

    assert capsys.readouterr().out.startswith(f"applied: bundle {published[:12]}")
    assert len(list(out.glob("*.yaml"))) == 3
    assert (tmp_path / "state-dir" / "applied.json").is_file()
    assert dist.get("status/laptop.json")


def test_once_without_a_manifest_exits_non_zero(
    dist: LocalStore, public_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dist.root.mkdir()  # the folder publish --to writes, before the first publish
    args = once_into(tmp_path / "out", dist=dist, key=public_key, state_dir=tmp_path / "s")
    assert cli.run(args) == 1
    assert capsys.readouterr().out.startswith("no_manifest:")


def test_a_bucket_folder_that_does_not_exist_is_a_configuration_error(
    dist: LocalStore, public_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21 point 7: ``--bucket ./nodir`` used to create the folder and wait for ever."""
    args = once_into(tmp_path / "out", dist=dist, key=public_key, state_dir=tmp_path / "s")
    assert cli.run(args) == 2
    assert f"error: --bucket {dist.root} does not exist" in capsys.readouterr().err
    assert not dist.root.exists() and not (tmp_path / "s").exists(), "nothing made for a mistyped bucket"


def test_once_with_an_untrusted_bundle_exits_non_zero(
    published: str, dist: LocalStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cdr_policy.bundle.signing import generate_local_key

    other = tmp_path / "other.pub"
    other.write_text(generate_local_key(tmp_path / "other.pem"))
    args = once_into(tmp_path / "out", dist=dist, key=other, state_dir=tmp_path / "s")
    assert cli.run(args) == 1
    assert "bad signature" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_bundles_are_checked_against_the_crds_before_anything_is_applied(
    published: str, dist: LocalStore, public_key: Path, tmp_path: Path, crds_dir: Path
) -> None:
    # CRDs that serve none of the bundle's kinds: every object fails the schema part of the check.
    empty = tmp_path / "other-crds"
    empty.mkdir()
    other = (crds_dir / "tetragon_cilium.io_tracingpoliciesnamespaced.yaml").read_bytes()
    (empty / "only-namespaced.yaml").write_bytes(other)
    out, crds = tmp_path / "out", ("--crds", str(empty))
    args = once_into(out, dist=dist, key=public_key, state_dir=tmp_path / "s", extra=crds)
    assert cli.run(args) == 1
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.yaml"))
    args.crds = crds_dir
    args.state_dir = tmp_path / "s2"
    assert cli.run(args) == 0
    assert list((tmp_path / "out").glob("*.yaml"))


def test_with_kubernetes_the_check_uses_the_clusters_crds(crds_dir: Path, state: LocalStore) -> None:
    import yaml

    from fakes.kube import FakeKubeAPI

    crds = [yaml.safe_load(p.read_text()) for p in sorted((crds_dir / "cilium-main").glob("*.yaml"))]
    with FakeKubeAPI(crds=crds) as api:
        applier = KubeApplier(api.url, api.token)
        admission = cli.admission_for(applier, None, protection(where="this cluster"))
        assert not api.ops("crds"), "read when the first bundle is checked: an API server away at start is no error"
        digest = render(state, network_bundle(ips(0, 3)))
        bundle = load_bundle(state, read_manifest(state, layout.bundle_manifest_key(digest))[0], published=False)
        first = admission.crd_problems(bundle).lines()
        assert not [line for line in first if "CiliumCIDRGroup" in line], "the cluster's CRD for it was used"
        assert admission.crd_problems(bundle).lines() == first
        assert len(api.ops("crds")) == 1, "the CRDs were read from the API server, once"
        applier.close()


@pytest.mark.parametrize("problem", ["missing key", "no cluster credentials"])
def test_startup_problems_exit_2(
    problem: str,
    dist: LocalStore,
    public_key: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    key = tmp_path / "absent.pem" if problem == "missing key" else public_key
    args = parse(
        "--bucket",
        str(dist.root),
        "--channel",
        "prod",
        "--cluster-id",
        "c",
        "--public-key",
        str(key),
        "--kubernetes",
        "--once",
    )
    assert cli.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("cdr-policy: error: ") and len(err.splitlines()) == 1


T = TypeVar("T")


def _wait_for(predicate: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _status(state_dir: Path, result: str) -> dict[str, Any] | None:
    """The agent's local status once its last poll had ``result``, else None."""
    import json

    try:
        status: dict[str, Any] = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return status if status["last_poll"]["result"] == result else None


def test_an_api_server_away_at_start_is_reported_unreachable_until_it_comes_back(
    published: str, dist: LocalStore, public_key: Path, tmp_path: Path
) -> None:
    """Issue 20 point 11: with the API server away at start the agent used to exit 1 on the CRD read,
    even in loop mode, and wrote no status. Now it starts, says ``unreachable`` (in its status and
    in one line per sync), and applies the bundle once the API server answers."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from fakes.kube import FakeKubeAPI, write_kubeconfig
    from fakes.loopback import free_port

    port, token = free_port(), "agent-token"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", token)
    state_dir = tmp_path / "agent-state"
    argv = [
        sys.executable, "-m", "cdr_policy.cli", "agent", f"--bucket={dist.root}", "--channel=prod",
        "--cluster-id=c1", f"--public-key={public_key}", "--kubernetes", f"--state-dir={state_dir}",
        "--interval=1s", "--sync-deadline=5s", "--metrics-port=0",
    ]  # fmt: skip
    repo = Path(__file__).resolve().parents[3]
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(repo / "layers/shared"),
    }
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    api = None
    try:
        away = _wait_for(lambda: _status(state_dir, "unreachable"), "unreachable")
        assert "Connect" in away["last_poll"]["detail"] and away["applied_digest"] is None
        assert proc.poll() is None, "the agent keeps running"

        api = FakeKubeAPI(port=port).start()
        api.token = token
        # (the status of the sync that applied may be overwritten by the next within the same second)
        later = _wait_for(lambda: _status(state_dir, "unchanged"), "unchanged after applying")
        assert later["applied_digest"] == published
        assert any(op for op in api.ops("apply")), "the bundle reached the cluster"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        if api is not None:
            api.stop()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("agent: following channel prod in ")
    results = [line.split(" ", 2)[1] for line in lines[1:]]
    assert results[0] == "unreachable:" and "applied:" in results and results[-1] == "unchanged:", out
    assert all(line.split(" ", 1)[0].endswith("Z") for line in lines[1:]), "one timestamped line per sync"
    assert "Traceback" not in err

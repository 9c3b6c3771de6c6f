"""``cdr-policy agent``: arguments, one-shot runs and exit codes; and the duration parser it uses."""

from __future__ import annotations

import argparse

import pytest

from cdr_policy.admission import protection
from cdr_policy.agent import cli
from cdr_policy.stages.publish import publish_bundle
from cdr_policy.timeutil import parse_duration, utcnow
from tests.unit.bundle.factory import ips, network_bundle, render


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cdr-policy agent")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def once_into(out, *, dist, key, state_dir, extra=()) -> argparse.Namespace:
    """A one-shot run of channel ``prod`` as cluster ``laptop``, written to the directory ``out``."""
    return parse(
        "--bucket", str(dist.root), "--channel", "prod", "--cluster-id", "laptop", "--public-key", str(key),
        "--output-dir", str(out), "--state-dir", str(state_dir), "--once", *extra,
    )  # fmt: skip


@pytest.fixture
def public_key(tmp_path, signer):
    path = tmp_path / "bundle-signing.pub"
    path.write_text(signer.public_key_pem())
    return path


@pytest.fixture
def published(state, dist, signer):
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
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "1h 30m", "-1s", "s1", "1h-5m"])
def test_parse_duration_refuses_anything_else(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_arguments_and_defaults(tmp_path):
    args = parse(
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
    assert (args.interval, args.once, args.kubernetes, args.output_dir, args.state_dir) == (
        60.0,
        False,
        True,
        None,
        None,
    )
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
    assert (args.interval, args.once, args.output_dir) == (300.0, True, tmp_path)


@pytest.mark.parametrize(
    "extra",
    [
        ["--interval", "soon", "--kubernetes"],
        ["--interval", "500ms", "--kubernetes"],
        [],  # neither --kubernetes nor --output-dir
        ["--kubernetes", "--output-dir", "x"],
    ],
)
def test_bad_arguments_are_refused(extra, capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--bucket", "d", "--channel", "prod", "--cluster-id", "c", "--public-key", "k", *extra)
    assert exc.value.code == 2


def test_once_into_a_directory(published, dist, public_key, tmp_path, capsys):
    out = tmp_path / "out"
    args = once_into(out, dist=dist, key=public_key, state_dir=tmp_path / "state-dir")

    assert cli.run(args) == 0

    assert capsys.readouterr().out.startswith(f"applied: bundle {published[:12]}")
    assert len(list(out.glob("*.yaml"))) == 3
    assert (tmp_path / "state-dir" / "applied.json").is_file()
    assert dist.get("status/laptop.json")


def test_once_without_a_manifest_exits_non_zero(dist, public_key, tmp_path, capsys):
    args = once_into(tmp_path / "out", dist=dist, key=public_key, state_dir=tmp_path / "s")
    assert cli.run(args) == 1
    assert capsys.readouterr().out.startswith("no_manifest:")


def test_once_with_an_untrusted_bundle_exits_non_zero(published, dist, tmp_path, capsys):
    from cdr_policy.bundle.signing import generate_local_key

    other = tmp_path / "other.pub"
    other.write_text(generate_local_key(tmp_path / "other.pem"))
    args = once_into(tmp_path / "out", dist=dist, key=other, state_dir=tmp_path / "s")
    assert cli.run(args) == 1
    assert "bad signature" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_bundles_are_checked_against_the_crds_before_anything_is_applied(
    published, dist, public_key, tmp_path, crds_dir
):
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


def test_with_kubernetes_the_check_uses_the_clusters_crds(crds_dir):
    import yaml

    from tests.fakes.kube import FakeKubeAPI

    crds = [yaml.safe_load(p.read_text()) for p in sorted((crds_dir / "cilium-main").glob("*.yaml"))]
    with FakeKubeAPI(crds=crds) as api:
        applier = cli.KubeApplier(api.url, api.token)
        admission = cli.admission_for(applier, None, protection(where="this cluster"))
        assert api.ops("crds"), "the CRDs were read from the API server"
        assert admission.schemas is not None and admission.schemas.lookup("cilium.io/v2", "CiliumCIDRGroup")
        applier.close()


@pytest.mark.parametrize("problem", ["missing key", "no cluster credentials"])
def test_startup_problems_exit_2(problem, dist, public_key, tmp_path, monkeypatch, capsys):
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

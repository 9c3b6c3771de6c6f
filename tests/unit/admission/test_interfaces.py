"""The review's shapes through the public interfaces: ``cdr-policy publish --to`` refuses to sign
each of them when someone who can write the state folder puts it there, and ``cdr-policy agent``
(directory mode) refuses to apply each of them when it arrives signed with the channel's key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdr_policy import jsonio, layout
from cdr_policy.bundle.signing import LocalSigner, generate_local_key
from cdr_policy.cli import main
from cdr_policy.storage import LocalStore
from cdr_policy.timeutil import utcnow
from tests.unit.bundle.factory import T0, plant_signed, render

from .hostile import CASES, files_of, rendered


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    public = generate_local_key(folder / "signing.pem")
    (folder / "signing.pub").write_text(public)
    return folder


@pytest.mark.parametrize("case", sorted(CASES))
def test_publish_refuses_to_sign_it(case: str, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    objects, settings = rendered()
    state = LocalStore(tmp_path / "state")
    digest = render(state, files_of(CASES[case](objects)), settings=settings)
    state.put(layout.latest_render_key("prod"), jsonio.dumps({"digest": digest, "rendered_at": "2026-01-10T16:00:00Z"}))

    code = main(
        ["publish", "--to", str(tmp_path / "dist"), "--key", str(keys / "signing.pem"), "--channel", "prod"]
        + ["--state-dir", str(tmp_path / "state")]
    )

    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith(f"refused: channel prod, bundle {digest[:12]}")
    assert "admission refused the bundle" in out
    assert not (tmp_path / "dist" / "channels" / "prod" / "manifest.json").exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_agent_refuses_to_apply_it_signed(
    case: str, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects, settings = rendered()
    dist = LocalStore(tmp_path / "dist")
    signer = LocalSigner.from_file(keys / "signing.pem")
    plant_signed(dist, files_of(CASES[case](objects)), signer, settings=settings, created=utcnow())
    out = tmp_path / "out"

    code = main(
        ["agent", "--bucket", str(tmp_path / "dist"), "--channel", "prod", "--cluster-id", "c1", "--once"]
        + ["--public-key", str(keys / "signing.pub"), "--output-dir", str(out), "--state-dir", str(tmp_path / "s")]
    )

    assert code == 1
    assert capsys.readouterr().out.startswith("refused: bundle refused, nothing applied: admission refused it")
    assert not out.exists() or not any(out.iterdir())
    status = json.loads((tmp_path / "s" / "status.json").read_text())
    assert (status["verification"]["code"], status["applied_digest"]) == ("inadmissible", None)


def test_the_render_itself_goes_through_both(keys: Path, tmp_path: Path) -> None:
    """The same path admits what our compiler emits: the tests above refuse for the change alone."""
    objects, settings = rendered()
    state = LocalStore(tmp_path / "state")
    digest = render(state, files_of(objects), settings=settings, created=T0)
    state.put(layout.latest_render_key("prod"), jsonio.dumps({"digest": digest, "rendered_at": "2026-01-10T16:00:00Z"}))
    dist = tmp_path / "dist"
    assert (
        main(
            ["publish", "--to", str(dist), "--key", str(keys / "signing.pem"), "--channel", "prod"]
            + ["--state-dir", str(tmp_path / "state")]
        )
        == 0
    )
    assert (
        main(
            ["agent", "--bucket", str(dist), "--channel", "prod", "--cluster-id", "c1", "--once"]
            + ["--public-key", str(keys / "signing.pub"), "--output-dir", str(tmp_path / "out")]
            + ["--state-dir", str(tmp_path / "s")]
        )
        == 0
    )
    assert len(list((tmp_path / "out").iterdir())) == len(objects)


@pytest.mark.parametrize(
    "case", ["group selected by labels", "daddr private for named callers", "exec prefix slash", "deny world dns"]
)
def test_the_agent_refuses_it_from_an_s3_bucket(
    case: str, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same in S3 mode: the bundle planted in the distribution bucket (moto), signed."""
    import boto3
    from moto import mock_aws

    from cdr_policy.storage import S3Store

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="dist")
        objects, settings = rendered()
        signer = LocalSigner.from_file(keys / "signing.pem")
        plant_signed(S3Store(s3, "dist"), files_of(CASES[case](objects)), signer, settings=settings, created=utcnow())
        out = tmp_path / "out"

        code = main(
            ["agent", "--bucket", "s3://dist", "--channel", "prod", "--cluster-id", "c1", "--once"]
            + ["--public-key", str(keys / "signing.pub"), "--output-dir", str(out), "--state-dir", str(tmp_path / "s")]
        )

        assert code == 1
        assert capsys.readouterr().out.startswith("refused: bundle refused, nothing applied: admission refused it")
        assert not out.exists() or not any(out.iterdir())
        status = json.loads(s3.get_object(Bucket="dist", Key="status/c1.json")["Body"].read())
        assert status["verification"]["code"] == "inadmissible"

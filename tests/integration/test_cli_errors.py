"""Issue 21 point 2 and the one error style: every sub-command, against a bucket it cannot use
(no AWS credentials, an endpoint that refuses connections, a moto server that was stopped, a
bucket that does not exist) or a cluster it cannot reach, says so in one line,
``cdr-policy: error: <what> (<cause>)``, with the README's exit code and no traceback unless
``--debug`` is given."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from cdr_policy import aws
from cdr_policy.cli import main
from fakes.aws import moto_endpoint
from fakes.kube import write_kubeconfig
from fakes.loopback import free_port

DIGEST = "ab" * 32


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["keygen", f"--out={tmp_path / 'keys'}"], {}) == 0
    capsys.readouterr()
    return tmp_path / "keys"


def commands(keys: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Every command that reads or writes a bucket, pointed at s3://absent-or-unreachable."""
    dist, state = "--dist=s3://dist-bucket", "--state=s3://state-bucket"
    public, private = f"--public-key={keys / 'bundle-signing.pub'}", f"--key={keys / 'bundle-signing.pem'}"
    return {
        "fleet status": ["fleet", "status", dist],
        "fleet hits": ["fleet", "hits", dist],
        "channel list": ["channel", "list", dist],
        "channel show": ["channel", "show", "prod", dist],
        "channel history": ["channel", "history", "prod", dist, public],
        "channel diff": ["channel", "diff", "prod", dist, state],
        "channel approve": ["channel", "approve", "prod", DIGEST, state, dist, private],
        "channel rollback": ["channel", "rollback", "prod", f"--to={DIGEST}", dist, private],
        "channel history (KMS)": ["channel", "history", "prod", dist, "--kms-key-id=alias/cdr-policy-signing"],
    }


# Every command of ``commands`` but the KMS one (the stack's KMS client tries five times, 15 s, at a
# refused port: KMS is tested without credentials, which fails at once).
S3_COMMANDS = [
    "fleet status",
    "fleet hits",
    "channel list",
    "channel show",
    "channel history",
    "channel diff",
    "channel approve",
    "channel rollback",
]


def assert_one_error_line(code: int, err: str, *words: str, exit_code: int = 1) -> None:
    lines = err.strip().splitlines()
    assert code == exit_code, err
    assert len(lines) == 1 and lines[0].startswith("cdr-policy: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An AWS endpoint on a loopback port where nothing listens."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    aws.reset()
    yield url
    aws.reset()


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a new process resolves credentials afresh
    aws.reset()
    yield
    aws.reset()


@pytest.mark.parametrize("name", S3_COMMANDS)
def test_an_endpoint_that_refuses_connections_is_one_line(
    name: str, unreachable: str, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(commands(keys, tmp_path)[name], {})
    assert_one_error_line(code, capsys.readouterr().err, f"cannot connect to {unreachable}")


@pytest.mark.parametrize("name", [*S3_COMMANDS, "channel history (KMS)"])
def test_no_aws_credentials_is_one_line(
    name: str, no_credentials: None, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(commands(keys, tmp_path)[name], {})
    assert_one_error_line(code, capsys.readouterr().err, "no AWS credentials: set AWS_PROFILE")


def test_the_agent_without_credentials_reports_the_bucket_unreachable(
    no_credentials: None, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "agent",
        "--bucket=s3://dist-bucket",
        "--channel=prod",
        "--cluster-id=c1",
        f"--public-key={keys / 'bundle-signing.pub'}",
        f"--output-dir={tmp_path / 'out'}",
        f"--state-dir={tmp_path / 'agent-state'}",
        "--once",
    ]
    code = main(argv, {})
    out, err = capsys.readouterr()
    assert code == 1 and out.startswith("unreachable: cannot read the channel manifest: cannot read s3://dist-bucket/")
    assert "no AWS credentials" in out and "Traceback" not in out + err
    assert (tmp_path / "agent-state" / "status.json").is_file(), "the status is written either way"


def test_a_stopped_moto_server_and_a_missing_bucket(
    monkeypatch: pytest.MonkeyPatch, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with moto_endpoint(None) as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        aws.reset()
        boto3.client("s3").create_bucket(Bucket="dist-bucket")
        assert main(["channel", "list", "--dist=s3://dist-bucket"], {}) == 0
        code = main(["channel", "list", "--dist=s3://no-such-bucket"], {})
        assert_one_error_line(code, capsys.readouterr().err, "NoSuchBucket")
    # the same server, stopped: nothing answers on its port any more
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for name, argv in commands(keys, tmp_path).items():
        if "KMS" in name:
            continue  # the stack's KMS client tries five times (15 s): KMS is tested without credentials
        code = main(argv, {})
        assert_one_error_line(code, capsys.readouterr().err, f"cannot connect to {url}")
    aws.reset()


def test_debug_shows_the_traceback_as_well(unreachable: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fleet", "status", "--dist=s3://dist-bucket", "--debug"], {})
    err = capsys.readouterr().err
    assert code == 1 and "Traceback (most recent call last)" in err and "EndpointConnectionError" in err
    assert err.strip().splitlines()[-1].startswith("cdr-policy: error: cannot list s3://dist-bucket/status/")


def test_validate_against_an_unreachable_api_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{free_port()}", "t")
    (tmp_path / "p.yaml").write_text("kind: TracingPolicy\n")
    code = main(["validate", str(tmp_path / "p.yaml"), "--kubernetes"], {"KUBECONFIG": str(kubeconfig)})
    err = capsys.readouterr().err
    assert_one_error_line(code, err, "validate:", "Connect")
    assert "stamina" not in err

"""Bad input at ``cdr-policy``: every flag bounded and every configuration file checked, each with one
clear error line (never a traceback, never the file's content), before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdr_policy.cli import main

SECRET = "QUALYS_PASSWORD=hunter2-do-not-print"


def user_env(tmp_path: Path) -> dict[str, str]:
    """What a user with a gateway and credentials set has (the runs here stop before any request)."""
    return {
        "XDG_CACHE_HOME": str(tmp_path / "c"),
        "HOME": str(tmp_path),
        "QUALYS_GATEWAY_URL": "https://gateway.invalid.example",
        "QUALYS_USERNAME": "u",
        "QUALYS_PASSWORD": "p",
    }


def run(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv, {"XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path)})
    _, err = capsys.readouterr()
    return code, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "0s"], "argument --interval: '0s' is out of range: use 5s..7d"),
        (["--interval", "2s"], "argument --interval: '2s' is out of range: use 5s..7d"),
        (["--interval", "forever"], "argument --interval:"),
        (["--hours", "99999999999999999999"], "argument --hours: 99999999999999999999 is out of range: use 1..720"),
        (["--hours", "0"], "argument --hours: 0 is out of range: use 1..720"),
        (["--hours", "1e3"], "argument --hours: '1e3' is not a whole number"),
        (["--reputation-threshold", "101"], "argument --reputation-threshold: 101 is out of range: use 0..100"),
    ],
)
def test_out_of_range_flags_get_one_clear_error_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["--once", *argv], tmp_path, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("cdr-policy: error: argument")


@pytest.mark.parametrize("flag", ["--feeds", "--channel", "--categories"])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (SECRET.encode() + b"\n\xff\xfe latin-1 \xe9\n", "not UTF-8 text (byte 37)"),
        (SECRET.encode() + b"\nfeeds: [unclosed\n", "not valid YAML at line 2, column 6"),
    ],
    ids=["not UTF-8", "not YAML"],
)
def test_a_bad_configuration_file_is_named_without_its_content(
    flag: str, content: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)

    env = user_env(tmp_path)
    code = main(["--once", flag, str(path)], env)

    err = capsys.readouterr().err
    assert code == 2 and f"error: {path}: {message}" in err
    assert len(err.strip().splitlines()) == 1
    assert "hunter2" not in err and "Traceback" not in err


PEM, DIGEST = "--key=k.pem", "ab" * 32
AGENT = ["agent", "--bucket=.", "--channel=prod", "--cluster-id=c", "--public-key=k.pub", "--output-dir=o"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # issue 20 point 14: the change budget was a ValueError traceback
        (["publish", "--to=d", PEM, "--change-budget", "0"], "argument --change-budget: 0 is out of range: use 1..100"),
        (["publish", "--to=d", PEM, "--change-budget", "1000"], "argument --change-budget: 1000 is out of range"),
        (["publish", "--to=d", PEM, "--change-budget=-5"], "argument --change-budget: -5 is out of range: use 1..100"),
        (["publish", "--to=d", PEM, "--change-budget", "half"], "argument --change-budget: 'half' is not a whole"),
        (["publish", "--to=d", PEM, "--channel", "Prod/../x"], "argument --channel: 'Prod/../x' is not a channel name"),
        (["--metrics-port", "70000"], "argument --metrics-port: 70000 is out of range: use 0..65535"),
        ([*AGENT, "--metrics-port=-1"], "argument --metrics-port: -1 is out of range: use 0..65535"),
        ([*AGENT, "--state-namespace", "Kube_System"], "argument --state-namespace: 'Kube_System' is not a namespace"),
        ([*AGENT, "--max-shrink-percent", "0"], "argument --max-shrink-percent: 0 is out of range: use 1..100"),
        ([*AGENT, "--interval", "0s"], "argument --interval: '0s' is out of range: use 1s..1d"),
        ([*AGENT, "--sync-deadline", "2h"], "argument --sync-deadline: '2h' is out of range: use 5s..1h"),
        (["channel", "history", "prod", "--dist=.", "--public-key=k", "--limit=0"], "argument --limit: 0 is out of"),
        (["channel", "show", "PROD", "--dist=."], "argument channel: 'PROD' is not a channel name"),
        (["channel", "diff", "prod", "--dist=.", "--state=.", "--digest=xyz"], "argument --digest: 'xyz' is not a"),
        (["channel", "approve", "prod", "4d3b", "--state=.", "--dist=.", PEM], "argument digest: '4d3b' is not a"),
        (["channel", "approve", "prod", DIGEST, "--state=.", "--dist=.", PEM, "--valid-for=31d"], "at most 30 days"),
        (["channel", "rollback", "prod", "--to=ab", "--dist=.", PEM], "argument --to: 'ab' is not a bundle digest"),
    ],
)
def test_every_sub_commands_flags_are_bounded(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(argv, tmp_path, capsys)
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("cdr-policy: error: argument")


def test_a_reputation_threshold_without_threat_intel_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path), "QUALYS_USERNAME": "u", "QUALYS_PASSWORD": "p"}
    code = main(["--once", "--gateway=https://gw.example.com", "--reputation-threshold=10"], env)
    err = capsys.readouterr().err
    assert code == 2 and "--reputation-threshold applies only with threat intel" in err


@pytest.mark.parametrize("command", [["fleet", "status", "--dist"], ["channel", "list", "--dist"]])
def test_a_distribution_folder_that_does_not_exist_is_an_error(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run([*command, str(tmp_path / "nonexistent")], tmp_path, capsys)
    assert (
        code == 2
        and err == f"cdr-policy: error: --dist {tmp_path / 'nonexistent'} does not exist (a folder or s3://BUCKET)\n"
    )


def test_a_metrics_port_in_use_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from cdr_policy.bundle.signing import generate_local_key

    (tmp_path / "k.pub").write_text(generate_local_key(tmp_path / "k.pem"))
    (tmp_path / "dist").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [*AGENT, f"--public-key={tmp_path / 'k.pub'}", f"--bucket={tmp_path / 'dist'}"]
        argv += [f"--state-dir={tmp_path / 's'}", f"--metrics-port={port}", "--metrics-host=127.0.0.1"]
        code, err = run(argv, tmp_path, capsys)
    assert code == 2 and err.startswith(f"cdr-policy: error: cannot serve /metrics on 127.0.0.1:{port} (")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("ttl", "interval", "message"),
    [
        (1000000, "1h", "bundle_ttl_hours is at most 720 (30 days), got 1000000"),
        (10**9, "1h", "bundle_ttl_hours is at most 720 (30 days), got 1000000000"),
        (10**30, "1h", "bundle_ttl_hours is at most 720 (30 days), got a number out of range"),
        (1, "1h", "bundle_ttl_hours 1 is less than twice the re-render period (1 h)"),
        (72, "2d", "bundle_ttl_hours 72 is less than twice the re-render period (48 h)"),
        ("72h", "1h", "bundle_ttl_hours must be a positive integer, got a str"),
    ],
)
def test_a_bundle_lifetime_out_of_bounds_is_one_configuration_error(
    ttl: int | str, interval: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    channel = tmp_path / "channel.yaml"
    channel.write_text(f"channels:\n  - name: local\n    bundle_ttl_hours: {ttl!r}\n".replace("'", '"'))
    code = main(["--once", "--action=Sigkill", f"--interval={interval}", f"--channel={channel}"], user_env(tmp_path))
    err = capsys.readouterr().err
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"cdr-policy: error: {channel}: channels[0]: channel local: {message}")
    assert "Traceback" not in err and "OverflowError" not in err


def test_the_default_channel_is_checked_against_the_interval_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--interval=3d"], user_env(tmp_path))
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert line.startswith(
        "cdr-policy: error: channel local: bundle_ttl_hours 72 is less than twice the re-render period (72 h)"
    )

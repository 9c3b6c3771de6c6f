"""Bad input at ``cdr-policy``: every flag bounded and every configuration file checked, each with one
clear error line (never a traceback, never the file's content), before anything runs."""

from __future__ import annotations

import pytest

from cdr_policy.cli import main

SECRET = "QUALYS_PASSWORD=hunter2-do-not-print"


def user_env(tmp_path):
    """What a user with a gateway and credentials set has (the runs here stop before any request)."""
    return {
        "XDG_CACHE_HOME": str(tmp_path / "c"),
        "HOME": str(tmp_path),
        "QUALYS_GATEWAY_URL": "https://gateway.invalid.example",
        "QUALYS_USERNAME": "u",
        "QUALYS_PASSWORD": "p",
    }


def run(argv, tmp_path, capsys):
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
def test_out_of_range_flags_get_one_clear_error_line(argv, message, tmp_path, capsys):
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
def test_a_bad_configuration_file_is_named_without_its_content(flag, content, message, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)

    env = user_env(tmp_path)
    code = main(["--once", flag, str(path)], env)

    err = capsys.readouterr().err
    assert code == 2 and f"error: {path}: {message}" in err
    assert len(err.strip().splitlines()) == 1
    assert "hunter2" not in err and "Traceback" not in err


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
def test_a_bundle_lifetime_out_of_bounds_is_one_configuration_error(ttl, interval, message, tmp_path, capsys):
    channel = tmp_path / "channel.yaml"
    channel.write_text(f"channels:\n  - name: local\n    bundle_ttl_hours: {ttl!r}\n".replace("'", '"'))
    code = main(["--once", "--action=Sigkill", f"--interval={interval}", f"--channel={channel}"], user_env(tmp_path))
    err = capsys.readouterr().err
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"cdr-policy: error: {channel}: channels[0]: channel local: {message}")
    assert "Traceback" not in err and "OverflowError" not in err


def test_the_default_channel_is_checked_against_the_interval_too(tmp_path, capsys):
    code = main(["--interval=3d"], user_env(tmp_path))
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert line.startswith(
        "cdr-policy: error: channel local: bundle_ttl_hours 72 is less than twice the re-render period (72 h)"
    )

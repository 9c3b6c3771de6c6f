"""Issue 20 point 13: a full disk or a folder that cannot be written is one ``cdr-policy: error:``
line, with nothing half-written, in the CLI run, ``publish``, ``keygen`` and the agent (which used to
crash writing status.json). A full disk is a real one: a small tmpfs mounted by the test and filled
(only as root; skipped with the reason otherwise); a folder that cannot be written is a read-only
tmpfs as root (root writes through file modes), else a folder without write permission."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.support import agent_args, run

REPO = Path(__file__).resolve().parents[2]


def _mount(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(mount: Path) -> None:
    """Take every free byte of the filesystem at ``mount``."""
    fd = os.open(mount / ".filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, to be filled by the test when it wants it full."""
    if os.geteuid() != 0:
        pytest.skip("a real full filesystem needs root to mount a tmpfs (run the suite as root to cover it)")
    where = tmp_path / "disk"
    _mount(where, "size=1m,mode=0755")
    yield where
    _umount(where)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write to: a read-only tmpfs as root, else one without write permission."""
    where = tmp_path / "read-only"
    if os.geteuid() == 0:
        _mount(where, "ro,size=64k")
        yield where
        _umount(where)
    else:
        where.mkdir()
        where.chmod(0o555)
        yield where
        where.chmod(0o755)


def leftovers(folder: Path) -> list[str]:
    """Temporary or half-built files a failed write could leave behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith((".tmp-", ".policies.")) or ".new" in p.name)


def one_error_line(err: str, *words: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("{")]  # JSON logs aside
    assert len(lines) == 1 and lines[0].startswith("cdr-policy: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_an_unwritable_state_folder_stops_the_run_before_anything(
    env: dict[str, str], read_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["--once", f"--state-dir={read_only}", f"--output={tmp_path / 'p'}"], env, capsys)
    assert code == 2 and out == ""
    one_error_line(err, f"--state-dir {read_only} is not a folder we can write to (")
    assert not (tmp_path / "p").exists()


def test_a_full_state_disk_fails_the_run_in_one_line_and_keeps_the_output(
    env: dict[str, str], small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "policies"
    assert run(["--once", f"--output={output}", f"--state-dir={tmp_path / 'good-state'}"], env, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    fill(small_disk)

    code, _, err = run(["--once", f"--output={output}", f"--state-dir={small_disk / 'state'}"], env, capsys)

    assert code == 1
    one_error_line(err, "(No space left on device)", str(small_disk))
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before
    assert leftovers(small_disk) == [] and leftovers(tmp_path) == []


def test_a_full_output_disk_leaves_the_previous_policies(
    env: dict[str, str], small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = small_disk / "policies"
    assert run(["--once", f"--output={output}"], env, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    fill(small_disk)

    code, _, err = run(["--once", f"--output={output}"], env, capsys)

    assert code == 1
    one_error_line(err, "cannot write the new policies beside", "(No space left on device)", "is unchanged")
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before
    assert leftovers(small_disk) == []


def test_publish_and_keygen_on_a_full_disk(
    env: dict[str, str], small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, channel = tmp_path / "keys", small_disk / "channel"
    assert run(["keygen", f"--out={keys}"], env, capsys)[0] == 0
    assert run(["--once", f"--output={tmp_path / 'p'}"], env, capsys)[0] == 0
    fill(small_disk)

    code, out, err = run(["publish", f"--to={channel}", f"--key={keys / 'bundle-signing.pem'}"], env, capsys)
    assert code == 1, out + err
    one_error_line(err, "cannot write", "(No space left on device)")
    assert not (channel / "channels/local/manifest.json").exists(), "no manifest for files that are not all there"
    assert leftovers(small_disk) == []

    code, _, err = run(["keygen", f"--out={small_disk / 'keys'}"], env, capsys)
    assert code in (1, 2)
    one_error_line(err, "(No space left on device)")
    assert not list((small_disk / "keys").glob("bundle-signing.*")), "no key left half-written"


def test_publish_to_and_keygen_out_a_read_only_folder(
    env: dict[str, str], read_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    assert run(["keygen", f"--out={keys}"], env, capsys)[0] == 0
    assert run(["--once", f"--output={tmp_path / 'p'}"], env, capsys)[0] == 0
    code, _, err = run(
        ["publish", f"--to={read_only / 'channel'}", f"--key={keys / 'bundle-signing.pem'}"], env, capsys
    )
    assert code == 2
    one_error_line(err, "--to ", "is not a folder we can write to")
    code, _, err = run(["keygen", f"--out={read_only}"], env, capsys)
    assert code == 2
    one_error_line(err, "--out ", "is not a folder we can write to")


def test_the_agent_on_a_full_state_disk_applies_says_so_and_keeps_running(
    env: dict[str, str], small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, channel = tmp_path / "keys", tmp_path / "channel"
    assert run(["keygen", f"--out={keys}"], env, capsys)[0] == 0
    assert run(["--once", f"--output={tmp_path / 'p'}"], env, capsys)[0] == 0
    assert run(["publish", f"--to={channel}", f"--key={keys / 'bundle-signing.pem'}"], env, capsys)[0] == 0
    state = small_disk / "agent-state"
    state.mkdir()
    fill(small_disk)
    argv = [*agent_args(channel, keys, tmp_path), f"--state-dir={state}"]

    code, out, err = run([*argv, "--once"], env, capsys)

    assert code == 1 and out.startswith("applied: bundle "), out + err
    one_error_line(err, "cannot write ", str(state), "(No space left on device)")
    assert list((tmp_path / "applied").rglob("*.yaml")), "the cluster (here a folder) got the bundle"
    status = json.loads((channel / "status/laptop.json").read_text())
    assert status["last_poll"]["result"] == "applied", "the bucket's status is written all the same"
    assert leftovers(small_disk) == []

    # In loop mode it keeps running, one line per sync, the error beside it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdr_policy.cli", *argv, "--interval=1s", "--metrics-port=0"],
        env={**os.environ, **env, "PYTHONPATH": str(REPO / "layers/shared")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if len(lines) >= 3:
            break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # (the state of the --once run could not be saved: the same bundle is applied again, then unchanged)
    assert [line.split(" ", 2)[1] for line in lines[1:3]] == ["applied:", "unchanged:"], lines
    assert "No space left on device" in err and "Traceback" not in err


def test_the_agent_refuses_an_unwritable_state_folder_at_start(
    env: dict[str, str], read_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, channel = tmp_path / "keys", tmp_path / "channel"
    assert run(["keygen", f"--out={keys}"], env, capsys)[0] == 0
    channel.mkdir()
    code, _, err = run([*agent_args(channel, keys, tmp_path), f"--state-dir={read_only}", "--once"], env, capsys)
    assert code == 2
    one_error_line(err, f"--state-dir {read_only} is not a folder we can write to")

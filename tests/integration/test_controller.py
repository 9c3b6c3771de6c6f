"""Controller mode (``cdr-policy --interval=5s`` without ``--once``) as a user runs it for months:
issue 21's done-when test. The gateway goes away for three intervals and comes back; the process
stays up, says each failure in one line, keeps the last output, and writes fresh output after
recovery; its health is in the status file and at /metrics and /healthz."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import pytest

from cdr_policy import schemas
from cdr_policy.cli.controller import MAX_BACKOFF_S, RETRIES_AT_INTERVAL, SCHEMA, next_wait
from demo.runner import FINDINGS
from fakes.loopback import free_port
from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway

REPO = Path(__file__).resolve().parents[2]


class Lines:
    """A stream of a process, line by line, as it comes."""

    def __init__(self, stream: Iterable[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Iterable[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, found: Callable[[list[str]], bool], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while not found(self.seen):
            left = deadline - time.monotonic()
            assert left > 0, "timed out; so far:\n" + "\n".join(self.seen[-30:])
            try:
                self.seen.append(self._queue.get(timeout=left))
            except queue.Empty:
                pass
        return self.seen


def failures(lines: list[str]) -> list[str]:
    return [line for line in lines if " failed (" in line]


def test_the_controller_outlives_a_gateway_outage_and_recovers(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    output, state = tmp_path / "policies", tmp_path / "state"
    env = {
        **os.environ,
        "QUALYS_USERNAME": DEMO_USERNAME,
        "QUALYS_PASSWORD": DEMO_PASSWORD,
        "PYTHONPATH": str(REPO / "layers/shared"),
    }
    argv = [
        sys.executable,
        "-m",
        "cdr_policy.cli",
        "--interval=5s",
        f"--gateway=http://127.0.0.1:{port}",
        f"--output={output}",
        f"--state-dir={state}",
        f"--metrics-port={metrics_port}",
    ]
    gateway = FakeQualysGateway(FINDINGS, port=port).start()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None  # both piped
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        out.wait_for(lambda seen: "Done." in seen, timeout=60)
        first = {p.name: p.read_bytes() for p in output.iterdir()}
        report_at = (output / "report.json").stat().st_mtime_ns

        gateway.stop()  # away for three intervals
        lines = err.wait_for(lambda seen: len(failures(seen)) >= 3, timeout=60)
        for n, line in enumerate(failures(lines), start=2):
            assert line.startswith(f"cdr-policy: error: run {n} failed (")
            assert f"cannot connect to 127.0.0.1:{port}" in line
            assert f"{output} keeps the output of " in line and "next run in 5s" in line
        assert "Traceback" not in "\n".join(lines)
        assert {p.name: p.read_bytes() for p in output.iterdir()} == first, "the last output stays"
        assert proc.poll() is None, "the process stays up"

        status = json.loads((state / "state/controller/status.json").read_text())
        schemas.validate(status, SCHEMA)
        assert status["consecutive_failures"] >= 3 and status["runs"]["ok"] == 1
        assert status["last_run"]["result"] == "failed" and "cannot connect" in status["last_run"]["detail"]
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert "cdr_policy_controller_consecutive_failures 3" in metrics or "consecutive_failures 4" in metrics
        assert 'cdr_policy_controller_runs_total{result="ok"} 1' in metrics
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/healthz", timeout=5).status_code == 200

        gateway = FakeQualysGateway(FINDINGS, port=port).start()  # back
        out.wait_for(lambda seen: any(line.startswith("Recovered after") for line in seen), timeout=60)
        assert (output / "report.json").stat().st_mtime_ns > report_at, "fresh output after recovery"
        # issue 21 point 6: a resumed run asks only for what is new since the checkpoint, and says so
        assert "Fetching new CDR events (since the last run's checkpoint)..." in out.seen
        assert any(line.startswith("Found ") and " new events since 20" in line for line in out.seen), out.seen
        status = json.loads((state / "state/controller/status.json").read_text())
        assert status["consecutive_failures"] == 0 and status["runs"]["ok"] == 2
        assert status["last_good_run_at"] == status["last_run"]["at"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        gateway.stop()
    assert code == 0, "a signal ends it cleanly"


def test_the_wait_after_failures_backs_off_with_jitter() -> None:
    rng = random.Random(7)
    waits = [next_wait(5, failures, rng, jitter=0) for failures in range(8)]
    assert waits[: RETRIES_AT_INTERVAL + 1] == [5] * (RETRIES_AT_INTERVAL + 1)
    assert waits[RETRIES_AT_INTERVAL + 1 :] == [10, 20, 40, 80]
    assert next_wait(5, 100, rng, jitter=0) == MAX_BACKOFF_S
    assert next_wait(3600, 100, rng, jitter=0) == 3600, "never above the interval when that is longer"
    jittered = {round(next_wait(60, 0, rng), 3) for _ in range(50)}
    assert len(jittered) > 40 and all(54 <= w <= 66 for w in jittered)


def test_a_configuration_error_ends_the_controller(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only a configuration error or a signal ends it: here the --output parent is a file."""
    from cdr_policy.cli import main

    (tmp_path / "file").write_text("x")
    env = {"QUALYS_USERNAME": "u", "QUALYS_PASSWORD": "p", "XDG_CACHE_HOME": str(tmp_path / "c")}
    code = main(["--interval=5s", "--gateway=http://127.0.0.1:1", f"--output={tmp_path / 'file' / 'out'}"], env)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cdr-policy: error: --output's parent") and len(err.splitlines()) == 1

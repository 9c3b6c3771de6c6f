"""Running one contender in its own process: wall time around the process and its peak RSS."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    wall_s: float
    maxrss_kib: int
    stdout: str
    rss_exact: bool


def measure(cmd: list[str], stdout: Path, env: dict[str, str] | None = None) -> Run:
    """Run ``cmd`` to completion: wall time around the process and its peak RSS.

    The peak comes from GNU ``time -f %M`` when it is installed: a child forked by a big parent
    (this process) inherits the parent's RSS high-water mark into its own ``ru_maxrss``, and GNU
    time's child is forked from a small process. Without it, ``os.wait4``'s figure is used and
    marked approximate (it includes this launcher's size)."""
    gnu_time = _gnu_time()
    with stdout.open("wb") as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        full = [gnu_time, "-q", "-f", "%M", "-o", rss.name, *cmd] if gnu_time else cmd
        started = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.read().decode(errors='replace')[-2000:]}")
        if gnu_time:
            peak, exact = int(rss.read().split()[-1]), True
        else:  # ru_maxrss is KiB on Linux, bytes on macOS
            peak, exact = (usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss), False
    text = stdout.read_text(errors="replace") if stdout.suffix == ".json" else ""
    return Run(wall_s=wall, maxrss_kib=peak, stdout=text, rss_exact=exact)


@functools.cache
def _gnu_time() -> str | None:
    path = shutil.which("time")
    if path is None:
        return None
    probe = subprocess.run([path, "-q", "-f", "%M", "-o", os.devnull, "true"], capture_output=True, check=False)
    return path if probe.returncode == 0 else None


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "layers" / "shared"), str(REPO), env.get("PYTHONPATH", "")])
    return env


# A process as Lambda starts one: -S leaves out site-packages (the development virtualenv), so that
# only the standard library and PYTHONPATH (``lambda_env``) are importable.
LAMBDA_PYTHON = (sys.executable, "-S")


def lambda_env(layer: Path) -> dict[str, str]:
    """The environment for ``LAMBDA_PYTHON``: the layer's ``python/`` folder first (Lambda's
    ``/opt/python``), then this repository for the benchmark's own harness (``benchmarks``,
    ``fakes.lambda_runtime``, standard library only; ``cdr_policy`` is not there).

    ``LAMBDA_TASK_ROOT`` (the function's code folder) is set as Lambda sets it: the X-Ray SDK and
    Powertools' Tracer decide at import whether they run in Lambda by it. Without it the SDK builds
    the sampler it uses outside Lambda, with a botocore session and X-Ray client (about 0.06 s and
    50,000 objects that no Lambda cold start spends), and the Tracer patches nothing; in Lambda the
    SDK samples locally and the Tracer patches botocore, httpx and the other libraries it traces."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(layer), str(REPO)])
    env["LAMBDA_TASK_ROOT"] = str(REPO / "functions")
    return env

"""Controller mode (``cdr-policy`` without ``--once``): one run every ``--interval``, for months.

- A failed run (the gateway or a feed host away, a full disk, anything but a configuration error)
  is one ``cdr-policy: error:`` line with its cause; ``--output`` keeps the last good run's
  policies (a run replaces the folder only once everything is built).
- The next run follows at the interval; after ``RETRIES_AT_INTERVAL`` failures in a row each wait
  doubles, up to ``max(interval, MAX_BACKOFF_S)``. Every wait varies by up to ``JITTER`` either way.
- Only a configuration error (exit 2) or a signal (SIGTERM: after the current run, exit 0;
  Ctrl-C: at once, exit 130) ends it.
- Its health is visible the way the agent's is: ``state/controller/status.json`` in the state
  folder after every run (schema ``controller-status.schema.json``: last run, last good run,
  failures in a row), and with ``--metrics-port`` Prometheus metrics at ``/metrics``, ``/healthz``
  (the loop is alive) and ``/readyz`` (a run has written output).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cdr_policy import __version__, jsonio, layout, schemas
from cdr_policy.agent.observe import metric_lines
from cdr_policy.cli.run import LocalRun
from cdr_policy.errors import CdrPolicyError, ConfigError, StorageError, one_line, print_error
from cdr_policy.observability import logger
from cdr_policy.storage import Store
from cdr_policy.timeutil import iso, utcnow

SCHEMA = "controller-status.schema.json"
PREFIX = "cdr_policy_controller"
RETRIES_AT_INTERVAL = 3
MAX_BACKOFF_S = 300.0
JITTER = 0.1
# A run may take this long (a month's look-back of findings, large feeds) before /healthz says stalled.
RUN_ALLOWANCE_S = 900.0


def next_wait(interval: float, failures: int, rng: random.Random, jitter: float = JITTER) -> float:
    """Seconds until the next run: ``interval`` after a good run and after each of the first
    ``RETRIES_AT_INTERVAL`` failures in a row (a short outage costs one interval), then doubling
    with every further failure, up to ``max(interval, MAX_BACKOFF_S)``; times a factor drawn from
    ``[1 - jitter, 1 + jitter]``."""
    extra = max(0, failures - RETRIES_AT_INTERVAL)
    base = min(interval * 2.0 ** min(extra, 32), max(interval, MAX_BACKOFF_S))
    return base * rng.uniform(1 - jitter, 1 + jitter)


class ControllerHealth:
    """What the loop has done: the status document and the metrics."""

    def __init__(self, *, interval_s: float, output: str, clock: Callable[[], float] = time.time) -> None:
        self.interval_s = interval_s
        self.output = output
        self.clock = clock
        self._lock = threading.Lock()
        self._started_at = iso(utcnow())
        self._runs: Counter[str] = Counter()
        self._failures = 0
        self._last_run: dict[str, str] | None = None
        self._last_good_at: str | None = None
        self._last_good_ts: float | None = None
        self._last_run_ts: float | None = None
        self._next_run_at: str | None = None
        self._deadline: float | None = None

    @property
    def failures(self) -> int:
        """Failed runs in a row."""
        with self._lock:
            return self._failures

    @property
    def last_good_at(self) -> str | None:
        with self._lock:
            return self._last_good_at

    def record(self, result: str, detail: str, wait: float, now: datetime) -> None:
        """One run ended with ``result`` (``ok``, ``problems`` or ``failed``); the next is ``wait`` s away."""
        ts = self.clock()
        with self._lock:
            self._runs[result] += 1
            self._last_run = {"at": iso(now), "result": result, "detail": detail}
            self._last_run_ts = ts
            if result == "failed":
                self._failures += 1
            else:
                self._failures = 0
                self._last_good_at, self._last_good_ts = iso(now), ts
            self._next_run_at = iso(datetime.fromtimestamp(now.timestamp() + wait, now.tzinfo))
            self._deadline = ts + wait + max(self.interval_s, RUN_ALLOWANCE_S)

    def document(self) -> dict[str, Any]:
        with self._lock:
            doc = {
                "schema_version": 1,
                "version": __version__,
                "pid": os.getpid(),
                "interval_s": self.interval_s,
                "output": self.output,
                "started_at": self._started_at,
                "runs": {k: self._runs.get(k, 0) for k in ("ok", "problems", "failed")},
                "consecutive_failures": self._failures,
                "last_run": dict(self._last_run) if self._last_run else None,
                "last_good_run_at": self._last_good_at,
                "next_run_at": self._next_run_at,
            }
        schemas.validate(doc, SCHEMA)
        return doc

    # -- what ObservabilityServer serves ---------------------------------------------------------

    def alive(self) -> bool:
        """The loop finished a run and is not overdue with the next one."""
        with self._lock:
            return self._deadline is None or self.clock() <= self._deadline

    def ready(self) -> bool:
        with self._lock:
            return self._last_good_at is not None

    def exposition(self) -> str:
        with self._lock:
            runs, failures = dict(self._runs), self._failures
            good, last = self._last_good_ts, self._last_run_ts
        out = metric_lines(
            PREFIX,
            "runs_total",
            "counter",
            "Runs by result: ok, problems (output written, e.g. a stale feed), failed (nothing written).",
            [(f'result="{r}"', runs.get(r, 0)) for r in ("ok", "problems", "failed")],
        )
        out += metric_lines(PREFIX, "consecutive_failures", "gauge", "Failed runs in a row.", [("", failures)])
        out += metric_lines(
            PREFIX,
            "last_good_run_timestamp_seconds",
            "gauge",
            "When the last run that wrote output ended.",
            [("", good)] if good is not None else [],
        )
        out += metric_lines(
            PREFIX,
            "last_run_timestamp_seconds",
            "gauge",
            "When the last run ended.",
            [("", last)] if last is not None else [],
        )
        return "\n".join(out) + "\n"


class Controller:
    """The loop around ``LocalRun.once``."""

    def __init__(
        self,
        run: LocalRun,
        interval: float,
        *,
        state: Store,
        debug: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.run = run
        self.interval = interval
        self.state = state
        self.debug = debug
        self.rng = rng or random.Random()
        self.health = ControllerHealth(interval_s=interval, output=str(run.output))

    def loop(self, stop: threading.Event) -> int:
        """Run until ``stop`` is set (0) or a configuration error (2)."""
        attempt = 0
        while not stop.is_set():
            started, attempt = time.monotonic(), attempt + 1
            try:
                code = self.run.once()
            except ConfigError as exc:
                print_error(exc)
                self._failed(exc)
                return 2
            except Exception as exc:  # noqa: BLE001 -- a failed run must not end months of runs
                if self.debug:
                    traceback.print_exc()
                wait = self._failed(exc)
                kept = self.health.last_good_at
                output = f"{self.run.output} keeps the output of {kept}" if kept else f"nothing in {self.run.output}"
                print_error(
                    f"run {attempt} failed ({one_line(exc)}); {output}; next run in {wait:.0f}s "
                    f"({self.health.failures} failure(s) in a row)"
                )
            else:
                recovered = self.health.failures
                wait = self._record("ok" if code == 0 else "problems", "done" if code == 0 else "done, with problems")
                if recovered:
                    self.run.say(f"Recovered after {recovered} failed run(s).")
                self.run.say(f"Next run in {wait:.0f}s.")
            stop.wait(max(0.0, wait - (time.monotonic() - started)))
        return 0

    def _failed(self, exc: BaseException) -> float:
        detail = one_line(exc) if isinstance(exc, CdrPolicyError) else f"{type(exc).__name__}: {one_line(exc)}"
        return self._record("failed", detail)

    def _record(self, result: str, detail: str) -> float:
        failures = self.health.failures + (result == "failed")
        wait = next_wait(self.interval, failures if result == "failed" else 0, self.rng)
        self.health.record(result, detail, wait, utcnow())
        try:
            self.state.put(layout.CONTROLLER_STATUS, jsonio.dumps_pretty(self.health.document()), "application/json")
        except StorageError as exc:
            print_error(f"cannot write the controller status ({one_line(exc)})")
        logger.info("controller run", extra={"result": result, "detail": detail, "next_run_in_s": round(wait, 1)})
        sys.stdout.flush()
        return wait

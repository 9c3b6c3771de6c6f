"""The agent, observable the Kubernetes way: Prometheus metrics at ``/metrics`` and the probes'
``/healthz`` (the sync loop is alive: it finished a poll recently) and ``/readyz`` (it has verified
and applied, or confirmed, what its channel ships).

Everything is derived from the status document each sync produces (``agent-status.schema.json``),
so the metrics say exactly what the status in the bucket says. Counters count syncs since the
process started, as Prometheus expects; the hit counters (``hits_total`` and friends) are the node
readers' own cumulative counts, summed (a reader whose state is lost starts again from zero, which
Prometheus reads as a counter reset).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from cdr_policy.agent.status import AgentStatus
from cdr_policy.errors import ConfigError, os_cause
from cdr_policy.timeutil import parse_iso

PREFIX = "cdr_policy_agent"
# Results after which the agent enforces what its channel ships.
READY_RESULTS = frozenset({"applied", "unchanged", "repaired"})


def escape(value: str) -> str:
    """A label value as Prometheus' text format writes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metric_lines(prefix: str, name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    """One metric in Prometheus' text format (version 0.0.4): HELP, TYPE and its samples
    (``labels`` already written, ``k="v",...``; empty for a metric without labels)."""
    out = [f"# HELP {prefix}_{name} {help_text}", f"# TYPE {prefix}_{name} {kind}"]
    out += [
        f"{prefix}_{name}{{{labels}}} {value:g}" if labels else f"{prefix}_{name} {value:g}"
        for labels, value in samples
    ]
    return out


class Observed(Protocol):
    """What the server below serves: the agent's metrics, a node reader's (``hits.metrics``), or the
    CLI controller's health (``cli.controller``)."""

    def alive(self) -> bool: ...

    def ready(self) -> bool: ...

    def exposition(self) -> str: ...


class AgentMetrics:
    """What one agent has done, as Prometheus metrics; fed one status document per sync."""

    def __init__(self, *, channel: str, interval_s: float, clock: Callable[[], float] = time.time) -> None:
        self.channel = channel
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._status: AgentStatus | None = None
        self._observed_at: float | None = None
        self._ready = False
        self._polls: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()
        self._apply_errors = 0
        self._drift_repairs = 0

    def observe(self, status: AgentStatus) -> None:
        result = status.last_poll.result
        with self._lock:
            self._status = status
            self._observed_at = self.clock()
            self._polls[result] += 1
            code = status.verification.code
            if result == "refused" and code:
                self._refusals[code] += 1
            self._apply_errors += len(status.apply_errors)
            if result == "repaired" or (status.drift is not None and status.drift.repaired):
                self._drift_repairs += 1
            # Ready once what the channel ships is in force; an outage of the bucket later keeps
            # the last good state in force, so it does not make the pod unready.
            self._ready = self._ready or result in READY_RESULTS

    # -- probes ------------------------------------------------------------------------------------

    def alive(self) -> bool:
        """The loop finished a poll within three intervals (or has not had the time to yet)."""
        with self._lock:
            if self._observed_at is None:
                return True
            return self.clock() - self._observed_at <= 3 * self.interval_s + 30

    def ready(self) -> bool:
        with self._lock:
            return self._ready

    # -- exposition --------------------------------------------------------------------------------

    def exposition(self) -> str:
        """The metrics in Prometheus' text format (version 0.0.4)."""
        with self._lock:
            status = self._status
            polls, refusals = dict(self._polls), dict(self._refusals)
            apply_errors, repairs = self._apply_errors, self._drift_repairs
        channel = f'channel="{escape(self.channel)}"'
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            out.extend(metric_lines(PREFIX, name, kind, help_text, samples))

        digest = status.applied_digest if status else None
        generation = status.applied_generation if status else None
        metric(
            "bundle_applied_info",
            "gauge",
            "The bundle in force (1), by digest and signed generation.",
            [(f'{channel},digest="{digest}",generation="{generation or ""}"', 1)] if digest else [],
        )
        applied_at = status.applied_at if status else None
        metric(
            "bundle_age_seconds",
            "gauge",
            "Seconds since the bundle in force was applied.",
            [(channel, max(0.0, self.clock() - parse_iso(applied_at).timestamp()))] if applied_at else [],
        )
        expires_at = status.applied_expires_at if status else None
        metric(
            "bundle_expires_in_seconds",
            "gauge",
            "Seconds until the bundle in force expires (then the agent removes it).",
            [(channel, parse_iso(expires_at).timestamp() - self.clock())] if expires_at else [],
        )
        poll = status.last_poll if status else None
        metric(
            "last_poll_timestamp_seconds",
            "gauge",
            "When the last poll finished.",
            [(channel, parse_iso(poll.at).timestamp())] if poll else [],
        )
        metric(
            "last_poll_result",
            "gauge",
            "The last poll's result (1 for the result it had).",
            [(f'{channel},result="{escape(poll.result)}"', 1)] if poll else [],
        )
        metric(
            "polls_total",
            "counter",
            "Polls by result.",
            [(f'{channel},result="{escape(r)}"', n) for r, n in sorted(polls.items())],
        )
        metric(
            "verification_refusals_total",
            "counter",
            "Bundles refused, by verification code.",
            [(f'{channel},code="{escape(c)}"', n) for c, n in sorted(refusals.items())],
        )
        metric("apply_errors_total", "counter", "Objects that failed to apply or delete.", [(channel, apply_errors)])
        metric("drift_repairs_total", "counter", "Polls that repaired drift.", [(channel, repairs)])
        metric(
            "objects_applied",
            "gauge",
            "Objects the last apply wrote.",
            [(channel, status.objects.applied)] if status else [],
        )
        hits = status.hits if status else None
        metric(
            "hits_total",
            "counter",
            "Events our objects caused (blocked, or would have on an audit channel), summed over the node "
            "readers, by engine, action, and the primary category and source kind of the indicator hit.",
            [
                (
                    f'{channel},engine="{escape(c.engine)}",action="{escape(c.action)}",'
                    f'category="{escape(c.category)}",source="{escape(c.source)}"',
                    c.count,
                )
                for c in (hits.counters if hits else ())
            ],
        )
        metric(
            "hit_events_total",
            "counter",
            "Export lines the node readers read, by result: ours, unattributed (other policies, forwarded "
            "flows, other destinations) or malformed.",
            [(f'{channel},result="{r}"', getattr(hits.totals, r)) for r in ("ours", "unattributed", "malformed")]
            if hits
            else [],
        )
        metric(
            "hit_reporting_nodes",
            "gauge",
            "Node readers whose reports the last status summed.",
            [(channel, hits.nodes or 0)] if hits else [],
        )
        metric(
            "hit_gaps_total",
            "counter",
            "Rotated export files gone before a restarted node reader had finished them.",
            [(channel, hits.gaps)] if hits else [],
        )
        return "\n".join(out) + "\n"


class ObservabilityServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, in a daemon thread."""

    def __init__(self, metrics: Observed, *, host: str = "0.0.0.0", port: int = 9090) -> None:
        observed = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/metrics":
                    self._answer(200, observed.exposition(), "text/plain; version=0.0.4; charset=utf-8")
                elif self.path == "/healthz":
                    ok = observed.alive()
                    self._answer(200 if ok else 503, "ok\n" if ok else "loop stalled\n", "text/plain")
                elif self.path == "/readyz":
                    ok = observed.ready()
                    self._answer(200 if ok else 503, "ok\n" if ok else "nothing verified yet\n", "text/plain")
                else:
                    self._answer(404, "not found\n", "text/plain")

            def _answer(self, status: int, body: str, content_type: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no access log
                pass

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:  # the port is taken, the address is not this host's
            raise ConfigError(
                f"cannot serve /metrics on {host}:{port} ({os_cause(exc)}): choose another --metrics-port "
                "or --metrics-host (0 turns it off)"
            ) from exc
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="agent-observability", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> ObservabilityServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

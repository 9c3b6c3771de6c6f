"""A node reader, observable the way the agent is (``agent.observe``): Prometheus metrics at
``/metrics``, ``/healthz`` (the reading loop turns) and ``/readyz`` (a bundle is known, so lines are
being attributed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cdr_policy.agent.observe import escape, metric_lines
from cdr_policy.hits.aggregate import HitsSection
from cdr_policy.hits.reader import Reader

PREFIX = "cdr_policy_hits_reader"


@dataclass(frozen=True)
class _Seen:
    """What the last batch left: the reader's section and where its files stand."""

    section: HitsSection
    behind: Mapping[str, int]
    rotations: Mapping[str, int]
    digest: str | None
    reported: float | None


class ReaderMetrics:
    def __init__(self, *, channel: str, interval_s: float, clock: Callable[[], float] = time.time) -> None:
        self.channel = channel
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: _Seen | None = None
        self._observed_at: float | None = None

    def observe(self, reader: Reader) -> None:
        """Take what the reader has counted (called by its loop after every batch)."""
        seen = _Seen(
            section=reader.table.to_section(reader.clock()),
            behind=reader.behind(),
            rotations={engine: tail.rotations for engine, tail in reader.tails.items()},
            digest=reader.follower.digest,
            reported=reader.last_report.timestamp() if reader.last_report else None,
        )
        with self._lock:
            self._seen, self._observed_at = seen, self.clock()

    def alive(self) -> bool:
        with self._lock:
            return self._observed_at is None or self.clock() - self._observed_at <= 3 * self.interval_s + 30

    def ready(self) -> bool:
        with self._lock:
            return self._seen is not None and bool(self._seen.digest)

    def exposition(self) -> str:
        with self._lock:
            seen = self._seen
        channel = f'channel="{escape(self.channel)}"'
        out: list[str] = []
        section = seen.section if seen is not None else None
        totals = section.totals if section is not None else None
        out += metric_lines(
            PREFIX,
            "lines_total",
            "counter",
            "Export lines read, by result: ours, unattributed or malformed.",
            [(f'{channel},result="{r}"', getattr(totals, r)) for r in ("ours", "unattributed", "malformed")]
            if totals is not None
            else [],
        )
        out += metric_lines(
            PREFIX,
            "hits_total",
            "counter",
            "Events our objects caused, by engine, action, and the primary category and source kind of the indicator.",
            [
                (
                    f'{channel},engine="{escape(c.engine)}",action="{escape(c.action)}",'
                    f'category="{escape(c.category)}",source="{escape(c.source)}"',
                    c.count,
                )
                for c in (section.counters if section is not None else ())
            ],
        )
        out += metric_lines(
            PREFIX,
            "behind_bytes",
            "gauge",
            "Bytes of each export not read yet.",
            [(f'{channel},engine="{e}"', n) for e, n in sorted(seen.behind.items())] if seen is not None else [],
        )
        out += metric_lines(
            PREFIX,
            "rotations_total",
            "counter",
            "Rotations of each export followed since the reader started.",
            [(f'{channel},engine="{e}"', n) for e, n in sorted(seen.rotations.items())] if seen is not None else [],
        )
        out += metric_lines(
            PREFIX,
            "gaps_total",
            "counter",
            "Rotated export files gone before the reader had finished them.",
            [(channel, section.gaps)] if section is not None else [],
        )
        out += metric_lines(
            PREFIX,
            "dropped_events_total",
            "counter",
            "Hits left out of the node's report past its bounds (after folding).",
            [(channel, section.dropped_events)] if section is not None else [],
        )
        digest = seen.digest if seen is not None else None
        out += metric_lines(
            PREFIX,
            "bundle_info",
            "gauge",
            "The bundle events are attributed with (1), by digest.",
            [(f'{channel},digest="{digest}"', 1)] if digest else [],
        )
        out += metric_lines(
            PREFIX,
            "last_report_timestamp_seconds",
            "gauge",
            "When the node's report last reached the agent's report store.",
            [(channel, seen.reported)] if seen is not None and seen.reported else [],
        )
        return "\n".join(out) + "\n"

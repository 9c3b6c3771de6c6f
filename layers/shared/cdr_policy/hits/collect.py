"""The agent's side of the hits: the node readers' reports of its channel summed into the
``hits`` section of its status (``hits.aggregate``), bounded to ``MAX_CLUSTER_ROWS`` rows, read at
most every ``interval_s`` so that the status (rewritten in the bucket only when it says something
new) changes a few times an hour at most. A report that fails its checks is skipped and logged;
reports that cannot be listed keep the last section."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime

from cdr_policy.agent.applier import ApplyError
from cdr_policy.errors import BundleError, StorageError
from cdr_policy.hits.aggregate import MAX_CLUSTER_ROWS, HitsSection, HitTable
from cdr_policy.hits.reports import ReportStore, read_report
from cdr_policy.observability import logger

DEFAULT_INTERVAL_S = 300.0


class HitsCollector:
    def __init__(
        self,
        reports: ReportStore,
        channel: str,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reports = reports
        self.channel = channel
        self.interval_s = interval_s
        self.clock = clock
        self._section: HitsSection | None = None
        self._due = 0.0

    def __call__(self, now: datetime) -> HitsSection | None:
        """The status's hits section (None: no reader of this channel reports)."""
        if self.clock() < self._due:
            return self._section
        self._due = self.clock() + self.interval_s
        try:
            entries = self.reports.read_all()
        except (StorageError, ApplyError) as exc:
            logger.warning("cannot read the hit reports; keeping the last", extra={"error": str(exc)})
            return self._section
        table, nodes, refused = HitTable(), 0, 0
        for where, data in entries:
            try:
                report = read_report(data, where)
            except BundleError as exc:
                refused += 1
                logger.warning("hit report refused", extra={"report": where, "reason": str(exc)})
                continue
            if report.channel == self.channel:
                table.merge(report.table)
                nodes += 1
        if not nodes:
            self._section = None
            return None
        table.trim(MAX_CLUSTER_ROWS, now)
        self._section = dataclasses.replace(table.to_section(now), nodes=nodes)
        logger.info(
            "hit reports read",
            extra={"nodes": nodes, "refused": refused, "rows": len(table.rows), "ours": table.totals.ours},
        )
        return self._section

"""The CdrFetch stage: findings since the checkpoint → raw pages, the CDR indicator set, the checkpoint.

The range is ``checkpoint - overlap .. now`` (or ``now - lookback .. now`` without a checkpoint),
cut into windows of at most ``window`` each. Per window: every page is stored gzipped as it
arrives; then the window's findings are de-duplicated by uuid (across runs, through the uuid
ledger), parsed, mapped and merged into ``indicators/cdr/current.json``; only then does the
checkpoint move to the window's end (commit protocol in :mod:`cdr_policy.qualys.state`).

Counts in the result describe this run's range, each finding once: ``fetched`` is every element
of every page, ``= unique + duplicates + malformed`` where ``duplicates`` repeat a uuid already
fetched in this run (the gateway sent it twice, or on both sides of a window boundary) and
``by_category``/``by_rule``/``unmapped`` count the ``unique`` findings. ``new`` is how many of them
no earlier run had merged (the overlap refetches some): only those change the indicator set.
When the time budget runs out (:class:`QualysDeadline`), or the Qualys request budget
(:class:`~cdr_policy.qualys.retry.QualysRateBudget`: the configured requests per hour, or a wait the
gateway asked for) would make the run wait past it, the run stops after the last fully stored window
and reports itself incomplete; the next run resumes from the checkpoint. The client's request budget
is stored whatever happens (``state/cdr/rate-limit.json``).
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from cdr_policy import jsonio, layout
from cdr_policy.guards import NeverBlock
from cdr_policy.jsonio import dumps
from cdr_policy.models import IndicatorSet, Rejection
from cdr_policy.observability import logger, metrics
from cdr_policy.qualys.categories import CategoryMapping
from cdr_policy.qualys.client import DEFAULT_WINDOW, MAX_LIMIT, QualysClient, split_windows
from cdr_policy.qualys.extract import CdrAccumulator
from cdr_policy.qualys.findings import Finding, Malformed, parse_finding
from cdr_policy.qualys.retry import QualysDeadline
from cdr_policy.qualys.state import (
    SeenLedger,
    commit_id,
    read_checkpoint,
    read_current,
    read_seen,
    write_checkpoint,
    write_current,
    write_request_budget,
    write_seen,
)
from cdr_policy.storage import Store
from cdr_policy.summaries import CdrRunSummary
from cdr_policy.timeutil import format_instant, iso, parse_iso

MALFORMED_REPORT_CAP = 1000


@dataclass
class CdrFetchResult:
    started_at: datetime
    range_start: datetime
    range_end: datetime
    checkpoint: datetime | None = None
    complete: bool = True
    stopped_reason: str | None = None
    windows_planned: int = 0
    windows_done: int = 0
    pages: int = 0
    fetched: int = 0
    unique: int = 0
    new: int = 0
    duplicates: int = 0
    by_category: Counter[str] = field(default_factory=Counter)
    by_rule: Counter[str] = field(default_factory=Counter)
    unmapped: Counter[str] = field(default_factory=Counter)
    malformed: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    indicators: dict[str, int] = field(default_factory=lambda: {"ips": 0, "domains": 0, "ports": 0})
    expired: int = 0
    authentications: int = 0
    retries: int = 0
    requests: int = 0  # findings requests sent (the authentications are exempt from the gateway's limits)
    indicator_set: IndicatorSet | None = None  # the stored CDR set after this run

    def summary(self) -> CdrRunSummary:
        totals = self.indicator_set.stats if self.indicator_set is not None else {}
        return CdrRunSummary(
            complete=self.complete,
            stopped_reason=self.stopped_reason,
            range={
                "start": format_instant(self.range_start),
                "end": format_instant(self.range_end),
                "checkpoint": None if self.checkpoint is None else format_instant(self.checkpoint),
            },
            windows={"planned": self.windows_planned, "done": self.windows_done},
            pages=self.pages,
            fetched=self.fetched,
            unique=self.unique,
            new=self.new,
            duplicates=self.duplicates,
            by_category=dict(sorted(self.by_category.items())),
            by_rule=dict(sorted(self.by_rule.items())),
            unmapped_categories=dict(sorted(self.unmapped.items())),
            malformed_count=len(self.malformed),
            malformed=self.malformed[:MALFORMED_REPORT_CAP],
            indicators=dict(self.indicators),
            indicators_total={k: int(totals.get(k, 0)) for k in ("ips", "domains", "ports", "behaviours")},
            expired=self.expired,
            rejected=[r.to_dict() for r in sorted(self.rejected, key=lambda r: (r.value, r.reason))],
            authentications=self.authentications,
            retries=self.retries,
        )


def load_cdr_set(store: Store) -> IndicatorSet | None:
    """The stored CDR indicator set (entries and behaviours), or None before the first fetch."""
    return read_current(store)


def _ms(dt: datetime) -> datetime:
    dt = dt.astimezone(UTC) if dt.tzinfo else dt.replace(tzinfo=UTC)
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def _content(s: IndicatorSet | None) -> bytes | None:
    if s is None:
        return None
    return dumps(
        [
            [e.to_dict() for e in s.entries],
            [b.to_dict() for b in s.behaviours],
            [r.to_dict() for r in s.rejected],
        ]
    )


class _Run:
    """One invocation's state: the ledger, the accumulator and the counters."""

    def __init__(
        self,
        store: Store,
        result: CdrFetchResult,
        acc: CdrAccumulator,
        ledger: SeenLedger,
        mapping: CategoryMapping,
        stored: IndicatorSet | None,
    ) -> None:
        self.store = store
        self.result = result
        self.acc = acc
        self.ledger = ledger
        self.mapping = mapping
        self.stored_content = _content(stored)
        self.current_exists = stored is not None
        self.run_seen: set[str] = set()
        self.ledger_dirty = False

    def process(self, items: list[tuple[str, int, Any]], window_end: datetime) -> dict[str, str]:
        """Count, de-duplicate, parse and map one window's items; merge the findings no earlier run
        has merged. Returns the uuids new to the ledger (to be committed with the window)."""
        r = self.result
        fresh: dict[str, str] = {}
        usable: list[Finding] = []
        stamp = iso(window_end)
        for key, index, item in items:
            r.fetched += 1
            parsed = parse_finding(item)
            if parsed.uuid is not None:
                if parsed.uuid in self.run_seen:
                    r.duplicates += 1
                    continue
                self.run_seen.add(parsed.uuid)
                known = self.ledger.uuids.get(parsed.uuid)
                if known is None:
                    fresh[parsed.uuid] = stamp
                elif parse_iso(known) < window_end:
                    # seen again (the overlap, or a gateway that re-sends updated findings): remember
                    # it for as long as it can still come back
                    self.ledger.uuids[parsed.uuid] = stamp
                    self.ledger_dirty = True
            if isinstance(parsed, Malformed):
                r.malformed.append({**parsed.to_dict(), "raw": key, "index": index})
                continue
            usable.append(parsed)
        usable.sort(key=lambda f: (f.timestamp or self.acc.now, f.uuid))
        for finding in usable:
            r.unique += 1
            r.by_category[finding.category] += 1
            match = self.mapping.match(finding.category, finding.techniques)
            rule = None if match is None else match.rule
            if rule is None:
                r.unmapped[finding.category] += 1
            else:
                r.by_rule[rule] += 1
            merge = finding.uuid in fresh  # else an earlier run merged it (the overlap)
            r.new += merge
            self.acc.add(finding, rule, merge=merge)
        return fresh

    def commit(self, fresh: dict[str, str], window_end: datetime, stats: dict[str, Any]) -> None:
        self.ledger.rejections = dict(self.acc.rejections)
        snapshot = self.acc.indicator_set(self.acc.now, stats)
        content = _content(snapshot)
        if fresh or content != self.stored_content or not self.current_exists:
            commit = commit_id(window_end, fresh, content)
            snapshot.stats["commit"] = commit
            write_seen(self.store, self.ledger, fresh, commit)
            write_current(self.store, snapshot)
            self.ledger.uuids.update(fresh)
            self.stored_content = content
            self.current_exists = True
        elif self.ledger_dirty:
            write_seen(self.store, self.ledger, {}, None)
        self.ledger_dirty = False
        write_checkpoint(self.store, window_end, self.acc.now)
        self.result.indicator_set = snapshot
        self.result.checkpoint = window_end


def run_cdr_fetch(
    store: Store,
    client: QualysClient,
    *,
    now: datetime,
    lookback_hours: int,
    overlap_minutes: int,
    ttl_hours: int,
    guard: NeverBlock,
    mapping: CategoryMapping,
    resume: bool = True,
    window: timedelta = DEFAULT_WINDOW,
    page_limit: int = MAX_LIMIT,
    progress: Callable[[str], None] | None = None,
) -> CdrFetchResult:
    """Fetch, store and merge everything since the checkpoint. Raises QualysError / StorageError
    on a failure other than the time budget; windows stored before it stay stored."""
    if lookback_hours < 1 or overlap_minutes < 0 or ttl_hours < 1:
        raise ValueError("lookback_hours and ttl_hours must be >= 1, overlap_minutes >= 0")
    now = _ms(now)
    lookback, overlap = timedelta(hours=lookback_hours), timedelta(minutes=overlap_minutes)
    checkpoint = read_checkpoint(store) if resume else None
    start = checkpoint - overlap if checkpoint is not None else now - lookback
    if checkpoint is not None and checkpoint > now:
        logger.warning("cdr checkpoint is in the future; nothing to fetch", extra={"checkpoint": iso(checkpoint)})
    windows = split_windows(start, now, window)

    stored = read_current(store)
    ledger = read_seen(store, stored)
    acc = CdrAccumulator(guard=guard, ttl=timedelta(hours=ttl_hours), now=now)
    acc.seed(stored, ledger.rejections)
    result = CdrFetchResult(
        started_at=now,
        range_start=start,
        range_end=now,
        checkpoint=checkpoint,
        windows_planned=len(windows),
        expired=acc.expired,
        indicator_set=stored,
    )
    run = _Run(store, result, acc, ledger, mapping, stored)
    logger.info(
        "cdr fetch started",
        extra={
            "start": format_instant(start),
            "end": format_instant(now),
            "windows": len(windows),
            "resume": resume,
        },
    )
    try:
        for window_start, window_end in windows:
            items: list[tuple[str, int, Any]] = []
            for page in client.findings_pages(window_start, window_end, limit=page_limit):
                result.pages += 1
                if progress is not None:
                    progress(f"page {result.pages}, {result.fetched + len(items) + len(page.items)} findings")
                if not page.items:
                    continue  # an empty page holds nothing to audit
                key = layout.raw_cdr_page_key(window_start, page.number)
                store.put(key, gzip.compress(page.body, mtime=0), "application/gzip")
                items.extend((key, i, item) for i, item in enumerate(page.items))
            fresh = run.process(items, window_end)
            ledger.prune(min(now - lookback, window_end - overlap) - overlap)
            run.commit(fresh, window_end, {"checkpoint": format_instant(window_end)})
            result.windows_done += 1
            logger.info(
                "cdr window stored",
                extra={
                    "window_start": format_instant(window_start),
                    "window_end": format_instant(window_end),
                    "items": len(items),
                    "new": len(fresh),
                },
            )
    except QualysDeadline as exc:
        result.complete = False
        result.stopped_reason = str(exc)
        logger.warning(
            "cdr fetch stopped by its time or request budget; resuming next run",
            extra={"windows_done": result.windows_done, "windows": len(windows), "reason": str(exc)},
        )
    finally:
        result.rejected = list(acc.rejected_now.values())
        result.indicators = acc.touched_counts()
        result.authentications = client.authentications
        result.retries = client.retry_stats.retries
        result.requests = client.requests
        if client.request_budget is not None:
            write_request_budget(store, client.request_budget)
        _emit_metrics(result)
    logger.info(
        "cdr fetch finished",
        extra={
            k: v
            for k, v in asdict(result.summary()).items()
            if k
            in (
                "complete",
                "fetched",
                "unique",
                "new",
                "duplicates",
                "pages",
                "malformed_count",
                "indicators",
                "unmapped_categories",
            )
        },
    )
    summary = result.summary()
    store.put(layout.CDR_LAST_RUN, jsonio.dumps_pretty(summary.to_json()), "application/json")
    return result


def _emit_metrics(result: CdrFetchResult) -> None:
    for name, value in (
        ("CdrFindingsFetched", result.fetched),
        ("CdrFindingsUnique", result.unique),
        ("CdrFindingsNew", result.new),
        ("CdrFindingsDuplicate", result.duplicates),
        ("CdrFindingsMalformed", len(result.malformed)),
        ("CdrFindingsUnmapped", sum(result.unmapped.values())),
        ("CdrIndicatorsRejected", len(result.rejected)),
        ("QualysRetries", result.retries),
        ("QualysRequests", result.requests),
        ("CdrFetchIncomplete", 0 if result.complete else 1),
    ):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)

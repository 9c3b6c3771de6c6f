"""The FeedSync stage: download every feed, gate it, normalise it, store one indicator set per feed.

Per enabled feed, in one run:
1. all feeds are fetched at once (``download.fetch_all``) with the validators of the last good copy;
2. the body (or, after a ``304``, the stored last good copy) is parsed and put through the gate;
3. a passing body is filtered by the never-block guard (every refused entry reported) and
   aggregated into the compact form (``models.FeedPrefixes``): one provenance for every entry,
   ``last_seen = now`` and ``expires_at = now + ttl``;
4. a failing body or download leaves the previous set in force, marked ``stale`` with the reason;
   its entries still expire at their ``expires_at``, so a feed that stays broken ages out;
5. the set is written only when what rendering depends on changed (``persist``).

Feeds that are disabled, or whose stored set is no longer configured, get an empty ``disabled``
set, so that removing a feed from the configuration removes its entries from the policies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

import httpx
import numpy as np
from aws_lambda_powertools.metrics import MetricUnit

from cdr_policy import layout
from cdr_policy.feeds import gate
from cdr_policy.feeds.aggregate import Ingested, ingest
from cdr_policy.feeds.config import FeedConfig
from cdr_policy.feeds.download import (
    DEADLINE_S,
    MAX_BYTES,
    FetchResult,
    Validators,
    fetch,
    fetch_all,
    make_client,
)
from cdr_policy.feeds.parse import ParsedFeed, parse_feed
from cdr_policy.feeds.persist import (
    FeedOutcome,
    FeedState,
    load_set,
    load_state,
    save_set_if_changed,
    save_state,
)
from cdr_policy.guards import NeverBlock
from cdr_policy.models import FeedPrefixes, IndicatorSet, Rejection
from cdr_policy.netprefix.vector import V4, V6
from cdr_policy.observability import logger, metrics
from cdr_policy.qualys.state import read_current
from cdr_policy.storage import NotFound, Store
from cdr_policy.summaries import FeedSummary, FeedSyncSummary
from cdr_policy.timeutil import iso

if TYPE_CHECKING:
    from cdr_policy.feeds.abuseipdb import AbuseIPDB

# Never-block refusals listed per feed (a feed of a million private addresses must not become a
# million rejection records); the total is always in ``stats.rejected_guard``.
MAX_LISTED_GUARD_REJECTIONS = 1000


@dataclass
class FeedSyncResult:
    feeds: dict[str, FeedOutcome]
    reputation: list[FeedOutcome] = field(default_factory=list)
    written: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> list[Rejection]:
        out = [r for o in (*self.feeds.values(), *self.reputation) for r in o.rejected]
        return sorted(out, key=lambda r: (r.source, r.value, r.reason))

    @property
    def refused(self) -> int:
        """Every entry the parsers or guards refused: those listed in ``rejected`` and those only
        counted (``rejected_*_not_listed``)."""
        return sum(
            len(o.rejected) + o.stats.get("rejected_parse_not_listed", 0) + o.stats.get("rejected_guard_not_listed", 0)
            for o in self.outcomes.values()
        )

    @property
    def outcomes(self) -> dict[str, FeedOutcome]:
        """Every feed's and reputation list's outcome, by name."""
        outcomes = {o.name: o for o in (*self.feeds.values(), *self.reputation)}
        return dict(sorted(outcomes.items()))

    def summary(self) -> FeedSyncSummary:
        return FeedSyncSummary(
            feeds={name: FeedSummary(o.status, o.entries) for name, o in self.outcomes.items()},
            written=list(self.written),
            rejected=self.refused,
        )


def run_feed_sync(
    store: Store,
    feeds: Sequence[FeedConfig],
    *,
    now: datetime,
    guard: NeverBlock,
    http: httpx.Client | None = None,
    reputation: AbuseIPDB | None = None,
    thresholds: gate.GateThresholds = gate.DEFAULT_THRESHOLDS,
    max_bytes: int = MAX_BYTES,
    deadline_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> FeedSyncResult:
    """Sync every feed (see the module docstring) and, when ``reputation`` is given, AbuseIPDB
    for the addresses of the CDR set in force. ``http`` is closed only when this function created it.
    ``deadline_s`` is the time the caller has left (a Lambda invocation's budget): the downloads,
    which run concurrently, get at most half of it, the rest is for storing."""
    fetch_deadline_s = DEADLINE_S if deadline_s is None else max(1.0, min(DEADLINE_S, deadline_s / 2))
    names = [f.name for f in feeds]
    if len(set(names)) != len(names):
        raise ValueError(f"feed names must be unique: {names}")
    enabled = [f for f in feeds if f.enabled]
    states = {f.name: load_state(store, f.name) for f in enabled}
    client = http or make_client()
    try:
        fetched = fetch_all(
            client,
            enabled,
            {n: _validators(s) for n, s in states.items()},
            max_bytes=max_bytes,
            deadline_s=fetch_deadline_s,
        )
        result = FeedSyncResult(feeds={})
        for feed in enabled:
            job = _FeedJob(store, feed, states[feed.name], now, guard, thresholds)
            unconditional = partial(fetch, client, feed, Validators(), max_bytes=max_bytes)
            result.feeds[feed.name] = job.run(fetched[feed.name], refetch=unconditional)
            if progress is not None:
                progress(f"{feed.name}: {result.feeds[feed.name].entries} entries")
        for name, why in _retired(store, feeds):
            result.feeds[name] = _disable(store, name, why, now)
        if reputation is not None:
            result.reputation = reputation.refresh(store, cdr_ips(store), now=now, guard=guard, http=client)
        result.written = sorted(o.key for o in (*result.feeds.values(), *result.reputation) if o.changed and o.key)
    finally:
        if http is None:
            client.close()
    logger.info(
        "feed sync done",
        extra={
            "feeds": {n: o.status for n, o in sorted(result.feeds.items())},
            "written": result.written,
            "rejected": len(result.rejected),
        },
    )
    return result


def cdr_ips(store: Store) -> list[str]:
    """The addresses of the CDR set in force (what AbuseIPDB is asked about)."""
    cdr = read_current(store)
    return sorted(e.value.split("/")[0] for e in (cdr.entries if cdr else []) if e.kind == "ip")


def _validators(state: FeedState) -> Validators:
    # Conditional headers only while there is a last good copy to fall back on after a 304.
    if not state.last_good_sha256:
        return Validators()
    return Validators(url=state.url, etag=state.etag, last_modified=state.last_modified)


def _retired(store: Store, feeds: Sequence[FeedConfig]) -> list[tuple[str, str]]:
    """Feeds with a stored set that are disabled or no longer configured."""
    configured = {f.name: f for f in feeds}
    out = [(f.name, "disabled in the feed configuration") for f in feeds if not f.enabled]
    for name in map(layout.feed_set_name, store.list(layout.INDICATORS_FEEDS)):
        if name is not None and name not in configured:
            out.append((name, "no longer in the feed configuration"))
    return sorted(out)


def _disable(store: Store, name: str, why: str, now: datetime) -> FeedOutcome:
    previous = load_set(store, layout.feed_set_key(name))
    new = IndicatorSet(source=f"feed:{name}", fetched_at=iso(now), status="disabled", error=why)
    changed = previous.indicator_set is not None and save_set_if_changed(store, previous, new, now=now, ttl=None)
    return FeedOutcome(name=name, status="disabled", entries=0, error=why, changed=changed, key=previous.key)


class _FeedJob:
    def __init__(
        self,
        store: Store,
        feed: FeedConfig,
        state: FeedState,
        now: datetime,
        guard: NeverBlock,
        thresholds: gate.GateThresholds,
    ) -> None:
        self.store = store
        self.feed = feed
        self.state = state
        self.now = now
        self.guard = guard
        self.thresholds = thresholds
        self.ttl = timedelta(hours=feed.ttl_hours)
        self.previous = load_set(store, layout.feed_set_key(feed.name))
        self.raw_missing = False

    def run(self, fetched: FetchResult, refetch: Callable[[], FetchResult]) -> FeedOutcome:
        body = fetched.body
        if fetched.outcome == "not_modified":
            try:
                body = self.store.get(layout.feed_last_good_key(self.feed.name)).data
            except NotFound:
                logger.warning("304 without a stored last good copy, downloading again", extra={"feed": self.feed.name})
                self.raw_missing = True
                fetched = refetch()
                body = fetched.body
        if fetched.outcome == "error" or body is None:
            return self._keep_last_good("download", fetched.error or "download failed", fetched)
        parsed = parse_feed(body, self.feed.format)
        verdict = gate.check(
            self.feed,
            parsed,
            content_type=fetched.content_type,
            last_good_count=self.state.last_good_count,
            thresholds=self.thresholds,
        )
        if not verdict.passed:
            assert verdict.check is not None and verdict.reason is not None
            return self._keep_last_good(verdict.check, verdict.reason, fetched)
        return self._accept(parsed, body, verdict, fetched)

    # -- a good download ------------------------------------------------------------------------

    def _accept(self, parsed: ParsedFeed, body: bytes, verdict: gate.Verdict, fetched: FetchResult) -> FeedOutcome:
        name = self.feed.name
        ingested = ingest(parsed, self.guard, name, listed=MAX_LISTED_GUARD_REJECTIONS)
        prefixes = self._prefixes(ingested)
        listed = parsed.rejected  # the first LISTED_REJECTIONS; the total is in stats.rejected_parse
        rejected = [Rejection(value=v, source=name, reason=r) for v, r in listed] + ingested.rejected
        sha = hashlib.sha256(body).hexdigest()
        stats = {
            **parsed.stats(),
            "rejected_guard": ingested.refused,
            "entries": len(prefixes),
            "bytes": len(body),
            "sha256": sha,
            "not_modified": fetched.outcome == "not_modified",
        }
        if parsed.rejected_count > len(listed):
            stats["rejected_parse_not_listed"] = parsed.rejected_count - len(listed)
        if ingested.refused > len(ingested.rejected):
            stats["rejected_guard_not_listed"] = ingested.refused - len(ingested.rejected)
        new = IndicatorSet(
            source=f"feed:{name}",
            fetched_at=iso(self.now),
            status="empty" if verdict.status == "empty" else "ok",
            rejected=rejected,
            stats=stats,
            prefixes=prefixes,
        )
        changed = save_set_if_changed(self.store, self.previous, new, now=self.now, ttl=self.ttl)
        if fetched.outcome == "ok" and (sha != self.state.last_good_sha256 or self.raw_missing):
            self.store.put(layout.feed_last_good_key(name), body, "text/plain")
        st = self.state
        if fetched.outcome == "ok":
            st.etag, st.last_modified = fetched.etag, fetched.last_modified
        st.url = self.feed.url
        st.last_good_at, st.last_good_sha256, st.last_good_count = iso(self.now), sha, parsed.entries
        st.last_status, st.last_error, st.failures, st.stale_since = new.status, None, 0, None
        st.last_attempt_at = iso(self.now)
        save_state(self.store, name, st)
        if ingested.refused:
            metrics.add_metric(name="FeedEntriesRefused", unit=MetricUnit.Count, value=ingested.refused)
        logger.info(
            "feed accepted",
            extra={
                "feed": name,
                "status": new.status,
                "entries": len(prefixes),
                "lines": parsed.lines,
                "rejected_parse": parsed.rejected_count,
                "rejected_guard": ingested.refused,
                "not_modified": fetched.outcome == "not_modified",
                "changed": changed,
            },
        )
        return FeedOutcome.of_set(name, new, changed=changed, key=self.previous.key)

    def _prefixes(self, ingested: Ingested) -> FeedPrefixes:
        v4, v6 = ingested.prefixes[4], ingested.prefixes[6]
        return FeedPrefixes(
            category=self.feed.category,
            last_seen=iso(self.now),
            expires_at=iso(self.now + self.ttl),
            ipv4=V4(np.asarray(v4.networks, dtype=np.uint32), np.asarray(v4.lengths, dtype=np.uint8)),
            ipv6=V6(list(v6.networks), bytes(v6.lengths)),
        )

    # -- a failed download or gate ----------------------------------------------------------------

    def _keep_last_good(self, check: str, reason: str, fetched: FetchResult) -> FeedOutcome:
        name = self.feed.name
        old = self.previous.indicator_set
        st = self.state
        st.failures += 1
        st.stale_since = st.stale_since or iso(self.now)
        st.last_error, st.last_attempt_at = reason, iso(self.now)
        if old is not None and old.status in ("ok", "empty", "stale"):
            now_s = iso(self.now)  # canonical timestamps sort chronologically
            live = [e for e in old.entries if e.expires_at > now_s]
            kept = old.prefixes if old.prefixes is not None and old.prefixes.expires_at > now_s else None
            entries = len(live) + (len(kept) if kept is not None else 0)
            stats = {**old.stats, "entries": entries, "gate": check, "stale_since": st.stale_since}
            new = IndicatorSet(
                source=f"feed:{name}",
                fetched_at=old.fetched_at,
                status="stale",
                entries=live,
                rejected=old.rejected,
                stats=stats,
                error=reason,
                prefixes=kept,
            )
        else:
            new = IndicatorSet(
                source=f"feed:{name}",
                fetched_at=iso(self.now),
                status="error",
                stats={"gate": check},
                error=f"{reason}; no earlier good copy to keep",
            )
        st.last_status = new.status
        changed = save_set_if_changed(self.store, self.previous, new, now=self.now, ttl=None)
        save_state(self.store, name, st)
        metrics.add_metric(name="FeedStale" if new.status == "stale" else "FeedError", unit=MetricUnit.Count, value=1)
        logger.warning(
            "feed download rejected, last good copy kept" if new.status == "stale" else "feed download rejected",
            extra={
                "feed": name,
                "check": check,
                "reason": reason,
                "status": new.status,
                "kept_entries": new.size,
                "http_status": fetched.status_code,
                "final_url": fetched.final_url,
                "failures": st.failures,
            },
        )
        return FeedOutcome.of_set(name, new, changed=changed, key=self.previous.key)

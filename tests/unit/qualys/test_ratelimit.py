"""The Qualys request budget: the configured requests per hour and the gateway's waits, held across
runs (``state/cdr/rate-limit.json``). A 429 slows the fetch down; it never fails it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cdr_policy import layout
from cdr_policy.guards import NeverBlock
from cdr_policy.qualys.categories import CategoryMapping
from cdr_policy.qualys.client import QualysClient
from cdr_policy.qualys.ratelimit import WINDOW_S, RequestBudget
from cdr_policy.qualys.retry import QualysRateBudget
from cdr_policy.qualys.state import read_request_budget, write_request_budget
from cdr_policy.stages.cdr_fetch import CdrFetchResult, run_cdr_fetch
from cdr_policy.storage import LocalStore, Store
from fakes.clock import FakeClock
from fakes.qualys import FakeQualysGateway, Fault, synthetic_findings

from .conftest import SAMPLES_NOW

NOW = SAMPLES_NOW
ONE_MINUTE = 60.0  # the fast profile's schedule: each run's time budget here


def findings(n: int) -> list[Any]:
    return synthetic_findings(n, start=NOW - timedelta(minutes=30), end=NOW - timedelta(minutes=1))


def fetch(
    store: Store,
    client: QualysClient,
    guard: NeverBlock,
    mapping: CategoryMapping,
    now: datetime = NOW,
    lookback_hours: int = 1,
    overlap_minutes: int = 10,
) -> CdrFetchResult:
    return run_cdr_fetch(
        store, client, now=now, guard=guard, mapping=mapping, lookback_hours=lookback_hours,
        overlap_minutes=overlap_minutes, ttl_hours=24,
    )  # fmt: skip


def budgeted(
    make_client: Callable[..., QualysClient],
    clock: FakeClock,
    gw: FakeQualysGateway,
    store: Store,
    per_hour: int,
    *,
    budget_s: float = ONE_MINUTE,
) -> QualysClient:
    """A client as CdrFetch's wiring builds it: the stored budget, a run's time budget, the (fake) clocks."""
    budget = read_request_budget(store, per_hour)
    return make_client(gw, budget=budget, wall_clock=clock, deadline=clock() + budget_s)


# -- the budget itself ------------------------------------------------------------------------------
def test_a_budget_lets_per_hour_requests_go_in_any_hour() -> None:
    budget = RequestBudget(3)
    for t in (0.0, 10.0, 20.0):
        assert budget.wait(t) == (0.0, None)
        budget.record(t)
    wait, why = budget.wait(30.0)
    assert wait == WINDOW_S - 30.0 and "3 requests an hour" in str(why)
    assert budget.wait(WINDOW_S + 0.5) == (0.0, None)  # the first request has left the hour
    assert budget.sent == [10.0, 20.0]


def test_a_wait_the_gateway_asked_for_is_kept_and_only_lengthened() -> None:
    budget = RequestBudget(100)
    budget.defer(500.0)
    budget.defer(200.0)
    assert budget.wait(100.0) == (400.0, "the gateway asked to wait")
    assert budget.wait(500.0) == (0.0, None)
    assert budget.wait(500.0 + WINDOW_S) == (0.0, None) and budget.not_before is None  # forgotten


def test_the_budget_survives_a_store_round_trip_and_an_unreadable_file_starts_afresh(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    budget = read_request_budget(store, 5)
    assert (budget.sent, budget.not_before, budget.changed) == ([], None, False)
    budget.record(10.0)
    budget.defer(99.5)
    write_request_budget(store, budget)
    again = read_request_budget(store, 7)  # the limit is today's configuration, the history is stored
    assert (again.per_hour, again.sent, again.not_before) == (7, [10.0], 99.5)
    store.put(layout.CDR_RATE, b'{"schema_version": 1, "sent": ["yesterday"]}')
    assert read_request_budget(store, 5).sent == []
    with pytest.raises(ValueError, match="at least 1"):
        RequestBudget(0)


# -- the fetch under a budget --------------------------------------------------------------------------
def test_the_configured_rate_holds_across_runs_and_the_run_resumes_later(
    make_client: Callable[..., QualysClient],
    clock: FakeClock,
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    """Two requests an hour, two windows of two pages each: the first run reads the first window and
    stops before the second (incomplete, not failed) rather than wait an hour; the next run sends nothing;
    an hour later the second window is read."""
    store = LocalStore(tmp_path)
    items = synthetic_findings(300, start=NOW - timedelta(hours=11), end=NOW - timedelta(minutes=1))
    with FakeQualysGateway(items, max_limit=100) as gw:
        first = fetch(
            store, budgeted(make_client, clock, gw, store, 2), guard, mapping, lookback_hours=12, overlap_minutes=0
        )
        assert (
            first.complete is False
            and first.stopped_reason is not None
            and "2 requests an hour (QualysRequestsPerHour) reached" in first.stopped_reason
        )
        assert (first.windows_done, first.windows_planned) == (1, 2)
        assert first.requests == len(gw.findings_requests()) == 2
        clock.now += ONE_MINUTE  # the next scheduled run
        second = fetch(
            store, budgeted(make_client, clock, gw, store, 2), guard, mapping, lookback_hours=12, overlap_minutes=0
        )
        assert second.complete is False and second.requests == 0 and len(gw.findings_requests()) == 2
        clock.now += WINDOW_S  # an hour later
        third = fetch(
            store, budgeted(make_client, clock, gw, store, 2), guard, mapping, lookback_hours=12, overlap_minutes=0
        )
    assert third.complete is True and first.unique + third.unique == 300
    assert json.loads(store.get(layout.CDR_RATE).data)["sent"] == [clock()] * third.requests


def test_a_window_begun_is_read_to_its_end_and_counted(
    make_client: Callable[..., QualysClient],
    clock: FakeClock,
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    """A window of more pages than the hour allows is still stored (half a window cannot be); the pages
    count, so that the next windows wait until the hour has room again."""
    store = LocalStore(tmp_path)
    with FakeQualysGateway(findings(450), max_limit=100) as gw:
        run = fetch(store, budgeted(make_client, clock, gw, store, 3), guard, mapping)
    assert run.complete is True and run.unique == 450 and run.requests == 5
    assert read_request_budget(store, 3).wait(clock())[0] == WINDOW_S


def test_a_429_with_retry_after_slows_the_fetch_and_never_fails_it(
    make_client: Callable[..., QualysClient],
    clock: FakeClock,
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    """A wait that fits the run is slept; a longer one ends the run as incomplete and is remembered, so that
    the one-minute schedule's next runs leave the gateway alone until the wait is over; then the fetch
    completes with everything."""
    store = LocalStore(tmp_path)
    with FakeQualysGateway(findings(150), max_limit=100) as gw:
        gw.inject(Fault(status=429, headers={"Retry-After": "20"}))
        slowed = fetch(store, budgeted(make_client, clock, gw, store, 120), guard, mapping)
        assert slowed.complete is True and slowed.unique == 150 and clock.sleeps == [20.0]
        assert [r.status for r in gw.findings_requests()] == [429, 200, 200]

        gw.inject(Fault(status=429, headers={"Retry-After": "300"}))
        clock.now += ONE_MINUTE
        stopped = fetch(store, budgeted(make_client, clock, gw, store, 120), guard, mapping)
        assert (
            stopped.complete is False
            and stopped.stopped_reason is not None
            and "would pass the time budget" in stopped.stopped_reason
        )
        assert json.loads(store.get(layout.CDR_RATE).data)["not_before"] == pytest.approx(clock() + 300)
        asked = len(gw.findings_requests())
        for _ in range(4):  # the next four scheduled runs fall inside the wait: nothing is sent
            clock.now += ONE_MINUTE
            waiting = fetch(store, budgeted(make_client, clock, gw, store, 120), guard, mapping)
            assert (
                waiting.complete is False
                and waiting.stopped_reason is not None
                and "the gateway asked to wait" in waiting.stopped_reason
            )
        assert len(gw.findings_requests()) == asked
        clock.now += ONE_MINUTE + 1
        resumed = fetch(store, budgeted(make_client, clock, gw, store, 120), guard, mapping)
    assert resumed.complete is True and resumed.requests == 1 and resumed.unique > 0
    assert resumed.indicator_set is not None and len(resumed.indicator_set.entries) > 0


def test_an_answer_saying_no_request_is_left_defers_the_next_one(
    make_client: Callable[..., QualysClient], clock: FakeClock, tmp_path: Path
) -> None:
    page = json.dumps({"content": [], "totalElements": 0}).encode()
    empty = Fault(status=200, body=page, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-ToWait-Sec": "45"})
    store = LocalStore(tmp_path)
    with FakeQualysGateway(findings(10)) as gw:
        gw.inject(empty)
        client = budgeted(make_client, clock, gw, store, 120, budget_s=30)
        assert list(client.findings_pages(NOW - timedelta(hours=1), NOW))[0].items == []
        with pytest.raises(QualysRateBudget, match="the gateway asked to wait; waiting 45.0s"):
            list(client.findings_pages(NOW - timedelta(hours=1), NOW))
    assert len(gw.findings_requests()) == 1


def test_authentication_is_not_counted(
    make_client: Callable[..., QualysClient], clock: FakeClock, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path)
    with FakeQualysGateway(findings(10)) as gw:
        client = budgeted(make_client, clock, gw, store, 1)
        assert len(list(client.findings_pages(NOW - timedelta(hours=1), NOW))) == 1
    assert client.authentications == 1 and client.request_budget is not None
    assert client.request_budget.sent == [clock()]

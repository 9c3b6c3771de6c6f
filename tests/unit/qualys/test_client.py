"""The findings client against the fake gateway: request shape, paging, retries, errors, deadlines."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from cdr_policy.errors import QualysError
from cdr_policy.qualys.client import QualysClient, QualysDeadline, split_windows
from cdr_policy.qualys.retry import Retrier, RetryPolicy, server_delay
from cdr_policy.timeutil import format_instant
from fakes.clock import FakeClock
from fakes.qualys import FakeQualysGateway, Fault, synthetic_findings

START, END = datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 1, 11, tzinfo=UTC)
INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def findings(n: int, **kwargs: int) -> list[Any]:
    return synthetic_findings(n, start=START, end=END, **kwargs)


def all_items(client: QualysClient, start: datetime = START, end: datetime = END, **kwargs: int) -> list[Any]:
    return [item for page in client.findings_pages(start, end, **kwargs) for item in page.items]


# -- formatting and windows ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "dt, text",
    [
        (datetime(2025, 1, 27, 8, 54, 41, 396789, tzinfo=UTC), "2025-01-27T08:54:41.396Z"),
        (datetime(2025, 1, 27, 8, 54, 41), "2025-01-27T08:54:41.000Z"),  # naive = UTC
        (
            datetime(2025, 1, 27, 10, 54, 41, 5000, tzinfo=timezone(timedelta(hours=2))),
            "2025-01-27T08:54:41.005Z",
        ),
        (datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "2025-12-31T23:59:59.999Z"),
    ],
)
def test_format_instant(dt: datetime, text: str) -> None:
    assert format_instant(dt) == text


def test_split_windows() -> None:
    windows = split_windows(START, END, timedelta(hours=6))
    assert [(a.hour, b.hour) for a, b in windows] == [(0, 6), (6, 12), (12, 18), (18, 0)]
    assert windows[0][0] == START and windows[-1][1] == END
    odd = split_windows(START, START + timedelta(hours=7, minutes=10), timedelta(hours=6))
    assert [b - a for a, b in odd] == [timedelta(hours=6), timedelta(hours=1, minutes=10)]
    assert split_windows(END, START) == []
    with pytest.raises(ValueError):
        split_windows(START, END, timedelta(0))


# -- request shape and paging -----------------------------------------------------------------------
def test_request_shape_and_offset_paging(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(250)) as gw:
        client = make_client(gw)
        pages = list(client.findings_pages(START, END))
    assert [len(p.items) for p in pages] == [100, 100, 50]
    assert [p.number for p in pages] == [1, 2, 3]
    assert [p.offset for p in pages] == [0, 100, 200]
    assert {p.total for p in pages} == {250}
    assert [item["uuid"] for p in pages for item in p.items] == [f["uuid"] for f in findings(250)]
    requests = gw.findings_requests()
    assert [r.params for r in requests] == [
        {
            "startAt": "2026-01-10T00:00:00.000Z",
            "endAt": "2026-01-11T00:00:00.000Z",
            "offSet": str(o),
            "limit": "100",
        }
        for o in (0, 100, 200)
    ]
    assert all(INSTANT.match(r.params["startAt"]) for r in requests)
    for r in requests:
        assert r.path == "/cdr-api/rest/v1/findings"
        assert re.fullmatch(r"Bearer [\w-]+\.[\w-]+\.[\w-]+", r.headers["Authorization"])
        assert r.headers["Accept"] == "application/json"
        assert r.headers["X-Requested-With"] == "cdr-policy"
        assert r.headers["User-Agent"].startswith("cdr-policy/")
        assert "python-httpx/" in r.headers["User-Agent"]


def test_raw_body_is_kept_exactly(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(3)) as gw:
        page = next(make_client(gw).findings_pages(START, END))
    assert page.body.startswith(b'{"content": [') and b'"totalElements": 3' in page.body


def test_exact_multiple_without_total_ends_on_an_empty_page(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(200), send_total=False) as gw:
        pages = list(make_client(gw).findings_pages(START, END))
    assert [len(p.items) for p in pages] == [100, 100, 0]
    assert all(p.total is None for p in pages)


def test_total_elements_stops_without_an_extra_call(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(200)) as gw:
        pages = list(make_client(gw).findings_pages(START, END))
    assert [len(p.items) for p in pages] == [100, 100]
    assert len(gw.findings_requests()) == 2


def test_smaller_limit(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(25)) as gw:
        pages = list(make_client(gw).findings_pages(START, END, limit=10))
    assert [len(p.items) for p in pages] == [10, 10, 5]
    with pytest.raises(ValueError):
        list(make_client(gw).findings_pages(START, END, limit=101))


def test_window_filtering_is_the_gateways(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(240)) as gw:
        client = make_client(gw)
        per_window = [all_items(client, a, b) for a, b in split_windows(START, END, timedelta(hours=6))]
    assert [len(w) for w in per_window] == [60, 60, 60, 60]


def test_gateway_ignoring_offset_falls_back_to_page_numbers(make_client: Callable[..., QualysClient]) -> None:
    items = findings(250)
    with FakeQualysGateway(items, ignore_offset=True) as gw:
        got = all_items(make_client(gw))
        params = [r.params for r in gw.findings_requests()]
    assert sorted(f["uuid"] for f in got) == sorted(f["uuid"] for f in items), "every finding once"
    assert "offSet" in params[1] and "pageNumber" not in params[1]  # the repeat that gives it away
    assert [p.get("pageNumber") for p in params[2:]] == ["2", "3"]


def test_gateway_ignoring_offset_and_page_numbers_is_refused(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(150), ignore_offset=True, page_numbers=False) as gw:
        with pytest.raises(QualysError, match="ignored offSet and pageNumber.*refusing to loop"):
            all_items(make_client(gw))
        assert len(gw.findings_requests()) == 3


def test_page_cap(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(30)) as gw:
        with pytest.raises(QualysError, match="more than 2 pages"):
            all_items(make_client(gw), limit=10, max_pages=2)


# -- token expiry in the middle of a run -----------------------------------------------------------
def test_token_expiring_between_pages(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(350)) as gw:
        client = make_client(gw)
        items = []
        for page in client.findings_pages(START, END):
            items.extend(page.items)
            if page.number == 2:
                gw.expire_tokens()  # the 4 h are up
    assert len(items) == 350
    assert [r.status for r in gw.findings_requests()] == [200, 200, 401, 200, 200]
    assert client.authentications == 2
    tokens = [r.headers["Authorization"] for r in gw.findings_requests()]
    assert tokens[2] != tokens[3] and tokens[3] == tokens[4]


# -- retries ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode, waited",
    [("both", 7.0), ("retry-after", 7.0), ("towait", 7.0)],
)
def test_rate_limit_headers_are_honoured(
    make_client: Callable[..., QualysClient], clock: FakeClock, mode: str, waited: float
) -> None:
    with FakeQualysGateway(findings(250), rate_limit_every=2, rate_limit_wait_s=7, rate_limit_headers=mode) as gw:
        assert len(all_items(make_client(gw))) == 250
    limited = [r for r in gw.findings_requests() if r.status == 429]
    assert len(limited) == 2
    assert clock.sleeps == [waited, waited]


def test_rate_limit_without_headers_backs_off_exponentially(
    make_client: Callable[..., QualysClient], clock: FakeClock
) -> None:
    with FakeQualysGateway(findings(10)) as gw:
        gw.inject(Fault(status=429), times=3)
        assert len(all_items(make_client(gw))) == 10
    # equal jitter: attempt n waits between half and all of base * 2**(n-1)
    assert len(clock.sleeps) == 3
    for n, slept in enumerate(clock.sleeps, 1):
        assert 2 ** (n - 1) / 2 <= slept <= 2 ** (n - 1)


def test_retry_after_wins_over_to_wait() -> None:
    assert server_delay(httpx.Headers({"Retry-After": "3", "X-RateLimit-ToWait-Sec": "9"})) == 3.0
    assert server_delay(httpx.Headers({"X-RateLimit-ToWait-Sec": "9"})) == 9.0
    assert (
        server_delay(
            httpx.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}),
            now=lambda: datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp(),
        )
        == 10.0
    )
    assert server_delay(httpx.Headers({"Retry-After": "-5"})) == 0.0
    assert server_delay(httpx.Headers({"Retry-After": "soon", "X-RateLimit-ToWait-Sec": "4"})) == 4.0
    assert server_delay(httpx.Headers({})) is None


def test_server_delay_is_clamped(make_client: Callable[..., QualysClient], clock: FakeClock) -> None:
    with FakeQualysGateway(findings(5)) as gw:
        gw.inject(Fault(status=429, headers={"Retry-After": "86400"}))
        all_items(make_client(gw, retry_policy=RetryPolicy(max_server_delay_s=120)))
    assert clock.sleeps == [120.0]


@pytest.mark.parametrize("status", [409, 429, 502, 503, 504])
def test_transient_statuses_are_retried(
    make_client: Callable[..., QualysClient], clock: FakeClock, status: int
) -> None:
    with FakeQualysGateway(findings(5)) as gw:
        gw.inject(Fault(status=status, headers={"Retry-After": "1"}), times=2)
        assert len(all_items(make_client(gw))) == 5
    assert [r.status for r in gw.findings_requests()] == [status, status, 200]
    assert clock.sleeps == [1.0, 1.0]


def test_persistent_503_gives_up_with_a_clear_error(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(5)) as gw:
        gw.inject(Fault(status=503), times=10)
        with pytest.raises(QualysError, match=r"giving up after 6 attempts, last: HTTP 503"):
            all_items(make_client(gw))
        assert len(gw.findings_requests()) == 6


def test_500_is_retried_a_few_times(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(5)) as gw:
        gw.inject(Fault(status=500), times=2)
        assert len(all_items(make_client(gw))) == 5
        gw.inject(Fault(status=500), times=3)
        with pytest.raises(QualysError, match=r"giving up after 3 attempts, last: HTTP 500"):
            all_items(make_client(gw))


def test_timeouts_are_retried(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(5)) as gw:
        gw.inject(Fault(delay_s=1.0))  # answers after the client's 0.2 s timeout
        client = make_client(gw, timeout=0.2)
        assert len(all_items(client)) == 5
    assert client.retry_stats.by_reason == {"timeout (ReadTimeout)": 1}


def test_dropped_connections_are_retried(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(5)) as gw:
        gw.inject(Fault(drop=True), times=2)
        client = make_client(gw)
        assert len(all_items(client)) == 5
    assert client.retry_stats.retries == 2
    assert [r.status for r in gw.findings_requests()] == [None, None, 200]


# -- deadline -----------------------------------------------------------------------------------
def test_deadline_refuses_a_wait_it_cannot_afford(make_client: Callable[..., QualysClient], clock: FakeClock) -> None:
    with FakeQualysGateway(findings(5)) as gw:
        gw.inject(Fault(status=429, headers={"Retry-After": "30"}))
        client = make_client(gw, deadline=clock() + 20)
        with pytest.raises(QualysDeadline, match="would pass the time budget"):
            all_items(client)
    assert clock.sleeps == []


def test_deadline_already_passed(make_client: Callable[..., QualysClient], clock: FakeClock) -> None:
    with FakeQualysGateway(findings(5)) as gw:
        client = make_client(gw, deadline=clock() - 1)
        with pytest.raises(QualysDeadline, match="time budget exhausted"):
            all_items(client)
        assert gw.requests == []


def test_deadline_caps_the_request_timeout() -> None:
    seen: list[float] = []
    now = [0.0]

    def send(timeout: float) -> httpx.Response:
        seen.append(timeout)
        return httpx.Response(200)

    retrier = Retrier(RetryPolicy(), timeout_s=30.0, clock=lambda: now[0], deadline=12.5)
    retrier.call("x", send)
    assert seen == [12.5]
    assert isinstance(QualysDeadline("x"), QualysError)


# -- errors the user must act on ------------------------------------------------------------------
@pytest.mark.parametrize(
    "status, message",
    [
        (403, r"^user lacks CDR API permission"),
        (404, r"^CDR not enabled on this subscription \(or wrong gateway\)"),
        (400, r"unexpected HTTP 400 .*bad QQL"),
    ],
)
def test_actionable_errors(make_client: Callable[..., QualysClient], status: int, message: str) -> None:
    with FakeQualysGateway(findings(5)) as gw:
        gw.inject(Fault(status=status, body=b'{"message": "bad QQL\\u0000"}'))
        with pytest.raises(QualysError, match=message):
            all_items(make_client(gw))
        assert len(gw.findings_requests()) == 1  # never retried


@pytest.mark.parametrize(
    "body, message",
    [
        (b"<html>maintenance</html>", "is not JSON"),
        (b"[]", "envelope"),
        (b'{"items": []}', "envelope"),
        (b'{"content": {}}', "envelope"),
    ],
)
def test_unexpected_bodies(make_client: Callable[..., QualysClient], body: bytes, message: str) -> None:
    with FakeQualysGateway(findings(5)) as gw:
        gw.inject(Fault(status=200, body=body))
        with pytest.raises(QualysError, match=message):
            all_items(make_client(gw))


def test_unusable_total_is_ignored(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(findings(5)) as gw:
        gw.inject(Fault(status=200, body=b'{"content": [{"uuid": "a"}], "totalElements": "many"}'))
        pages = list(make_client(gw).findings_pages(START, END))
    assert [(len(p.items), p.total) for p in pages] == [(1, None)]


def test_an_oversized_page_is_refused_without_holding_it(
    make_client: Callable[..., QualysClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 300 MB page cost 2.6 GB in CdrFetch: the body is streamed and cut off past the cap."""
    from cdr_policy.qualys import client as client_module

    monkeypatch.setattr(client_module, "MAX_PAGE_BYTES", 64 * 1024)
    huge = b'{"content": [' + b'{"uuid": "x"},' * 20_000 + b'{"uuid": "y"}]}'
    with FakeQualysGateway(findings(5)) as gw:
        gw.inject(Fault(status=200, body=huge))
        with pytest.raises(QualysError, match="larger than 65536 bytes: refused"):
            all_items(make_client(gw))
        assert len([r for r in gw.requests if "findings" in r.path]) == 1  # final: not retried

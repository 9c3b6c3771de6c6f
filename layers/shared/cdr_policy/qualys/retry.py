"""Retrying gateway calls: which answers are worth another try, how long to wait, and when to stop.

Order of preference for the wait: the server's ``Retry-After`` (seconds or an HTTP date), then the
Qualys gateway's ``X-RateLimit-ToWait-Sec``, then exponential backoff with jitter. Every wait is
checked against the caller's deadline first: when the next attempt could not start in time the
call stops with :class:`QualysDeadline`, which the fetch stage treats as "resume next run".

With a :class:`~cdr_policy.qualys.ratelimit.RequestBudget`, every counted request (the findings
calls; ``/auth`` is exempt at Qualys too) is booked in it, and a gated one (the first page of a
window) first waits for it: the configured requests per hour, and a wait the gateway asked for in
this run or an earlier one. A wait past the deadline stops the call with :class:`QualysRateBudget`
(a ``QualysDeadline``). Every wait the gateway asks for is recorded in the budget, so that it
outlives the run.

The loop is written out rather than delegated to ``stamina``/``tenacity`` because it needs three
things those do not offer together: waits chosen per response from headers, an injectable clock
and sleep (tests run in milliseconds), and a deadline that refuses a wait instead of overrunning it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import httpx

from cdr_policy.errors import QualysError
from cdr_policy.observability import logger
from cdr_policy.qualys.ratelimit import RequestBudget

# 429: rate limited (gateway); 409: rate or concurrency limited (legacy API convention);
# 502/503/504: transient upstream trouble. 500 is retried too, but fewer times (``max_500_attempts``).
RETRY_STATUSES = frozenset({409, 429, 502, 503, 504})


class QualysDeadline(QualysError):
    """The time budget ran out before the work was done. Nothing stored is lost: resume next run."""


class QualysRateBudget(QualysDeadline):
    """The next request would pass the configured request rate, or come before the wait the gateway
    asked for is over, and waiting would pass the time budget: resume next run."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    max_500_attempts: int = 3
    # A gateway that cannot be connected to at all (unknown host, refused) is tried twice, not six
    # times: that is a configuration problem more often than a blip, and the user should hear of it fast.
    max_connect_attempts: int = 2
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    # Longest server-requested wait we accept; a longer one is clamped (the deadline still applies).
    max_server_delay_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_500_attempts < 1 or self.max_connect_attempts < 1:
            raise ValueError("retry attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.max_server_delay_s < 0:
            raise ValueError("retry delays must not be negative")


def server_delay(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asked us to wait, or None when it did not say."""
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        value = retry_after.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - now())
    to_wait = headers.get("x-ratelimit-towait-sec")
    if to_wait is not None:
        try:
            return max(0.0, float(to_wait.strip()))
        except ValueError:
            return None
    return None


@dataclass
class RetryStats:
    retries: int = 0
    waited_s: float = 0.0
    by_reason: dict[str, int] = field(default_factory=dict)


class Retrier:
    """Runs one request until it gets an answer worth returning.

    ``send(timeout)`` performs the request with the given per-attempt timeout (seconds) and returns
    the response or raises an ``httpx`` error. Responses whose status is not retryable are returned
    as they are (the caller interprets 200, 401, 403, 404, ...).
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        timeout_s: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        deadline: float | None = None,
        rng: Callable[[], float] = random.random,
        budget: RequestBudget | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.clock = clock
        self.deadline = deadline
        self.rng = rng
        self.budget = budget
        self.wall_clock = wall_clock
        self.stats = RetryStats()
        self.requests = 0  # counted requests sent (the findings calls)

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.policy.max_delay_s, self.policy.base_delay_s * 2.0 ** (attempt - 1))
        # "Equal jitter": at least half the exponential step, so retries never stampede at 0 s.
        return ceiling / 2 + self.rng() * ceiling / 2

    def _take_budget(self, what: str, gated: bool) -> None:
        """Book one counted request in the budget; a ``gated`` one first waits until the budget lets it
        go (QualysRateBudget when that would pass the deadline)."""
        assert self.budget is not None
        wait, why = self.budget.wait(self.wall_clock()) if gated else (0.0, None)
        if wait > 0:
            remaining = self._remaining()
            if remaining is not None and wait >= remaining:
                raise QualysRateBudget(
                    f"{what}: {why}; waiting {wait:.1f}s would pass the time budget ({remaining:.1f}s left)"
                )
            logger.info("qualys call waits for the request budget", extra={"call": what, "reason": why, "wait_s": wait})
            self.stats.waited_s += wait
            self.sleep(wait)
        self.budget.record(self.wall_clock())

    def _defer(self, headers: httpx.Headers, status: int) -> float | None:
        """The wait the server asked for (``server_delay``), recorded in the budget: on a retried
        status, and on any answer saying no request is left (``X-RateLimit-Remaining: 0``)."""
        delay = server_delay(headers, self.wall_clock)
        exhausted = headers.get("x-ratelimit-remaining", "").strip() == "0"
        if delay is not None and self.budget is not None and (status in RETRY_STATUSES or exhausted):
            self.budget.defer(self.wall_clock() + min(delay, self.policy.max_server_delay_s))
        return delay

    def call(
        self, what: str, send: Callable[[float], httpx.Response], *, counted: bool = True, gated: bool = True
    ) -> httpx.Response:
        """``send`` until an answer worth returning. ``counted``: a request the budget books (not /auth);
        ``gated``: one that waits for the budget before its first attempt."""
        attempt = 0
        while True:
            attempt += 1
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                raise QualysDeadline(f"{what}: time budget exhausted before attempt {attempt}")
            if counted:
                if self.budget is not None:
                    self._take_budget(what, gated and attempt == 1)  # a retry has waited already
                    remaining = self._remaining()
                self.requests += 1
            timeout = self.timeout_s if remaining is None else min(self.timeout_s, remaining)
            try:
                response = send(timeout)
            except httpx.ConnectTimeout as exc:
                reason, limit, delay = (
                    _cannot_connect(exc, "connection timed out"),
                    self.policy.max_connect_attempts,
                    None,
                )
            except httpx.TimeoutException as exc:
                reason, limit, delay = f"timeout ({type(exc).__name__})", self.policy.max_attempts, None
            except httpx.ConnectError as exc:
                reason, limit, delay = _cannot_connect(exc, _cause(exc)), self.policy.max_connect_attempts, None
            except httpx.TransportError as exc:
                reason, limit, delay = (
                    f"transport error ({type(exc).__name__})",
                    self.policy.max_attempts,
                    None,
                )
            else:
                status = response.status_code
                delay = self._defer(response.headers, status) if counted else server_delay(response.headers)
                if status in RETRY_STATUSES:
                    limit = self.policy.max_attempts
                elif status == 500:
                    limit = self.policy.max_500_attempts
                else:
                    return response
                reason = f"HTTP {status}"
                if delay is not None:
                    delay = min(delay, self.policy.max_server_delay_s)
                response.close()
            if attempt >= limit:
                raise QualysError(f"{what}: giving up after {attempt} attempts, last: {reason}")
            if delay is None:
                delay = self._backoff(attempt)
            remaining = self._remaining()
            if remaining is not None and delay >= remaining:
                raise QualysDeadline(
                    f"{what}: {reason}; waiting {delay:.1f}s would pass the time budget ({remaining:.1f}s left)"
                )
            self.stats.retries += 1
            self.stats.waited_s += delay
            self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + 1
            # counted in the run's summary (``retries``); the call's final failure is the error
            logger.info(
                "qualys call retried",
                extra={"call": what, "reason": reason, "attempt": attempt, "wait_s": round(delay, 3)},
            )
            self.sleep(delay)


def _cannot_connect(exc: httpx.TransportError, cause: str) -> str:
    try:
        url = exc.request.url
        where = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
    except RuntimeError:  # no request attached
        where = "the gateway"
    return f"cannot connect to {where}: {cause}"


def _cause(exc: BaseException) -> str:
    """The innermost reason of a connection failure ("Name or service not known", "Connection refused")."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)

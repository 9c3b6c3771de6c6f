"""The CDR findings client: ``GET /cdr-api/rest/v1/findings`` paged with ``offSet``/``limit``.

One window at a time (``startAt``/``endAt`` formatted exactly ``YYYY-MM-DDTHH:MM:SS.mmmZ``), page by
page until a short page or ``totalElements``. Each page comes back with its raw body so that the
caller can keep it for audit before touching its content. A server that ignores ``offSet`` (the
same page twice) is an error, never an endless loop.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from cdr_policy import __version__, httpclient
from cdr_policy.errors import QualysError
from cdr_policy.jsonio import dumps, loads
from cdr_policy.observability import logger
from cdr_policy.qualys.auth import TokenManager
from cdr_policy.qualys.credentials import Credentials
from cdr_policy.qualys.ratelimit import RequestBudget
from cdr_policy.qualys.retry import QualysDeadline, Retrier, RetryPolicy, RetryStats
from cdr_policy.timeutil import format_instant

FINDINGS_PATH = "/cdr-api/rest/v1/findings"
MAX_LIMIT = 100
DEFAULT_WINDOW = timedelta(hours=6)
# 1,000 pages of 100 = 100,000 findings in one window: far beyond any plausible tenant; shorten the window.
MAX_PAGES_PER_WINDOW = 1000
# A page of at most 100 findings is a few hundred KiB; a body past this is refused unread (streamed
# and cut off), never held whole in a 512 MB function.
MAX_PAGE_BYTES = 16 << 20
USER_AGENT = f"cdr-policy/{__version__} (Qualys CDR policy operator) python-httpx/{httpx.__version__}"

__all__ = ["FindingsPage", "QualysClient", "QualysDeadline", "split_windows"]


def split_windows(start: datetime, end: datetime, size: timedelta = DEFAULT_WINDOW) -> list[tuple[datetime, datetime]]:
    """Consecutive ``(start, end)`` windows no longer than ``size`` covering ``start..end``."""
    if size <= timedelta(0):
        raise ValueError("window size must be positive")
    windows = []
    cursor = start
    while cursor < end:
        stop = min(cursor + size, end)
        windows.append((cursor, stop))
        cursor = stop
    return windows


@dataclass(frozen=True)
class FindingsPage:
    window_start: datetime
    window_end: datetime
    number: int  # 1-based page number within the window
    offset: int
    items: list[Any]  # the ``content`` array, untouched
    total: int | None  # ``totalElements`` when the gateway sent a usable one
    body: bytes  # the response body exactly as received


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    text = response.text[:limit]
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


class QualysClient:
    """A client for one gateway (``base_url`` from :func:`~cdr_policy.qualys.platforms.resolve_gateway`).

    ``timeout`` bounds each HTTP attempt; ``max_attempts`` each call's retries (``retry_policy``, when
    given, replaces both the attempt counts and the backoff). ``deadline`` is a ``clock()`` value by
    which every call must be over: pass the Lambda's remaining time minus what storing needs.
    ``budget`` (:class:`~cdr_policy.qualys.ratelimit.RequestBudget`) holds the findings requests
    within the configured rate and the gateway's waits, across runs; None: no limit of ours.
    ``sleep``, ``clock`` and ``wall_clock`` (token expiry, the budget) are injectable for tests.
    """

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        http: httpx.Client | None = None,
        timeout: float = 30.0,
        max_attempts: int = 6,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        deadline: float | None = None,
        wall_clock: Callable[[], float] = time.time,
        retry_policy: RetryPolicy | None = None,
        budget: RequestBudget | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._owns_http = http is None
        self._http = http or httpclient.client(follow_redirects=False)
        self._headers = {"User-Agent": USER_AGENT, "X-Requested-With": "cdr-policy"}
        self._retrier = Retrier(
            retry_policy or RetryPolicy(max_attempts=max_attempts),
            timeout_s=timeout,
            sleep=sleep,
            clock=clock,
            deadline=deadline,
            budget=budget,
            wall_clock=wall_clock,
        )
        self._auth = TokenManager(
            self.base_url,
            credentials,
            self._http,
            self._retrier,
            headers=self._headers,
            wall_clock=wall_clock,
        )

    def __repr__(self) -> str:
        return f"QualysClient(base_url={self.base_url!r})"

    def __enter__(self) -> QualysClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    @property
    def retry_stats(self) -> RetryStats:
        return self._retrier.stats

    @property
    def request_budget(self) -> RequestBudget | None:
        return self._retrier.budget

    @property
    def requests(self) -> int:
        """Findings requests sent (every attempt; the authentications are not counted)."""
        return self._retrier.requests

    @property
    def authentications(self) -> int:
        return self._auth.authentications

    def _get(self, path: str, params: dict[str, str], *, opens: bool = True) -> httpx.Response:
        """GET with a bearer token; on a 401, one re-authentication and one more try. ``opens``: the
        request starts a window's paging, which waits for the request budget (a window begun is read to
        its end: it cannot be stored half-read; its pages still count against the hour)."""
        url = self.base_url + path
        for attempt in (1, 2):
            token = self._auth.token()
            headers = {**self._headers, "Accept": "application/json", "Authorization": f"Bearer {token}"}

            def send(timeout: float, headers: dict[str, str] = headers) -> httpx.Response:
                return self._get_capped(url, params, headers, timeout)

            response = self._retrier.call(f"GET {path}", send, gated=opens)
            if response.status_code != 401:
                break
            self._auth.invalidate(token)
            if attempt == 1:
                logger.info("qualys token refused; re-authenticating", extra={"path": path})
        status = response.status_code
        if status == 200:
            return response
        if status == 401:
            raise QualysError(
                f"the gateway refused a fresh token for {path} (HTTP 401): check the account's API access"
            )
        if status == 403:
            raise QualysError(
                "user lacks CDR API permission (HTTP 403): grant the account the CDR / TotalCloud API role"
            )
        if status == 404:
            raise QualysError(f"CDR not enabled on this subscription (or wrong gateway): HTTP 404 from {url}")
        if status == 500:
            raise QualysError(f"gateway error HTTP 500 from {path}")
        raise QualysError(f"unexpected HTTP {status} from {path}: {_snippet(response)}")

    def _get_capped(self, url: str, params: dict[str, str], headers: dict[str, str], timeout: float) -> httpx.Response:
        """GET, streaming the body and stopping past ``MAX_PAGE_BYTES`` (QualysError: final, not retried)."""
        request = self._http.build_request("GET", url, params=params, headers=headers, timeout=timeout)
        streamed = self._http.send(request, stream=True)
        try:
            body = bytearray()
            for chunk in streamed.iter_bytes():
                body += chunk
                if len(body) > MAX_PAGE_BYTES:
                    raise QualysError(
                        f"the answer to GET {request.url.path} is larger than {MAX_PAGE_BYTES} bytes: refused"
                    )
        finally:
            streamed.close()
        return httpx.Response(streamed.status_code, headers=streamed.headers, content=bytes(body), request=request)

    def _page(
        self, start_at: str, end_at: str, offset: int, number: int, limit: int, by_page_number: bool
    ) -> tuple[list[Any], int | None, str, bytes]:
        """One findings page: (items, totalElements or None, digest of the items, raw body)."""
        params = {"startAt": start_at, "endAt": end_at, "limit": str(limit)}
        params.update({"pageNumber": str(number)} if by_page_number else {"offSet": str(offset)})
        body = self._get(FINDINGS_PATH, params, opens=number == 1).content
        try:
            data = loads(body)
        except ValueError as exc:
            raise QualysError(f"findings page at offSet={offset} is not JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise QualysError(f'findings page at offSet={offset} is not the expected {{"content": [...]}} envelope')
        items: list[Any] = data["content"]
        total = data.get("totalElements")
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            total = None
        return items, total, hashlib.sha256(dumps(items)).hexdigest(), body

    def findings_pages(
        self, start: datetime, end: datetime, *, limit: int = MAX_LIMIT, max_pages: int = MAX_PAGES_PER_WINDOW
    ) -> Iterator[FindingsPage]:
        """The pages of findings for one window, in order. Raises QualysError / QualysDeadline."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {limit}")
        start_at, end_at = format_instant(start), format_instant(end)
        offset = 0
        previous: str | None = None
        by_page_number = False  # set when the gateway turns out to ignore offSet (reference §5)
        for number in range(1, max_pages + 1):
            page = self._page(start_at, end_at, offset, number, limit, by_page_number)
            if page[0] and page[2] == previous and not by_page_number:
                logger.warning(
                    "the gateway ignored offSet; paging with pageNumber instead",
                    extra={"window_start": start_at, "page": number},
                )
                by_page_number = True
                page = self._page(start_at, end_at, offset, number, limit, by_page_number)
            items, total, digest, body = page
            if items and digest == previous:
                raise QualysError(
                    f"the gateway ignored offSet and pageNumber: page {number} (offSet={offset}) repeats the "
                    f"previous page (window {start_at}..{end_at}); refusing to loop"
                )
            previous = digest
            yield FindingsPage(start, end, number, offset, items, total, body)
            offset += len(items)
            if len(items) < limit:
                if total is not None and offset < total:
                    logger.warning(
                        "findings page short of totalElements",
                        extra={"window_start": start_at, "offset": offset, "total": total},
                    )
                return
            if total is not None and offset >= total:
                return
        raise QualysError(
            f"more than {max_pages} pages of findings in window {start_at}..{end_at}: use shorter windows"
        )

"""Feed downloads: bounded, conditional and concurrent.

- httpx (over urllib3: ``cdr_policy.httpclient``) with separate connect/read timeouts and an
  overall deadline per download;
- conditional GET (``If-None-Match`` / ``If-Modified-Since`` from the feed's stored state), sent
  only while a last good copy exists to fall back on; a ``304`` returns no body;
- gzip: ``Content-Encoding: gzip`` is decoded by httpx, a gzip *body* (a ``.gz`` URL) here,
  both under the same size cap (so a compression bomb stops at the cap);
- redirects: at most ``MAX_REDIRECTS``; an https → http downgrade or a redirect to a site's root
  (a "moved" homepage instead of the list) is a failure;
- ``file://`` URLs are read locally under the same cap;
- every feed of a run is fetched at once on a small thread pool sharing one client;
- a ``User-Agent`` that says who we are (publishers block anonymous library agents).

A fetch never raises for a feed problem: the result carries the error for the gate to report.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from cdr_policy import __version__, httpclient
from cdr_policy.feeds.config import FeedConfig

MAX_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 3
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
DEADLINE_S = 120.0
MAX_WORKERS = 8
_GZIP_MAGIC = b"\x1f\x8b"


def user_agent() -> str:
    """``cdr-policy/<version>`` plus the project URL when the installed package declares one."""
    try:
        from importlib.metadata import PackageNotFoundError, metadata

        meta = metadata("cdr-policy")
        urls = [u.split(",", 1)[-1].strip() for u in meta.get_all("Project-URL") or []]
        home = meta["Home-page"] if "Home-page" in meta else (urls[0] if urls else None)
    except (ImportError, PackageNotFoundError):
        home = None
    suffix = f"+{home}" if home else "threat-intel feed sync"
    return f"cdr-policy/{__version__} ({suffix})"


@dataclass(frozen=True)
class Validators:
    """What the last good download of a feed said about itself (for conditional GET)."""

    url: str | None = None
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class FetchResult:
    feed: str
    outcome: str  # "ok" | "not_modified" | "error"
    body: bytes | None = None
    status_code: int | None = None
    content_type: str | None = None
    final_url: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    error: str | None = None
    elapsed_s: float = 0.0


def make_client(
    *,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    read_timeout: float = READ_TIMEOUT_S,
    max_redirects: int = MAX_REDIRECTS,
) -> httpx.Client:
    return httpclient.client(
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        follow_redirects=True,
        max_redirects=max_redirects,
        headers={"User-Agent": user_agent(), "Accept": "text/plain, text/csv;q=0.9, */*;q=0.1"},
    )


def fetch_all(
    client: httpx.Client,
    feeds: Sequence[FeedConfig],
    validators: Mapping[str, Validators],
    *,
    max_bytes: int = MAX_BYTES,
    deadline_s: float = DEADLINE_S,
    max_workers: int = MAX_WORKERS,
) -> dict[str, FetchResult]:
    """Fetch every feed concurrently; results keyed by feed name."""
    if not feeds:
        return {}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(feeds)), thread_name_prefix="feed") as pool:
        futures = {
            f.name: pool.submit(
                fetch, client, f, validators.get(f.name, Validators()), max_bytes=max_bytes, deadline_s=deadline_s
            )
            for f in feeds
        }
        return {name: fut.result() for name, fut in futures.items()}


def fetch(
    client: httpx.Client,
    feed: FeedConfig,
    validators: Validators,
    *,
    max_bytes: int = MAX_BYTES,
    deadline_s: float = DEADLINE_S,
) -> FetchResult:
    started = time.monotonic()
    try:
        if urlsplit(feed.url).scheme == "file":
            result = _fetch_file(feed, max_bytes)
        else:
            result = _fetch_http(client, feed, validators, max_bytes, started + deadline_s)
    except _FetchFailed as exc:
        result = FetchResult(feed=feed.name, outcome="error", error=str(exc), **exc.details)
    return replace(result, elapsed_s=round(time.monotonic() - started, 3))


class _FetchFailed(Exception):
    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


def _fetch_file(feed: FeedConfig, max_bytes: int) -> FetchResult:
    path = Path(unquote(urlsplit(feed.url).path))
    try:
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise _FetchFailed(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise _FetchFailed(f"{path} is larger than the {max_bytes}-byte cap")
    return FetchResult(feed=feed.name, outcome="ok", body=_gunzip(data, max_bytes), final_url=redact_url(feed.url))


def _fetch_http(
    client: httpx.Client, feed: FeedConfig, validators: Validators, max_bytes: int, deadline: float
) -> FetchResult:
    headers = {}
    if validators.url == feed.url:  # validators of another URL mean nothing here
        if validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
    try:
        with client.stream("GET", feed.url, headers=headers) as resp:
            final_url = redact_url(str(resp.url))
            _check_redirects(feed.url, resp)
            details = {
                "status_code": resp.status_code,
                "final_url": final_url,
                "content_type": resp.headers.get("content-type"),
            }
            if resp.status_code == 304:
                return FetchResult(feed=feed.name, outcome="not_modified", **details)
            if resp.status_code != 200:
                raise _FetchFailed(f"HTTP {resp.status_code} from {final_url}", **details)
            declared = resp.headers.get("content-length")
            if (
                declared
                and declared.isdigit()
                and int(declared) > max_bytes
                and not resp.headers.get("content-encoding")
            ):
                raise _FetchFailed(f"body of {declared} bytes is over the {max_bytes}-byte cap", **details)
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise _FetchFailed(f"body is over the {max_bytes}-byte cap", **details)
                if time.monotonic() > deadline:
                    raise _FetchFailed("download took longer than its deadline", **details)
                chunks.append(chunk)
            body = _gunzip(b"".join(chunks), max_bytes)
            return FetchResult(
                feed=feed.name,
                outcome="ok",
                body=body,
                etag=resp.headers.get("etag"),
                last_modified=resp.headers.get("last-modified"),
                **details,
            )
    except httpx.TooManyRedirects as exc:
        raise _FetchFailed(f"more than {client.max_redirects} redirects") from exc
    except httpx.TimeoutException as exc:
        raise _FetchFailed(f"timed out ({type(exc).__name__})") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _FetchFailed(f"download failed: {type(exc).__name__}: {exc}") from exc


def redact_url(url: str) -> str:
    """A URL fit for logs and reports: no user info, query or fragment (where tokens live)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def _check_redirects(requested: str, resp: httpx.Response) -> None:
    if not resp.history:
        return
    want, got = urlsplit(requested), resp.url
    shown = redact_url(str(got))
    if want.scheme == "https" and got.scheme != "https":
        raise _FetchFailed(f"redirected from https to {shown} (downgrade refused)", final_url=shown)
    if got.path in ("", "/") and want.path not in ("", "/"):
        raise _FetchFailed(
            f"redirected to the site root {shown} instead of the list (moved or discontinued?)",
            final_url=shown,
        )


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    """Decompress a gzip body under the size cap; anything else is returned as is."""
    if not data.startswith(_GZIP_MAGIC):
        return data
    d = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        out = d.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise _FetchFailed(f"corrupt gzip body: {exc}") from exc
    if len(out) > max_bytes:
        raise _FetchFailed(f"gzip body expands beyond the {max_bytes}-byte cap")
    if not d.eof:
        raise _FetchFailed("gzip body is truncated")
    return out

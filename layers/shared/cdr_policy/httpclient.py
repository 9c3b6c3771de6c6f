"""The HTTP client of the Qualys and feed adapters: httpx, sending through urllib3's connection pools.

httpx stays the client: it builds the requests, follows redirects, decodes ``Content-Encoding``,
passes its timeouts down and raises its own exceptions. Only the transport under it changes: httpx's
default one is httpcore, which brings h11 and anyio, while every Lambda function has urllib3 loaded
already (botocore sends through it). Importing those three was a measurable share of a CdrFetch or
FeedSync cold start (``benchmarks/README.md``, "Cold starts: only what the first call needs").

The transport keeps httpx's behaviour where it shows: each urllib3 error becomes the httpx
exception httpcore's would have become (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``,
``RemoteProtocolError`` ...); urllib3 itself never retries, redirects or decodes; TLS is verified
with the context httpx would make (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``); a response body
read to its end gives its connection back to the pool, one left unread closes it. A proxy from the
environment (``HTTPS_PROXY`` ...) is still served by httpx's own transport for the URLs it covers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import urllib3

# As httpx's default limits: up to 20 idle connections kept per host.
MAX_KEEPALIVE = 20
CHUNK_BYTES = 64 * 1024


def client(**kwargs: Any) -> httpx.Client:
    """An ``httpx.Client(**kwargs)`` on :class:`Urllib3Transport`."""
    return httpx.Client(transport=Urllib3Transport(), **kwargs)


class Urllib3Transport(httpx.BaseTransport):
    def __init__(self) -> None:
        self._pool = urllib3.PoolManager(
            maxsize=MAX_KEEPALIVE, block=False, retries=False, ssl_context=httpx.create_ssl_context()
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        headers = urllib3.HTTPHeaderDict()
        for name, value in request.headers.raw:  # as given (case kept), as httpcore sends them
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        with _httpx_errors(reading=False):
            response = self._pool.urlopen(
                request.method,
                str(request.url),
                body=request.read() or None,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                timeout=urllib3.Timeout(connect=timeout.get("connect"), read=timeout.get("read")),
            )
        return httpx.Response(
            status_code=response.status,
            # http.client decodes header lines as latin-1: encoded back, they are the bytes received
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.iteritems()],
            stream=_ResponseStream(response),
            extensions={
                "http_version": b"HTTP/1.0" if response.version == 10 else b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1"),
            },
        )

    def close(self) -> None:
        self._pool.clear()


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        self._complete = False

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors(reading=True):
            yield from self._response.stream(CHUNK_BYTES, decode_content=False)
        self._complete = True

    def close(self) -> None:
        if self._complete:
            self._response.release_conn()
        else:  # unread data on the connection: it cannot serve another request
            self._response.close()


@contextlib.contextmanager
def _httpx_errors(*, reading: bool) -> Iterator[None]:
    """urllib3's exceptions as httpx's (as httpx maps httpcore's)."""
    try:
        yield
    except urllib3.exceptions.NewConnectionError as exc:  # refused, unreachable, unknown host
        raise httpx.ConnectError(str(exc)) from exc
    except urllib3.exceptions.ConnectTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc)) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc)) from exc
    except urllib3.exceptions.SSLError as exc:
        raise (httpx.ReadError if reading else httpx.ConnectError)(str(exc)) from exc
    except urllib3.exceptions.ProtocolError as exc:  # the connection broke, or the peer sent no (whole) response
        raise httpx.RemoteProtocolError(str(exc)) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise httpx.TransportError(str(exc)) from exc

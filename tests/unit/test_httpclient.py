"""httpx over urllib3 (``cdr_policy.httpclient``) against a loopback server: what reaches the wire,
what comes back, connection reuse, and urllib3's failures as the httpx exceptions callers catch."""

from __future__ import annotations

import gzip
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest
import urllib3
from urllib3 import HTTPConnectionPool
from urllib3.connection import HTTPConnection

from cdr_policy import httpclient
from fakes.loopback import LoopbackServer
from fakes.tls import self_signed, server_context

BODY = b"198.51.100.7\n" * 20_000  # several chunks


@dataclass(frozen=True)
class _Seen:
    """A request as the server read it."""

    line: str
    headers: list[tuple[str, str]]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[_Seen] = []
    connections: set[int] = set()

    def log_message(self, *args: object) -> None:
        pass

    def _record(self) -> bytes:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(_Seen(self.requestline, list(self.headers.items()), body))
        type(self).connections.add(self.client_address[1])
        return body

    def _send(
        self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = (), length: int | None = None
    ) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self._record()
        self._send(201, b"got " + body, [("X-Seen", "one"), ("X-Seen", "two")])

    def do_GET(self) -> None:
        self._record()
        if self.path == "/list.txt":
            self._send(200, BODY)
        elif self.path == "/gzip":
            self._send(200, gzip.compress(BODY), [("Content-Encoding", "gzip")])
        elif self.path == "/moved":
            self._send(302, b"", [("Location", "/list.txt")])
        elif self.path == "/slow":
            time.sleep(1.0)
            self._send(200, b"late")
        elif self.path == "/short":
            self._send(200, b"only part", length=100)
            self.close_connection = True
        elif self.path == "/hang-up":
            self.close_connection = True  # no response at all


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.seen, _Handler.connections = [], set()
    with LoopbackServer(_Handler) as srv:
        yield srv.base_url


def test_request_and_response_cross_unchanged(server: str) -> None:
    with httpclient.client() as client:
        resp = client.post(f"{server}/api?q=a%20b", content=b"payload", headers={"X-Api-Key": "k"})
    (seen,) = _Handler.seen
    assert seen.line == "POST /api?q=a%20b HTTP/1.1" and seen.body == b"payload"
    assert ("X-Api-Key", "k") in seen.headers  # the name as given, as httpcore sends it
    assert [name for name, _ in seen.headers].count("Host") == 1
    assert (resp.status_code, resp.reason_phrase, resp.http_version) == (201, "Created", "HTTP/1.1")
    assert resp.headers.get_list("x-seen") == ["one", "two"] and resp.content == b"got payload"


def test_streamed_body_and_content_encoding_are_httpx_s(server: str) -> None:
    with httpclient.client() as client:
        with client.stream("GET", f"{server}/list.txt") as resp:
            chunks = list(resp.iter_raw())
        assert len(chunks) > 1 and b"".join(chunks) == BODY
        gz = client.get(f"{server}/gzip")
    assert gz.headers["content-encoding"] == "gzip" and gz.content == BODY  # decoded by httpx, not urllib3


def test_redirects_are_followed_by_httpx_only(server: str) -> None:
    with httpclient.client(follow_redirects=False) as client:
        assert client.get(f"{server}/moved").status_code == 302
    with httpclient.client(follow_redirects=True) as client:
        resp = client.get(f"{server}/moved")
    assert resp.content == BODY and [r.status_code for r in resp.history] == [302]


def test_a_connection_is_reused_only_after_its_body_was_read(server: str) -> None:
    with httpclient.client() as client:
        for _ in range(3):
            assert client.get(f"{server}/list.txt").content == BODY
        assert len(_Handler.connections) == 1
        with client.stream("GET", f"{server}/list.txt") as resp:
            next(resp.iter_raw())  # left unread: that connection is closed, not pooled
        assert client.get(f"{server}/list.txt").content == BODY
    assert len(_Handler.connections) == 2


def test_connect_refused_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with httpclient.client() as client, pytest.raises(httpx.ConnectError) as err:
        client.get(f"http://127.0.0.1:{port}/")
    assert err.value.request.url.port == port


@pytest.mark.parametrize(
    ("error", "reading", "expected"),
    [
        (
            urllib3.exceptions.NameResolutionError("h", HTTPConnection("h"), socket.gaierror()),
            False,
            httpx.ConnectError,
        ),
        (urllib3.exceptions.ConnectTimeoutError(), False, httpx.ConnectTimeout),
        (
            urllib3.exceptions.ReadTimeoutError(HTTPConnectionPool("h"), None, "Read timed out."),
            True,
            httpx.ReadTimeout,
        ),
        (urllib3.exceptions.SSLError("handshake"), False, httpx.ConnectError),
        (urllib3.exceptions.SSLError("bad record mac"), True, httpx.ReadError),
        (urllib3.exceptions.ProtocolError("Connection broken"), True, httpx.RemoteProtocolError),
        (urllib3.exceptions.HTTPError("other"), False, httpx.TransportError),
    ],
)
def test_urllib3_errors_become_the_httpx_ones(error: Exception, reading: bool, expected: type) -> None:
    """The failures a loopback server cannot stage (a connect timeout, TLS, DNS) map as httpcore's do."""
    with pytest.raises(expected) as err, httpclient._httpx_errors(reading=reading):
        raise error
    assert type(err.value) is expected and err.value.__cause__ is error


def test_read_timeout_is_a_read_timeout(server: str) -> None:
    with httpclient.client(timeout=httpx.Timeout(5.0, read=0.2)) as client, pytest.raises(httpx.ReadTimeout):
        client.get(f"{server}/slow")


@pytest.mark.parametrize("path", ["/short", "/hang-up"])
def test_a_broken_response_is_a_remote_protocol_error(server: str, path: str) -> None:
    with httpclient.client() as client, pytest.raises(httpx.RemoteProtocolError):
        client.get(f"{server}{path}")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS loopback server with a self-signed certificate for ``localhost`` (only)."""
    cert, key = self_signed("localhost", dns_names=("localhost",))
    pem = tmp_path / "cert.pem"
    pem.write_bytes(cert)
    _Handler.seen, _Handler.connections = [], set()
    with LoopbackServer(_Handler, tls=server_context(cert, key)) as srv:
        yield srv.base_url.replace("https://127.0.0.1", "https://localhost"), pem


def test_tls_is_verified_against_httpx_s_trust_store(
    tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, pem = tls_server
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))  # httpx's trust store honours it, as before
    with httpclient.client() as client:
        assert client.get(f"{url}/list.txt").content == BODY
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|match"):
            client.get(url.replace("localhost", "127.0.0.1") + "/list.txt")  # not the certificate's name
    monkeypatch.delenv("SSL_CERT_FILE")  # certifi's roots: a self-signed certificate is refused
    with httpclient.client() as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(f"{url}/list.txt")

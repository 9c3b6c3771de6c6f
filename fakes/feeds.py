"""A loopback HTTP server for feed files, with the ways real feed servers misbehave on demand.

Serves a directory (``root``) and/or literal bodies, per path configurable (``Route``):
ETag / Last-Modified with ``304`` on a matching conditional request, gzip, redirects, an HTML page
with status 200, an empty body, a truncated body (consistent length, so the client cannot tell),
a short read (a longer Content-Length than the bytes sent), a delay, any status and headers.
Every request is recorded (``requests``) so that tests can check what a client sent.

    with FeedServer(root="demo/feeds") as srv:
        srv.route("/blocklist_de_all.txt", html=True)
        url = srv.url("/blocklist_de_all.txt")

``python -m fakes.feeds [--root DIR] [--port N]`` serves a directory until interrupted and
prints a ``--feeds`` YAML for the demo feed files.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fakes.loopback import LoopbackServer, PortInUse

DEMO_FEEDS_DIR = Path(__file__).resolve().parents[1] / "demo" / "feeds"
# The built-in feed names and the demo file standing in for each (formats as the real feeds).
DEMO_FEED_FILES: dict[str, tuple[str, str, str]] = {
    "feodo-c2": ("feodo_ipblocklist.txt", "c2", "abusech"),
    "tor-exit": ("tor_torbulkexitlist.txt", "tor", "plain"),
    "emerging-threats": ("et_compromised-ips.txt", "compromised", "plain"),
    "blocklist-de": ("blocklist_de_all.txt", "attacker", "plain"),
    "cinsscore": ("ci-badguys.txt", "scanner", "plain"),
}
HTML_PAGE = (
    b"<!doctype html>\n<html><head><title>Moved</title></head>\n"
    b"<body><p>This list has moved. Please update your bookmarks.</p></body></html>\n"
)
# A fixed Last-Modified for served files, so that runs are reproducible.
FIXED_LAST_MODIFIED = formatdate(1767225600, usegmt=True)  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Route:
    """How one path is served. ``file`` (relative to the root) or ``body`` gives the content."""

    file: str | None = None
    body: bytes | None = None
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"
    etag: bool = True
    last_modified: bool = True
    gzip: bool = False
    redirect: str | None = None
    html: bool = False
    empty: bool = False
    truncate: int | None = None
    short_read: bool = False
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]


class FeedServer(LoopbackServer):
    def __init__(
        self,
        root: str | Path | None = None,
        routes: dict[str, Route] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.root = Path(root).resolve() if root is not None else None
        self._routes: dict[str, Route] = dict(routes or {})
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        super().__init__(self._handler_class(), host=host, port=port)

    # -- configuration -----------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def route(self, path: str, **behaviour: Any) -> None:
        """Set how ``path`` is served (replaces any earlier behaviour of that path)."""
        with self._lock:
            self._routes[path] = Route(**behaviour)

    def update(self, path: str, **behaviour: Any) -> None:
        """Change some aspects of how ``path`` is served, keeping the rest."""
        with self._lock:
            self._routes[path] = replace(self._routes.get(path, Route()), **behaviour)

    def reset(self, path: str) -> None:
        with self._lock:
            self._routes.pop(path, None)

    def requests_for(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # -- serving -----------------------------------------------------------------------------------

    def _resolve(self, path: str) -> tuple[Route, bytes | None]:
        with self._lock:
            route = self._routes.get(path, Route())
        if route.html:
            return replace(route, content_type="text/html; charset=utf-8"), HTML_PAGE
        if route.empty:
            return route, b""
        if route.body is not None:
            return route, route.body
        rel = route.file or path.lstrip("/")
        if self.root is None or not rel:
            return route, None
        target = (self.root / rel).resolve()
        if not target.is_relative_to(self.root) or not target.is_file():
            return route, None
        return route, target.read_bytes()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by design
                return

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                parts = urlsplit(self.path)
                path = unquote(parts.path)
                with server._lock:
                    server.requests.append(Request("GET", path, parts.query, dict(self.headers.items())))
                route, body = server._resolve(path)
                if route.delay:
                    time.sleep(route.delay)
                if route.redirect is not None:
                    self._send(302, b"", {"Location": route.redirect, "Content-Type": "text/plain"})
                    return
                if body is None:
                    self._send(404, b"not found\n", {"Content-Type": "text/plain"})
                    return
                if route.truncate is not None:
                    body = body[: route.truncate]
                headers = {"Content-Type": route.content_type, **route.headers}
                tag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                if route.etag:
                    headers["ETag"] = tag
                if route.last_modified:
                    headers["Last-Modified"] = FIXED_LAST_MODIFIED
                if route.status == 200 and self._not_modified(route, tag):
                    self._send(304, b"", {k: v for k, v in headers.items() if k in ("ETag", "Last-Modified")})
                    return
                if route.gzip:
                    body = gzip.compress(body, mtime=0)
                    headers["Content-Encoding"] = "gzip"
                self._send(route.status, body, headers, short=route.short_read)

            def _not_modified(self, route: Route, tag: str) -> bool:
                inm = self.headers.get("If-None-Match")
                if inm is not None:
                    return route.etag and tag in [t.strip() for t in inm.split(",")]
                ims = self.headers.get("If-Modified-Since")
                if ims and route.last_modified:
                    try:
                        return parsedate_to_datetime(ims) >= parsedate_to_datetime(FIXED_LAST_MODIFIED)
                    except (TypeError, ValueError):
                        return False
                return False

            def _send(self, status: int, body: bytes, headers: dict[str, str], short: bool = False) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body) + (1024 if short else 0)))
                if short:
                    self.send_header("Connection", "close")
                self.end_headers()
                if status != 304:
                    self.wfile.write(body)
                if short:
                    self.close_connection = True

        return Handler


def demo_feeds_yaml(base_url: str) -> str:
    """A ``--feeds`` YAML pointing the five built-in feed names at the demo files on ``base_url``."""
    lines = ["# The built-in feeds, served from demo/feeds/ by fakes.feeds.", "feeds:"]
    for name, (file, category, fmt) in DEMO_FEED_FILES.items():
        lines += [
            f"  - name: {name}",
            f"    url: {base_url.rstrip('/')}/{file}",
            f"    category: {category}",
            f"    format: {fmt}",
        ]
        if name == "feodo-c2":
            lines.append("    can_be_empty: true")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve feed files on loopback (demo and manual testing).")
    ap.add_argument("--root", default=str(DEMO_FEEDS_DIR), help="directory to serve (default: demo/feeds)")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    args = ap.parse_args(argv)
    try:
        server = FeedServer(root=args.root, port=args.port)
    except PortInUse as exc:
        print(f"feed server: error: {exc}", file=sys.stderr)
        return 2
    with server as srv:
        # The banner goes to standard error: `python -m fakes.feeds > feeds.yaml` captures a
        # --feeds file that parses.
        print(f"serving {srv.root} on {srv.base_url} (Ctrl-C to stop)", file=sys.stderr)
        print(demo_feeds_yaml(srv.base_url), flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

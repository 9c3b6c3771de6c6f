"""A loopback stand-in for the AbuseIPDB APIv2, answering with the real example bodies from
``../shared/feeds/abuseipdb/`` (scores, whitelisting, quota and errors set per test)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fakes.loopback import LoopbackServer


class FakeAbuseIPDB(LoopbackServer):
    def __init__(self, samples: Path, key: str = "test-key") -> None:
        self.samples = samples
        self.key = key
        self.scores: dict[str, int] = {}
        self.whitelisted: set[str] = set()
        self.invalid: set[str] = set()
        self.remaining: int | None = None  # X-RateLimit-Remaining on successful answers
        self.reset_epoch = 1_900_000_000
        self.rate_limited = False  # answer 429 to everything
        self.retry_after: str | None = "3600"
        self.requests: list[dict[str, Any]] = []
        super().__init__(self._handler())

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/v2"

    def checked(self) -> list[str]:
        return [r["query"]["ipAddress"][0] for r in self.requests if r["path"] == "/api/v2/check"]

    def _sample(self, name: str) -> dict[str, Any]:
        sample: dict[str, Any] = json.loads((self.samples / name).read_text())
        return sample

    def _answer(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if headers.get("Key") != self.key:
            return 401, self._sample("abuseipdb-401-auth.json"), {}
        limit = {"X-RateLimit-Limit": "1000", "X-RateLimit-Reset": str(self.reset_epoch)}
        if self.rate_limited:
            extra = {**limit, "X-RateLimit-Remaining": "0"}
            if self.retry_after is not None:
                extra["Retry-After"] = self.retry_after
            return 429, self._sample("abuseipdb-429-rate-limit.json"), extra
        if self.remaining is not None:
            limit["X-RateLimit-Remaining"] = str(self.remaining)
        if path == "/api/v2/blacklist":
            return 200, self._sample("abuseipdb-blacklist.json"), limit
        if path != "/api/v2/check":
            return 404, {"errors": [{"detail": "not found", "status": 404}]}, {}
        ip = query.get("ipAddress", [""])[0]
        if ip in self.invalid:
            return 422, self._sample("abuseipdb-422-invalid-ip.json"), limit
        body = self._sample("abuseipdb-check-verbose.json")
        body["data"].update(
            ipAddress=ip,
            abuseConfidenceScore=self.scores.get(ip, 0),
            isWhitelisted=ip in self.whitelisted,
        )
        return 200, body, limit

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                headers = dict(self.headers.items())
                fake.requests.append({"path": parts.path, "query": query, "headers": headers})
                status, body, extra = fake._answer(parts.path, query, headers)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        return Handler

"""A fake Qualys API gateway on loopback, written from the documented protocol
(``../shared/reference/qualys-cdr-api.md``), for the tests and the demo.

- ``POST /auth`` (form: ``username``, ``password``, ``token=true``) → 201 and a raw JWT (HS256,
  with ``exp``); 401 on bad credentials.
- ``GET /cdr-api/rest/v1/findings`` (with or without a trailing slash): ``Authorization: Bearer``
  required (401 when missing, invalid or expired); ``startAt``/``endAt`` mandatory and strictly
  ``YYYY-MM-DDTHH:MM:SS.mmmZ``; findings whose ``timestamp`` lies in ``startAt..endAt`` (inclusive),
  oldest first, paged by ``offSet``/``limit`` (``limit`` ≤ 100); answer
  ``{"content": [...], "totalElements": N}`` with the gateway's ``X-RateLimit-*`` headers.

New findings on demand: :meth:`publish` (a detection appearing at the API while it runs).
Misbehaviour on demand: short token lifetime or :meth:`expire_tokens`; rate limiting every N
calls (429 with ``Retry-After`` and/or ``X-RateLimit-ToWait-Sec``); scripted faults (:meth:`inject`:
any status, slow answers for timeouts, dropped connections); ``crash_after_pages`` (every findings
call after the k-th page served drops the connection); ``ignore_offset`` (with ``pageNumber``
honoured unless ``page_numbers=False``); malformed findings are
simply served as they are in the data. Every request is recorded in :attr:`requests`.

Run it for a user trying the CLI::

    python -m fakes.qualys --port 8443 --findings events/findings --rebase-timestamps
"""

from __future__ import annotations

import argparse
import base64
import collections
import copy
import hashlib
import hmac
import json
import random
import re
import secrets
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fakes.loopback import LoopbackServer, PortInUse

DEMO_USERNAME = "demo_user"
DEMO_PASSWORD = "d3mo p@ss&word=1"  # deliberately has a space, @, & and =
FINDINGS_PATHS = ("/cdr-api/rest/v1/findings", "/cdr-api/rest/v1/findings/")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _timestamp(value: Any) -> datetime | None:
    """The fake's own reading of a finding time (ISO-8601 or epoch s/ms), independent of the client's."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value / 1000 if value > 1e12 else value, UTC)
        if isinstance(value, str):
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _instant(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def load_findings(path: str | Path) -> list[Any]:
    """Findings from one page file or a directory of them (``*.json``, in name order), each in the
    documented envelope ``{"content": [...], "totalElements": N}``."""
    root = Path(path)
    files = sorted(root.glob("*.json")) if root.is_dir() else [root]
    if not files:
        raise FileNotFoundError(f"no *.json findings pages in {root}")
    items: list[Any] = []
    for file in files:
        doc = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("content"), list):
            raise ValueError(f'{file}: expected {{"content": [...], "totalElements": N}}')
        items.extend(doc["content"])
    return items


def rebase_findings(items: list[Any], newest: datetime) -> list[Any]:
    """A copy of ``items`` with every finding time shifted so that the newest one is ``newest``
    (spacing kept). Used so that the shipped samples always fall inside "the last 24 hours"."""
    stamps = [_timestamp(item.get("timestamp")) for item in items if isinstance(item, dict)]
    known = [s for s in stamps if s is not None]
    if not known:
        return copy.deepcopy(items)
    shift = newest - max(known)
    out = []
    for item in items:
        item = copy.deepcopy(item)
        if isinstance(item, dict):
            ts = _timestamp(item.get("timestamp"))
            if ts is not None:
                item["timestamp"] = _instant(ts + shift)
        out.append(item)
    return out


@dataclass
class Fault:
    """One scripted misbehaviour, consumed by the next matching request."""

    status: int | None = None  # answer with this status (and ``headers``/``body``)
    delay_s: float = 0.0  # wait this long before answering (the client's timeout fires first)
    drop: bool = False  # close the connection without any answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"message": "injected fault"}'


@dataclass
class RequestRecord:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    form_fields: tuple[str, ...] = ()
    status: int | None = None  # None: the connection was dropped
    at: float = field(default_factory=time.time)  # when the request arrived (wall clock)


class FakeQualysGateway(LoopbackServer):
    def __init__(
        self,
        findings: Iterable[Any] | str | Path = (),
        *,
        username: str = DEMO_USERNAME,
        password: str = DEMO_PASSWORD,
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime_s: float = 4 * 3600,
        auth_status: int = 201,
        auth_body_suffix: str = "",
        rate_limit_every: int | None = None,
        rate_limit_wait_s: int = 1,
        rate_limit_headers: str = "both",
        crash_after_pages: int | None = None,
        ignore_offset: bool = False,
        page_numbers: bool = True,
        send_total: bool = True,
        max_limit: int = 100,
        rebase_to: datetime | None = None,
        clock: Callable[[], float] = time.time,
        verbose: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: serve HTTPS (as a real gateway does; the template takes only an https:// URL)."""
        if rate_limit_headers not in ("both", "retry-after", "towait", "none"):
            raise ValueError("rate_limit_headers must be both, retry-after, towait or none")
        items = load_findings(findings) if isinstance(findings, str | Path) else list(findings)
        if rebase_to is not None:
            items = rebase_findings(items, rebase_to)
        self.username = username
        self.password = password
        self.token_lifetime_s = token_lifetime_s
        self.auth_status = auth_status
        self.auth_body_suffix = auth_body_suffix
        self.rate_limit_every = rate_limit_every
        self.rate_limit_wait_s = rate_limit_wait_s
        self.rate_limit_headers = rate_limit_headers
        self.crash_after_pages = crash_after_pages
        self.ignore_offset = ignore_offset
        self.page_numbers = page_numbers
        self.send_total = send_total
        self.max_limit = max_limit
        self.clock = clock
        self.verbose = verbose
        self.requests: list[RequestRecord] = []
        self.pages_served = 0
        self.findings_calls = 0
        self.tokens_issued = 0
        self._records = self._index(items)
        self._key = secrets.token_bytes(32)
        self._revoked_before = 0  # tokens with a serial at or below this are expired
        self._faults: dict[str, collections.deque[Fault]] = {
            "auth": collections.deque(),
            "findings": collections.deque(),
        }
        self._lock = threading.Lock()
        super().__init__(self._handler_class(), host=host, port=port, tls=tls)

    # -- data ---------------------------------------------------------------------------------
    @staticmethod
    def _index(items: list[Any]) -> list[tuple[datetime, int, Any]]:
        """(time, position, item), oldest first. Items without a usable time (malformed ones) take
        the time of the item before them, so that they are served exactly once, in place."""
        known = [_timestamp(i.get("timestamp")) if isinstance(i, dict) else None for i in items]
        fallback = next((t for t in known if t is not None), datetime(1970, 1, 1, tzinfo=UTC))
        records = []
        for pos, (item, ts) in enumerate(zip(items, known, strict=True)):
            fallback = ts or fallback
            records.append((fallback, pos, item))
        return sorted(records, key=lambda r: (r[0], r[1]))

    @property
    def findings(self) -> list[Any]:
        return [item for _, _, item in self._records]

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.base_url

    # -- controls -----------------------------------------------------------------------------
    def inject(self, fault: Fault, times: int = 1, path: str = "findings") -> None:
        """Queue ``fault`` for the next ``times`` requests to ``path`` ("findings" or "auth")."""
        with self._lock:
            self._faults[path].extend(copy.deepcopy(fault) for _ in range(times))

    def publish(self, items: Iterable[Any]) -> float:
        """``items`` appear at the API (a new detection): every request from now on can see them. Returns
        that moment (``time.time()``), the start of a time to protect."""
        with self._lock:
            self._records = self._index([*self.findings, *items])
            return time.time()

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (as after 4 hours)."""
        with self._lock:
            self._revoked_before = self.tokens_issued

    def findings_requests(self) -> list[RequestRecord]:
        return [r for r in self.requests if r.path in FINDINGS_PATHS]

    # -- tokens -------------------------------------------------------------------------------
    def _issue(self) -> str:
        with self._lock:
            self.tokens_issued += 1
            serial = self.tokens_issued
        now = self.clock()
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {
            "sub": self.username,
            "iat": int(now),
            "exp": int(now + self.token_lifetime_s),
            "jti": serial,
        }
        payload = _b64(json.dumps(claims).encode())
        signature = _b64(hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        return f"{header}.{payload}.{signature}"

    def _token_problem(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.startswith("Bearer "):
            return "missing bearer token"
        token = authorization[len("Bearer ") :]
        parts = token.split(".")
        if len(parts) != 3:
            return "malformed token"
        expected = _b64(hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, parts[2]):
            return "invalid token signature"
        claims = json.loads(_unb64(parts[1]))
        if claims["exp"] <= self.clock() or claims["jti"] <= self._revoked_before:
            return "JWT expired"
        return None

    # -- HTTP -------------------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "FakeQualysGateway/1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, format: str, *args: Any) -> None:
                if gateway.verbose:
                    super().log_message(format, *args)

            def _record(self, params: dict[str, str], form_fields: tuple[str, ...] = ()) -> RequestRecord:
                keep = ("Authorization", "User-Agent", "Accept", "X-Requested-With", "Content-Type")
                record = RequestRecord(
                    method=self.command,
                    path=urlsplit(self.path).path,
                    params=params,
                    headers={k: v for k in keep if (v := self.headers.get(k)) is not None},
                    form_fields=form_fields,
                )
                with gateway._lock:
                    gateway.requests.append(record)
                return record

            def _send(
                self,
                record: RequestRecord,
                status: int,
                body: bytes,
                headers: dict[str, str] | None = None,
                content_type: str = "application/json",
            ) -> None:
                record.status = status
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _error(
                self, record: RequestRecord, status: int, message: str, headers: dict[str, str] | None = None
            ) -> None:
                self._send(record, status, json.dumps({"message": message}).encode(), headers)

            def _fault(self, record: RequestRecord, kind: str) -> bool:
                with gateway._lock:
                    fault = gateway._faults[kind].popleft() if gateway._faults[kind] else None
                if fault is None:
                    return False
                if fault.delay_s:
                    time.sleep(fault.delay_s)
                if fault.drop:
                    self.close_connection = True
                    return True
                if fault.status is None:
                    return False  # a pure delay: answer normally afterwards
                self._send(record, fault.status, fault.body, fault.headers)
                return True

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace")
                form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
                record = self._record({}, tuple(sorted(form)))
                if urlsplit(self.path).path != "/auth":
                    return self._error(record, 404, "not found")
                if self._fault(record, "auth"):
                    return None
                if not (self.headers.get("Content-Type") or "").startswith("application/x-www-form-urlencoded"):
                    return self._error(record, 400, "expected a form body")
                if form.get("token") != "true":
                    return self._error(record, 400, "token=true is required")
                if form.get("username") != gateway.username or form.get("password") != gateway.password:
                    return self._send(record, 401, b"Unauthorized", content_type="text/plain")
                body = (gateway._issue() + gateway.auth_body_suffix).encode()
                return self._send(record, gateway.auth_status, body, content_type="text/plain")

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                record = self._record(params)
                if parts.path not in FINDINGS_PATHS:
                    return self._error(record, 404, "not found")
                with gateway._lock:
                    gateway.findings_calls += 1
                    call = gateway.findings_calls
                    crashed = (
                        gateway.crash_after_pages is not None and gateway.pages_served >= gateway.crash_after_pages
                    )
                if crashed:
                    self.close_connection = True
                    return None
                if self._fault(record, "findings"):
                    return None
                problem = gateway._token_problem(self.headers.get("Authorization"))
                if problem:
                    return self._error(record, 401, problem)
                limits = {"X-RateLimit-Limit": "300", "X-RateLimit-Window-Sec": "3600"}
                if gateway.rate_limit_every and call % gateway.rate_limit_every == 0:
                    headers = {**limits, "X-RateLimit-Remaining": "0"}
                    wait = str(gateway.rate_limit_wait_s)
                    if gateway.rate_limit_headers in ("both", "retry-after"):
                        headers["Retry-After"] = wait
                    if gateway.rate_limit_headers in ("both", "towait"):
                        headers["X-RateLimit-ToWait-Sec"] = wait
                    return self._error(record, 429, "rate limit exceeded", headers)
                try:
                    start, end = params["startAt"], params["endAt"]
                    if not (_INSTANT.match(start) and _INSTANT.match(end)):
                        raise ValueError("startAt/endAt must be YYYY-MM-DDTHH:MM:SS.mmmZ")
                    offset = int(params.get("offSet", "0"))
                    limit = int(params.get("limit", str(gateway.max_limit)))
                    page_number = int(params["pageNumber"]) if "pageNumber" in params else None
                    if offset < 0 or not 1 <= limit <= gateway.max_limit or (page_number or 1) < 1:
                        raise ValueError(f"offSet must be >= 0, pageNumber >= 1 and limit 1..{gateway.max_limit}")
                except KeyError as exc:
                    return self._error(record, 400, f"missing mandatory parameter {exc.args[0]}")
                except ValueError as exc:
                    return self._error(record, 400, str(exc))
                lo, hi = _timestamp(start), _timestamp(end)
                assert lo is not None and hi is not None
                selected = [item for ts, _, item in gateway._records if lo <= ts <= hi]
                if gateway.ignore_offset:
                    offset = 0
                if page_number is not None and gateway.page_numbers:
                    offset = (page_number - 1) * limit  # 1-based, as the public client that uses it
                page = selected[offset : offset + limit]
                doc: dict[str, Any] = {"content": page}
                if gateway.send_total:
                    doc["totalElements"] = len(selected)
                with gateway._lock:
                    gateway.pages_served += 1
                    remaining = max(0, 300 - gateway.findings_calls)
                self._send(record, 200, json.dumps(doc).encode(), {**limits, "X-RateLimit-Remaining": str(remaining)})
                return None

        return Handler


# -- synthetic data -------------------------------------------------------------------------------
SYNTHETIC_CATEGORIES: tuple[tuple[str, str, int | None], ...] = (
    # (threatCategory, processName, destinationPort)
    ("Cloud_Credentials_Accessed_By_Network_Utility", "curl", 80),
    ("Network_Scanning_Utility", "nmap", None),
    ("Container_escape_via_cgroup", "sh", None),
    ("CryptoMiner_Execution", "xmrig", 3333),
    ("Netcat_Reverse_Shell_Execution", "nc", 4444),
    ("Clear_System_Logs", "truncate", None),
    ("Suspicious_Unlisted_Activity", "python3", None),
)


def reverse_shell_finding(address: str, at: datetime) -> dict[str, Any]:
    """A new network finding detected at ``at``: a reverse shell to ``address`` (category reverse_shell,
    whose destination the policies block), in the shape of events/findings."""
    return {
        "uuid": f"new-{hashlib.sha256(f'{address}/{at.isoformat()}'.encode()).hexdigest()[:32]}",
        "threatCategory": "Netcat_Reverse_Shell_Execution",
        "severity": 5,
        "timestamp": _instant(at),
        "resourceType": "container",
        "containerName": "api",
        "pod": "api-5d8c7b9f4-q7x2n",
        "processName": "nc",
        "imageName": "registry.example/shop/api:1.0.0",
        "eventMessage": f"nc connected to {address}:4444 and spawned /bin/sh",
        "destinationIp": address,
        "destinationPort": 4444,
        "mitreRulesInfo": {"T1059.004": "Unix Shell"},
    }


def synthetic_findings(
    count: int,
    *,
    start: datetime,
    end: datetime,
    seed: int = 0,
    malformed_every: int = 0,
) -> list[Any]:
    """``count`` deterministic findings spread over ``start..end``: the seed categories and a few
    more, public destination IPs from 45.0.0.0/8 and 2a0b:f000::/32 (outside every never-block
    range), some private addresses; every ``malformed_every``-th item is malformed (no uuid, no
    category, or not an object, in turn)."""
    rng = random.Random(seed)
    span = (end - start).total_seconds()
    items: list[Any] = []
    for i in range(count):
        category, process, port = SYNTHETIC_CATEGORIES[i % len(SYNTHETIC_CATEGORIES)]
        ts = start + timedelta(seconds=span * (i + 0.5) / count)
        finding: dict[str, Any] = {
            "uuid": f"syn-{seed}-{i:06d}",
            "threatCategory": category,
            "severity": rng.choice([1, 2, 3, 4, "HIGH", "3"]),
            "timestamp": _instant(ts),
            "processName": process,
            "containerName": f"app-{i % 13}",
            "pod": f"web-{i % 13}-5d8f7",
            "imageName": "registry.example/app:1.2.3",
            "mitreRulesInfo": rng.choice([{"T1552.005": "Cloud Instance Metadata API"}, None, ["T1046"]]),
        }
        if category == "Suspicious_Unlisted_Activity":
            finding["mitreRulesInfo"] = None  # stays unmapped: no technique to fall back on
        roll = i % 5
        if roll == 0:
            finding["destinationIp"] = f"45.{(i // 250) % 250 + 1}.{(i // 5) % 250 + 1}.{i % 250 + 1}"
        elif roll == 1:
            finding["destinationIp"] = f"2a0b:f000::{i:x}"
        elif roll == 2:
            finding["destinationIp"] = f"10.{i % 250}.0.{i % 200 + 1}"
        if port is not None:
            finding["destinationPort"] = port
        if malformed_every and i % malformed_every == malformed_every - 1:
            kind = (i // malformed_every) % 3
            if kind == 0:
                del finding["uuid"]
            elif kind == 1:
                del finding["threatCategory"]
            else:
                items.append(f"not an object #{i}")
                continue
        items.append(finding)
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fakes.qualys", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--findings", default="events/findings", help="a findings page file or a directory of them")
    parser.add_argument(
        "--rebase-timestamps",
        action="store_true",
        help="shift the sample times so that the newest finding is 5 minutes old",
    )
    parser.add_argument("--username", default=DEMO_USERNAME)
    parser.add_argument("--password", default=DEMO_PASSWORD)
    parser.add_argument("--token-lifetime", type=float, default=4 * 3600, help="seconds (default 4 h)")
    parser.add_argument("--rate-limit-every", type=int, default=None, help="answer every N-th findings call with 429")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    rebase = datetime.now(UTC) - timedelta(minutes=5) if args.rebase_timestamps else None
    try:
        gateway = _serve(args, rebase)
    except PortInUse as exc:
        print(f"fake gateway: error: {exc}", file=sys.stderr)
        return 2
    with gateway:
        print(f"Fake Qualys gateway serving {len(gateway.findings)} findings at {gateway.url}")
        print("Try the CLI (from the repository, after `make venv`) with:")
        print(f"  export QUALYS_GATEWAY_URL={gateway.url}")
        print(f"  export QUALYS_USERNAME='{args.username}'")
        print(f"  export QUALYS_PASSWORD='{args.password}'")
        print("  .venv/bin/cdr-policy --once --hours=24 --output=./policies")
        print("Ctrl-C to stop.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped")
    return 0


def _serve(args: argparse.Namespace, rebase: datetime | None) -> FakeQualysGateway:
    return FakeQualysGateway(
        args.findings,
        username=args.username,
        password=args.password,
        host=args.host,
        port=args.port,
        token_lifetime_s=args.token_lifetime,
        rate_limit_every=args.rate_limit_every,
        rebase_to=rebase,
        verbose=args.verbose,
    )


if __name__ == "__main__":
    raise SystemExit(main())

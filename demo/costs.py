"""``make costs``: the AWS requests one run of the pipeline makes, counted at the moto server.

    python -m demo.costs [--output DIR]

Runs the demo (``demo.runner.run_pipeline``: template.yaml deployed, then the flow) against an in-process
moto server (fakes/moto_server.py, without IAM checks) whose WSGI application is wrapped in a
counter, then starts one agent per channel again (a restarted agent: nothing cached) and polls each twice
more (the second poll is a fleet's steady state: nothing changed), and prints the requests by stage and
API operation with each stage's wall time. The deployment and what Lambda reads of the stack count as
``setup``. The cost guide (docs/costs.md) is computed from this table.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from threading import Lock, Thread
from typing import Any
from urllib.parse import parse_qs

import httpx

from demo.runner import demo_agents, quiet_logs, run_pipeline
from fakes.aws import moto_server

# The runner announces each stage as "[n/7] Name ..."; requests are booked to the stage last announced.
_STAGE = re.compile(r"^\[\d/\d\] (\S+)")
_SCOPE = re.compile(r"Credential=[^/]+/\d+/[^/]+/([^/]+)/aws4_request")
_S3_OPERATIONS = {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# S3 Standard list prices, us-east-1, USD per 1,000 requests: the cost guide's table (docs/costs.md)
# (tests/unit/test_costs.py keeps the two in step). Other S3 operations (DELETE) are free.
S3_PRICE_PER_1000 = {"PUT": 0.005, "GET": 0.0004}
_PRICE_CLASS = {
    "s3:PutObject": "PUT",
    "s3:CopyObject": "PUT",
    "s3:POST": "PUT",
    "s3:ListObjects": "PUT",
    "s3:GetObject": "GET",
    "s3:HeadObject": "GET",
}


def s3_price_class(op: str) -> str | None:
    """``PUT`` (PUT, COPY, POST, LIST) or ``GET`` (GET, HEAD): how S3 bills the operation ``operation()``
    named; None for DELETE (free), bucket-level calls and other services."""
    return _PRICE_CLASS.get(op)


def operation(environ: dict[str, Any]) -> str:
    """``service:Operation`` of one request as the AWS bill names it (S3 by method and path, the JSON
    protocols by their X-Amz-Target)."""
    scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    service = scope.group(1) if scope else "unsigned"
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return f"{service}:{target.rsplit('.', 1)[-1]}"
    method = environ["REQUEST_METHOD"]
    if service != "s3":
        return f"{service}:{method}"
    path = environ.get("PATH_INFO", "/").lstrip("/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if "/" in path:  # bucket/key
        return f"s3:{_S3_OPERATIONS.get(method, method)}"
    if method == "GET" and ("list-type" in query or "prefix" in query or not query):
        return "s3:ListObjects"
    return f"s3:{method} bucket ?{','.join(sorted(query))}"


class RequestCounter:
    """WSGI middleware: counts each request, its body bytes each way and its response status under the
    stage current when it arrived."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.stage = "setup"
        self.counts: Counter[tuple[str, str]] = Counter()
        self.request_bytes: Counter[tuple[str, str]] = Counter()
        self.response_bytes: Counter[tuple[str, str]] = Counter()
        self.statuses: Counter[tuple[str, str, int]] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._since = time.perf_counter()
        self._lock = Lock()

    def enter(self, stage: str) -> None:
        now = time.perf_counter()
        with self._lock:
            self.seconds[self.stage] += now - self._since
            self.stage, self._since = stage, now

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._lock:
            key = (self.stage, operation(environ))
            self.counts[key] += 1
        status: list[int] = []

        def recording_start_response(line: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            status.append(int(line.split(" ", 1)[0]))
            return start_response(line, headers, *exc_info)

        response = self.app(environ, recording_start_response)
        try:
            body = list(response)
        finally:
            close = getattr(response, "close", None)
            if close is not None:
                close()
        with self._lock:
            # over HTTPS botocore streams an S3 upload (aws-chunked, with a trailing checksum): its length
            # is the decoded one it declares
            length = environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH") or environ.get("CONTENT_LENGTH") or 0
            self.request_bytes[key] += int(length)
            self.response_bytes[key] += sum(map(len, body))
            self.statuses[(*key, status[0] if status else 0)] += 1
        return body

    def snapshot(self, stage: str) -> dict[str, dict[str, int]]:
        """One stage's requests, body bytes each way and statuses, by operation."""
        with self._lock:
            ops = sorted(op for s, op in self.counts if s == stage)
            return {
                op: {
                    "requests": self.counts[(stage, op)],
                    "request_bytes": self.request_bytes[(stage, op)],
                    "response_bytes": self.response_bytes[(stage, op)],
                    **{
                        f"status_{code}": n
                        for (s, o, code), n in sorted(self.statuses.items())
                        if (s, o) == (stage, op)
                    },
                }
                for op in ops
            }


@contextmanager
def counting_moto_server() -> Iterator[tuple[str, RequestCounter]]:
    """A plain moto server on loopback (an ephemeral port, HTTP) behind a ``RequestCounter``: the fleet
    benchmark's bucket (benchmarks/fleet.py)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from fakes.moto_server import pooled_server

    counter = RequestCounter(DomainDispatcherApplication(create_backend_app))
    server = pooled_server("127.0.0.1", 0, counter)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        # moto's backends are global to the process: start from an empty account every time.
        httpx.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
        counter.counts.clear()
        yield url, counter
    finally:
        server.shutdown()
        thread.join()


def measure(output: Path, say: Callable[[str], None]) -> RequestCounter:
    """One demo run, then a restarted agent per channel polling twice; requests and seconds by stage."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines on the console
    counters: list[RequestCounter] = []

    def counting(app: WsgiApp) -> WsgiApp:
        counters.append(RequestCounter(app))
        return counters[0]

    with moto_server(enforce_iam=False, wrap=counting) as server:
        (counter,) = counters
        counter.counts.clear()  # the reset before the run

        def step(line: str) -> None:
            match = _STAGE.match(line)
            if match:
                counter.enter(match.group(1))
            say(line)

        result = run_pipeline(server, output, say=step)
        with quiet_logs(output / "agents.log"):
            counter.enter("restarted-poll")
            agents = demo_agents(result)
            # A restarted agent's first polls report something new (it applied, then confirmed by ETag).
            for _ in range(2):
                statuses = {channel: agent.sync_once() for channel, agent in agents.items()}
            counter.enter("unchanged-poll")
            statuses = {channel: agent.sync_once() for channel, agent in agents.items()}
            counter.enter("done")
        for channel, status in statuses.items():
            say(f"{channel}: {status.last_poll.result} ({status.last_poll.detail})")
    return counter


def table(counter: RequestCounter) -> list[str]:
    lines = [f"{'stage':<16} {'seconds':>7}  requests by operation"]
    for stage in dict.fromkeys(s for s, _ in counter.counts):  # in the order they ran
        ops = sorted((op, n) for (s, op), n in counter.counts.items() if s == stage)
        total = sum(n for _, n in ops)
        lines.append(f"{stage:<16} {counter.seconds[stage]:>7.2f}  {total:>4} total")
        lines.extend(f"{'':<26}{n:>4}  {op}" for op, n in ops)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.costs", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo-output", help="where the agents write (default demo-output)")
    args = parser.parse_args(argv)
    counter = measure(Path(args.output).resolve(), lambda line: print(line, flush=True))
    print("")
    print("\n".join(table(counter)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

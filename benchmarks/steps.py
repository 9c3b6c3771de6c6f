"""The pipeline benchmark's contenders, one per process (``benchmarks/pipeline.py`` runs them):
``python -m benchmarks.steps STEP OUT.json [ARG...]``; each writes a JSON summary to ``OUT.json``.

- ``handler NAME``: one function's real handler (``functions/<NAME>/app.py``) as Lambda runs it,
  with the environment the parent gives (the deployed function's configuration and role session):
  CdrFetch and FeedSync on their schedule events, Render and Publish on the messages of their event
  source's queue (``EVENT_SOURCE_QUEUE_URL``).
  Its summary lists the modules the handler module imported (``handler_modules``) and those its
  invocations imported (``first_call_modules``).
- ``import NAME [MODULES.json]``: the cold import of a handler module and of the modules its
  invocations imported (the ``handler`` step's list), or ``bare``: a handler with Powertools'
  Logger, Tracer and Metrics and nothing else, or ``floor MODULES.json``: the bare handler and then
  the modules of the list (a handler's dependencies without the library's own code). The import is
  timed inside the process.
- ``agent CHANNEL``: the sync agent (its cluster's session in the environment, the public key in the
  file ``SIGNING_PUBLIC_KEY``) polls once (and applies the bundle), polls again (its first
  unchanged poll, which still reports something new), then once more with nothing changed: that
  steady-state poll's HTTP requests and response body bytes are counted with botocore's event hooks
  on the agent's own S3 client.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BARE_HANDLER = """
from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@metrics.log_metrics
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event, context):
    return {}
"""


SCHEDULED = ("cdr_fetch", "feed_sync")


def run_handler(name: str) -> dict[str, Any]:
    from fakes.lambda_runtime import LambdaContext, drain_queue, load_handler

    before = set(sys.modules)
    started = time.perf_counter()
    handler = load_handler(name)
    imported = time.perf_counter() - started
    loaded = set(sys.modules)
    context = LambdaContext(name)
    if name in SCHEDULED:
        event = json.loads((REPO / "events" / f"schedule_{name}.json").read_text())
        result: Any = handler.lambda_handler(event, context)
    else:
        import boto3

        sqs = boto3.client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        queue = os.environ["EVENT_SOURCE_QUEUE_URL"]  # the queue of the function's event source mapping
        result = drain_queue(
            sqs,
            queue,
            lambda event: handler.lambda_handler(event, context),
            region=os.environ["AWS_DEFAULT_REGION"],
        )
    return {
        "import_s": imported,
        "handler_s": time.perf_counter() - started - imported,
        "result": result,
        "handler_modules": [m for m in sys.modules if m not in before],
        # in import order: what the invocations imported (part d imports them after the handler)
        "first_call_modules": [m for m in sys.modules if m not in loaded],
    }


def run_import(name: str, modules_file: str | None = None) -> dict[str, Any]:
    """``bare``; ``floor``: the bare handler, then the modules of ``modules_file`` (a JSON list); or
    handler ``name`` plus the modules its first invocation imported (``modules_file``, from
    ``run_handler``) in that order. Run it with the layer as Lambda sees it (the only path besides
    the standard library): a module recorded in the development virtualenv that the layer does not
    hold (botocore's optional awscrt, httpx's CLI) fails to import there as it would in Lambda, and
    is listed in ``not_in_layer``."""
    modules = json.loads(Path(modules_file).read_text()) if modules_file else []
    if name in ("bare", "floor"):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "bare_handler.py"
            path.write_text(BARE_HANDLER)
            sys.path.insert(0, folder)
            started = time.perf_counter()
            __import__("bare_handler")
            failed = _import_all(modules)
            elapsed = time.perf_counter() - started
    else:
        from fakes.lambda_runtime import load_handler

        started = time.perf_counter()
        load_handler(name)
        failed = _import_all(modules)
        elapsed = time.perf_counter() - started
    return {
        "import_s": elapsed,
        "numpy": "numpy" in sys.modules,
        "first_call_modules": len(modules),
        # an extension module's submodules are listed before it, and are there once it is imported
        "not_in_layer": [m for m in failed if m not in sys.modules],
    }


def _import_all(modules: list[str]) -> list[str]:
    """Import ``modules`` in order; the names that are not there."""
    failed = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            failed.append(module)
    return failed


def run_agent(channel: str) -> dict[str, Any]:
    import boto3

    from cdr_policy.agent.directory import DirectoryApplier
    from cdr_policy.agent.sync import Agent
    from cdr_policy.bundle.signing import Verifier
    from cdr_policy.storage import S3Store

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    pem = Path(os.environ["SIGNING_PUBLIC_KEY"]).read_text()
    with tempfile.TemporaryDirectory() as folder:
        agent = Agent(
            S3Store(s3, os.environ["DIST_BUCKET"]),
            channel=channel,
            cluster_id=f"bench-{channel}",
            verifier=Verifier.from_public_pem(pem),
            applier=DirectoryApplier(Path(folder) / "objects"),
            state_dir=Path(folder) / "state",
        )
        first = agent.sync_once()
        agent.sync_once()
        applied = sorted((Path(folder) / "objects").rglob("*.yaml"))
        calls: list[dict[str, Any]] = []

        def after_call(http_response: Any, model: Any, **_: Any) -> None:
            length = int(http_response.headers.get("content-length") or 0)
            calls.append({"operation": model.name, "status": http_response.status_code, "body_bytes": length})

        s3.meta.events.register("after-call.s3", after_call)
        second = agent.sync_once()
        files, size = len(applied), sum(p.stat().st_size for p in applied)
    polls = [c for c in calls if c["operation"] == "GetObject"]
    return {
        "first": first.last_poll.result,
        "second": second.last_poll.result,
        "files": files,
        "bundle_bytes": size,
        "requests": len(calls),
        "poll_requests": len(polls),
        "poll_body_bytes": sum(c["body_bytes"] for c in polls),
        "calls": calls,
    }


def main(argv: list[str]) -> int:
    step, out, *args = argv
    runners: dict[str, Callable[..., dict[str, Any]]] = {
        "handler": run_handler,
        "import": run_import,
        "agent": run_agent,
    }
    summary = runners[step](*args)
    Path(out).write_text(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

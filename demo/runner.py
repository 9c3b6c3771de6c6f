"""The whole serverless flow on one machine: CdrFetch and FeedSync on their schedule events, the S3
notifications they cause delivered from RenderQueue to Render, PublishQueue to Publish, then the sync
agent of each channel pulling its signed bundle into a folder. Every AWS call goes over HTTP to a
moto server (or the endpoint given); Qualys and the feeds are loopback fakes serving our samples.

``make demo`` prints each step; the integration test runs the same function and checks the result.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cdr_policy import aws, layout
from cdr_policy.agent.directory import DirectoryApplier
from cdr_policy.agent.sync import Agent
from cdr_policy.bundle.signing import KmsSigner, Verifier
from cdr_policy.observability import logger
from cdr_policy.settings import get_settings
from cdr_policy.storage import LocalStore, S3Store
from cdr_policy.timeutil import utcnow
from demo.hits import run_hits
from demo.promotion import PROMOTE, run_promotion
from tests.fakes.aws import Stack, create_stack
from tests.fakes.feeds import DEMO_FEEDS_DIR, FeedServer, demo_feeds_yaml
from tests.fakes.lambda_runtime import REPO, LambdaContext, drain_queue, load_handler
from tests.fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway

EVENTS = REPO / "events"
# The demo agents check for drift this often (a cluster's agent: --drift-interval, default 5 min).
DEMO_DRIFT_INTERVAL_S = 1.0
FINDINGS = EVENTS / "findings"
CHANNELS = (
    {"name": "staging", "action": "Post", "cilium_version": "1.17"},
    {"name": "prod", "action": "Sigkill", "cilium_version": "1.18", "promote": PROMOTE},
)


@dataclass
class PipelineResult:
    stack: Stack
    output: Path
    steps: dict[str, Any] = field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    drift: dict[str, Any] = field(default_factory=dict)  # the staging agent's status after a drift repair
    hits: dict[str, Any] = field(default_factory=dict)  # what the export lines fed through the readers gave
    promotion: dict[str, Any] = field(default_factory=dict)  # prod's evidence after the soak and the approval

    def channel_dir(self, channel: str) -> Path:
        return self.output / channel


@contextmanager
def _lambda_logs(path: Path) -> Iterator[None]:
    """Send what the functions print (Powertools' JSON logs and EMF metrics) to ``path``, as
    CloudWatch Logs would take it, so the console shows only the steps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handlers = [h for h in logging.getLogger(logger.name).handlers if isinstance(h, logging.StreamHandler)]
    with path.open("a", encoding="utf-8") as log:
        previous = [h.setStream(log) for h in handlers]
        try:
            with redirect_stdout(log):
                yield
        finally:
            for h, stream in zip(handlers, previous, strict=True):
                h.setStream(stream)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set what template.yaml would give the functions, and restore the process environment after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    aws.reset()
    get_settings.cache_clear()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        aws.reset()
        get_settings.cache_clear()


def _event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def _upload_config(stack: Stack, feeds: FeedServer, crds_dir: Path | None) -> int:
    s3 = stack.client("s3")
    bucket = stack.names.state_bucket
    s3.put_object(Bucket=bucket, Key="config/channels.yaml", Body=yaml.safe_dump({"channels": list(CHANNELS)}))
    s3.put_object(Bucket=bucket, Key="config/feeds.yaml", Body=demo_feeds_yaml(feeds.url("/")))
    uploaded = 0
    if crds_dir is not None:
        for path in sorted(crds_dir.rglob("*.yaml")):
            if "examples" in path.parts:
                continue
            s3.put_object(Bucket=bucket, Key=f"crds/{path.relative_to(crds_dir).as_posix()}", Body=path.read_bytes())
            uploaded += 1
    return uploaded


def run_pipeline(
    endpoint_url: str,
    output: Path,
    *,
    say: Callable[[str], None] | None = None,
    crds_dir: Path | None = None,
    environment: str = "demo",
) -> PipelineResult:
    """Run every stage once through the real handlers; the agents write into ``output/<channel>``.
    ``say`` gets one line per step (default: this process's standard output)."""
    console = sys.stdout
    say = say or (lambda line: print(line, file=console, flush=True))
    now = utcnow()
    with (
        FakeQualysGateway(FINDINGS, rebase_to=now) as gateway,
        FeedServer(root=DEMO_FEEDS_DIR) as feeds,
    ):
        stack = create_stack(
            endpoint_url, environment=environment, qualys={"username": DEMO_USERNAME, "password": DEMO_PASSWORD}
        )
        result = PipelineResult(stack=stack, output=output)
        say(
            f"AWS endpoint: {endpoint_url} (state s3://{stack.names.state_bucket}, dist s3://{stack.names.dist_bucket})"
        )
        say(f"Qualys gateway (fake): {gateway.url}   feeds: {feeds.url('/')}")
        crds = _upload_config(stack, feeds, crds_dir)
        say(
            f"Configured channels {', '.join(c['name'] + ' (' + c['action'] + ')' for c in CHANNELS)}; "
            + (f"{crds} CRD files uploaded for schema checks" if crds else "no CRDs given: checklist only")
        )
        env = {**stack.env, "QUALYS_GATEWAY_URL": gateway.url}
        say(f"Function logs and metrics (as CloudWatch would get them): {output / 'lambda.log'}")
        with _environment(env), _lambda_logs(output / "lambda.log"):
            result.steps = _run_functions(stack, say)
            result.agents, result.drift = _run_agents(stack, output, say)
            result.promotion = run_promotion(stack, output, lambda: _render_and_publish(stack), say)
            result.hits = run_hits(stack, output, demo_agents(stack, output), say)
        for bucket, folder in ((stack.names.state_bucket, "state"), (stack.names.dist_bucket, "dist")):
            _mirror(S3Store(stack.client("s3"), bucket), LocalStore(output / folder))
        say(f"Buckets copied to {output / 'state'} and {output / 'dist'} (for the fleet commands after the run)")
    return result


def _mirror(bucket: S3Store, folder: LocalStore) -> None:
    for key in bucket.list(""):
        folder.put(key, bucket.get(key).data)


def _run_functions(stack: Stack, say: Callable[[str], None]) -> dict[str, Any]:
    steps: dict[str, Any] = {}

    say("")
    say("[1/7] CdrFetch (EventBridge schedule)")
    summary = load_handler("cdr_fetch").lambda_handler(_event("schedule_cdr_fetch.json"), LambdaContext("cdr-fetch"))
    steps["cdr_fetch"] = summary
    ind = summary["indicators"]
    say(
        f"      findings fetched {summary['fetched']}, unique {summary['unique']}, duplicates "
        f"{summary['duplicates']}, malformed {summary['malformed_count']}; indicators: {ind['ips']} IPs, "
        f"{ind['domains']} domains, {ind['ports']} ports"
    )

    say("[2/7] FeedSync (EventBridge schedule)")
    summary = load_handler("feed_sync").lambda_handler(_event("schedule_feed_sync.json"), LambdaContext("feed-sync"))
    steps["feed_sync"] = summary
    for name, feed in summary["feeds"].items():
        say(f"      {name:<20} {feed['status']:<8} {feed['entries']:>6} entries")

    say("[3/7] Render (RenderQueue <- S3 ObjectCreated notifications for indicators/ and config/)")
    counts = steps["render"] = _deliver(stack, "render", stack.render_queue_url)
    say(f"      {counts['messages']} notification(s) in {counts['batches']} batch(es), {counts['failed']} failed")
    for channel, latest in _latest_renders(stack).items():
        say(f"      channel {channel:<8} bundle {latest['digest'][:16]}")

    say("[4/7] Publish (PublishQueue)")
    counts = steps["publish"] = _deliver(stack, "publish", stack.publish_queue_url)
    say(f"      {counts['messages']} publish request(s), {counts['failed']} failed")
    for channel, manifest in _channel_manifests(stack).items():
        say(
            f"      channels/{channel}/manifest.json: bundle {manifest['digest'][:16]}, "
            f"{len(manifest['files'])} files, "
            f"signed with {manifest['signature_algorithm']}, expires {manifest['expires_at']}"
        )
    return steps


def _render_and_publish(stack: Stack) -> None:
    """The scheduled re-render (its EventBridge event on RenderQueue), then its publish requests."""
    refresh = json.loads((EVENTS / "sqs_render_refresh.json").read_text())["Records"][0]["body"]
    stack.client("sqs").send_message(QueueUrl=stack.render_queue_url, MessageBody=refresh)
    _deliver(stack, "render", stack.render_queue_url)
    _deliver(stack, "publish", stack.publish_queue_url)


def _deliver(stack: Stack, function: str, queue_url: str) -> dict[str, int]:
    """Feed a queue's messages to a function's handler, as its SQS event source mapping would."""
    handler = load_handler(function)
    return drain_queue(
        stack.client("sqs"),
        queue_url,
        lambda event: handler.lambda_handler(event, LambdaContext(function)),
        region=stack.names.region,
    )


def _latest_renders(stack: Stack) -> dict[str, dict[str, Any]]:
    state = S3Store(stack.client("s3"), stack.names.state_bucket)
    return {c["name"]: json.loads(state.get(layout.latest_render_key(c["name"])).data) for c in CHANNELS}


def _channel_manifests(stack: Stack) -> dict[str, dict[str, Any]]:
    dist = S3Store(stack.client("s3"), stack.names.dist_bucket)
    return {c["name"]: json.loads(dist.get(layout.channel_manifest_key(c["name"])).data) for c in CHANNELS}


def demo_agents(stack: Stack, output: Path) -> dict[str, Agent]:
    """One sync agent per channel, applying into ``output/<channel>``."""
    public_pem = KmsSigner(stack.client("kms"), stack.signing_key_id).public_key_pem()
    dist = S3Store(stack.client("s3"), stack.names.dist_bucket)
    return {
        c["name"]: Agent(
            dist,
            channel=c["name"],
            cluster_id=f"demo-{c['name']}",
            verifier=Verifier.from_public_pem(public_pem),
            applier=DirectoryApplier(output / c["name"]),
            state_dir=output / ".agent-state" / c["name"],
            drift_interval_s=DEMO_DRIFT_INTERVAL_S,
        )
        for c in CHANNELS
    }


def _run_agents(
    stack: Stack, output: Path, say: Callable[[str], None]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    say("[5/7] Sync agents (one per channel: poll, verify signature and digests, apply, report status)")
    statuses = {}
    agents = demo_agents(stack, output)
    for channel, agent in agents.items():
        status = agent.sync_once()
        statuses[channel] = status
        say(f"      {channel:<8} {status['last_poll']['result']}: {status['last_poll']['detail']}")
        say(
            f"               objects in {output / channel}; status at s3://{stack.names.dist_bucket}/status/demo-{channel}.json"
        )
    return statuses, _show_drift_repair(agents["staging"], output / "staging", say)


def _show_drift_repair(agent: Agent, folder: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Delete one object the agent applied, as someone editing the cluster by hand would; one drift
    interval later the agent's unchanged poll puts it back and reports the drift."""
    victim = sorted(folder.glob("tracingpolicy-*.yaml"))[0]
    victim.unlink()
    say(f"      drift: deleted {victim.name} by hand; the agent compares every {DEMO_DRIFT_INTERVAL_S:g}s")
    time.sleep(DEMO_DRIFT_INTERVAL_S)
    status = agent.sync_once()
    say(f"      staging  {status['last_poll']['result']}: {status['last_poll']['detail']}")
    say(f"               {victim.name} is back: {victim.exists()}")
    return status

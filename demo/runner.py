"""The whole serverless flow on one machine, deployed from template.yaml in the order docs/deploy.md
gives: the Qualys secret, then the stack (``sam deploy``: the SAM transform and
CloudFormation on a moto server that checks every request against IAM), the configuration, one
cluster per channel (deploy/cluster-access). Then the stack's own event sources drive the real
handlers, each function under its own deployed role: CdrFetch and FeedSync on their schedule rules,
the S3 notifications they cause delivered from RenderQueue to Render, PublishQueue to Publish; and
each cluster's sync agent, with its cluster role's session, pulls its signed bundle into a folder.
Qualys and the feeds are loopback fakes serving our samples (the gateway over HTTPS, as the template
requires).

``make demo`` prints each step; the integration tests run the same function and check the result.
A function that fails stops the run with ``DemoFailure`` (the step, the function, the cause).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cdr_policy import layout
from cdr_policy.agent.directory import DirectoryApplier
from cdr_policy.agent.status import AgentStatus
from cdr_policy.agent.sync import Agent
from cdr_policy.bundle.loader import latest_render, read_manifest
from cdr_policy.bundle.signing import KmsSigner, Verifier
from cdr_policy.observability import logger
from cdr_policy.storage import LocalStore, S3Store
from cdr_policy.summaries import CdrRunSummary, FeedSyncSummary
from cdr_policy.timeutil import utcnow
from demo.hits import run_hits
from demo.promotion import PROMOTE, run_promotion
from fakes.aws import ACCOUNT, MotoServer
from fakes.feeds import DEMO_FEEDS_DIR, FeedServer, demo_feeds_yaml
from fakes.lambda_runtime import REPO, Delivery, Invocation, LambdaService
from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway, reverse_shell_finding
from fakes.stack import CLUSTER_ACCESS, TEMPLATE, Stack, deploy

FINDINGS = REPO / "events" / "findings"
# The demo agents check for drift this often (a cluster's agent: --drift-interval, default 5 min).
DEMO_DRIFT_INTERVAL_S = 1.0
# the demo's config/channels.yaml entries
CHANNELS: tuple[dict[str, Any], ...] = (
    {"name": "staging", "action": "Post", "cilium_version": "1.17"},
    {"name": "prod", "action": "Sigkill", "cilium_version": "1.18", "promote": PROMOTE},
)


class DemoFailure(RuntimeError):
    """A step of the flow failed: ``step`` (as printed), the function, and the cause."""

    def __init__(self, step: str, cause: str) -> None:
        super().__init__(f"{step} failed: {cause}")
        self.step, self.cause = step, cause


@dataclass
class Cluster:
    """A cluster onboarded with deploy/cluster-access: its id, channel, role, and the sessions of its agent
    and of its node readers."""

    cluster_id: str
    channel: str
    role_arn: str
    session: dict[str, str]  # the agent's
    reader_session: dict[str, str]  # the node readers' (deploy/hits), of the cluster's read-only ReaderRole


@dataclass
class PipelineResult:
    stack: Stack
    lambdas: LambdaService
    output: Path
    clusters: dict[str, Cluster] = field(default_factory=dict)  # by channel
    steps: dict[str, Any] = field(default_factory=dict)
    agents: dict[str, AgentStatus] = field(default_factory=dict)
    drift: AgentStatus | None = None  # the staging agent's status after a drift repair
    approver: dict[str, str] = field(default_factory=dict)  # a session of the stack's ApproverRole
    hits: dict[str, Any] = field(default_factory=dict)  # what the export lines fed through the readers gave
    promotion: dict[str, Any] = field(default_factory=dict)  # prod's evidence after the soak and the approval
    protect: dict[str, Any] = field(default_factory=dict)  # a new detection's way to both clusters, in seconds

    def channel_dir(self, channel: str) -> Path:
        return self.output / channel

    @property
    def approver_env(self) -> dict[str, str]:
        """The environment of an approver's shell (``cdr-policy channel approve``): the ApproverRole's session."""
        return {**self.stack.server.env, **{k.upper(): v for k, v in self.approver.items()}}


@contextmanager
def quiet_logs(path: Path) -> Iterator[None]:
    """Send what the library logs and prints (the agents') to ``path``, so the console shows only the steps."""
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


def create_qualys_secret(server: MotoServer, name: str) -> None:
    """docs/deploy.md, step 2: the secret CdrFetch reads, made before the stack."""
    server.client("secretsmanager").create_secret(
        Name=name, SecretString=json.dumps({"username": DEMO_USERNAME, "password": DEMO_PASSWORD})
    )


def upload_config(
    stack: Stack, feeds: FeedServer, crds_dir: Path | None, channels: Sequence[Mapping[str, Any]] = CHANNELS
) -> int:
    """docs/deploy.md: the channels (the demo's unless given), the feeds and the clusters' CRDs in the
    state bucket."""
    s3 = stack.client("s3")
    bucket = stack.state_bucket
    s3.put_object(
        Bucket=bucket, Key="config/channels.yaml", Body=yaml.safe_dump({"channels": [dict(c) for c in channels]})
    )
    s3.put_object(Bucket=bucket, Key="config/feeds.yaml", Body=demo_feeds_yaml(feeds.url("/")))
    uploaded = 0
    if crds_dir is not None:
        for path in sorted(crds_dir.rglob("*.yaml")):
            if "examples" in path.parts:
                continue
            s3.put_object(Bucket=bucket, Key=f"crds/{path.relative_to(crds_dir).as_posix()}", Body=path.read_bytes())
            uploaded += 1
    return uploaded


def principal(server: MotoServer, name: str, role_arn: str) -> tuple[str, dict[str, str]]:
    """An identity of its own (an IAM user here; IRSA, Pod Identity or a team's role elsewhere) that may
    only assume ``role_arn``: its ARN and keys."""
    iam = server.client("iam")
    user = iam.create_user(UserName=name)["User"]
    may_assume = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role_arn}],
    }
    iam.put_user_policy(UserName=name, PolicyName="assume", PolicyDocument=json.dumps(may_assume))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return user["Arn"], {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


def assumed(server: MotoServer, keys: dict[str, str], role_arn: str, session_name: str) -> dict[str, str]:
    """A session of ``role_arn`` assumed with ``keys``, as credentials for a client."""
    c = server.client("sts", **keys).assume_role(RoleArn=role_arn, RoleSessionName=session_name)["Credentials"]
    return {
        "aws_access_key_id": c["AccessKeyId"],
        "aws_secret_access_key": c["SecretAccessKey"],
        "aws_session_token": c["SessionToken"],
    }


def onboard_cluster(stack: Stack, cluster_id: str, channel: str) -> Cluster:
    """docs/deploy.md, "Adding a cluster": the identities of the cluster's agent and node readers (each may only
    assume its role), the cluster's deploy/cluster-access stack, and their sessions."""
    server, environment = stack.server, stack.parameters["Environment"]
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/cdr-policy-{environment}-cluster-{cluster_id}"
    reader_role = f"arn:aws:iam::{ACCOUNT}:role/cdr-policy-{environment}-reader-{cluster_id}"
    # IAM users are the account's, not the stack's: named by the environment as the roles are
    agent_arn, agent_keys = principal(server, f"{environment}-{cluster_id}-agent", role_arn)
    reader_arn, reader_keys = principal(server, f"{environment}-{cluster_id}-reader", reader_role)
    parameters = {"Environment": environment, "DistributionBucket": stack.dist_bucket, "ClusterId": cluster_id}
    parameters |= {"Channel": channel, "AgentRoleArn": agent_arn, "ReaderPrincipalArn": reader_arn}
    access = deploy(
        server, name=f"cdr-policy-{environment}-cluster-{cluster_id}", template=CLUSTER_ACCESS, parameters=parameters
    )
    assert (access.outputs["ClusterRoleArn"], access.outputs["ReaderRoleArn"]) == (role_arn, reader_role)
    return Cluster(
        cluster_id,
        channel,
        role_arn,
        assumed(server, agent_keys, role_arn, cluster_id),
        assumed(server, reader_keys, reader_role, cluster_id),
    )


def run_pipeline(
    server: MotoServer,
    output: Path,
    *,
    say: Callable[[str], None] | None = None,
    crds_dir: Path | None = None,
    environment: str = "demo",
    template: Path = TEMPLATE,
    time_to_protect: bool = False,
) -> PipelineResult:
    """Deploy and run everything once; the agents write into ``output/<channel>``. ``say`` gets one line
    per step (default: this process's standard output). ``template``: the stack's template (a changed
    copy shows what a changed role does). Raises DemoFailure when a function fails."""
    console = sys.stdout
    say = say or (lambda line: print(line, file=console, flush=True))
    with (
        FakeQualysGateway(FINDINGS, rebase_to=utcnow(), tls=server.tls.server_context()) as gateway,
        FeedServer(root=DEMO_FEEDS_DIR) as feeds,
    ):
        say(
            f"AWS: moto at {server.url}, every request checked against IAM"
            if server.enforcing
            else f"AWS: moto at {server.url}"
        )
        say(f"Qualys gateway (fake): {gateway.url}   feeds: {feeds.url('/')}")
        from fakes.stack import load_template

        secret = str(load_template(template)["Parameters"]["QualysSecretName"]["Default"])
        create_qualys_secret(server, secret)
        # The security team's principal, which may approve a held bundle through the stack's ApproverRole.
        approver_role = f"arn:aws:iam::{ACCOUNT}:role/cdr-policy-{environment}-approver"
        approver_arn, approver_keys = principal(server, f"{environment}-security-team", approver_role)
        parameters = {"Environment": environment, "QualysGatewayUrl": gateway.url, "ApproverPrincipalArn": approver_arn}
        stack = deploy(server, name=f"cdr-policy-{environment}", template=template, parameters=parameters)
        functions = sorted(stack.of_type("AWS::Lambda::Function").values())
        say(
            f"Secret {secret} made, then {template.name} deployed: stack {stack.name}, {len(stack.resources)} resources"
        )
        say(f"      functions {', '.join(functions)}")
        say(f"      state s3://{stack.state_bucket}, dist s3://{stack.dist_bucket}")
        crds = upload_config(stack, feeds, crds_dir)
        say(
            f"Configured channels {', '.join(c['name'] + ' (' + c['action'] + ')' for c in CHANNELS)}; "
            + (f"{crds} CRD files uploaded for schema checks" if crds else "no CRDs given: checklist only")
        )
        clusters = {c["name"]: onboard_cluster(stack, f"{environment}-{c['name']}", c["name"]) for c in CHANNELS}
        say(f"Onboarded clusters {', '.join(c.cluster_id for c in clusters.values())} (deploy/cluster-access)")
        lambdas = LambdaService(stack, output / "lambda.log")
        say(f"Function logs and metrics (as CloudWatch would get them): {lambdas.log}")
        result = PipelineResult(stack=stack, lambdas=lambdas, output=output, clusters=clusters)
        result.approver = assumed(server, approver_keys, approver_role, "security-team")
        result.steps = _run_functions(result, say)
        with quiet_logs(output / "agents.log"):
            result.agents, result.drift = _run_agents(result, say)
            result.promotion = run_promotion(result, say)
            result.hits = run_hits(result, demo_agents(result), say)
            if time_to_protect:  # last: it publishes a new generation to both channels
                result.protect = _time_to_protect(result, gateway, say)
        for bucket, folder in ((stack.state_bucket, "state"), (stack.dist_bucket, "dist")):
            _mirror(S3Store(stack.client("s3"), bucket), LocalStore(output / folder))
        say(f"Buckets copied to {output / 'state'} and {output / 'dist'} (for the fleet commands after the run)")
    return result


def _mirror(bucket: S3Store, folder: LocalStore) -> None:
    for key in bucket.list(""):
        folder.put(key, bucket.get(key).data)


def _checked(step: str, invocations: list[Invocation]) -> Any:
    """The one invocation's response, or DemoFailure with its cause."""
    for invocation in invocations:
        if not invocation.ok:
            raise DemoFailure(step, f"{invocation.function}: {invocation.error}")
    return invocations[-1].response if invocations else None


def _run_functions(result: PipelineResult, say: Callable[[str], None]) -> dict[str, Any]:
    lambdas = result.lambdas
    steps: dict[str, Any] = {}

    say("")
    rule = lambdas.schedule_of("CdrFetchFunction")
    say(f"[1/7] CdrFetch (EventBridge rule {rule})")
    steps["cdr_fetch"] = _checked("[1/7] CdrFetch", lambdas.fire(rule))
    fetched = CdrRunSummary.from_json(steps["cdr_fetch"])
    ind = fetched.indicators
    say(
        f"      findings fetched {fetched.fetched}, unique {fetched.unique}, duplicates "
        f"{fetched.duplicates}, malformed {fetched.malformed_count}; indicators: {ind['ips']} IPs, "
        f"{ind['domains']} domains, {ind['ports']} ports"
    )

    rule = lambdas.schedule_of("FeedSyncFunction")
    say(f"[2/7] FeedSync (EventBridge rule {rule})")
    steps["feed_sync"] = _checked("[2/7] FeedSync", lambdas.fire(rule))
    for name, feed in FeedSyncSummary.from_json(steps["feed_sync"]).feeds.items():
        say(f"      {name:<20} {feed.status:<8} {feed.entries:>6} entries")

    say("[3/7] Render (RenderQueue <- the state bucket's S3 notifications for indicators/ and config/)")
    delivery = _polled(lambdas, "[3/7] Render", "RenderFunction", steps)
    say(f"      {delivery.messages} notification(s) in {delivery.batches} batch(es), {delivery.failed} failed")
    state = S3Store(result.stack.client("s3"), result.stack.state_bucket)
    for channel in CHANNELS:
        say(f"      channel {channel['name']:<8} bundle {(latest_render(state, channel['name']) or '-')[:16]}")

    say("[4/7] Publish (PublishQueue)")
    delivery = _polled(lambdas, "[4/7] Publish", "PublishFunction", steps)
    say(f"      {delivery.messages} publish request(s), {delivery.failed} failed")
    dist = S3Store(result.stack.client("s3"), result.stack.dist_bucket)
    for channel in CHANNELS:
        manifest, _ = read_manifest(dist, layout.channel_manifest_key(channel["name"]))
        say(
            f"      channels/{manifest.channel}/manifest.json: bundle {manifest.digest[:16]}, "
            f"{len(manifest.files)} files, "
            f"signed with {manifest.signature.algorithm if manifest.signature else '-'}, expires {manifest.expires_at}"
        )
    return steps


def render_again(result: PipelineResult, step: str) -> None:
    """The stack's scheduled re-render (RenderRefreshRule's event on RenderQueue), then Render and
    Publish through their event source mappings; DemoFailure when either fails."""
    lambdas = result.lambdas
    lambdas.fire("RenderRefreshRule")
    for logical in ("RenderFunction", "PublishFunction"):
        delivery = lambdas.poll(logical)
        _checked(step, delivery.invocations)
        if delivery.failed:
            raise DemoFailure(step, f"{logical}: {delivery.error}")


def _polled(lambdas: LambdaService, step: str, logical: str, steps: dict[str, Any]) -> Delivery:
    """The function's event source mappings, polled once; its counts in ``steps`` under its step's name."""
    delivery = lambdas.poll(logical)
    name = step.split()[1].lower()
    steps[name] = {"messages": delivery.messages, "batches": delivery.batches, "failed": delivery.failed}
    _checked(step, delivery.invocations)
    return delivery


def demo_agents(result: PipelineResult) -> dict[str, Agent]:
    """One sync agent per channel, with its cluster's session, applying into ``output/<channel>``. The
    public key is the signing key's, exported by the operator (docs/deploy.md: aws kms get-public-key)."""
    stack = result.stack
    public_pem = KmsSigner(stack.client("kms"), stack.signing_key_arn).public_key_pem()
    return {
        channel: Agent(
            S3Store(stack.server.client("s3", **cluster.session), stack.dist_bucket),
            channel=channel,
            cluster_id=cluster.cluster_id,
            verifier=Verifier.from_public_pem(public_pem),
            applier=DirectoryApplier(result.output / channel),
            state_dir=result.output / ".agent-state" / channel,
            drift_interval_s=DEMO_DRIFT_INTERVAL_S,
        )
        for channel, cluster in result.clusters.items()
    }


def _run_agents(result: PipelineResult, say: Callable[[str], None]) -> tuple[dict[str, AgentStatus], AgentStatus]:
    say("[5/7] Sync agents (one per cluster, with its cluster's role: poll, verify, apply, report status)")
    statuses = {}
    agents = demo_agents(result)
    for channel, agent in agents.items():
        status = agent.sync_once()
        statuses[channel] = status
        cluster = result.clusters[channel].cluster_id
        say(f"      {channel:<8} {status.last_poll.result}: {status.last_poll.detail}")
        say(
            f"               objects in {result.channel_dir(channel)}; status at s3://{result.stack.dist_bucket}/status/{cluster}.json"
        )
    return statuses, _show_drift_repair(agents["staging"], result.channel_dir("staging"), say)


PROTECT_ADDRESS = "45.153.161.1"  # a reverse shell's destination no sample finding names


def _time_to_protect(result: PipelineResult, gateway: FakeQualysGateway, say: Callable[[str], None]) -> dict[str, Any]:
    """A new detection appears at the gateway; the stack's triggers at once (CdrFetch's rule, then each
    queue), then the agents of the channels that ship a change at once poll: seconds from the detection
    to those agents enforcing it. prod promotes from staging: it takes the address after staging's soak."""
    lambdas, agents = result.lambdas, demo_agents(result)
    t0 = gateway.publish([reverse_shell_finding(PROTECT_ADDRESS, utcnow())])
    marks: dict[str, float] = {}
    stages: tuple[tuple[str, Callable[[], list[Invocation]]], ...] = (
        ("fetch", lambda: lambdas.fire(lambdas.schedule_of("CdrFetchFunction"))),
        ("render", lambda: lambdas.poll("RenderFunction").invocations),
        ("publish", lambda: lambdas.poll("PublishFunction").invocations),
    )
    for stage, run in stages:
        _checked(f"time to protect: {stage}", run())
        marks[stage] = time.time()
    immediate = {str(c["name"]) for c in CHANNELS if "promote" not in c}
    for channel, agent in agents.items():
        if channel not in immediate:
            continue
        status = agent.sync_once()
        blocked = any(PROTECT_ADDRESS in p.read_text() for p in result.channel_dir(channel).glob("*.yaml"))
        if status.last_poll.result != "applied" or not blocked:
            raise DemoFailure("time to protect", f"the {channel} agent does not enforce {PROTECT_ADDRESS}")
    marks["agents"] = time.time()
    seconds = {"total": marks["agents"] - t0}
    previous = t0
    for stage, at in marks.items():
        seconds[stage], previous = at - previous, at
    say(
        f"Time to protect: a reverse shell to {PROTECT_ADDRESS} appears at the gateway; the "
        f"{', '.join(sorted(immediate))} agent enforces it {seconds['total']:.1f} s later (fetch "
        f"{seconds['fetch']:.1f}, render {seconds['render']:.1f}, publish {seconds['publish']:.1f}, "
        f"agents {seconds['agents']:.1f} s)"
    )
    say(
        "      prod takes it once staging has watched it for prod's soak (promotion); the demo runs each "
        "trigger at once, a deployment adds the wait for CdrFetch's schedule, "
        "the batching windows and the agents' poll (docs/time-to-protect.md: make bench (g))"
    )
    return seconds


def _show_drift_repair(agent: Agent, folder: Path, say: Callable[[str], None]) -> AgentStatus:
    """Delete one object the agent applied, as someone editing the cluster by hand would; one drift
    interval later the agent's unchanged poll puts it back and reports the drift."""
    victim = sorted(folder.glob("tracingpolicy-*.yaml"))[0]
    victim.unlink()
    say(f"      drift: deleted {victim.name} by hand; the agent compares every {DEMO_DRIFT_INTERVAL_S:g}s")
    time.sleep(DEMO_DRIFT_INTERVAL_S)
    status = agent.sync_once()
    say(f"      staging  {status.last_poll.result}: {status.last_poll.detail}")
    say(f"               {victim.name} is back: {victim.exists()}")
    return status

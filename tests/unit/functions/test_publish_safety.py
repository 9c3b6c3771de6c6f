"""Publish through the real handler (``functions/publish/app.py``), deployed from template.yaml on a moto
server that enforces IAM and run under its own role: one writer per channel and never backwards, the
change budget protecting enforcement, history only after the manifest."""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass
from datetime import timedelta

import pytest

from cdr_policy import jsonio, layout
from cdr_policy.bundle.signing import KmsSigner
from cdr_policy.settings import Settings
from cdr_policy.stages.publish import ChannelMoved, publish_bundle
from cdr_policy.storage import S3Store
from cdr_policy.timeutil import utcnow
from tests.fakes.aws import moto_server
from tests.fakes.lambda_runtime import LambdaService
from tests.fakes.stack import Stack, deploy
from tests.unit.bundle.factory import behaviour_policy, files_of, ips, network_bundle, render

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")
_stacks = itertools.count()


@pytest.fixture(scope="module")
def server():
    with moto_server() as running:
        yield running


@dataclass
class Deployed:
    stack: Stack
    lambdas: LambdaService


@pytest.fixture
def stack(server, tmp_path) -> Deployed:
    """A stack of its own for each test (its own buckets, table and key)."""
    environment = f"safety{next(_stacks)}"
    deployed = deploy(server, name=f"cdr-policy-{environment}", parameters={"Environment": environment})
    return Deployed(deployed, LambdaService(deployed, tmp_path / "lambda.log"))


def stores(stack: Deployed) -> tuple[S3Store, S3Store]:
    s3 = stack.stack.client("s3")
    return S3Store(s3, stack.stack.state_bucket), S3Store(s3, stack.stack.dist_bucket)


def rendered(stack, files, channel="prod") -> str:
    """Put a bundle in the state bucket as Render does, as the channel's latest render."""
    state, _ = stores(stack)
    now = utcnow()
    digest = render(state, files, channel=channel, created=now)
    state.put(layout.latest_render_key(channel), jsonio.dumps({"digest": digest, "rendered_at": now.isoformat()}))
    return digest


def invoke(stack: Deployed, channel: str, digest: str) -> dict:
    """Publish's handler, under its role, with the SQS event of one publish request."""
    queue = stack.stack.outputs["PublishQueueUrl"].rsplit("/", 1)[1]
    event = {
        "Records": [
            {
                "messageId": f"m-{digest[:8]}",
                "receiptHandle": "rh",
                "body": json.dumps({"channel": channel, "digest": digest}),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}",
                "awsRegion": "us-east-1",
            }
        ]
    }
    invocation = stack.lambdas.invoke("PublishFunction", event)
    assert invocation.error is None, invocation.error
    return invocation.response


def current(stack, channel="prod") -> dict:
    _, dist = stores(stack)
    return jsonio.loads(dist.get(layout.channel_manifest_key(channel)).data)


BEHAVIOURS = files_of({"b1.yaml": behaviour_policy("cloud_credentials"), "b2.yaml": behaviour_policy("crypto_mining")})


def test_a_bundle_dropping_a_behaviour_policy_is_held_until_approved(stack):
    first = rendered(stack, {**network_bundle(ips(0, 90), tag="a"), **BEHAVIOURS})
    assert invoke(stack, "prod", first) == {"batchItemFailures": []}
    assert (current(stack)["digest"], current(stack)["generation"]) == (first, 1)
    # 2 of 180 prefixes change, but the crypto-mining behaviour policy is gone
    dropped = rendered(
        stack, {**network_bundle(ips(1, 90), tag="b"), **files_of({"b1.yaml": behaviour_policy("cloud_credentials")})}
    )

    assert invoke(stack, "prod", dropped) == {"batchItemFailures": []}
    assert current(stack)["digest"] == first

    state, _ = stores(stack)
    state.put(f"approvals/prod/{dropped}", b"")
    # (the handler remembers the held result for its idempotency window: call the stage it runs)
    summary = _publish_stage(stack, "prod", dropped)
    assert summary["status"] == "published"
    manifest = current(stack)
    assert (manifest["digest"], manifest["generation"]) == (dropped, 2)
    assert manifest["approval"]["previous_digest"] == first


def _publish_stage(stack: Deployed, channel: str, digest: str) -> dict:
    """Publish's stage with the function's settings and role (what the handler runs for one request)."""
    from cdr_policy.wiring import cloud

    with stack.lambdas.running_as("PublishFunction") as env:
        return cloud.publish(Settings.from_env(env), channel=channel, digest=digest)


def test_an_empty_bundle_over_a_small_channel_is_held(stack):
    first = rendered(stack, network_bundle(ips(0, 3)))
    invoke(stack, "prod", first)
    empty = rendered(stack, {})

    assert _publish_stage(stack, "prod", empty)["status"] == "held"
    assert current(stack)["digest"] == first
    assert stores(stack)[1].list(layout.history_prefix("prod"))[-1].endswith(f"-{first}.json")


def test_two_concurrent_publishes_never_move_the_channel_backwards(stack):
    """Both read generation 1; the first to write gets generation 2; the other's conditional write
    (If-Match on the manifest it read) fails and overwrites nothing. Retried, it becomes generation 3."""
    state, dist = stores(stack)
    signer = KmsSigner(stack.stack.client("kms"), stack.stack.signing_key_arn)
    now = utcnow()
    a = render(state, network_bundle(ips(0, 10), tag="a"), created=now)
    publish_bundle(state, dist, channel="prod", digest=a, signer=signer, now=now, change_budget_percent=100)
    b = render(state, network_bundle(ips(0, 11), tag="b"), created=now)
    c = render(state, network_bundle(ips(0, 12), tag="c"), created=now)
    both_read = threading.Barrier(2, timeout=30)
    first_done = threading.Event()
    outcome: dict[str, object] = {}

    class Racing(S3Store):
        def __init__(self, name: str) -> None:
            super().__init__(stack.stack.client("s3"), stack.stack.dist_bucket)
            self.name = name

        def put_if(self, key, data, etag, content_type="application/octet-stream"):
            both_read.wait()
            if self.name == "second":
                first_done.wait(30)
            try:
                return super().put_if(key, data, etag, content_type)
            finally:
                if self.name == "first":
                    first_done.set()

    def run(name: str, digest: str) -> None:
        try:
            outcome[name] = publish_bundle(
                state,
                Racing(name),
                channel="prod",
                digest=digest,
                signer=signer,
                now=now + timedelta(minutes=1),
                change_budget_percent=100,
            )
        except ChannelMoved as exc:
            outcome[name] = exc

    threads = [threading.Thread(target=run, args=("first", c)), threading.Thread(target=run, args=("second", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert outcome["first"].generation == 2
    assert isinstance(outcome["second"], ChannelMoved)
    assert (current(stack)["digest"], current(stack)["generation"]) == (c, 2)
    history = [jsonio.loads(dist.get(k).data) for k in dist.list(layout.history_prefix("prod"))]
    assert sorted(h["generation"] for h in history) == [1, 2]  # the loser left no history entry

    retried = publish_bundle(
        state,
        dist,
        channel="prod",
        digest=b,
        signer=signer,
        now=now + timedelta(minutes=2),
        change_budget_percent=100,
    )
    assert retried.generation == 3 and current(stack)["generation"] == 3


def test_publish_refuses_what_the_channel_settings_forbid(stack):
    """Someone who can write the state bucket plants a bundle for an audit channel whose objects kill,
    and one blocking the channel's own pod range: Publish signs neither."""
    state, _ = stores(stack)
    state.put(
        "config/channels.yaml",
        b"channels:\n  - {name: prod, action: Post, protected_cidrs: ['45.0.0.0/16']}\n",
    )
    killing = network_bundle(ips(300_000, 10), tag="k")  # 45.4.x.x: outside the protected range
    killing["cdr-dynamic-blocklist.yaml"] = killing["cdr-dynamic-blocklist.yaml"].replace(
        b"- action: Post\n        rateLimit: 1m", b"- action: Sigkill"
    )
    summary = _publish_stage(stack, "prod", rendered(stack, killing))
    assert summary["status"] == "refused"
    assert summary["errors"] == [
        "cdr-dynamic-blocklist.yaml, document 1 at spec.kprobes[0].selectors[0].matchActions[0]: "
        "an audit channel's policies never kill or override [grammar.action]"
    ]

    own_range = rendered(stack, network_bundle(ips(0, 10), tag="p"))  # 45.0.0.x: the channel's pods
    summary = _publish_stage(stack, "prod", own_range)
    assert summary["status"] == "refused"
    assert any("protected range of channel prod" in e for e in summary["errors"])
    assert stores(stack)[1].list(layout.channel_manifest_key("prod")) == []

"""Publish through the real handler (``functions/publish/app.py``) and boto3 over HTTP to a moto server:
one writer per channel and never backwards, the change budget protecting enforcement, history only
after the manifest."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from cdr_policy import jsonio, layout
from cdr_policy.bundle.approvals import grant
from cdr_policy.bundle.manifest import Settings
from cdr_policy.bundle.signing import KmsSigner
from cdr_policy.documents import channels_from_store
from cdr_policy.settings import get_settings
from cdr_policy.stages.publish import ChannelMoved, PublishResult, publish_bundle
from cdr_policy.storage import S3Store, StoredObject
from cdr_policy.timeutil import utcnow
from fakes.lambda_runtime import LambdaContext, load_handler
from tests.unit.bundle.factory import behaviour_policy, files_of, ips, network_bundle, render
from tests.unit.functions.conftest import HandlerStack

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")


def stores(stack: HandlerStack) -> tuple[S3Store, S3Store]:
    s3 = stack.client("s3")
    return S3Store(s3, stack.state_bucket), S3Store(s3, stack.dist_bucket)


def rendered(stack: HandlerStack, files: dict[str, bytes], channel: str = "prod") -> str:
    """Put a bundle in the state bucket as Render does, as the channel's latest render, rendered with
    the channel's settings as the bucket configures them now."""
    state, _ = stores(stack)
    now = utcnow()
    configured = next(c for c in channels_from_store(state, refresh_hours=6) if c.name == channel)
    settings = Settings(action=configured.action, mode="monitor", channel_digest=configured.fingerprint())
    digest = render(state, files, channel=channel, created=now, settings=settings)
    state.put(layout.latest_render_key(channel), jsonio.dumps({"digest": digest, "rendered_at": now.isoformat()}))
    return digest


def invoke(channel: str, digest: str, approval: str | None = None) -> dict[str, Any]:
    body = {"channel": channel, "digest": digest} | ({"approval": approval} if approval else {})
    event = {
        "Records": [
            {
                "messageId": f"m-{digest[:8]}",
                "receiptHandle": "rh",
                "body": json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:cdr-policy-safety-publish",
                "awsRegion": "us-east-1",
            }
        ]
    }
    value: dict[str, Any] = load_handler("publish").lambda_handler(event, LambdaContext("publish"))
    return value


def current(stack: HandlerStack, channel: str = "prod") -> dict[str, Any]:
    _, dist = stores(stack)
    value: dict[str, Any] = jsonio.loads(dist.get(layout.channel_manifest_key(channel)).data)
    return value


BEHAVIOURS = files_of({"b1.yaml": behaviour_policy("cloud_credentials"), "b2.yaml": behaviour_policy("crypto_mining")})


def test_a_bundle_dropping_a_behaviour_policy_is_held_until_approved(stack: HandlerStack) -> None:
    first = rendered(stack, {**network_bundle(ips(0, 90), tag="a"), **BEHAVIOURS})
    assert invoke("prod", first) == {"batchItemFailures": []}
    assert (current(stack)["digest"], current(stack)["generation"]) == (first, 1)
    # 2 of 180 prefixes change, but the crypto-mining behaviour policy is gone
    dropped = rendered(
        stack, {**network_bundle(ips(1, 90), tag="b"), **files_of({"b1.yaml": behaviour_policy("cloud_credentials")})}
    )

    assert invoke("prod", dropped) == {"batchItemFailures": []}
    assert current(stack)["digest"] == first

    # The approver grants it with the approvers' KMS key and asks Publish again (channel approve
    # --publish-queue): a new request for the idempotency store, never answered with the held one.
    state, _ = stores(stack)
    grant_key, fingerprint = approve_as(stack, state, dropped, previous=first)
    assert invoke("prod", dropped) == {"batchItemFailures": []}
    assert current(stack)["digest"] == first  # Render's request again: still the held answer
    assert invoke("prod", dropped, approval=fingerprint) == {"batchItemFailures": []}
    manifest = current(stack)
    assert (manifest["digest"], manifest["generation"]) == (dropped, 2)
    assert manifest["approval"]["previous_digest"] == first and manifest["approval"]["grant"] == fingerprint
    assert state.list(grant_key) == []  # used once


def approve_as(
    stack: HandlerStack, state: S3Store, digest: str, *, previous: str | None, key_id: str | None = None
) -> tuple[str, str]:
    """Sign a grant with the approvers' KMS key (or ``key_id``) and put it where Publish looks."""
    signer = KmsSigner(stack.approver_client("kms"), key_id or stack.approver_key_id)
    signed = grant("prod", digest, previous, signer=signer, now=utcnow(), reason="reviewed by the on-call")
    # only the ApproverRole may write under approvals/ (the state bucket's policy)
    S3Store(stack.approver_client("s3"), stack.state_bucket).put(signed.key, jsonio.dumps_pretty(signed.to_json()))
    return signed.key, signed.fingerprint()


def _publish_stage(channel: str, digest: str) -> dict[str, Any]:
    from cdr_policy.lambda_events import PublishRequest
    from cdr_policy.wiring import cloud

    return cloud.publish(get_settings(), PublishRequest(channel, digest))


def test_an_empty_bundle_over_a_small_channel_is_held(stack: HandlerStack) -> None:
    first = rendered(stack, network_bundle(ips(0, 3)))
    invoke("prod", first)
    empty = rendered(stack, {})

    assert _publish_stage("prod", empty)["status"] == "held"
    assert current(stack)["digest"] == first
    assert stores(stack)[1].list(layout.history_prefix("prod"))[-1].endswith(f"-{first}.json")


def test_two_concurrent_publishes_never_move_the_channel_backwards(stack: HandlerStack) -> None:
    """Both read generation 1; the first to write gets generation 2; the other's conditional write
    (If-Match on the manifest it read) fails and overwrites nothing. Retried, it becomes generation 3."""
    state, dist = stores(stack)
    signer = KmsSigner(stack.client("kms"), stack.stack.signing_key_arn)
    now = utcnow()
    a = render(state, network_bundle(ips(0, 10), tag="a"), created=now)
    publish_bundle(state, dist, channel="prod", digest=a, signer=signer, now=now, change_budget_percent=100)
    b = render(state, network_bundle(ips(0, 11), tag="b"), created=now)
    c = render(state, network_bundle(ips(0, 12), tag="c"), created=now)
    both_read = threading.Barrier(2, timeout=30)
    first_done = threading.Event()
    outcome: dict[str, PublishResult | ChannelMoved] = {}

    class Racing(S3Store):
        def __init__(self, name: str) -> None:
            super().__init__(stack.client("s3"), stack.dist_bucket)
            self.name = name

        def put_if(
            self, key: str, data: bytes, etag: str | None, content_type: str = "application/octet-stream"
        ) -> str:
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

    first = outcome["first"]
    assert isinstance(first, PublishResult) and first.generation == 2
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


def test_publish_refuses_what_the_channel_settings_forbid(stack: HandlerStack) -> None:
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
    summary = _publish_stage("prod", rendered(stack, killing))
    assert summary["status"] == "refused"
    assert summary["errors"] == [
        "cdr-dynamic-blocklist.yaml, document 1 at spec.kprobes[0].selectors[0].matchActions[0]: "
        "an audit channel's policies never kill or override [grammar.action]"
    ]

    own_range = rendered(stack, network_bundle(ips(0, 10), tag="p"))  # 45.0.0.x: the channel's pods
    summary = _publish_stage("prod", own_range)
    assert summary["status"] == "refused"
    assert any("protected range of channel prod" in e for e in summary["errors"])
    assert stores(stack)[1].list(layout.channel_manifest_key("prod")) == []


# -- issue 27: errors are retried, decisions are cached, Publish signs what the channel says now ------


def test_a_store_failure_is_retried_never_remembered_as_held(
    stack: HandlerStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the current bundle fails once (a 503): the record fails and is not stored by the
    idempotency layer, so the redelivery after recovery publishes instead of answering "held"."""
    from cdr_policy.errors import StorageError

    first = rendered(stack, network_bundle(ips(0, 90), tag="a"))
    assert invoke("prod", first) == {"batchItemFailures": []}
    second = rendered(stack, network_bundle(ips(1, 90), tag="b"))
    real_get = S3Store.get
    failures = {"left": 1}

    def flaky(self: S3Store, key: str, *, max_bytes: int | None = None) -> StoredObject:
        if f"/bundles/{first}/" in key and failures["left"]:
            failures["left"] -= 1
            raise StorageError(f"s3://{self.bucket}/{key}: SlowDown: 503")
        return real_get(self, key, max_bytes=max_bytes)

    monkeypatch.setattr(S3Store, "get", flaky)
    with pytest.raises(BatchProcessingError, match="All records failed"):  # the whole batch: Lambda backs off
        invoke("prod", second)
    assert current(stack)["digest"] == first

    assert invoke("prod", second) == {"batchItemFailures": []}  # the redelivery
    assert current(stack)["digest"] == second


def test_a_bundle_rendered_with_settings_the_channel_no_longer_has_is_not_signed(stack: HandlerStack) -> None:
    """Staging rendered under Sigkill, then set back to Post: the retried request for the Sigkill render
    is superseded, never signed with the action the channel no longer has."""
    state, _ = stores(stack)
    state.put("config/channels.yaml", b"channels:\n  - {name: staging, action: Sigkill}\n")
    killing = rendered(stack, network_bundle(ips(0, 10), tag="k", channel="staging"), channel="staging")
    state.put("config/channels.yaml", b"channels:\n  - {name: staging, action: Post}\n")

    summary = _publish_stage("staging", killing)

    assert summary["status"] == "superseded"
    assert summary["reason"].startswith("rendered with settings the channel no longer has")
    assert stores(stack)[1].list(layout.channel_manifest_key("staging")) == []


def test_a_missing_history_entry_is_written_by_any_later_publish(stack: HandlerStack) -> None:
    """Publish died between the manifest and its history entry; the next request is for a newer bundle:
    the entry of the manifest it replaces is written too, so every generation can be rolled back to."""
    _, dist = stores(stack)
    first = rendered(stack, network_bundle(ips(0, 90), tag="a"))
    invoke("prod", first)
    [entry] = dist.list(layout.history_prefix("prod"))
    dist.delete(entry)
    second = rendered(stack, network_bundle(ips(1, 90), tag="b"))

    invoke("prod", second)

    history = dist.list(layout.history_prefix("prod"))
    assert len(history) == 2 and entry in history

"""Render handler: S3 notifications through SQS, partial batch failures, one render per batch."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from cdr_policy.errors import PolicyCheckError
from cdr_policy.lambda_events import EventError
from fakes.lambda_runtime import LambdaContext
from tests.unit.functions.conftest import StageRecorder

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")

BUCKET = "cdr-policy-dev-state-123456789012-us-east-1"
RENDERED = [{"channel": "prod", "digest": "b" * 64, "changed": True}]


def notification(key: str, bucket: str = BUCKET) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 10}},
                }
            ]
        }
    )


def failures(response: dict[str, Any]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


def test_sample_batch_renders_once_with_every_key(
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
) -> None:
    # Given the sample event: two notifications (a feed and the CDR set)
    render = fake_stage("render", result=RENDERED)
    app = load_handler("render")

    # When the batch is handled
    response = app.lambda_handler(load_event("sqs_s3_notification.json"), lambda_context)

    # Then nothing failed and the stage ran once, with both keys, sorted
    assert response == {"batchItemFailures": []}
    assert len(render.calls) == 1
    assert render.calls[0]["trigger_keys"] == [
        "indicators/cdr/current.json",
        "indicators/feeds/tor-exit.json",
    ]
    assert render.calls[0]["settings"].state_bucket == BUCKET


def test_test_event_is_skipped_without_rendering(
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    render = fake_stage("render", result=RENDERED)
    app = load_handler("render")

    response = app.lambda_handler(load_event("sqs_s3_test_event.json"), lambda_context)

    assert response == {"batchItemFailures": []}
    assert render.calls == []
    skipped = [line for line in log_lines() if line["message"] == "skipping s3:TestEvent"]
    assert [line["sqs_message_id"] for line in skipped] == ["6f1c9a52-2a4b-4d3e-9c1e-8f7a5b3d2c04"]


def test_url_encoded_key_is_decoded(
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
) -> None:
    render = fake_stage("render", result=RENDERED)
    app = load_handler("render")

    response = app.lambda_handler(load_event("sqs_s3_notification_encoded_key.json"), lambda_context)

    assert response == {"batchItemFailures": []}
    assert render.calls[0]["trigger_keys"] == ["indicators/feeds/tor exit+nodes!.json"]


def test_bad_records_fail_alone_and_the_rest_renders_once(
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
    sqs_event: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a batch mixing good notifications, a test event, a duplicate and four bad records
    render = fake_stage("render", result=RENDERED)
    app = load_handler("render")
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET})
    event = sqs_event(
        notification("indicators/feeds/spamhaus-drop.json"),  # m0 good
        "this is not json",  # m1
        notification("bundles/abc/bundle.json"),  # m2 outside indicators/
        test_event,  # m3 skipped, not a failure
        notification("indicators/feeds/other.json", bucket="someone-elses-bucket"),  # m4
        notification("indicators/feeds/spamhaus-drop.json"),  # m5 duplicate key
        json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]}),  # m6 no bucket/key
        notification("indicators/cdr/current.json"),  # m7 good
    )

    # When the batch is handled
    response = app.lambda_handler(event, lambda_context)

    # Then exactly the bad records are reported, and the render ran once with the distinct good keys
    assert failures(response) == ["m1", "m2", "m4", "m6"]
    assert len(render.calls) == 1
    assert render.calls[0]["trigger_keys"] == [
        "indicators/cdr/current.json",
        "indicators/feeds/spamhaus-drop.json",
    ]
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [doc["RejectedNotifications"] for doc in emf if "RejectedNotifications" in doc] == [[4.0]]


def test_an_all_bad_batch_is_reported_not_raised(
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
    sqs_event: Callable[..., dict[str, Any]],
) -> None:
    render = fake_stage("render", result=RENDERED)
    app = load_handler("render")

    response = app.lambda_handler(sqs_event("{", notification("state/cdr/checkpoint.json")), lambda_context)

    assert failures(response) == ["m0", "m1"]
    assert render.calls == []


def test_a_failing_render_fails_the_whole_invocation(
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
) -> None:
    render = fake_stage("render", error=PolicyCheckError("TracingPolicy x: unknown field spec.foo"))
    app = load_handler("render")

    with pytest.raises(PolicyCheckError, match="unknown field"):
        app.lambda_handler(load_event("sqs_s3_notification.json"), lambda_context)
    assert len(render.calls) == 1


def test_the_processor_state_does_not_leak_between_invocations(
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
    sqs_event: Callable[..., dict[str, Any]],
) -> None:
    render = fake_stage("render", result=RENDERED)
    app = load_handler("render")

    first = app.lambda_handler(sqs_event("{"), lambda_context)
    second = app.lambda_handler(load_event("sqs_s3_notification.json"), lambda_context)

    assert failures(first) == ["m0"]
    assert second == {"batchItemFailures": []}
    assert len(render.calls) == 1


@pytest.mark.parametrize("event", [{}, {"Records": None}, {"Records": [{"eventSource": "aws:kinesis"}]}])
def test_not_an_sqs_event(
    event: dict[str, Any],
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
) -> None:
    render = fake_stage("render", result=RENDERED)
    app = load_handler("render")

    with pytest.raises(EventError):
        app.lambda_handler(event, lambda_context)
    assert render.calls == []


def test_missing_state_bucket_fails_the_cold_start(
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cdr_policy.errors import ConfigError

    monkeypatch.delenv("STATE_BUCKET")
    render = fake_stage("render", result=RENDERED)
    app = load_handler("render")

    with pytest.raises(ConfigError, match="^environment variable STATE_BUCKET is required$"):
        app.lambda_handler(load_event("sqs_s3_notification.json"), lambda_context)
    assert render.calls == []


def test_real_s3_notifications_through_sqs(
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
) -> None:
    """The glue as S3 (moto) produces it: the configuration's s3:TestEvent first, URL-encoded keys,
    the prefix filter; the received messages are fed to the handler as Lambda would."""
    import boto3
    from moto import mock_aws

    render = fake_stage("render", result=RENDERED)
    with mock_aws():
        # Given the state bucket notifying the render queue for indicators/ (as in the template)
        s3 = boto3.client("s3", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName="cdr-policy-dev-render")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_notification_configuration(
            Bucket=BUCKET,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": queue_arn,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "indicators/"}]}},
                    }
                ]
            },
        )
        # When indicator sets (one with a space, '+' and '!' in its name) and a bundle are written
        for key in (
            "indicators/feeds/tor-exit.json",
            "indicators/feeds/tor exit+nodes!.json",
            "bundles/x/bundle.json",
        ):
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
        messages = []
        while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
            messages.extend(batch)
        event = {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": {},
                    "messageAttributes": {},
                    "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": queue_arn,
                    "awsRegion": "us-east-1",
                }
                for m in messages
            ]
        }
        app = load_handler("render")
        response = app.lambda_handler(event, lambda_context)

    # Then the test event and both indicator keys arrived, decoded; the bundle key was filtered out
    assert len(messages) == 3
    assert json.loads(messages[0]["Body"])["Event"] == "s3:TestEvent"
    assert response == {"batchItemFailures": []}
    assert render.calls[0]["trigger_keys"] == [
        "indicators/feeds/tor exit+nodes!.json",
        "indicators/feeds/tor-exit.json",
    ]


def test_an_invocation_that_renders_nothing_still_reports_a_metric(
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
) -> None:
    """Issue 21 point 11: a second ``make demo`` against the same endpoint printed Powertools'
    "No application metrics to publish" warning (a Render invocation with nothing to render)."""
    fake_stage("render", result=RENDERED)
    app = load_handler("render")
    event = load_event("sqs_s3_test_event.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # cold, then warm
            assert app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
    assert not [w for w in caught if "No application metrics" in str(w.message)]

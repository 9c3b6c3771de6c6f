"""Publish handler: validated requests, one idempotent publish per (channel, digest) with a real
(moto) DynamoDB idempotency table, failing records reported alone."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from types import ModuleType
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from moto import mock_aws
from mypy_boto3_dynamodb import DynamoDBClient

from cdr_policy.errors import BundleError, ConfigError
from cdr_policy.lambda_events import PublishRequest
from cdr_policy.settings import Settings
from cdr_policy.wiring import cloud
from fakes.lambda_runtime import LambdaContext

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")

SAMPLE_DIGEST = "3f79bb7b435b05321651daefd374cdc681dc06faa65e374e38337b88ca046dea"


def request(channel: str, digest: str = SAMPLE_DIGEST) -> str:
    return json.dumps({"channel": channel, "digest": digest})


def failures(response: Mapping[str, Any]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


class FakePublish:
    """Stands in for ``cloud.publish``; fails for the channels in ``failing``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.failing: set[str] = set()

    def __call__(self, settings: Settings, request: PublishRequest, *, now: datetime | None = None) -> dict[str, Any]:
        assert settings.dist_bucket == "cdr-policy-dev-dist-123456789012-us-east-1"
        self.calls.append((request.channel, request.digest))
        if request.channel in self.failing:
            raise BundleError(f"bundle {request.digest} for {request.channel}: KMS could not sign")
        return {"channel": request.channel, "digest": request.digest, "published": True}


@pytest.fixture
def dynamodb(handler_env: dict[str, str]) -> Iterator[DynamoDBClient]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=handler_env["IDEMPOTENCY_TABLE"],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        client.update_time_to_live(
            TableName=handler_env["IDEMPOTENCY_TABLE"],
            TimeToLiveSpecification={"AttributeName": "expiration", "Enabled": True},
        )
        yield client


@pytest.fixture
def publish(monkeypatch: pytest.MonkeyPatch) -> FakePublish:
    fake = FakePublish()
    monkeypatch.setattr(cloud, "publish", fake)
    return fake


def stored(dynamodb: DynamoDBClient, table: str) -> list[dict[str, Any]]:
    return dynamodb.scan(TableName=table)["Items"]


def test_sample_batch_publishes_each_channel(
    dynamodb: DynamoDBClient,
    publish: FakePublish,
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    lambda_context: LambdaContext,
) -> None:
    app = load_handler("publish")

    response = app.lambda_handler(load_event("sqs_publish.json"), lambda_context)

    assert response == {"batchItemFailures": []}
    assert publish.calls == [("staging", SAMPLE_DIGEST), ("prod", SAMPLE_DIGEST)]
    items = stored(dynamodb, handler_env["IDEMPOTENCY_TABLE"])
    assert sorted(item["status"]["S"] for item in items) == ["COMPLETED", "COMPLETED"]
    assert {json.loads(item["data"]["S"])["channel"] for item in items} == {"staging", "prod"}


def test_redelivered_batch_does_not_publish_again(
    dynamodb: DynamoDBClient,
    publish: FakePublish,
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    lambda_context: LambdaContext,
) -> None:
    # Given a batch that was published once
    app = load_handler("publish")
    event = load_event("sqs_publish.json")
    app.lambda_handler(event, lambda_context)

    # When SQS delivers the same messages again
    response = app.lambda_handler(event, lambda_context)

    # Then each (channel, digest) was published exactly once and the redelivery succeeds
    assert response == {"batchItemFailures": []}
    assert publish.calls == [("staging", SAMPLE_DIGEST), ("prod", SAMPLE_DIGEST)]


def test_duplicate_messages_in_one_batch_publish_once(
    dynamodb: DynamoDBClient,
    publish: FakePublish,
    load_handler: Callable[[str], ModuleType],
    lambda_context: LambdaContext,
    sqs_event: Callable[..., dict[str, Any]],
) -> None:
    app = load_handler("publish")

    response = app.lambda_handler(
        sqs_event(request("prod"), request("prod"), queue="cdr-policy-dev-publish"), lambda_context
    )

    assert response == {"batchItemFailures": []}
    assert publish.calls == [("prod", SAMPLE_DIGEST)]


def test_key_is_channel_and_digest(
    dynamodb: DynamoDBClient,
    publish: FakePublish,
    load_handler: Callable[[str], ModuleType],
    lambda_context: LambdaContext,
    sqs_event: Callable[..., dict[str, Any]],
) -> None:
    app = load_handler("publish")
    other = "c" * 64

    app.lambda_handler(sqs_event(request("prod"), request("staging")), lambda_context)
    app.lambda_handler(sqs_event(request("prod", other), request("staging")), lambda_context)

    assert publish.calls == [("prod", SAMPLE_DIGEST), ("staging", SAMPLE_DIGEST), ("prod", other)]


def test_a_failing_record_is_reported_alone_and_retried(
    dynamodb: DynamoDBClient,
    publish: FakePublish,
    load_handler: Callable[[str], ModuleType],
    lambda_context: LambdaContext,
    sqs_event: Callable[..., dict[str, Any]],
) -> None:
    # Given publishing to prod fails, staging works
    app = load_handler("publish")
    publish.failing = {"prod"}
    event = sqs_event(request("staging"), request("prod"))

    # When the batch is handled, only the prod record is reported
    assert failures(app.lambda_handler(event, lambda_context)) == ["m1"]

    # And when SQS redelivers it after the cause is gone, it is published (the failed attempt left
    # no idempotency record behind) while staging is not published twice
    publish.failing = set()
    assert app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
    assert publish.calls == [("staging", SAMPLE_DIGEST), ("prod", SAMPLE_DIGEST), ("prod", SAMPLE_DIGEST)]


def test_an_all_failed_batch_fails_the_invocation(
    dynamodb: DynamoDBClient,
    publish: FakePublish,
    load_handler: Callable[[str], ModuleType],
    lambda_context: LambdaContext,
    sqs_event: Callable[..., dict[str, Any]],
) -> None:
    app = load_handler("publish")
    publish.failing = {"prod", "staging"}

    with pytest.raises(BatchProcessingError, match="All records failed"):
        app.lambda_handler(sqs_event(request("prod"), request("staging")), lambda_context)
    assert len(publish.calls) == 2


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        json.dumps({"channel": "Prod", "digest": SAMPLE_DIGEST}),
        json.dumps({"channel": "prod", "digest": SAMPLE_DIGEST[:63]}),
        json.dumps({"channel": "prod", "digest": SAMPLE_DIGEST.upper()}),
        json.dumps({"channel": "prod"}),
        json.dumps({"channel": "prod", "digest": SAMPLE_DIGEST, "extra": 1}),
    ],
)
def test_malformed_requests_fail_alone(
    body: str,
    dynamodb: DynamoDBClient,
    publish: FakePublish,
    load_handler: Callable[[str], ModuleType],
    lambda_context: LambdaContext,
    sqs_event: Callable[..., dict[str, Any]],
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    app = load_handler("publish")

    response = app.lambda_handler(sqs_event(body, request("staging")), lambda_context)

    assert failures(response) == ["m0"]
    assert publish.calls == [("staging", SAMPLE_DIGEST)]
    warnings = [line for line in log_lines() if line["level"] == "WARNING"]
    assert [line["sqs_message_id"] for line in warnings] == ["m0"]
    assert "publish request" in warnings[0]["exception"]


def test_missing_idempotency_table_setting(
    handler_env: dict[str, str],
    publish: FakePublish,
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IDEMPOTENCY_TABLE")
    app = load_handler("publish")

    with pytest.raises(
        ConfigError, match="^environment variable IDEMPOTENCY_TABLE is required by the Publish function$"
    ):
        app.lambda_handler(load_event("sqs_publish.json"), lambda_context)
    assert publish.calls == []

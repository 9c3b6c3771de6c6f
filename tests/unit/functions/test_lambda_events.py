"""The event parsing the handlers rely on (``cdr_policy.lambda_events``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from cdr_policy.lambda_events import (
    DEADLINE_MARGIN_S,
    REFRESH_TRIGGER,
    EventError,
    PublishRequest,
    deadline_seconds,
    parse_s3_notification,
    require_scheduled_event,
    sqs_records,
)
from cdr_policy.layout import is_channel_name
from cdr_policy.settings import Settings

BUCKET = "cdr-policy-dev-state-123456789012-us-east-1"
DIGEST = "a" * 64


def notification(*keys: str, bucket: str = BUCKET, event_name: str = "ObjectCreated:Put") -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": event_name,
                    "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1}},
                }
                for key in keys
            ]
        }
    )


class Remaining:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def get_remaining_time_in_millis(self) -> int:
        return self.ms


def test_sample_notifications_parse(load_event: Callable[[str], dict[str, Any]]) -> None:
    bodies = [r["body"] for r in load_event("sqs_s3_notification.json")["Records"]]
    parsed = [parse_s3_notification(body, bucket=BUCKET) for body in bodies]
    assert [p.keys for p in parsed] == [("indicators/feeds/tor-exit.json",), ("indicators/cdr/current.json",)]
    assert not any(p.test_event for p in parsed)


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("indicators/feeds/tor+exit.json", "indicators/feeds/tor exit.json"),
        ("indicators/feeds/a%2Bb.json", "indicators/feeds/a+b.json"),
        ("indicators/feeds/key%21.json", "indicators/feeds/key!.json"),
        ("indicators/feeds/caf%C3%A9.json", "indicators/feeds/café.json"),
        ("indicators/feeds/plain-name_1.json", "indicators/feeds/plain-name_1.json"),
    ],
)
def test_keys_are_url_decoded(raw: str, decoded: str) -> None:
    assert parse_s3_notification(notification(raw), bucket=BUCKET).keys == (decoded,)


def test_test_event_has_no_keys(load_event: Callable[[str], dict[str, Any]]) -> None:
    body = load_event("sqs_s3_test_event.json")["Records"][0]["body"]
    result = parse_s3_notification(body, bucket=BUCKET)
    assert result.test_event and result.keys == ()


def test_the_scheduled_rerender_is_a_refresh_trigger(load_event: Callable[[str], dict[str, Any]]) -> None:
    body = load_event("sqs_render_refresh.json")["Records"][0]["body"]
    result = parse_s3_notification(body, bucket=BUCKET)
    assert not result.test_event and result.keys == (REFRESH_TRIGGER,)


def test_an_event_from_another_source_is_not_a_refresh() -> None:
    body = json.dumps({"detail-type": "Scheduled Event", "source": "custom.app", "detail": {}})
    with pytest.raises(EventError, match="no 'Records'"):
        parse_s3_notification(body, bucket=BUCKET)


def test_object_removed_is_a_trigger_too() -> None:
    body = notification("indicators/feeds/old.json", event_name="ObjectRemoved:Delete")
    assert parse_s3_notification(body, bucket=BUCKET).keys == ("indicators/feeds/old.json",)


def test_several_records_keep_their_order() -> None:
    body = notification("indicators/b.json", "indicators/a.json")
    assert parse_s3_notification(body, bucket=BUCKET).keys == ("indicators/b.json", "indicators/a.json")


def test_a_changed_operator_document_is_a_render_trigger() -> None:
    body = notification("config/channels.yaml")
    assert parse_s3_notification(body, bucket=BUCKET).keys == ("config/channels.yaml",)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "S3 notification is not valid JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ("{}", "has no 'Records' and is not an s3:TestEvent"),
        (json.dumps({"Records": []}), "has no 'Records'"),
        (json.dumps({"Records": ["x"]}), "record 0 is not an S3 event"),
        (json.dumps({"Records": [{"eventSource": "aws:sqs"}]}), "record 0 is not an S3 event"),
        (
            notification("indicators/x.json", event_name="ObjectRestore:Post"),
            "unexpected eventName 'ObjectRestore:Post'",
        ),
        (notification("indicators/x.json", bucket="someone-else"), "from bucket 'someone-else'"),
        (
            notification("bundles/abc/bundle.json"),
            "key 'bundles/abc/bundle.json' is not under 'indicators/' or 'config/'",
        ),
        (notification("indicators%2Fx.json".replace("indicators", "state")), "is not under 'indicators/' or 'config/'"),
        (notification(""), "has no object key"),
        (
            json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": "x"}]}),
            "from bucket None",
        ),
    ],
)
def test_malformed_notifications_are_refused(body: str, message: str) -> None:
    with pytest.raises(EventError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_s3_notification(body, bucket=BUCKET)


def test_publish_request_round_trip_is_canonical() -> None:
    request = PublishRequest(channel="prod", digest=DIGEST)
    assert request.to_message() == '{"channel":"prod","digest":"' + DIGEST + '"}'
    assert PublishRequest.from_message(request.to_message()) == request
    assert PublishRequest.from_message(json.dumps({"digest": DIGEST, "channel": "prod"})) == request


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{", "publish request is not valid JSON"),
        ('"prod"', "publish request must be a JSON object, got str"),
        (json.dumps({"channel": "prod"}), "missing field\\(s\\) digest"),
        (json.dumps({"channel": "prod", "digest": DIGEST, "force": True}), "1 unknown field\\(s\\)"),
        (json.dumps({"channel": "prod", "digest": DIGEST, "approval": "x"}), "the approval is not 64 lower-case hex"),
        (json.dumps({"channel": "Prod", "digest": DIGEST}), "the channel is not a channel name"),
        (json.dumps({"channel": "prod\n", "digest": DIGEST}), "is not a channel name"),
        (json.dumps({"channel": "a" * 33, "digest": DIGEST}), "is not a channel name"),
        (json.dumps({"channel": 7, "digest": DIGEST}), "the channel is not a channel name"),
        (json.dumps({"channel": "prod", "digest": DIGEST[:-1]}), "is not 64 lower-case hex"),
        (json.dumps({"channel": "prod", "digest": DIGEST.upper()}), "is not 64 lower-case hex"),
        (json.dumps({"channel": "prod", "digest": "g" * 64}), "is not 64 lower-case hex"),
        (json.dumps({"channel": "prod", "digest": None}), "the digest is not 64 lower-case hex"),
    ],
)
def test_malformed_publish_requests_are_refused(body: str, message: str) -> None:
    with pytest.raises(EventError, match=message):
        PublishRequest.from_message(body)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("prod", True), ("staging-eu-1", True), ("a", True), ("a" * 32, True), ("a" * 33, False),
     ("-prod", False), ("prod-", False), ("Prod", False), ("prod\n", False), ("", False), (None, False)],
)  # fmt: skip
def test_channel_names(name: str | None, ok: bool) -> None:
    assert is_channel_name(name) is ok


def test_schedule_events(load_event: Callable[[str], dict[str, Any]]) -> None:
    require_scheduled_event(load_event("schedule_cdr_fetch.json"))
    require_scheduled_event(load_event("schedule_feed_sync.json"))
    with pytest.raises(EventError, match="got detail-type='Object Created' source='aws.s3'"):
        require_scheduled_event({"detail-type": "Object Created", "source": "aws.s3"})
    with pytest.raises(EventError, match="got NoneType"):
        require_scheduled_event(None)


@pytest.mark.parametrize(
    ("remaining_ms", "expected"),
    [(300_000, 300 - DEADLINE_MARGIN_S), (900_000, 900 - DEADLINE_MARGIN_S), (30_000, 15.0), (0, 0.0)],
)
def test_deadline_keeps_a_margin(remaining_ms: int, expected: float) -> None:
    assert deadline_seconds(Remaining(remaining_ms)) == pytest.approx(expected)


def test_sqs_records(load_event: Callable[[str], dict[str, Any]]) -> None:
    event = load_event("sqs_publish.json")
    assert sqs_records(event) == event["Records"]
    assert sqs_records({"Records": []}) == []
    for bad in ({}, {"Records": "x"}, None, {"Records": [{"eventSource": "aws:kinesis"}]}, {"Records": [1]}):
        with pytest.raises(EventError):
            sqs_records(bad)


def test_idempotency_table_setting() -> None:
    env = {"STATE_BUCKET": "s", "DIST_BUCKET": "d"}
    assert Settings.from_env(env).idempotency_table is None
    assert Settings.from_env({**env, "IDEMPOTENCY_TABLE": " t "}).idempotency_table == "t"

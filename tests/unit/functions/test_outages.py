"""Bad data and partial failures through the real handlers, boto3 over HTTP to a moto server: one
unreadable indicator set, a changed or wrong ``config/channels.yaml``, Secrets Manager down, and
the AWS SDK's wire logging at DEBUG."""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import unquote_plus

import pytest
import yaml

from cdr_policy import jsonio, layout
from cdr_policy.errors import ConfigError
from cdr_policy.feeds.persist import dump_set
from cdr_policy.settings import get_settings
from cdr_policy.storage import S3Store
from cdr_policy.timeutil import iso, utcnow
from cdr_policy.wiring import cloud
from fakes.feeds import DEMO_FEEDS_DIR, FeedServer, demo_feeds_yaml
from fakes.lambda_runtime import REPO, LambdaContext, drain_queue, load_handler
from tests.unit.functions.conftest import HandlerStack
from tests.unit.policy.factories import behaviour, cdr_set, compact, indicator

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")

T0 = utcnow().replace(microsecond=0)
ABUSE_SECRET = "cdr-policy/abuseipdb"
ABUSE_KEY = "abuse-key-must-never-be-logged"


class Clock:
    """The time the stages see: T0 until ``at(hours)`` moves it."""

    now = T0

    def at(self, hours: float) -> None:
        self.now = T0 + timedelta(hours=hours)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The time the stages see (``wiring.cloud.utcnow``); ``clock.at(hours)`` moves it."""
    c = Clock()
    monkeypatch.setattr(cloud, "utcnow", lambda: c.now)
    return c


def state(stack: HandlerStack) -> S3Store:
    return S3Store(stack.client("s3"), stack.state_bucket)


def dist(stack: HandlerStack) -> S3Store:
    return S3Store(stack.client("s3"), stack.dist_bucket)


def put_channels(stack: HandlerStack, *channels: dict[str, Any]) -> None:
    state(stack).put(layout.CHANNELS_CONFIG, yaml.safe_dump({"channels": list(channels)}).encode())


def put_sets(stack: HandlerStack) -> None:
    expires = iso(T0 + timedelta(days=7))
    seen = iso(T0 - timedelta(hours=1))
    store = state(stack)
    cdr = cdr_set(
        [indicator("45.33.32.0/24", last_seen=seen, expires_at=expires)],
        [behaviour("crypto_mining", first_seen=seen, expires_at=expires)],
    )
    store.put(layout.CDR_SET, jsonio.dumps(cdr.to_dict()))
    for name, values in (("tor", ["185.220.0.0/24", "2a0b:f4c0::/32"]), ("c2", ["91.92.93.94/32"])):
        store.put(layout.feed_set_key(name), dump_set(compact(name, values, expires_at=expires)))


def deliver(stack: HandlerStack, function: str) -> dict[str, int]:
    """Drain the function's queue into its handler, as its event source mapping would."""
    handler = load_handler(function)
    return drain_queue(
        stack.client("sqs"),
        stack.render_queue_url if function == "render" else stack.publish_queue_url,
        lambda event: handler.lambda_handler(event, LambdaContext(function)),
        region=stack.region,
    )


def forget_idempotency(stack: HandlerStack) -> None:
    """What the idempotency records' 10 minutes do over hours of (monkeypatched) time."""
    ddb = stack.client("dynamodb")
    for item in ddb.scan(TableName=stack.idempotency_table)["Items"]:
        ddb.delete_item(TableName=stack.idempotency_table, Key={"id": item["id"]})


def manifest(stack: HandlerStack, channel: str) -> dict[str, Any]:
    value: dict[str, Any] = jsonio.loads(dist(stack).get(layout.channel_manifest_key(channel)).data)
    return value


def latest(stack: HandlerStack, channel: str) -> str:
    return str(jsonio.loads(state(stack).get(layout.latest_render_key(channel)).data)["digest"])


def test_one_unreadable_set_neither_stops_the_renders_nor_lets_a_bundle_expire(
    stack: HandlerStack, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    put_channels(stack, {"name": "prod", "action": "Sigkill"})
    put_sets(stack)
    assert deliver(stack, "render")["failed"] == 0 and deliver(stack, "publish")["failed"] == 0
    first = manifest(stack, "prod")
    assert first["expires_at"] == iso(T0 + timedelta(hours=72))

    key = layout.feed_set_key("tor")
    store = state(stack)
    store.put(key, store.get(key).data[:-40])  # truncated by 40 bytes; the notification is queued
    clock.at(40)  # past half the bundle's lifetime: the next publish re-signs it
    forget_idempotency(stack)
    capsys.readouterr()
    assert deliver(stack, "render") == {"messages": 1, "batches": 1, "failed": 0}
    assert deliver(stack, "publish")["failed"] == 0

    again = manifest(stack, "prod")
    assert again["digest"] == first["digest"]  # rendered from the last good copy: the same policies
    assert again["generation"] == first["generation"] + 1
    assert again["expires_at"] == iso(T0 + timedelta(hours=40 + 72))
    report = jsonio.loads(store.get(layout.bundle_file_key(latest(stack, "prod"), "report.json")).data)
    [bad] = report["unreadable_sets"]
    assert bad["key"] == key and bad["kept"]["copied_at"] == iso(T0)
    assert report["feeds"]["tor"]["entries"] == 2
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    named = [m for m in emitted if m.get("set") == key]
    assert named and named[0]["IndicatorSetUnreadable"] in (1.0, [1.0])
    assert any(m.get("IndicatorSetUnreadable") in (1.0, [1.0]) and "set" not in m for m in emitted)  # the alarm's


def test_a_changed_channels_yaml_renders_at_once(stack: HandlerStack, clock: Clock) -> None:
    put_sets(stack)
    put_channels(stack, {"name": "staging", "action": "Post"})
    deliver(stack, "render")
    before = latest(stack, "staging")
    assert jsonio.loads(state(stack).get(layout.bundle_manifest_key(before)).data)["settings"]["action"] == "Post"

    put_channels(stack, {"name": "staging", "action": "Sigkill"})  # nothing else changes
    messages = stack.client("sqs").receive_message(QueueUrl=stack.render_queue_url, VisibilityTimeout=0)["Messages"]
    assert [unquote_plus(r["s3"]["object"]["key"]) for m in messages for r in json.loads(m["Body"])["Records"]] == [
        layout.CHANNELS_CONFIG
    ]
    assert deliver(stack, "render") == {"messages": 1, "batches": 1, "failed": 0}
    after = latest(stack, "staging")
    assert after != before
    assert jsonio.loads(state(stack).get(layout.bundle_manifest_key(after)).data)["settings"]["action"] == "Sigkill"


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        (10**9, r"bundle_ttl_hours is at most 720 \(30 days\), got 1000000000"),
        (6, r"bundle_ttl_hours 6 is less than twice the re-render period \(6 h\)"),
    ],
)
def test_a_bundle_lifetime_out_of_bounds_is_a_configuration_error_of_render(
    stack: HandlerStack, clock: Clock, ttl: int, message: str
) -> None:
    put_sets(stack)
    put_channels(stack, {"name": "prod", "bundle_ttl_hours": ttl})
    with pytest.raises(ConfigError, match=message):
        deliver(stack, "render")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_secrets_manager_down_leaves_the_reputation_check_out_and_refreshes_the_feeds(
    stack: HandlerStack,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    monkeypatch.setenv("ABUSEIPDB_SECRET_NAME", ABUSE_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{_dead_port()}")
    get_settings.cache_clear()
    with FeedServer(root=DEMO_FEEDS_DIR) as feeds:
        state(stack).put(layout.FEEDS_CONFIG, demo_feeds_yaml(feeds.url("/")).encode())
        event = json.loads((REPO / "events" / "schedule_feed_sync.json").read_text())
        summary = load_handler("feed_sync").lambda_handler(event, LambdaContext("feed-sync"))
    assert {f["status"] for name, f in summary["feeds"].items() if name != "abuseipdb"} == {"ok"}
    assert summary["feeds"]["abuseipdb"]["status"] == "stale"
    assert len([k for k in summary["written"] if k.startswith(layout.INDICATORS_FEEDS)]) == 5
    reputation = jsonio.loads(state(stack).get(layout.reputation_set_key("abuseipdb")).data)
    assert reputation["error"].startswith("its API key could not be read from Secrets Manager (")
    [line] = [x for x in log_lines() if x["message"] == "AbuseIPDB reputation not checked this run"]
    assert line["level"] == "WARNING" and line["secret"] == ABUSE_SECRET
    assert line["reason"].startswith("its API key could not be read from Secrets Manager (")
    out = capsys.readouterr().out
    assert any(json.loads(x).get("ReputationKeyUnavailable") in (1.0, [1.0]) for x in out.splitlines() if '"_aws"' in x)


def test_a_secret_that_is_not_there_is_a_configuration_error(
    stack: HandlerStack, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ABUSEIPDB_SECRET_NAME", "cdr-policy/no-such-secret")
    get_settings.cache_clear()
    event = json.loads((REPO / "events" / "schedule_feed_sync.json").read_text())
    with pytest.raises(
        ConfigError, match=r"secret cdr-policy/no-such-secret cannot be read \(ResourceNotFoundException\)"
    ):
        load_handler("feed_sync").lambda_handler(event, LambdaContext("feed-sync"))


@pytest.fixture
def abuse_secret(stack: HandlerStack, monkeypatch: pytest.MonkeyPatch) -> None:
    stack.client("secretsmanager").create_secret(Name=ABUSE_SECRET, SecretString=json.dumps({"api_key": ABUSE_KEY}))
    monkeypatch.setenv("ABUSEIPDB_SECRET_NAME", ABUSE_SECRET)
    get_settings.cache_clear()


@pytest.fixture
def lambda_runtime_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The Lambda runtime at log level DEBUG: the root logger takes every record (as the runtime's
    handler does with AWS_LAMBDA_LOG_LEVEL=DEBUG), and the functions log at DEBUG."""
    for name in ("AWS_LAMBDA_LOG_LEVEL", "POWERTOOLS_LOG_LEVEL", "LOG_LEVEL"):
        monkeypatch.setenv(name, "DEBUG")
    from cdr_policy.observability import logger

    root = logging.getLogger()
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    previous = (root.level, logger.log_level)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logger.setLevel("DEBUG")
    yield buffer
    root.removeHandler(handler)
    root.setLevel(previous[0])
    logger.setLevel(previous[1])


def test_no_request_body_or_auth_header_reaches_the_logs_at_debug(
    stack: HandlerStack,
    clock: Clock,
    abuse_secret: None,
    lambda_runtime_logging: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    put_sets(stack)
    marker = "45.33.32.0/24"  # in the bodies Render and Publish PUT to the buckets
    with FeedServer(root=DEMO_FEEDS_DIR) as feeds:
        state(stack).put(layout.FEEDS_CONFIG, demo_feeds_yaml(feeds.url("/")).encode())
        event = json.loads((REPO / "events" / "schedule_feed_sync.json").read_text())
        load_handler("feed_sync").lambda_handler(event, LambdaContext("feed-sync"))
    deliver(stack, "render")
    deliver(stack, "publish")
    captured = capsys.readouterr()
    logged = lambda_runtime_logging.getvalue() + captured.out + captured.err
    assert "feed accepted" in lambda_runtime_logging.getvalue()  # the runtime's handler does take the records
    assert state(stack).get(layout.bundle_file_key(latest(stack, "prod"), "report.json"))  # and bodies were sent
    for secret in (ABUSE_KEY, "Authorization", "AWS4-HMAC-SHA256", "X-Amz-Security-Token", "SecretString", marker):
        assert secret not in logged, secret

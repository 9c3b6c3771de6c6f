"""Fixtures for the handler tests: each ``functions/<name>/app.py`` loaded under a unique module name
(several ``app.py`` would clash in ``sys.modules``), the sample events in ``events/``, the settings
the template gives the functions, a recorder standing in for the stages (the integration test
runs the real ones), and template.yaml deployed on a moto server for the tests that run the real
stages behind the handlers."""

from __future__ import annotations

import io
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cdr_policy import aws
from cdr_policy.settings import get_settings
from cdr_policy.wiring import cloud
from fakes import lambda_runtime
from fakes.aws import ACCOUNT, REGION, MotoServer, moto_server
from fakes.stack import Stack, deploy

REPO = Path(__file__).resolve().parents[3]

# The names the template derives for Environment=dev in account 123456789012, us-east-1.
ENV = {
    "STATE_BUCKET": "cdr-policy-dev-state-123456789012-us-east-1",
    "DIST_BUCKET": "cdr-policy-dev-dist-123456789012-us-east-1",
    "PUBLISH_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/cdr-policy-dev-publish",
    "SIGNING_KEY_ID": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "IDEMPOTENCY_TABLE": "cdr-policy-dev-idempotency",
    "QUALYS_SECRET_NAME": "cdr-policy/dev/qualys",
    "QUALYS_PLATFORM": "US2",
}


@pytest.fixture(autouse=True)
def _clear_logger_state() -> Iterator[None]:
    """The handlers add the Lambda context and message ids to the shared logger's keys; keep them out of
    the tests that run afterwards."""
    from cdr_policy.observability import logger

    yield
    logger.clear_state()


@pytest.fixture
def handler_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The functions' environment; the settings cache is cleared before and after."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield dict(ENV)
    get_settings.cache_clear()


@pytest.fixture
def load_handler() -> Callable[[str], ModuleType]:
    """``load_handler("render")`` imports ``functions/render/app.py`` afresh, as Lambda would."""
    return lambda_runtime.load_handler


@pytest.fixture
def load_event() -> Callable[[str], dict[str, Any]]:
    def load(name: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads((REPO / "events" / name).read_text())
        return value

    return load


class StageRecorder:
    """Replaces one stage function: records each call, returns ``result`` or raises ``error``."""

    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.result = result
        self.error = error

    def __call__(self, settings: Any, **kwargs: Any) -> Any:
        self.calls.append({"settings": settings, **kwargs})
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def fake_stage(monkeypatch: pytest.MonkeyPatch) -> Callable[..., StageRecorder]:
    """``fake_stage("render", result=[...])`` replaces ``cdr_policy.wiring.cloud.render`` for one test."""

    def install(name: str, *, result: Any = None, error: Exception | None = None) -> StageRecorder:
        assert hasattr(cloud, name), name
        recorder = StageRecorder(result=result, error=error)
        monkeypatch.setattr(cloud, name, recorder)
        return recorder

    return install


def _sqs_event(*bodies: str, queue: str = "cdr-policy-dev-render") -> dict[str, Any]:
    messages = [
        {
            "MessageId": f"m{i}",
            "ReceiptHandle": f"rh{i}",
            "Body": body,
            "Attributes": {"ApproximateReceiveCount": "1"},
            "MD5OfBody": "",
        }
        for i, body in enumerate(bodies)
    ]
    return lambda_runtime.sqs_event(messages, f"arn:aws:sqs:us-east-1:123456789012:{queue}", "us-east-1")


@pytest.fixture
def sqs_event() -> Callable[..., dict[str, Any]]:
    """``sqs_event(body, body, ...)``: an SQS event with one record per body (message ids m0, m1, ...)."""
    return _sqs_event


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The shared logger's JSON lines of this test: ``log_lines()`` parses what was logged so far."""
    from cdr_policy.observability import logger

    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    handler.setStream(previous)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """One moto server per test module, in this process and without IAM checks (the functions' roles are
    tests/integration/test_roles.py's subject)."""
    with moto_server(enforce_iam=False) as server:
        yield server


@dataclass
class HandlerStack:
    """template.yaml deployed for the handler tests: where its resources are, and an approver's clients."""

    stack: Stack
    approver: dict[str, str]  # a session of the stack's ApproverRole

    region = REGION

    def client(self, service: str) -> Any:
        return self.stack.client(service)

    def approver_client(self, service: str) -> Any:
        return self.stack.server.client(service, **self.approver)

    @property
    def state_bucket(self) -> str:
        return self.stack.state_bucket

    @property
    def dist_bucket(self) -> str:
        return self.stack.dist_bucket

    @property
    def render_queue_url(self) -> str:
        return self.stack.outputs["RenderQueueUrl"]

    @property
    def publish_queue_url(self) -> str:
        return self.stack.outputs["PublishQueueUrl"]

    @property
    def idempotency_table(self) -> str:
        return self.stack.outputs["IdempotencyTableName"]

    @property
    def approver_key_id(self) -> str:
        return self.stack.outputs["ApproverKeyArn"]

    @property
    def signing_key_id(self) -> str:
        return self.stack.signing_key_arn


_stacks = itertools.count()


@pytest.fixture
def stack(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HandlerStack]:
    """A stack of its own per test (the administrator as its approver principal), and this process's
    environment the functions' deployed environments, merged (a test calls several handlers), with the
    administrator's keys."""
    from demo.runner import assumed
    from fakes.lambda_runtime import LambdaService

    environment = f"handlers{next(_stacks)}"
    admin = f"arn:aws:iam::{ACCOUNT}:user/admin"
    deployed = deploy(
        moto, name=f"cdr-policy-{environment}", parameters={"Environment": environment, "ApproverPrincipalArn": admin}
    )
    approver = assumed(moto, moto.admin, f"arn:aws:iam::{ACCOUNT}:role/cdr-policy-{environment}-approver", "approver")
    lambdas = LambdaService(deployed, tmp_path / "lambda.log")
    for function in lambdas.functions.values():
        for key, value in function.environment.items():
            monkeypatch.setenv(key, value)
    for key, value in moto.admin_env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    aws.reset()
    get_settings.cache_clear()
    yield HandlerStack(deployed, approver)
    aws.reset()
    get_settings.cache_clear()

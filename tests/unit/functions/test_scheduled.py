"""CdrFetch and FeedSync: EventBridge schedule in, one stage call with the time budget, summary out."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from cdr_policy.errors import ConfigError, QualysError
from cdr_policy.lambda_events import DEADLINE_MARGIN_S, EventError
from fakes.lambda_runtime import LambdaContext
from tests.unit.functions.conftest import StageRecorder

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")

SCHEDULED = [
    ("cdr_fetch", "cdr_fetch", "schedule_cdr_fetch.json"),
    ("feed_sync", "feed_sync", "schedule_feed_sync.json"),
]


@pytest.mark.parametrize(("function", "stage", "event_file"), SCHEDULED)
def test_schedule_calls_the_stage_once_and_returns_its_summary(
    function: str,
    stage: str,
    event_file: str,
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
) -> None:
    # Given a scheduled event and a stage that reports a summary
    summary = {"status": "ok", "stored": 3}
    recorder = fake_stage(stage, result=summary)
    app = load_handler(function)

    # When the handler runs
    result = app.lambda_handler(load_event(event_file), lambda_context)

    # Then the stage ran once, with the validated settings and the remaining time less the margin
    assert result == summary
    assert len(recorder.calls) == 1
    call = recorder.calls[0]
    assert call["settings"].state_bucket == handler_env["STATE_BUCKET"]
    assert call["settings"].dist_bucket == handler_env["DIST_BUCKET"]
    assert call["deadline_s"] == pytest.approx(300 - DEADLINE_MARGIN_S)
    assert "now" not in call


@pytest.mark.parametrize(("function", "stage", "event_file"), SCHEDULED)
@pytest.mark.parametrize(
    "event",
    [
        {"detail-type": "Object Created", "source": "aws.s3", "detail": {}},
        {"detail-type": "Scheduled Event", "source": "my.app", "detail": {}},
        {"Records": []},
        ["not", "an", "object"],
    ],
)
def test_anything_but_a_schedule_event_is_refused(
    function: str,
    stage: str,
    event_file: str,
    event: dict[str, Any] | list[str],
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
) -> None:
    recorder = fake_stage(stage, result={})
    app = load_handler(function)

    with pytest.raises(EventError, match="scheduled event"):
        app.lambda_handler(event, lambda_context)
    assert recorder.calls == []


@pytest.mark.parametrize(("function", "stage", "event_file"), SCHEDULED)
def test_a_failing_stage_fails_the_invocation(
    function: str,
    stage: str,
    event_file: str,
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
) -> None:
    fake_stage(stage, error=QualysError("gateway returned 503"))
    app = load_handler(function)

    with pytest.raises(QualysError, match="503"):
        app.lambda_handler(load_event(event_file), lambda_context)


@pytest.mark.parametrize(("function", "stage", "event_file"), SCHEDULED)
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STATE_BUCKET", "", "environment variable STATE_BUCKET is required"),
        ("DIST_BUCKET", "  ", "environment variable DIST_BUCKET is required"),
        ("LOOKBACK_HOURS", "24h", "LOOKBACK_HOURS='24h' is not an integer"),
        ("CHANGE_BUDGET_PERCENT", "0", "CHANGE_BUDGET_PERCENT=0 is outside 1..100"),
    ],
)
def test_invalid_settings_fail_before_the_stage_runs(
    function: str,
    stage: str,
    event_file: str,
    variable: str,
    value: str,
    message: str,
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(variable, value)
    recorder = fake_stage(stage, result={})
    app = load_handler(function)

    with pytest.raises(ConfigError) as excinfo:
        app.lambda_handler(load_event(event_file), lambda_context)
    assert str(excinfo.value) == message
    assert recorder.calls == []

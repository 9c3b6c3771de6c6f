"""HitsRollup: EventBridge schedule in, one stage call, summary out; anything else refused."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from cdr_policy.lambda_events import EventError
from fakes.lambda_runtime import LambdaContext
from tests.unit.functions.conftest import StageRecorder

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")


def test_schedule_calls_the_stage_once_and_returns_its_summary(
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    load_event: Callable[[str], dict[str, Any]],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
) -> None:
    recorder = fake_stage("hits_rollup", result={"hits": 3, "clusters": 2})
    result = load_handler("hits_rollup").lambda_handler(load_event("schedule_hits_rollup.json"), lambda_context)
    assert result == {"hits": 3, "clusters": 2}
    (call,) = recorder.calls
    assert call["settings"].state_bucket == handler_env["STATE_BUCKET"]
    assert call["settings"].dist_bucket == handler_env["DIST_BUCKET"]


def test_anything_but_a_schedule_event_is_refused(
    handler_env: dict[str, str],
    load_handler: Callable[[str], ModuleType],
    fake_stage: Callable[..., StageRecorder],
    lambda_context: LambdaContext,
) -> None:
    recorder = fake_stage("hits_rollup", result={})
    with pytest.raises(EventError, match="scheduled event"):
        load_handler("hits_rollup").lambda_handler({"Records": []}, lambda_context)
    assert recorder.calls == []

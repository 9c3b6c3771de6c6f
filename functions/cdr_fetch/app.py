"""CdrFetch (EventBridge schedule): pull new Qualys CDR findings into the state bucket.

Thin handler: validate the event, call ``wiring.cloud.cdr_fetch`` once with the invocation's time budget,
return its summary. Errors propagate: the run fails visibly (Errors alarm) and the checkpoint stays
where it was, so the next scheduled run picks up the same window.
"""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from cdr_policy.lambda_events import deadline_seconds, require_scheduled_event
from cdr_policy.observability import logger, metrics, tracer
from cdr_policy.settings import get_settings
from cdr_policy.wiring import cloud


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = get_settings()
    require_scheduled_event(event)
    summary = cloud.cdr_fetch(settings, deadline_s=deadline_seconds(context))
    logger.info("cdr fetch finished", extra={"summary": summary})
    return summary

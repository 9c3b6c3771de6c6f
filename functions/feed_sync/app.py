"""FeedSync (EventBridge schedule): refresh every threat-intel feed and the AbuseIPDB reputation.

Thin handler: validate the event, call ``wiring.cloud.feed_sync`` once with the invocation's time budget,
return its summary. A feed that fails its gate is reported in the summary by the stage (its last good
copy stays in force); only an error of the stage itself fails the invocation.
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
    summary = cloud.feed_sync(settings, deadline_s=deadline_seconds(context))
    logger.info("feed sync finished", extra={"summary": summary})
    return summary

"""HitsRollup (EventBridge schedule): what fired in the fleet, checked, for Render.

Thin handler: validate the event, call ``wiring.cloud.hits_rollup`` once, return its summary.
"""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from cdr_policy.lambda_events import require_scheduled_event
from cdr_policy.observability import logger, metrics, tracer
from cdr_policy.settings import get_settings
from cdr_policy.wiring import cloud


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = get_settings()
    require_scheduled_event(event)
    summary = cloud.hits_rollup(settings)
    logger.info("hits rollup finished", extra={"summary": summary})
    return summary

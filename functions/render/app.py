"""Render (RenderQueue: S3 notifications for ``indicators/`` and ``config/``, and the scheduled
re-render): render every channel's bundle.

Each SQS record carries one S3 event notification. Records are parsed one by one: an ``s3:TestEvent``
is skipped (and logged), a malformed record fails alone and is reported in ``batchItemFailures``.
Then ``wiring.cloud.render`` runs ONCE for the whole batch with every good key: a render always reads all
current indicator sets, so the queue's batching window is the debounce. Rendering is deterministic
and idempotent, so when it fails the invocation fails and SQS redelivers the whole batch.
"""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdr_policy.lambda_events import parse_s3_notification, sqs_records
from cdr_policy.observability import logger, metrics, tracer
from cdr_policy.settings import get_settings
from cdr_policy.wiring import cloud

# raise_on_entire_batch_failure=False, deliberately: a record fails here only when its body is not a
# usable notification, and no retry fixes that. Each such record is reported in batchItemFailures,
# reaches the DLQ after maxReceiveCount (DLQ alarm) and is counted below; raising for an all-bad batch
# would only add a function error, which makes Lambda scale down the queue's pollers and delays the
# good notifications queued behind the bad ones. A failing render is raised instead (see above).
# (logger: Powertools' Logger, which BatchProcessor types as a logging.Logger.)
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False, logger=logger)  # type: ignore[arg-type]


def record_handler(record: SQSRecord) -> tuple[str, ...]:
    logger.append_keys(sqs_message_id=record.message_id)
    notification = parse_s3_notification(record.body, bucket=get_settings().state_bucket)
    if notification.test_event:
        logger.info("skipping s3:TestEvent")
    return notification.keys


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    settings = get_settings()
    with processor(sqs_records(event), record_handler, lambda_context=context):
        outcomes = processor.process()
    logger.remove_keys(["sqs_message_id"])
    keys = sorted({key for status, result, _ in outcomes if status == "success" for key in result})
    # Every invocation reports one metric at least: a batch that renders nothing new would otherwise
    # flush none, and Powertools warns about it (a second `make demo` against the same endpoint).
    metrics.add_metric(name="RenderNotifications", unit=MetricUnit.Count, value=len(outcomes))
    rejected = len(processor.fail_messages)
    if rejected:
        metrics.add_metric(name="RejectedNotifications", unit=MetricUnit.Count, value=rejected)
    if keys:
        bundles = cloud.render(settings, trigger_keys=keys)
        logger.info("rendered", extra={"trigger_keys": keys, "bundles": bundles, "rejected_records": rejected})
    else:
        logger.info("nothing to render", extra={"records": len(outcomes), "rejected_records": rejected})
    return processor.response()

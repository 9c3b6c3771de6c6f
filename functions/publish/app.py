"""Publish (PublishQueue): check, sign and publish one rendered bundle to one channel per message.

Each record's body is a ``PublishRequest`` (``{"channel": ..., "digest": ...}``). Every record is
published on its own and idempotently: Powertools idempotency, keyed on channel + digest (+ the
approval of an approver's request, + the decisions of a promoting channel's render) in the
IDEMPOTENCY_TABLE, turns a duplicated or redelivered message into a no-op (no second signature),
while a failing record is reported in ``batchItemFailures`` and retried alone. Only decisions are
remembered: a failure of S3, KMS or the network raises, is not stored, and the record is retried;
an approver's request (with its grant's fingerprint) is a new key, so it is never answered with an
earlier "held".
"""

import functools
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdr_policy.errors import ConfigError
from cdr_policy.lambda_events import PublishRequest, sqs_records
from cdr_policy.observability import logger, metrics, tracer
from cdr_policy.settings import Settings, get_settings
from cdr_policy.wiring import cloud

# A completed (channel, digest) is remembered this long: long enough to absorb SQS duplicates and
# redeliveries, shorter than the default CdrFetch schedule (15 min), so that a channel whose inputs go
# back to an earlier bundle (A -> B -> A) publishes A again. (A failed publish leaves no record.)
IDEMPOTENCY_WINDOW_S = 600
idempotency_config = IdempotencyConfig(
    # an approver's request carries its grant: a new request, not the held answer again; a promoting
    # channel's render carries its decisions: each render's are judged again
    event_key_jmespath="[channel, digest, approval, decisions]",
    raise_on_no_idempotency_key=True,
    expires_after_seconds=IDEMPOTENCY_WINDOW_S,
)

# raise_on_entire_batch_failure=True (the default), deliberately: a record fails when the publish
# itself fails (KMS, S3, a bundle refused by the checks). When every record fails, the likely cause is
# a dependency outage; failing the invocation makes Lambda back off the queue's pollers instead of
# hammering KMS/S3, and the records are retried until they reach the DLQ (alarmed).
# (logger: Powertools' Logger, which BatchProcessor types as a logging.Logger.)
processor = BatchProcessor(event_type=EventType.SQS, logger=logger)  # type: ignore[arg-type]


def idempotency_table(settings: Settings) -> str:
    if not settings.idempotency_table:
        raise ConfigError("environment variable IDEMPOTENCY_TABLE is required by the Publish function")
    return settings.idempotency_table


@functools.lru_cache(maxsize=1)
def idempotent_publisher(table_name: str) -> Callable[..., dict[str, Any]]:
    """``publish(request=...)`` guarded by the idempotency table (built once per execution environment)."""

    def publish(request: dict[str, str | None]) -> dict[str, Any]:
        return cloud.publish(get_settings(), PublishRequest.from_dict(request))

    # Powertools types its decorator's result as Any: the guarded function keeps publish's signature
    guarded: Callable[..., dict[str, Any]] = idempotent_function(
        publish,
        data_keyword_argument="request",
        config=idempotency_config,
        persistence_store=DynamoDBPersistenceLayer(table_name=table_name),
    )
    return guarded


def record_handler(record: SQSRecord) -> dict[str, Any]:
    logger.remove_keys(["channel", "digest"])
    logger.append_keys(sqs_message_id=record.message_id)
    request = PublishRequest.from_message(record.body)
    logger.append_keys(channel=request.channel, digest=request.digest)
    summary = idempotent_publisher(idempotency_table(get_settings()))(request=request.to_dict())
    logger.info("publish request done", extra={"summary": summary})
    return summary


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    idempotency_table(get_settings())
    idempotency_config.register_lambda_context(context)
    with processor(sqs_records(event), record_handler, lambda_context=context):
        processor.process()
    logger.remove_keys(["sqs_message_id", "channel", "digest"])
    return processor.response()

"""Load the real Lambda handlers (``functions/<name>/app.py``) the way Lambda does, each under its
own module name (four files called ``app.py`` would clash in ``sys.modules``), and drive them with
real-shaped events: SQS batches built from messages received from a queue, deleted afterwards
unless the handler reported them in ``batchItemFailures`` (as Lambda's event source mapping does)."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = ("cdr_fetch", "feed_sync", "render", "publish", "hits_rollup")


def load_handler(name: str) -> ModuleType:
    """Import ``functions/<name>/app.py`` as module ``cdr_policy_function_<name>`` (fresh each call)."""
    if name not in FUNCTIONS:
        raise ValueError(f"unknown function {name!r}; one of {', '.join(FUNCTIONS)}")
    module_name = f"cdr_policy_function_{name}"
    spec = importlib.util.spec_from_file_location(module_name, REPO / "functions" / name / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


class LambdaContext:
    """The attributes Powertools and the handlers read from a Lambda context."""

    def __init__(self, function_name: str, timeout_s: int = 300) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 512
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._timeout_ms = timeout_s * 1000

    def get_remaining_time_in_millis(self) -> int:
        return self._timeout_ms


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """The event Lambda's SQS event source mapping delivers for ``messages`` (from ReceiveMessage)."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": m.get("MessageAttributes", {}),
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


def drain_queue(
    sqs: Any,
    queue_url: str,
    invoke: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    region: str,
    batch_size: int = 10,
) -> dict[str, int]:
    """Deliver every message of the queue to ``invoke`` in batches, like an event source mapping with
    ReportBatchItemFailures. Failed messages stay in the queue (made visible again). Returns counts."""
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    counts = {"messages": 0, "batches": 0, "failed": 0}
    while True:
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=batch_size, AttributeNames=["All"], WaitTimeSeconds=0
        ).get("Messages", [])
        if not messages:
            return counts
        response = invoke(sqs_event(messages, arn, region))
        failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
        counts["messages"] += len(messages)
        counts["batches"] += 1
        counts["failed"] += len(failed)
        for m in messages:
            if m["MessageId"] in failed:
                sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
            else:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
        if failed:
            # Failed messages come back at once; stop here rather than loop on them (the DLQ takes
            # them after maxReceiveCount in the real system).
            return counts

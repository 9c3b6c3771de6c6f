"""The Lambda events the handlers receive, parsed and validated at the edge: EventBridge schedules,
S3 event notifications delivered through SQS, and Publish requests. The handlers stay thin; the rules
(and their tests) live here, next to the producer side of the Publish message (``PublishRequest``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote_plus

from cdr_policy import jsonio, layout
from cdr_policy.errors import CdrPolicyError
from cdr_policy.layout import is_channel_name, is_digest

# The trigger key of the scheduled re-render (an EventBridge schedule sends its event to RenderQueue),
# which keeps quiet channels' manifests re-signed before they expire under their agents.
REFRESH_TRIGGER = "schedule:refresh"
# Seconds kept back from an invocation's remaining time, so that a stage can store what it has and
# report before Lambda stops it.
DEADLINE_MARGIN_S = 20.0
_S3_EVENT_KINDS = ("ObjectCreated:", "ObjectRemoved:")


class EventError(CdrPolicyError):
    """An event or record without the expected shape. Redelivering it will not fix it."""


class RemainingTime(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


def require_scheduled_event(event: Any) -> None:
    """Accept only an EventBridge scheduled event (detail-type "Scheduled Event", source aws.events)."""
    if not isinstance(event, dict):
        raise EventError(f"expected an EventBridge scheduled event (a JSON object), got {type(event).__name__}")
    detail_type, source = event.get("detail-type"), event.get("source")
    if detail_type != "Scheduled Event" or source != "aws.events":
        raise EventError(
            "expected an EventBridge scheduled event (detail-type 'Scheduled Event', source 'aws.events'), "
            f"got detail-type={detail_type!r} source={source!r}"
        )


def deadline_seconds(context: RemainingTime) -> float:
    """The time budget of a stage: the invocation's remaining time less ``DEADLINE_MARGIN_S``, but never
    less than half of the remaining time."""
    remaining = context.get_remaining_time_in_millis() / 1000
    return max(remaining - DEADLINE_MARGIN_S, remaining / 2)


def sqs_records(event: Any) -> list[dict[str, Any]]:
    """The records of an SQS event (``Records``, each from ``aws:sqs``)."""
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        raise EventError("expected an SQS event with a 'Records' list")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or record.get("eventSource") != "aws:sqs":
            raise EventError(f"record {index} of the event is not an SQS message (eventSource 'aws:sqs')")
    return records


def _json_object(body: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise EventError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise EventError(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def _field(doc: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(name)
    return doc


@dataclass(frozen=True)
class S3Notification:
    """One S3 event notification. ``test_event`` is the ``s3:TestEvent`` that S3 sends when the
    notification is configured: it names no object."""

    test_event: bool
    keys: tuple[str, ...] = ()


# What Render is notified of: a changed indicator set, or a changed operator document under
# ``config/`` (``channels.yaml`` above all: a channel's new action, scope or lifetime is rendered
# without waiting for new indicators).
RENDER_TRIGGER_PREFIXES = (layout.INDICATORS, layout.CONFIG)


def parse_s3_notification(
    body: str, *, bucket: str, prefixes: tuple[str, ...] = RENDER_TRIGGER_PREFIXES
) -> S3Notification:
    """Parse the body of an SQS message that carries an S3 event notification (or the scheduled
    re-render's EventBridge event, returned as the single key ``REFRESH_TRIGGER``).

    Object keys arrive URL-encoded (a space as ``+``, ``!`` as ``%21``) and are returned decoded.
    Every record must come from ``bucket`` and name a key under one of ``prefixes``; anything else
    is an ``EventError`` (the notification is misconfigured, and the message belongs in the DLQ).
    """
    doc = _json_object(body, "S3 notification")
    if doc.get("Event") == "s3:TestEvent":
        return S3Notification(test_event=True)
    if doc.get("detail-type") == "Scheduled Event" and doc.get("source") == "aws.events":
        return S3Notification(test_event=False, keys=(REFRESH_TRIGGER,))
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        raise EventError("S3 notification has no 'Records' and is not an s3:TestEvent")
    keys = []
    for index, record in enumerate(records):
        where = f"S3 notification record {index}"
        if not isinstance(record, dict) or record.get("eventSource") != "aws:s3":
            raise EventError(f"{where} is not an S3 event (eventSource 'aws:s3')")
        event_name = record.get("eventName")
        if not isinstance(event_name, str) or not event_name.startswith(_S3_EVENT_KINDS):
            raise EventError(f"{where}: unexpected eventName {event_name!r}")
        source_bucket = _field(record, "s3", "bucket", "name")
        raw_key = _field(record, "s3", "object", "key")
        if source_bucket != bucket:
            raise EventError(f"{where} is from bucket {source_bucket!r}, expected {bucket!r}")
        if not isinstance(raw_key, str) or not raw_key:
            raise EventError(f"{where} has no object key")
        key = unquote_plus(raw_key)
        if not key.startswith(prefixes):
            raise EventError(f"{where}: key {key!r} is not under {' or '.join(map(repr, prefixes))}")
        keys.append(key)
    return S3Notification(test_event=False, keys=tuple(keys))


@dataclass(frozen=True)
class PublishRequest:
    """The PublishQueue message: publish the rendered bundle ``digest`` to ``channel``. Render sends
    it without ``approval``; an approver's ``cdr-policy channel approve`` sends it again with the
    fingerprint of the grant it wrote, so that the request is a new one for the handler's
    idempotency (a held answer is not replayed to it). A promoting channel's render adds
    ``decisions``, the SHA-256 of the decisions it wrote beside the bundle (``cdr_policy.promotion``):
    each render's decisions (new evidence, a watch that tripped) are a new request, and Publish
    treats the request as superseded when a later render decided again."""

    channel: str
    digest: str
    approval: str | None = None
    decisions: str | None = None

    def __post_init__(self) -> None:
        if not is_channel_name(self.channel):
            raise EventError("publish request: the channel is not a channel name (1-32 of a-z, 0-9, '-')")
        if not is_digest(self.digest):
            raise EventError("publish request: the digest is not 64 lower-case hex characters")
        if self.approval is not None and not is_digest(self.approval):
            raise EventError("publish request: the approval is not 64 lower-case hex characters")
        if self.decisions is not None and not is_digest(self.decisions):
            raise EventError("publish request: the decisions are not 64 lower-case hex characters")

    def to_dict(self) -> dict[str, str | None]:
        return {"channel": self.channel, "digest": self.digest, "approval": self.approval, "decisions": self.decisions}

    def to_message(self) -> str:
        """The message body (canonical JSON), as Render sends it."""
        body = {k: v for k, v in self.to_dict().items() if v is not None}
        return jsonio.dumps(body).decode()

    @classmethod
    def from_message(cls, body: str) -> PublishRequest:
        return cls.from_dict(_json_object(body, "publish request"))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PublishRequest:
        unknown = sorted(set(doc) - {"channel", "digest", "approval", "decisions"})
        if unknown:
            raise EventError(f"publish request: {len(unknown)} unknown field(s)")
        missing = sorted({"channel", "digest"} - set(doc))
        if missing:
            raise EventError(f"publish request: missing field(s) {', '.join(missing)}")
        return cls(
            channel=doc["channel"],
            digest=doc["digest"],
            approval=doc.get("approval"),
            decisions=doc.get("decisions"),
        )

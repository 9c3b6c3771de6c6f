"""Lambda on this machine: the real handlers (``functions/<name>/app.py``) loaded the way Lambda loads
them, each under its own module name (four files called ``app.py`` would clash in ``sys.modules``), and
``LambdaService``, which runs the functions of a deployed stack (fakes/stack.py) as Lambda does:

- each function with the environment of its deployed configuration, under a session of its own
  deployed role (assumed as the Lambda service assumes it), and nothing else of this process's;
- its event sources read from the stack: an EventBridge rule's scheduled event delivered to each
  target (a function asynchronously, with the retries and on-failure destination of its
  EventInvokeConfig; a queue as a message), and the queues of its SQS event source mappings polled
  with the function's role, in batches of the mapping's size, messages deleted unless the handler
  reported them in ``batchItemFailures`` (ReportBatchItemFailures) or failed;
- what the handlers print (Powertools' JSON logs and EMF metrics) appended to a log file, as
  CloudWatch Logs would take it.

Only the process around the handler differs: no X-Ray daemon (tracing off), the moto server as the
endpoint, and the run's loopback certificate trusted (``MotoServer.env``).
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FUNCTIONS = ("cdr_fetch", "feed_sync", "render", "publish", "hits_rollup")
DEFAULT_ASYNC_RETRIES = 2  # Lambda's, for an asynchronous invocation without an EventInvokeConfig


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

    def __init__(
        self, function_name: str, timeout_s: int = 300, *, arn: str | None = None, memory_mb: int = 512
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = arn or f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
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
    invoke: Callable[[dict[str, Any]], dict[str, Any] | None],
    *,
    region: str,
    batch_size: int = 10,
) -> dict[str, int]:
    """Deliver the queue's messages to ``invoke`` as an SQS event source mapping with
    ReportBatchItemFailures does: batches of up to ``batch_size`` (gathered over receives of at most 10),
    the successful messages deleted, the failed ones left to come back after the visibility timeout.
    ``invoke`` returns the handler's response, or None when the function failed (nothing deleted).
    Stops at the first failure. Returns counts."""
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    counts = {"messages": 0, "batches": 0, "failed": 0}
    while True:
        messages: list[dict[str, Any]] = []
        while len(messages) < batch_size:
            received = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=min(10, batch_size - len(messages)),
                AttributeNames=["All"],
                WaitTimeSeconds=0,
            ).get("Messages", [])
            if not received:
                break
            messages += received
        if not messages:
            return counts
        response = invoke(sqs_event(messages, arn, region))
        failed = (
            {m["MessageId"] for m in messages}
            if response is None
            else {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        )
        counts["messages"] += len(messages)
        counts["batches"] += 1
        counts["failed"] += len(failed)
        for m in messages:
            if m["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
        if failed:
            return counts


@dataclass(frozen=True)
class Function:
    """A deployed function: its configuration as the Lambda API returns it."""

    logical_id: str
    name: str
    arn: str
    role_arn: str
    code: str  # the folder under functions/ (its CodeUri)
    environment: dict[str, str]
    timeout_s: int
    memory_mb: int


@dataclass
class Invocation:
    function: str  # logical id
    response: Any = None
    error: str | None = None  # the function's error, or the first failed record's cause
    failed_records: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed_records


@dataclass
class Delivery:
    """What a function's event source mappings delivered in one poll."""

    messages: int = 0
    batches: int = 0
    failed: int = 0
    invocations: list[Invocation] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        return next((i.error for i in self.invocations if i.error), None)


class LambdaService:
    """The functions of ``stack`` run as Lambda runs them (see the module's docstring); their output
    goes to ``log``."""

    def __init__(self, stack: Any, log: Path) -> None:
        from fakes.stack import code_folders

        self.stack = stack
        self.log = log
        self.lambda_api = stack.client("lambda")
        folders = code_folders(stack.template)
        self.functions = {
            logical: self._function(logical, physical, Path(folders[logical]).name)
            for logical, physical in stack.of_type("AWS::Lambda::Function").items()
        }
        # What Lambda and EventBridge know of the stack, read once (their own reads are not the
        # functions' requests): event source mappings, asynchronous invocation settings, rules.
        self.mappings = {
            logical: self.lambda_api.list_event_source_mappings(FunctionName=f.name)["EventSourceMappings"]
            for logical, f in self.functions.items()
        }
        self.invoke_configs = {logical: self._invoke_config(f.name) for logical, f in self.functions.items()}
        events = stack.client("events")
        self.rules = {
            logical: (events.describe_rule(Name=name), events.list_targets_by_rule(Rule=name)["Targets"])
            for logical, name in stack.of_type("AWS::Events::Rule").items()
        }
        self._sessions = {logical: self._assume(f) for logical, f in self.functions.items()}

    def _function(self, logical: str, name: str, code: str) -> Function:
        config = self.lambda_api.get_function_configuration(FunctionName=name)
        variables = config.get("Environment", {}).get("Variables", {})
        return Function(
            logical_id=logical,
            name=name,
            arn=config["FunctionArn"],
            role_arn=config["Role"],
            code=code,
            environment=dict(variables),
            timeout_s=int(config["Timeout"]),
            memory_mb=int(config["MemorySize"]),
        )

    def _invoke_config(self, name: str) -> dict[str, Any]:
        try:
            return dict(self.lambda_api.get_function_event_invoke_config(FunctionName=name))
        except self.lambda_api.exceptions.ResourceNotFoundException:
            return {}

    def _assume(self, function: Function) -> dict[str, str]:
        """A session of the function's role, assumed as the Lambda service assumes it (the service's own
        identity is not modelled: IAM checks are off for that one request)."""
        server = self.stack.server
        if server.enforcing:
            server.enforce_iam(False)
        try:
            session = server.client("sts").assume_role(RoleArn=function.role_arn, RoleSessionName=function.name)
        finally:
            if server.enforcing:
                server.enforce_iam(True)
        c = session["Credentials"]
        return {
            "aws_access_key_id": c["AccessKeyId"],
            "aws_secret_access_key": c["SecretAccessKey"],
            "aws_session_token": c["SessionToken"],
        }

    def credentials(self, logical: str) -> dict[str, str]:
        return self._sessions[logical]

    def client(self, logical: str, service: str) -> Any:
        """A client with the function's role (what Lambda itself does for the function: poll, destinations)."""
        return self.stack.server.client(service, **self.credentials(logical))

    def environment(self, logical: str) -> dict[str, str]:
        """The function's process environment: its configuration's variables, its role's session, the
        variables Lambda sets, and the endpoint and certificate of this machine's AWS."""
        function = self.functions[logical]
        session = self.credentials(logical)
        return {
            **function.environment,
            **self.stack.server.env,
            "AWS_ACCESS_KEY_ID": session["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": session["aws_secret_access_key"],
            "AWS_SESSION_TOKEN": session["aws_session_token"],
            "AWS_REGION": self.stack.server.env["AWS_DEFAULT_REGION"],
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
            "POWERTOOLS_TRACE_DISABLED": "1",  # no X-Ray daemon here
        }

    @contextmanager
    def running_as(self, logical: str) -> Iterator[dict[str, str]]:
        """This process's environment as the function's (restored after): nothing of the caller's
        credentials, endpoints or settings leaks in."""
        from cdr_policy import aws
        from cdr_policy.settings import get_settings

        env = self.environment(logical)
        theirs = {k for f in self.functions.values() for k in f.environment}
        saved = dict(os.environ)
        for name in list(os.environ):
            if name.startswith(("AWS_", "POWERTOOLS_", "SSL_CERT_")) or name in theirs:
                del os.environ[name]
        os.environ.update(env)
        aws.reset()
        get_settings.cache_clear()
        try:
            yield env
        finally:
            os.environ.clear()
            os.environ.update(saved)
            aws.reset()
            get_settings.cache_clear()

    @contextmanager
    def _captured(self) -> Iterator[io.StringIO]:
        """The handler's logs, metrics and warnings (Powertools' logger, standard output and error),
        appended to the log."""
        from cdr_policy.observability import logger

        buffer = io.StringIO()
        handlers = [h for h in logging.getLogger(logger.name).handlers if isinstance(h, logging.StreamHandler)]
        previous = [h.setStream(buffer) for h in handlers]
        try:
            with redirect_stdout(buffer), redirect_stderr(buffer):
                yield buffer
        finally:
            for h, stream in zip(handlers, previous, strict=True):
                h.setStream(stream)
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("a", encoding="utf-8") as log:
                log.write(buffer.getvalue())

    def invoke(self, logical: str, event: dict[str, Any]) -> Invocation:
        """One synchronous invocation of the function's handler with ``event``."""
        function = self.functions[logical]
        context = LambdaContext(function.name, function.timeout_s, arn=function.arn, memory_mb=function.memory_mb)
        with self.running_as(logical), self._captured() as output:
            try:
                response = load_handler(function.code).lambda_handler(event, context)
            except Exception as exc:
                cause = _logged_error(output.getvalue()) or _last_line(traceback.format_exception_only(exc))
                print(json.dumps({"level": "ERROR", "message": "function error", "error": cause}), file=output)
                return Invocation(logical, error=cause)
        failed = len(response.get("batchItemFailures", [])) if isinstance(response, dict) else 0
        return Invocation(logical, response, _logged_error(output.getvalue()) if failed else None, failed)

    def invoke_async(self, logical: str, event: dict[str, Any]) -> Invocation:
        """An asynchronous invocation: the attempts the function's EventInvokeConfig allows, then the
        failure record to its on-failure destination (sent with the function's role, as Lambda does)."""
        function = self.functions[logical]
        config = self.invoke_configs[logical]
        attempts = 1 + int(config.get("MaximumRetryAttempts", DEFAULT_ASYNC_RETRIES))
        for _ in range(attempts):
            invocation = self.invoke(logical, event)
            if invocation.error is None:
                return invocation
        destination = config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
        if destination:
            record = _failure_record(function, event, invocation.error or "", attempts)
            self._send(logical, destination, json.dumps(record))
        return invocation

    def _send(self, logical: str, queue_arn: str, body: str) -> None:
        self.client(logical, "sqs").send_message(QueueUrl=queue_url(queue_arn), MessageBody=body)

    def fire(self, rule_logical: str) -> list[Invocation]:
        """EventBridge at the time of schedule rule ``rule_logical`` of the stack: its scheduled event to
        every target (EventBridge's own identity, which the queue policy admits, is not modelled: a queue
        target gets the message from the administrator)."""
        rule, targets = self.rules[rule_logical]
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": rule["Arn"].split(":")[4],
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": rule["Arn"].split(":")[3],
            "resources": [rule["Arn"]],
            "detail": {},
        }
        by_arn = {f.arn: f.logical_id for f in self.functions.values()}
        invocations = []
        for target in targets:
            if target["Arn"] in by_arn:
                invocations.append(self.invoke_async(by_arn[target["Arn"]], event))
            elif target["Arn"].split(":")[2] == "sqs":
                self.stack.client("sqs").send_message(QueueUrl=queue_url(target["Arn"]), MessageBody=json.dumps(event))
            else:
                raise NotImplementedError(f"rule {rule_logical}: no delivery to {target['Arn']} here")
        return invocations

    def _rules_of(self, logical: str) -> list[str]:
        arn = self.functions[logical].arn
        return [r for r, (_, targets) in self.rules.items() if any(t["Arn"] == arn for t in targets)]

    def schedule_of(self, logical: str) -> str:
        """The logical id of the stack's one rule that targets function ``logical``."""
        (rule,) = self._rules_of(logical)
        return rule

    def trigger(self, logical: str) -> list[Invocation]:
        """The function's event sources in the stack, once: the schedule rules that target it, else the
        queues of its event source mappings."""
        rules = self._rules_of(logical)
        if rules:
            return [invocation for rule in rules for invocation in self.fire(rule)]
        return self.poll(logical).invocations

    def poll(self, logical: str) -> Delivery:
        """Lambda's pollers for the function's SQS event source mappings: every queued message delivered
        (stops at a failed batch, whose messages stay in flight until their visibility timeout)."""
        delivery = Delivery()
        for mapping in self.mappings[logical]:
            if mapping["State"] != "Enabled":
                continue
            sqs = self.client(logical, "sqs")
            region = mapping["EventSourceArn"].split(":")[3]
            url = queue_url(mapping["EventSourceArn"])

            def invoke(event: dict[str, Any]) -> dict[str, Any] | None:
                invocation = self.invoke(logical, event)
                delivery.invocations.append(invocation)
                if invocation.response is None and invocation.error is not None:
                    return None  # a function error: Lambda deletes nothing of the batch
                return invocation.response or {}

            counts = drain_queue(sqs, url, invoke, region=region, batch_size=int(mapping["BatchSize"]))
            delivery.messages += counts["messages"]
            delivery.batches += counts["batches"]
            delivery.failed += counts["failed"]
        return delivery


def queue_url(arn: str) -> str:
    """A queue's URL from its ARN, as Lambda and EventBridge address it (no GetQueueUrl: their roles and
    the queue policies grant only what they send, receive and delete)."""
    _, _, _, region, account, name = arn.split(":")
    return f"https://sqs.{region}.amazonaws.com/{account}/{name}"


def _last_line(lines: list[str]) -> str:
    return "".join(lines).strip().splitlines()[-1]


def _logged_error(output: str) -> str | None:
    """The cause of the first exception the handler logged (the last line of its traceback)."""
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("exception"):
            return _last_line([str(record["exception"])])
    return None


def _failure_record(function: Function, event: dict[str, Any], error: str, attempts: int) -> dict[str, Any]:
    """What Lambda sends to an on-failure destination."""
    error_type, _, message = error.partition(": ")
    return {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(),
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": f"{function.arn}:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": attempts,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": message, "errorType": error_type.rsplit(".", 1)[-1]},
    }

"""The one Logger, Tracer and Metrics of the package. In Lambda they are configured by the
template's ``POWERTOOLS_SERVICE_NAME``, ``POWERTOOLS_METRICS_NAMESPACE`` and ``POWERTOOLS_LOG_LEVEL``;
elsewhere (CLI, agent, tests) the defaults below apply."""

import logging
import os
import sys

from aws_lambda_powertools import Logger, Metrics, Tracer

_SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "cdr-policy"
_NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "CdrPolicy"

logger = Logger(service=_SERVICE)
tracer = Tracer(service=_SERVICE)
metrics = Metrics(namespace=_NAMESPACE, service=_SERVICE)

# The AWS SDK and the HTTP clients log every request and response at DEBUG: headers (the signed
# Authorization among them), bodies (what is written to the buckets, a Secrets Manager answer with
# its secret) and URLs. However the package's own logger is set (``--log-level DEBUG``,
# ``POWERTOOLS_LOG_LEVEL``/``LOG_LEVEL=DEBUG``) and whatever level the Lambda runtime gives the
# root logger (``AWS_LAMBDA_LOG_LEVEL``), they log warnings and errors only.
WIRE_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore")
for _name in WIRE_LOGGERS:
    logging.getLogger(_name).setLevel(logging.WARNING)


class _Stderr:
    """Whatever ``sys.stderr`` is at the time of each write (it may be replaced after set-up)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def log_to_stderr(level: str) -> None:
    """For the command line: structured logs go to standard error at ``level``, so that standard
    output carries only the human-readable summary."""
    logger.setLevel(level)
    handler = logger.registered_handler
    if isinstance(handler, logging.StreamHandler):
        handler.setStream(_Stderr())

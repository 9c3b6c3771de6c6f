"""The one Logger, Tracer and Metrics of the package. In Lambda they are configured by the
template's ``POWERTOOLS_SERVICE_NAME``, ``POWERTOOLS_METRICS_NAMESPACE`` and ``POWERTOOLS_LOG_LEVEL``;
elsewhere (CLI, agent, tests) the defaults below apply."""

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

_SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "cdr-policy"
_NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "CdrPolicy"

logger = Logger(service=_SERVICE)
tracer = Tracer(service=_SERVICE)
metrics = Metrics(namespace=_NAMESPACE, service=_SERVICE)

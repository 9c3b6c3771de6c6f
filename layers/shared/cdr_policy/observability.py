"""The one Logger, Tracer and Metrics of the package, configured from the environment
(``POWERTOOLS_SERVICE_NAME``, ``POWERTOOLS_METRICS_NAMESPACE``, ``POWERTOOLS_LOG_LEVEL``)."""

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="cdr-policy")
tracer = Tracer(service="cdr-policy")
metrics = Metrics(namespace="CdrPolicy", service="cdr-policy")

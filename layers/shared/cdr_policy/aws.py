"""boto3 clients, built lazily and cached per execution environment (never at import time, so that
tests and the local runner can point ``AWS_ENDPOINT_URL`` at a moto server first)."""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from cdr_policy.errors import ConfigError, aws_cause

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


@functools.cache
def client(service: str) -> Any:
    """A cached client for ``service`` (``s3``, ``sqs``, ``kms``, ``secretsmanager``...)."""
    try:
        session: Any = boto3.session.Session()  # typed per service name; callers hold the client as Any
        return session.client(service, config=_CONFIG)
    except (BotoCoreError, ValueError) as exc:  # no region, an unknown profile, a bad AWS_ENDPOINT_URL
        raise ConfigError(f"cannot make an AWS {service} client ({aws_cause(exc)})") from exc


def reset() -> None:
    """Forget cached clients (after the endpoint or credentials changed)."""
    client.cache_clear()

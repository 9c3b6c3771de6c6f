"""Baseline for every test: fake AWS credentials, Powertools settings, the upstream data
locations (``../shared``, overridable with ``CDR_SHARED_DIR``) and a guard that refuses any
network connection that is not to loopback."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from _socket import _Address  # typeshed's type of a socket address
    from _socket import socket as _RawSocket  # the class that defines connect()

    # imported inside the fixture at run time: the environment below is set first
    from fakes.lambda_runtime import LambdaContext
from collections.abc import Iterator

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CDR_SHARED_DIR", REPO.parent / "shared")).resolve()

os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "cdr-policy-test",
        "POWERTOOLS_METRICS_NAMESPACE": "CdrPolicyTest",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_DEV": "0",
    }
)
for var in ("QUALYS_USERNAME", "QUALYS_PASSWORD", "QUALYS_GATEWAY_URL", "QUALYS_PLATFORM", "ABUSEIPDB_API_KEY"):
    os.environ.pop(var, None)

_real_connect = socket.socket.connect


def _loopback_only_connect(self: _RawSocket, address: _Address) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        assert isinstance(address, tuple)  # (host, port[, flowinfo, scope_id])
        host = address[0]
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = host == "localhost"
        if not ok:
            raise ConnectionRefusedError(f"tests may only connect to loopback, not {host!r}")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only_connect  # type: ignore[method-assign]


def _shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"upstream data not found at {path}: set CDR_SHARED_DIR to the folder holding crds/ and feeds/")
    return path


@pytest.fixture(scope="session")
def crds_dir() -> Path:
    """The verbatim upstream CRDs (``../shared/crds``)."""
    return _shared_path("crds")


@pytest.fixture(scope="session")
def shared_feeds_dir() -> Path:
    """The real feed samples (``../shared/feeds``)."""
    return _shared_path("feeds")


@pytest.fixture
def lambda_context() -> LambdaContext:
    from fakes.lambda_runtime import LambdaContext

    return LambdaContext("test-function")


@pytest.fixture(autouse=True)
def _reset_powertools() -> Iterator[None]:
    from aws_lambda_powertools.metrics.provider import cold_start
    from aws_lambda_powertools.utilities import parameters

    from cdr_policy.observability import logger, metrics

    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    level, stream = logger.log_level, handler.stream
    yield
    logger.setLevel(level)  # the CLI sends logs to stderr at WARNING: undo for the next test
    handler.setStream(stream)
    metrics.clear_metrics()
    cold_start.is_cold_start = True
    parameters.clear_caches()  # type: ignore[no-untyped-call]  # unannotated in Powertools

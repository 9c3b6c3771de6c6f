"""Domain exceptions. Adapters translate SDK and HTTP errors into these with ``raise ... from exc``."""

from __future__ import annotations

import sys


class CdrPolicyError(Exception):
    """Base class: an error the operator can act on. The message says what to do."""


class ConfigError(CdrPolicyError):
    """Configuration is missing or invalid."""


class StorageError(CdrPolicyError):
    """Reading or writing the state or distribution store failed."""


class QualysError(CdrPolicyError):
    """The Qualys gateway refused or failed a request."""


class PolicyCheckError(CdrPolicyError):
    """A generated or hand-written policy failed the CRD schema or the safety checklist."""


class BundleError(CdrPolicyError):
    """A bundle is malformed, tampered with, or its signature does not verify."""


class ContractError(BundleError):
    """A document that crosses a process or a bucket (a status, a summary, a report) is not what its
    contract says: the message names the document and the field, never the value."""


def one_line(error: BaseException | str) -> str:
    """An error's message on one line (a multi-line message, such as a list of checker errors,
    is joined with ``; ``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    out = ""
    for line in lines:
        out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out or type(error).__name__


def print_error(error: BaseException | str, prog: str = "cdr-policy") -> None:
    """The one way every command reports a failure: ``cdr-policy: error: <what> (<cause>)`` on one
    line of standard error (argparse's own usage errors look the same)."""
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)


def exit_code(error: CdrPolicyError) -> int:
    """2 for usage and configuration, 1 for a run that failed."""
    return 2 if isinstance(error, ConfigError) else 1


def os_cause(exc: OSError) -> str:
    """An operating-system error as the cause of an error line: ``No space left on device``."""
    return exc.strerror or type(exc).__name__


def aws_cause(exc: Exception) -> str:
    """An AWS SDK error as the cause of an error line: what went wrong and, where the SDK knows
    it, what to do (``no AWS credentials (...)``, ``cannot connect to https://...``,
    ``AccessDenied: ...``). botocore is imported only when an error is described."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
        ReadTimeoutError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "error"
        message = error.get("Message") or ""
        return f"{code}: {message}" if message else str(code)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return "no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run with a role"
    if isinstance(exc, NoRegionError):
        return "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION)"
    if isinstance(exc, ProfileNotFound):
        return f"{exc}: check AWS_PROFILE"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot connect to {_endpoint(exc.kwargs.get('endpoint_url'))}"
    if isinstance(exc, ReadTimeoutError):
        return f"no answer in time from {_endpoint(exc.kwargs.get('endpoint_url'))}"
    if isinstance(exc, ConnectionError):
        return f"connection to AWS failed: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _endpoint(url: object) -> str:
    """``https://host:port`` of a request URL (its path and query name the object, not the endpoint)."""
    from urllib.parse import urlsplit

    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else str(url)


def is_aws_error(exc: BaseException) -> bool:
    """An error of the AWS SDK (a service's answer, or no credentials, region or connection)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, BotoCoreError | ClientError)

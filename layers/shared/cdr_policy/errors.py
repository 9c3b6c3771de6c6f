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


def print_error(error: BaseException | str, prog: str = "cdr-policy") -> None:
    """The one way every command reports a failure: ``cdr-policy: error: <what>`` on standard error
    (argparse's own usage errors look the same)."""
    print(f"{prog}: error: {error}", file=sys.stderr)


def exit_code(error: CdrPolicyError) -> int:
    """2 for usage and configuration, 1 for a run that failed."""
    return 2 if isinstance(error, ConfigError) else 1

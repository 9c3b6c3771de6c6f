"""Domain exceptions. Adapters translate SDK and HTTP errors into these with ``raise ... from exc``."""


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

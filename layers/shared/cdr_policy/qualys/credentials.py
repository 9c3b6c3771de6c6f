"""Qualys API credentials: from AWS Secrets Manager in Lambda (through Powertools Parameters,
cached), from ``QUALYS_USERNAME``/``QUALYS_PASSWORD`` on a laptop.

Neither the user name nor the password ever appears in a repr, a log line or an exception message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cdr_policy.errors import ConfigError

SECRET_MAX_AGE_S = 300


@dataclass(frozen=True)
class Credentials:
    username: str = field(repr=False)
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.username, str) or not self.username.strip():
            raise ConfigError("the Qualys user name is empty")
        if not isinstance(self.password, str) or not self.password:
            raise ConfigError("the Qualys password is empty")

    def __repr__(self) -> str:
        return "Credentials(username=<hidden>, password=<hidden>)"

    __str__ = __repr__


def _from_secret(secret_name: str) -> Credentials:
    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.exceptions import (
        GetParameterError,
        TransformParameterError,
    )

    try:
        value = parameters.get_secret(secret_name, transform="json", max_age=SECRET_MAX_AGE_S)
    except TransformParameterError:
        # The transform error could quote the secret's text: never chain or repeat it.
        raise ConfigError(
            f'Qualys secret {secret_name!r} is not JSON: store {{"username": ..., "password": ...}}'
        ) from None
    except GetParameterError as exc:
        raise ConfigError(f"cannot read Qualys secret {secret_name!r}: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"Qualys secret {secret_name!r} must be a JSON object with 'username' and 'password'")
    missing = [key for key in ("username", "password") if not isinstance(value.get(key), str) or not value[key]]
    if missing:
        raise ConfigError(f"Qualys secret {secret_name!r} lacks a non-empty {' and '.join(missing)}")
    return Credentials(username=value["username"].strip(), password=value["password"])


def load_credentials(secret_name: str | None, env: Mapping[str, str]) -> Credentials:
    """Credentials from the named secret when given, else from the environment."""
    if secret_name:
        return _from_secret(secret_name)
    username = env.get("QUALYS_USERNAME", "").strip()
    password = env.get("QUALYS_PASSWORD", "")
    missing = [name for name, value in (("QUALYS_USERNAME", username), ("QUALYS_PASSWORD", password)) if not value]
    if missing:
        raise ConfigError(
            f"Qualys credentials missing: set {' and '.join(missing)} "
            "(in Lambda, QUALYS_SECRET_NAME names a Secrets Manager secret instead)"
        )
    return Credentials(username=username, password=password)

"""Credentials from the environment and from Secrets Manager (moto); never shown."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from mypy_boto3_secretsmanager import SecretsManagerClient

from cdr_policy.errors import ConfigError
from cdr_policy.qualys.credentials import Credentials, load_credentials

PASSWORD = "p@ss word&more=1"


def test_from_environment() -> None:
    creds = load_credentials(None, {"QUALYS_USERNAME": " alice_qg2 ", "QUALYS_PASSWORD": f" {PASSWORD} "})
    assert creds.username == "alice_qg2"
    assert creds.password == f" {PASSWORD} "  # a password is taken exactly as given


@pytest.mark.parametrize(
    "env, missing",
    [
        ({}, "QUALYS_USERNAME and QUALYS_PASSWORD"),
        ({"QUALYS_USERNAME": "alice"}, "set QUALYS_PASSWORD"),
        ({"QUALYS_PASSWORD": PASSWORD, "QUALYS_USERNAME": "  "}, "set QUALYS_USERNAME"),
    ],
)
def test_missing_environment(env: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigError, match=missing) as err:
        load_credentials(None, env)
    assert PASSWORD not in str(err.value)


def test_repr_and_str_hide_both_fields() -> None:
    creds = Credentials("alice_qg2", PASSWORD)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds]), repr({"c": creds})):
        assert PASSWORD not in text
        assert "alice_qg2" not in text
        assert "<hidden>" in text


@pytest.mark.parametrize("username, password", [("", "x"), ("alice", "")])
def test_empty_values_rejected(username: str, password: str) -> None:
    with pytest.raises(ConfigError):
        Credentials(username, password)


@pytest.fixture
def secrets_client() -> Iterator[SecretsManagerClient]:
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-east-1")


def test_from_secrets_manager(secrets_client: SecretsManagerClient) -> None:
    secrets_client.create_secret(Name="qualys", SecretString=json.dumps({"username": "alice", "password": PASSWORD}))
    creds = load_credentials("qualys", {"QUALYS_USERNAME": "ignored", "QUALYS_PASSWORD": "ignored"})
    assert (creds.username, creds.password) == ("alice", PASSWORD)


def test_secret_is_cached_by_powertools(secrets_client: SecretsManagerClient) -> None:
    secrets_client.create_secret(Name="qualys", SecretString=json.dumps({"username": "alice", "password": PASSWORD}))
    assert load_credentials("qualys", {}).password == PASSWORD
    secrets_client.put_secret_value(SecretId="qualys", SecretString=json.dumps({"username": "bob", "password": "new"}))
    # Within max_age the cached value is served: no Secrets Manager call per invocation.
    assert load_credentials("qualys", {}).username == "alice"


def test_secret_not_json(secrets_client: SecretsManagerClient) -> None:
    secrets_client.create_secret(Name="qualys", SecretString=f"username=alice password={PASSWORD}")
    with pytest.raises(ConfigError, match="is not JSON") as err:
        load_credentials("qualys", {})
    assert PASSWORD not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.parametrize(
    "value, problem",
    [
        ({"username": "alice"}, "lacks a non-empty password"),
        ({"user": "alice", "pass": PASSWORD}, "lacks a non-empty username and password"),
        ({"username": "alice", "password": 12345}, "lacks a non-empty password"),
        (["alice", PASSWORD], "must be a JSON object"),
    ],
)
def test_secret_with_wrong_shape(secrets_client: SecretsManagerClient, value: object, problem: str) -> None:
    secrets_client.create_secret(Name="qualys", SecretString=json.dumps(value))
    with pytest.raises(ConfigError, match=problem) as err:
        load_credentials("qualys", {})
    assert PASSWORD not in str(err.value)


def test_secret_missing(secrets_client: SecretsManagerClient) -> None:
    with pytest.raises(ConfigError, match="cannot read Qualys secret 'nope'"):
        load_credentials("nope", {})

"""A bucket that times out or drops the connection is a StorageError (the agent keeps its last good
state and says why), never an AttributeError: botocore's ReadTimeoutError and ConnectionClosedError
carry ``response = None``."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

from cdr_policy.errors import StorageError
from cdr_policy.storage import NotFound, S3Store


class Failing:
    """A boto3 S3 client whose every call fails with ``exc``."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise self.exc

        return call


@pytest.mark.parametrize(
    "exc",
    [ReadTimeoutError(endpoint_url="https://s3.example/b/k"), ConnectionClosedError(endpoint_url="https://s3.example")],
    ids=["read-timeout", "connection-closed"],
)
def test_a_transport_failure_is_a_storage_error(exc: ReadTimeoutError | ConnectionClosedError) -> None:
    store = S3Store(Failing(exc), "dist")

    for call, verb in (
        (lambda: store.get("channels/prod/manifest.json"), "read"),
        (lambda: store.get_if_changed("channels/prod/manifest.json", '"etag"'), "read"),
        (lambda: store.put("status/c1.json", b"{}"), "write"),
    ):
        with pytest.raises(StorageError) as caught:
            call()
        assert not isinstance(caught.value, NotFound)
        assert f"cannot {verb} s3://dist/" in str(caught.value)

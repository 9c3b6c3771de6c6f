"""The two store operations fleet safety rests on, for S3 (boto3 over HTTP to a moto server) and a
local directory: reads that stop at a size limit, and writes conditional on the object read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from cdr_policy.storage import LocalStore, PreconditionFailed, S3Store, Store, TooLarge
from fakes.aws import moto_endpoint


@pytest.fixture(scope="module")
def s3_store() -> Iterator[S3Store]:
    with moto_endpoint(None) as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket="bounded-reads")
        yield S3Store(client, "bounded-reads")


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, s3_store: S3Store, tmp_path: Path) -> Store:
    return s3_store if request.param == "s3" else LocalStore(tmp_path / "store")


def test_a_bounded_read_stops_after_the_limit(store: Store) -> None:
    store.put("big", b"x" * 100_000)
    store.put("small", b"0123456789")
    store.put("empty", b"")

    with pytest.raises(TooLarge, match="larger than 1000 bytes") as refused:
        store.get("big", max_bytes=1000)
    assert refused.value.etag
    assert store.get("small", max_bytes=10).data == b"0123456789"
    assert store.get("empty", max_bytes=10).data == b""
    # the refused bytes are recognised by their ETag without reading them again
    assert store.get_if_changed("big", refused.value.etag, max_bytes=1000) is None


def test_conditional_writes(store: Store) -> None:
    store.delete("m")
    first = store.put_if("m", b"one", None)  # only if absent
    with pytest.raises(PreconditionFailed):
        store.put_if("m", b"again", None)
    second = store.put_if("m", b"two", first)
    with pytest.raises(PreconditionFailed):
        store.put_if("m", b"three", first)  # a writer that read "one" lost
    assert store.get("m").data == b"two" and store.get("m").etag == second

"""Object storage behind one small interface: S3 in the cloud, a local directory on a laptop.

Keys are ``/``-separated relative paths (``indicators/feeds/tor-exit.json``). Both
implementations return an ETag so that readers can poll cheaply (``get_if_changed``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cdr_policy.errors import StorageError


class NotFound(StorageError):
    """The key does not exist."""


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str


class Store(Protocol):
    def get(self, key: str) -> StoredObject: ...

    def get_if_changed(self, key: str, etag: str | None) -> StoredObject | None:
        """The object, or None when its ETag still equals ``etag``."""
        ...

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str: ...

    def list(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def describe(self) -> str: ...


def exists(store: Store, key: str) -> bool:
    try:
        store.get(key)
    except NotFound:
        return False
    return True


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
        raise StorageError(f"invalid storage key {key!r}")
    return key


class LocalStore:
    """A directory. Writes are atomic (temp file + rename), ETags are content hashes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def get(self, key: str) -> StoredObject:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"{key} not found in {self.root}") from exc
        return StoredObject(data, hashlib.md5(data, usedforsecurity=False).hexdigest())

    def get_if_changed(self, key: str, etag: str | None) -> StoredObject | None:
        obj = self.get(key)
        return None if etag is not None and obj.etag == etag else obj

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def list(self, prefix: str) -> list[str]:
        if not self.root.exists():
            return []
        keys = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store:
    """An S3 bucket (or a prefix-free view of one) through a boto3 client."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def describe(self) -> str:
        return f"s3://{self.bucket}"

    def _error(self, exc: Exception, key: str) -> StorageError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(f"s3://{self.bucket}/{key} not found")
        return StorageError(f"s3://{self.bucket}/{key}: {code or type(exc).__name__}: {exc}")

    def get(self, key: str) -> StoredObject:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=_check_key(key))
        except ClientError as exc:
            raise self._error(exc, key) from exc
        return StoredObject(resp["Body"].read(), resp["ETag"].strip('"'))

    def get_if_changed(self, key: str, etag: str | None) -> StoredObject | None:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": _check_key(key)}
        if etag:
            kwargs["IfNoneMatch"] = f'"{etag}"'
        try:
            resp = self.client.get_object(**kwargs)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 304 or exc.response.get("Error", {}).get("Code") == "304":
                return None
            raise self._error(exc, key) from exc
        return StoredObject(resp["Body"].read(), resp["ETag"].strip('"'))

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=_check_key(key), Body=data, ContentType=content_type)
        except ClientError as exc:
            raise self._error(exc, key) from exc
        return str(resp["ETag"]).strip('"')

    def list(self, prefix: str) -> list[str]:
        from botocore.exceptions import ClientError

        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        except ClientError as exc:
            raise self._error(exc, prefix) from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=_check_key(key))
        except ClientError as exc:
            raise self._error(exc, key) from exc


def open_store(url: str, s3_client: Any = None) -> Store:
    """``s3://bucket`` or a directory path / ``file://`` URL."""
    if url.startswith("s3://"):
        bucket = url[len("s3://") :].strip("/")
        if not bucket or "/" in bucket:
            raise StorageError(f"expected s3://<bucket>, got {url!r}")
        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3")
        return S3Store(s3_client, bucket)
    if url.startswith("file://"):
        url = url[len("file://") :]
    return LocalStore(url)

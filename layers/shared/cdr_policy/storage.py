"""Object storage behind one small interface: S3 in the cloud, a local directory on a laptop.

Keys are ``/``-separated relative paths (``indicators/feeds/tor-exit.json``). Both
implementations return an ETag so that readers can poll cheaply (``get_if_changed``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cdr_policy.errors import ConfigError, StorageError, aws_cause, os_cause


class NotFound(StorageError):
    """The key does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object is no longer the one the writer read (or now exists)."""


class TooLarge(StorageError):
    """The object is larger than the reader allows; only the allowed bytes (+1) were read.
    ``etag`` identifies the refused bytes, so a reader can refuse them again without reading."""

    def __init__(self, message: str, etag: str) -> None:
        super().__init__(message)
        self.etag = etag


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str


class Store(Protocol):
    def get(self, key: str, *, max_bytes: int | None = None) -> StoredObject:
        """The object; TooLarge (having read at most ``max_bytes + 1`` bytes) when it is larger."""
        ...

    def get_if_changed(self, key: str, etag: str | None, *, max_bytes: int | None = None) -> StoredObject | None:
        """The object, or None when its ETag still equals ``etag``."""
        ...

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str: ...

    def put_if(self, key: str, data: bytes, etag: str | None, content_type: str = "application/octet-stream") -> str:
        """Write only if the object still has ``etag`` (``None``: only if it does not exist);
        PreconditionFailed otherwise. Returns the new ETag."""
        ...

    def list(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def describe(self) -> str: ...


def exists(store: Store, key: str) -> bool:
    try:
        store.get(key, max_bytes=0)
    except NotFound:
        return False
    except TooLarge:
        return True
    return True


def _too_large(key: str, max_bytes: int, etag: str) -> TooLarge:
    return TooLarge(f"{key} is larger than {max_bytes} bytes: not read further", etag)


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
        raise StorageError(f"invalid storage key {key!r}")
    return key


class LocalStore:
    """A directory. Writes are atomic (temp file + rename), ETags are content hashes. Every
    operating-system error (a full disk, a folder that is not writable) is a StorageError naming
    the file and the cause; a failed write leaves the previous file as it was."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def get(self, key: str, *, max_bytes: int | None = None) -> StoredObject:
        """The file (regular files only: a FIFO, a device or a directory planted at a key is refused
        without blocking); its ETag is the MD5 of the whole file, also when only ``max_bytes`` + 1
        bytes are kept, so that a conditional write can replace an oversized object."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(f"{key} not found in {self.root}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path} ({os_cause(exc)})") from exc
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageError(f"{key} in {self.root} is not a regular file")
            try:
                data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
                digest = hashlib.md5(data, usedforsecurity=False)
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            except OSError as exc:
                raise StorageError(f"cannot read {path} ({os_cause(exc)})") from exc
        etag = digest.hexdigest()
        if max_bytes is not None and len(data) > max_bytes:
            raise _too_large(key, max_bytes, etag)
        return StoredObject(data, etag)

    def get_if_changed(self, key: str, etag: str | None, *, max_bytes: int | None = None) -> StoredObject | None:
        try:
            obj = self.get(key, max_bytes=max_bytes)
        except TooLarge as exc:
            if etag is not None and exc.etag == etag:
                return None  # the same refused object
            raise
        return None if etag is not None and obj.etag == etag else obj

    def put_if(self, key: str, data: bytes, etag: str | None, content_type: str = "application/octet-stream") -> str:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = (path.parent / f".lock-{path.name}").open("wb")
        except OSError as exc:
            raise StorageError(f"cannot write {path} ({os_cause(exc)})") from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current: str | None = self.get(key, max_bytes=0).etag
            except TooLarge as exc:
                current = exc.etag
            except NotFound:
                current = None
            if current != etag:
                raise PreconditionFailed(f"{key} in {self.root} changed since it was read")
            return self.put(key, data, content_type)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except OSError as exc:
            raise StorageError(f"cannot write {path} ({os_cause(exc)})") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write {path} ({os_cause(exc)})") from exc
            raise
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def list(self, prefix: str) -> list[str]:
        # Only the folder the prefix names is walked (``bundles/4d3b`` walks ``bundles/``).
        folders = prefix.split("/")[:-1]
        if any(part in ("", ".", "..") for part in folders):
            return []  # no key has such a prefix (``_check_key``)
        base = self.root.joinpath(*folders)
        keys = []
        try:
            if not base.is_dir():
                return []
            for path in base.rglob("*"):
                if path.is_file() and not path.name.startswith((".tmp-", ".lock-")):
                    key = path.relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        keys.append(key)
        except OSError as exc:
            raise StorageError(f"cannot list {base} ({os_cause(exc)})") from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {path} ({os_cause(exc)})") from exc


class S3Store:
    """An S3 bucket (or a prefix-free view of one) through a boto3 client."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def describe(self) -> str:
        return f"s3://{self.bucket}"

    def _error(self, exc: Exception, key: str, verb: str) -> StorageError:
        """An SDK error (a service answer, no credentials, no connection) as a StorageError."""
        code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code", "")  # None on a timeout
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(f"s3://{self.bucket}/{key} not found")
        return StorageError(f"cannot {verb} s3://{self.bucket}/{key} ({aws_cause(exc)})")

    def _read(self, key: str, resp: dict[str, Any], max_bytes: int | None) -> StoredObject:
        """The body, stopping after ``max_bytes + 1`` bytes (the request asked for no more than that)."""
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError

        body = resp["Body"]
        try:
            data = body.read() if max_bytes is None else body.read(max_bytes + 1)
        except (BotoCoreError, HTTPError, OSError) as exc:
            raise StorageError(f"cannot read s3://{self.bucket}/{key} (the download broke off: {exc})") from exc
        finally:
            body.close()
        if max_bytes is not None and len(data) > max_bytes:
            raise _too_large(key, max_bytes, resp["ETag"].strip('"'))
        return StoredObject(data, resp["ETag"].strip('"'))

    def get(self, key: str, *, max_bytes: int | None = None) -> StoredObject:
        obj = self._get(key, None, max_bytes)
        if obj is None:  # only a conditional read answers "not modified"
            raise StorageError(f"s3://{self.bucket}/{key}: unexpected 304 to an unconditional read")
        return obj

    def get_if_changed(self, key: str, etag: str | None, *, max_bytes: int | None = None) -> StoredObject | None:
        return self._get(key, etag, max_bytes)

    def _get(self, key: str, etag: str | None, max_bytes: int | None) -> StoredObject | None:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": _check_key(key)}
        if etag:
            kwargs["IfNoneMatch"] = f'"{etag}"'
        if max_bytes is not None:
            # A ranged read: S3 sends at most max_bytes + 1 bytes, however large the object is.
            kwargs["Range"] = f"bytes=0-{max_bytes}"
        try:
            resp = self.client.get_object(**kwargs)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if etag and (status == 304 or exc.response.get("Error", {}).get("Code") == "304"):
                return None
            if max_bytes is not None and exc.response.get("Error", {}).get("Code") == "InvalidRange":
                # an empty object: no byte 0 to start the range at
                return self._get(key, etag, None)
            raise self._error(exc, key, "read") from exc
        except BotoCoreError as exc:
            raise self._error(exc, key, "read") from exc
        return self._read(key, resp, max_bytes)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=_check_key(key), Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "write") from exc
        return str(resp["ETag"]).strip('"')

    def put_if(self, key: str, data: bytes, etag: str | None, content_type: str = "application/octet-stream") -> str:
        """An S3 conditional write: ``If-Match: <etag>``, or ``If-None-Match: *`` when ``etag`` is None."""
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfMatch": f'"{etag}"'} if etag is not None else {"IfNoneMatch": "*"}
        try:
            resp = self.client.put_object(
                Bucket=self.bucket, Key=_check_key(key), Body=data, ContentType=content_type, **condition
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                raise PreconditionFailed(f"s3://{self.bucket}/{key} changed since it was read ({code})") from exc
            raise self._error(exc, key, "write") from exc
        except BotoCoreError as exc:
            raise self._error(exc, key, "write") from exc
        return str(resp["ETag"]).strip('"')

    def list(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, prefix, "list") from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=_check_key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "delete") from exc


def writable_dir(path: Path, flag: str) -> Path:
    """``path`` as a folder we can write to (created if needed), or a ConfigError naming ``flag``."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path} is not a folder we can write to ({os_cause(exc)})") from exc
    return path


def open_store(url: str, s3_client: Any = None, *, flag: str | None = None) -> Store:
    """``s3://bucket`` or a directory path / ``file://`` URL. With ``flag`` (the option that named
    it, for the message), a folder must exist already: a mistyped path is a ConfigError, not an
    empty store."""
    where = f"{flag} {url}" if flag else url
    if url.startswith("s3://"):
        bucket = url[len("s3://") :].strip("/")
        if not bucket or "/" in bucket:
            raise ConfigError(f"{where}: expected s3://BUCKET (a bucket name, no key)")
        if s3_client is None:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError

            # A command waits seconds, not minutes, for an endpoint that does not answer.
            # (standard retries: 3 attempts, or AWS_MAX_ATTEMPTS)
            bounded = Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard"})
            try:
                s3_client = boto3.client("s3", config=bounded)
            except (BotoCoreError, ValueError) as exc:  # a bad AWS_ENDPOINT_URL, profile or region
                raise ConfigError(f"{where}: cannot make an S3 client ({aws_cause(exc)})") from exc
        return S3Store(s3_client, bucket)
    if url.startswith("file://"):
        url = url[len("file://") :]
    if flag and not Path(url).is_dir():
        what = "is not a folder" if Path(url).exists() else "does not exist"
        raise ConfigError(f"{where} {what} (a folder or s3://BUCKET)")
    return LocalStore(url)

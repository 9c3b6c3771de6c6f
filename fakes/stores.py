"""Store doubles shared by the tests: a wrapper that records writes and can fail like an unreachable bucket."""

from __future__ import annotations

from cdr_policy.storage import Store, StoredObject


class RecordingStore:
    """A Store wrapper that records writes (in order) and can be made to fail like an unreachable bucket."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.puts: list[str] = []
        self.polls = 0  # conditional reads (get_if_changed)
        self.down: Exception | None = None

    def _check(self) -> None:
        if self.down is not None:
            raise self.down

    def describe(self) -> str:
        return self.inner.describe()

    def get(self, key: str, *, max_bytes: int | None = None) -> StoredObject:
        self._check()
        return self.inner.get(key, max_bytes=max_bytes)

    def get_if_changed(self, key: str, etag: str | None, *, max_bytes: int | None = None) -> StoredObject | None:
        self.polls += 1
        self._check()
        return self.inner.get_if_changed(key, etag, max_bytes=max_bytes)

    def put_if(self, key: str, data: bytes, etag: str | None, content_type: str = "application/octet-stream") -> str:
        self._check()
        self.puts.append(key)
        return self.inner.put_if(key, data, etag, content_type)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self._check()
        self.puts.append(key)
        return self.inner.put(key, data, content_type)

    def list(self, prefix: str) -> list[str]:
        self._check()
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._check()
        self.inner.delete(key)

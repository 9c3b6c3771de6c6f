"""Fixtures of the feed tests: a state store in a temp dir, a fixed clock, the guard, a loopback
feed server over a temp directory and an HTTP client with short timeouts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cdr_policy.feeds.config import FeedConfig
from cdr_policy.feeds.download import make_client
from cdr_policy.storage import LocalStore
from fakes.feeds import FeedServer

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "state")


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    return root


@pytest.fixture
def server(www: Path) -> Iterator[FeedServer]:
    with FeedServer(root=www) as srv:
        yield srv


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with make_client(connect_timeout=2.0, read_timeout=2.0) as client:
        yield client


def feed_for(server: FeedServer, path: str, name: str, category: str = "attacker", **kw: Any) -> FeedConfig:
    """A feed of ``server``'s ``path``; ``kw``: its other settings (format, ttl_hours, ...)."""
    return FeedConfig(name=name, url=server.url(path), category=category, **kw)

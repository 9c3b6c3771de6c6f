"""Fixtures for the Qualys tests: a fake gateway on loopback, credentials, clients that never sleep."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cdr_policy.guards import NeverBlock
from cdr_policy.qualys.categories import load_mapping
from cdr_policy.qualys.client import QualysClient
from cdr_policy.qualys.credentials import Credentials
from tests.fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "events" / "findings"
# The sample pages are dated 2026-01-10; "now" just after them puts them all in a 24 h look-back.
SAMPLES_NOW = datetime(2026, 1, 11, 0, 0, tzinfo=UTC)


class FakeClock:
    """A monotonic clock that only moves when told to (or when a client "sleeps")."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def creds() -> Credentials:
    return Credentials(DEMO_USERNAME, DEMO_PASSWORD)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def guard() -> NeverBlock:
    return NeverBlock()


@pytest.fixture
def mapping():
    return load_mapping()


@pytest.fixture
def samples_gateway() -> Iterator[FakeQualysGateway]:
    with FakeQualysGateway(SAMPLES) as gw:
        yield gw


@pytest.fixture
def make_client(creds: Credentials, clock: FakeClock) -> Iterator[Callable[..., QualysClient]]:
    clients: list[QualysClient] = []

    def make(gw: FakeQualysGateway, **kwargs) -> QualysClient:
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("timeout", 5.0)
        client = QualysClient(gw.url, kwargs.pop("credentials", creds), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()

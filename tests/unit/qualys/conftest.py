"""Fixtures for the Qualys tests: a fake gateway on loopback, credentials, clients that never sleep."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cdr_policy.qualys.categories import CategoryMapping, load_mapping
from cdr_policy.qualys.client import QualysClient
from cdr_policy.qualys.credentials import Credentials
from fakes.clock import FakeClock
from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "events" / "findings"
# The sample pages are dated 2026-01-10; "now" just after them puts them all in a 24 h look-back.
SAMPLES_NOW = datetime(2026, 1, 11, 0, 0, tzinfo=UTC)


@pytest.fixture
def creds() -> Credentials:
    return Credentials(DEMO_USERNAME, DEMO_PASSWORD)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mapping() -> CategoryMapping:
    return load_mapping()


@pytest.fixture
def samples_gateway() -> Iterator[FakeQualysGateway]:
    with FakeQualysGateway(SAMPLES) as gw:
        yield gw


@pytest.fixture
def make_client(creds: Credentials, clock: FakeClock) -> Iterator[Callable[..., QualysClient]]:
    clients: list[QualysClient] = []

    def make(gw: FakeQualysGateway, **kwargs: Any) -> QualysClient:
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("timeout", 5.0)
        client = QualysClient(gw.url, kwargs.pop("credentials", creds), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()

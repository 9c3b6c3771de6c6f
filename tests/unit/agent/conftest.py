from __future__ import annotations

from collections.abc import Iterator

import pytest
import stamina

from tests.unit.bundle.conftest import (  # noqa: F401 (shared fixtures)
    approver,
    approver_pair,
    approvers,
    dist,
    key_pair,
    signer,
    state,
    verifier,
)


@pytest.fixture(autouse=True)
def _no_retry_backoff() -> Iterator[None]:
    """Retries happen without sleeping; three attempts, as in production."""
    with stamina.set_testing(True, attempts=3):
        yield

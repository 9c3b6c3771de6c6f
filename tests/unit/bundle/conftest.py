from __future__ import annotations

from pathlib import Path

import pytest

from cdr_policy.bundle.signing import LocalSigner, Verifier, generate_local_key
from cdr_policy.storage import LocalStore


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalSigner, Verifier]:
    path = tmp_path_factory.mktemp("keys") / "signing.pem"
    public = generate_local_key(path)
    return LocalSigner.from_file(path), Verifier.from_public_pem(public)


@pytest.fixture
def signer(key_pair: tuple[LocalSigner, Verifier]) -> LocalSigner:
    return key_pair[0]


@pytest.fixture
def verifier(key_pair: tuple[LocalSigner, Verifier]) -> Verifier:
    return key_pair[1]


@pytest.fixture
def state(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "state")


@pytest.fixture
def dist(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "dist")


@pytest.fixture(scope="session")
def approver_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalSigner, Verifier]:
    """The approver's key: a second principal, never the channel's signing key."""
    path = tmp_path_factory.mktemp("approver") / "approver.pem"
    public = generate_local_key(path)
    return LocalSigner.from_file(path), Verifier.from_public_pem(public)


@pytest.fixture
def approver(approver_pair: tuple[LocalSigner, Verifier]) -> LocalSigner:
    return approver_pair[0]


@pytest.fixture
def approvers(approver_pair: tuple[LocalSigner, Verifier]) -> Verifier:
    return approver_pair[1]

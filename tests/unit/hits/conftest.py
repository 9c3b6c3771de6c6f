"""The provenance index whose objects the export fixtures (``events/exports``) name."""

from __future__ import annotations

import gzip
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from cdr_policy.bundle.provenance import (
    Blocklist,
    Holder,
    ObjectRef,
    Port,
    Provenance,
    ProvenanceIndex,
    Rule,
)
from cdr_policy.bundle.signing import LocalSigner, Verifier, generate_local_key
from cdr_policy.netprefix import parse_canonical
from cdr_policy.netprefix.vector import V4, V6
from cdr_policy.storage import Store
from fakes import published

# Two hours after the last event of the fixtures.
NOW = datetime(2026, 1, 10, 7, 0, tzinfo=UTC)
EXPORTS = Path(__file__).resolve().parents[3] / "events" / "exports"
TP_CDR, TP_TI, TP_MINING = (
    "tp-cdr-blocklist-1f0c9a2e",
    "tp-threat-intel-blocklist-5d41c0aa",
    "tp-crypto-mining-aced04d5",
)
CCNP_CDR, CCNP_TI = "ccnp-cdr-blocklist-0c36df2c", "ccnp-threat-intel-blocklist-d0f6bbc4"
FINDING_C2 = "7f1c0a52-0004-4a8e-9c11-000000000004"
FINDING_PORT = "7f1c0a52-0007-4a8e-9c11-000000000007"
FINDINGS_MINING = ("7f1c0a52-0003-4a8e-9c11-000000000003", "7f1c0a52-0005-4a8e-9c11-000000000005")


def _arrays(prefixes: list[str]) -> tuple[V4, V6]:
    parsed = [parse_canonical(p) for p in prefixes]
    v4 = [p for p in parsed if p.version == 4]
    v6 = [p for p in parsed if p.version == 6]
    return (
        V4(np.array([p.network for p in v4], dtype=np.uint32), np.array([p.length for p in v4], dtype=np.uint8)),
        V6([p.network for p in v6], bytes(p.length for p in v6)),
    )


def _blocklist(group: str, prefixes: list[str], classes: list[int], *objects: tuple[str, str]) -> Blocklist:
    v4, v6 = _arrays(prefixes)
    holders = tuple(Holder(ObjectRef(engine, name), 0, len(prefixes)) for engine, name in objects)
    return Blocklist(group, v4, v6, np.array(classes, dtype=np.uint32), holders)


def fixture_index(detail: str = "workload", tp_cdr: str = TP_CDR) -> ProvenanceIndex:
    """The index the fixtures name (``tp_cdr``: the Tetragon CDR object's name, as a changed bundle
    renames it)."""
    return ProvenanceIndex(
        channel="prod",
        detail=detail,
        classes=(
            Provenance(("feodo",), (FINDING_C2,), ("C2_Communication", "c2"), "C2_Communication", "cdr"),
            Provenance(("feodo",), (), ("c2",), "c2", "feed"),
            Provenance(("tor",), (), ("tor",), "tor", "feed"),
            Provenance((), (FINDING_PORT,), ("Reverse_Shell",), "Reverse_Shell", "cdr"),
            Provenance((), FINDINGS_MINING, ("CryptoMiner_Execution",), "CryptoMiner_Execution", "cdr"),
        ),
        blocklists=(
            _blocklist("cdr", ["45.33.32.156/32"], [0], ("tetragon", tp_cdr), ("cilium", CCNP_CDR)),
            _blocklist(
                "threat-intel",
                ["185.100.0.0/24", "185.220.101.0/24", "2a0b:f4c0::/32"],
                [1, 2, 2],
                ("tetragon", TP_TI),
                ("cilium", CCNP_TI),
            ),
        ),
        ports=(Port("tcp/4444", 3, (ObjectRef("tetragon", tp_cdr),)),),
        rules=(Rule("crypto_mining", 4, (ObjectRef("tetragon", TP_MINING),)),),
    )


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A folder of our policies: the fixture index as ``provenance.json``."""
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "provenance.json").write_bytes(fixture_index().to_bytes())
    return folder


@pytest.fixture
def exports(tmp_path: Path) -> dict[str, list[Path]]:
    """The fixtures as a node holds them: the active file and the rotated one, gzipped."""
    out: dict[str, list[Path]] = {}
    for engine, name in (("tetragon", "tetragon"), ("cilium", "hubble")):
        active = tmp_path / f"{name}.log"
        shutil.copy(EXPORTS / f"{name}.log", active)
        rotated = tmp_path / f"{name}-2026-01-10T03-00-00.000.log.gz"
        with gzip.open(rotated, "wb") as gz:
            gz.write((EXPORTS / f"{name}-rotated.log").read_bytes())
        out[engine] = [rotated, active]
    return out


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalSigner, Verifier]:
    path = tmp_path_factory.mktemp("keys") / "signing.pem"
    public = generate_local_key(path)
    return LocalSigner.from_file(path), Verifier.from_public_pem(public)


def publish_index(
    dist: Store, signer: LocalSigner, index: ProvenanceIndex, *, now: datetime = NOW, **kwargs: int
) -> str:
    """``fakes.published.publish_index``, at the fixtures' time by default."""
    return published.publish_index(dist, signer, index, now=now, **kwargs)

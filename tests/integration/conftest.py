"""What the integration tests share: the demo's run (``make demo``'s deployment and flow, once per
session), and for the CLI tests a fake Qualys gateway serving the sample findings (one per test, so a
test can tell that nothing reached it) and the environment a user would set for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cdr_policy.timeutil import utcnow
from demo.runner import FINDINGS, PipelineResult, run_pipeline
from fakes.aws import moto_server
from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory, crds_dir: Path) -> Iterator[tuple[PipelineResult, list[str]]]:
    """``make demo``'s run (tests/integration/test_pipeline.py checks it); the moto server stays up for
    the tests that look at the stack afterwards. Yields the result and the lines it printed."""
    output = tmp_path_factory.mktemp("pipeline")
    lines: list[str] = []
    with moto_server() as server:
        result = run_pipeline(server, output, say=lines.append, crds_dir=crds_dir)
        yield result, lines


@pytest.fixture
def gateway() -> Iterator[FakeQualysGateway]:
    with FakeQualysGateway(FINDINGS, rebase_to=utcnow()) as gw:
        yield gw


@pytest.fixture
def env(gateway: FakeQualysGateway, tmp_path: Path) -> dict[str, str]:
    return {
        "QUALYS_USERNAME": DEMO_USERNAME,
        "QUALYS_PASSWORD": DEMO_PASSWORD,
        "QUALYS_GATEWAY_URL": gateway.url,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "HOME": str(tmp_path / "home"),
    }

"""What the CLI tests share: a fake Qualys gateway serving the sample findings (one per test, so a
test can tell that nothing reached it) and the environment a user would set for it."""

from __future__ import annotations

import pytest

from cdr_policy.timeutil import utcnow
from demo.runner import FINDINGS
from tests.fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway


@pytest.fixture
def gateway():
    with FakeQualysGateway(FINDINGS, rebase_to=utcnow()) as gw:
        yield gw


@pytest.fixture
def env(gateway, tmp_path):
    return {
        "QUALYS_USERNAME": DEMO_USERNAME,
        "QUALYS_PASSWORD": DEMO_PASSWORD,
        "QUALYS_GATEWAY_URL": gateway.url,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "HOME": str(tmp_path / "home"),
    }

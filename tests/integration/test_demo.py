"""``make demo`` (``python -m demo``) as a user runs it, with a template.yaml whose Publish policy lacks
``kms:Sign``: the deployment and the first three steps work, Publish fails with AccessDenied, and the
demo ends with one error line naming the step, the function and the cause, exit status 1. (With the
template as it is, the same run passes: tests/integration/test_pipeline.py checks what it produced.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fakes.lambda_runtime import REPO
from fakes.stack import TEMPLATE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIGN = """            - Sid: SignManifests
              Effect: Allow
              Action: kms:Sign
              Resource: !GetAtt SigningKey.Arn
"""


def test_without_kms_sign_the_demo_fails_at_publish_with_access_denied(tmp_path: Path) -> None:
    text = TEMPLATE.read_text()
    assert text.count(SIGN) == 1, "Publish's SignManifests statement as this test removes it"
    template = tmp_path / "template.yaml"
    template.write_text(text.replace(SIGN, ""))

    demo = subprocess.run(
        [sys.executable, "-m", "demo", "--template", str(template), "--output", str(tmp_path / "out"), "--crds", ""],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert demo.returncode == 1, demo.stdout + demo.stderr
    assert "[3/7] Render" in demo.stdout and "[4/7] Publish" in demo.stdout and "[5/7]" not in demo.stdout
    (line,) = demo.stderr.strip().splitlines()
    assert line.startswith("demo: error: [4/7] Publish failed: PublishFunction: ")
    assert "AccessDeniedException" in line and "is not authorized to perform: kms:Sign" in line
    assert "Traceback" not in demo.stderr

"""``make demo`` (``python -m demo``) as a user runs it, in a process of its own.

To success: every step, each channel's agent applied, the result it prints (time to protect
included) and exit status 0; what the pipeline produced is checked by tests/integration/test_pipeline.py,
this is what ``demo.__main__.main`` adds: what it prints and its exit status.

With a template.yaml whose Publish policy lacks ``kms:Sign``: the deployment and the first three steps
work, Publish fails with AccessDenied, and the demo ends with one error line naming the step, the
function and the cause, exit status 1."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from demo.runner import CHANNELS, PROTECT_ADDRESS
from fakes.lambda_runtime import REPO
from fakes.stack import TEMPLATE
from tests.conftest import SHARED

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIGN = """            - Sid: SignManifests
              Effect: Allow
              Action: kms:Sign
              Resource: !GetAtt SigningKey.Arn
"""
STEPS = ("CdrFetch", "FeedSync", "Render", "Publish", "Sync agents", "Promotion", "Hits")


def _demo(output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "demo", "--output", str(output), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_demo_runs_to_the_end_and_says_what_it_did(tmp_path: Path) -> None:
    crds = SHARED / "crds"
    output = tmp_path / "out"

    demo = _demo(output, "--crds", str(crds) if crds.is_dir() else "")

    out = demo.stdout
    assert demo.returncode == 0, out + demo.stderr
    assert "Traceback" not in out + demo.stderr
    places = [out.find(f"\n[{i}/7] {step}") for i, step in enumerate(STEPS, 1)]
    assert -1 not in places and places == sorted(places), "every step, in order"
    agents = out[places[4] : places[5]]
    for channel in CHANNELS:
        name = channel["name"]
        assert f"\n      {name:<8} applied: bundle " in agents, f"{name}'s agent applied in step 5"
        listed = re.search(
            rf"^  {name} \({channel['action']}\): (\d+) objects in {re.escape(str(output / name))}$", out, re.M
        )
        assert listed and int(listed[1]) > 0, f"the result lists what {name}'s agent wrote"
    assert f"Time to protect: a reverse shell to {PROTECT_ADDRESS} appears at the gateway; the staging agent" in out
    assert re.search(
        r"^  time to protect: \d+\.\d s from a new detection at the gateway to staging's cluster", out, re.M
    )
    assert re.search(r"^  drift repair: .+ deleted by hand, put back \(repaired\)$", out, re.M)
    assert "; fleet total agrees with the per-cluster counts" in out
    if crds.is_dir():
        assert re.search(
            rf"^  Validated \d+ objects against the CRDs in {re.escape(str(crds))} .*: 0 errors", out, re.M
        )
    assert "\nTry: .venv/bin/cdr-policy validate demo-output/prod" in out


def test_without_kms_sign_the_demo_fails_at_publish_with_access_denied(tmp_path: Path) -> None:
    text = TEMPLATE.read_text()
    assert text.count(SIGN) == 1, "Publish's SignManifests statement as this test removes it"
    template = tmp_path / "template.yaml"
    template.write_text(text.replace(SIGN, ""))

    demo = _demo(tmp_path / "out", "--template", str(template), "--crds", "")

    assert demo.returncode == 1, demo.stdout + demo.stderr
    assert "[3/7] Render" in demo.stdout and "[4/7] Publish" in demo.stdout and "[5/7]" not in demo.stdout
    (line,) = demo.stderr.strip().splitlines()
    assert line.startswith("demo: error: [4/7] Publish failed: PublishFunction: ")
    assert "AccessDeniedException" in line and "is not authorized to perform: kms:Sign" in line
    assert "Traceback" not in demo.stderr

"""The template through the real tools: ``sam validate --lint``, ``cfn-lint``, the SAM translator, and
``sam build`` (which needs the runtime's interpreter, python3.12, and PyPI for the layer's requirements)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.infra.support import BIN, REGION, run, tool

pytestmark = pytest.mark.infra


def test_sam_validate_lint() -> None:
    result = run(tool("sam"), "validate", "--lint", "--template-file", "template.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_cfn_lint_including_informational_checks() -> None:
    result = run(tool("cfn-lint"), "--include-checks", "I", "--", "template.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_translated_template_lints(translated: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "translated.json"
    path.write_text(json.dumps(translated))
    # W1020: the translator itself wraps the resolved LayerName in a Fn::Sub without variables.
    result = run(tool("cfn-lint"), "--include-checks", "I", "--ignore-checks", "W1020", "--", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_translated_roles_have_no_broad_managed_policies(translated: dict[str, Any]) -> None:
    roles = {k: v for k, v in translated["Resources"].items() if v["Type"] == "AWS::IAM::Role"}
    functions = {f"{n}FunctionRole" for n in ("CdrFetch", "FeedSync", "Render", "Publish", "HitsRollup")}
    assert set(roles) == functions | {"ApproverRole"}
    for name, role in roles.items():
        managed = {arn.rsplit("/", 1)[-1] for arn in role["Properties"].get("ManagedPolicyArns", [])}
        # Added by SAM: logs, X-Ray (Tracing: Active) and, for SQS event sources, the poller policy.
        assert managed <= {
            "AWSLambdaBasicExecutionRole",
            "AWSXrayWriteOnlyAccess",
            "AWSLambdaSQSQueueExecutionRole",
        }
        assert not any("FullAccess" in arn for arn in managed), name
    mappings = [v for v in translated["Resources"].values() if v["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert len(mappings) == 2
    for mapping in mappings:
        assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_translated_failure_destinations_can_be_written(translated: dict[str, Any]) -> None:
    """SAM turns each on-failure destination into an EventInvokeConfig and grants the function's role
    sqs:SendMessage on exactly that queue (the role, not a queue policy, is what Lambda uses)."""
    resources = translated["Resources"]
    configs = {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::Lambda::EventInvokeConfig"}
    scheduled = {"CdrFetchFunction", "FeedSyncFunction", "HitsRollupFunction"}
    assert {c["FunctionName"]["Ref"] for c in configs.values()} == scheduled
    queue = {"Fn::GetAtt": ["ScheduledRunFailureQueue", "Arn"]}
    for config in configs.values():
        assert config["DestinationConfig"]["OnFailure"]["Destination"] == queue
        role = resources[f"{config['FunctionName']['Ref']}Role"]["Properties"]
        statements = [s for p in role["Policies"] if "PolicyDocument" in p for s in p["PolicyDocument"]["Statement"]]
        assert {"Action": "sqs:SendMessage", "Effect": "Allow", "Resource": queue} in statements


def _python312() -> str | None:
    """A directory holding a working python3.12 (the venv's own interpreter first)."""
    candidates = [str(BIN), *os.environ.get("PATH", "").split(os.pathsep)]
    for directory in candidates:
        exe = Path(directory) / "python3.12"
        if not exe.exists():
            continue
        probe = subprocess.run(
            [str(exe), "-c", "import sys, pip; assert sys.version_info[:2] == (3, 12)"],
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:  # a pyenv shim without a selected version fails here
            return directory
    return None


@pytest.mark.slow
def test_sam_build(tmp_path: Path) -> None:
    python_dir = _python312()
    if python_dir is None:
        pytest.skip("sam build needs python3.12 (with pip) on PATH: the Lambda runtime's interpreter")
    build = tmp_path / "build"
    result = run(
        tool("sam"),
        "build",
        "--template-file",
        "template.yaml",
        "--build-dir",
        str(build),
        "--cache-dir",
        str(tmp_path / "cache"),
        timeout=600,
        env={"PATH": os.pathsep.join([python_dir, str(BIN), os.environ.get("PATH", "")])},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    layer = build / "SharedLayer" / "python"
    assert (layer / "cdr_policy" / "stages" / "render.py").is_file()
    assert (layer / "aws_lambda_powertools").is_dir()
    # layers/shared/Makefile: bytecode for every module (/opt is read-only: Lambda cannot write it),
    # hash-based and unchecked (the zip keeps no exact source timestamps), none from the source tree.
    for source in layer.rglob("*.py"):
        pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-312.pyc"
        assert pyc.is_file(), f"no bytecode for {source.relative_to(layer)}"
        assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b01, f"{pyc} is not unchecked-hash"
    for pyc in (layer / "cdr_policy").rglob("*.pyc"):
        assert (pyc.parent.parent / f"{pyc.name.split('.')[0]}.py").is_file(), f"{pyc}: no source"
    for function in ("CdrFetchFunction", "FeedSyncFunction", "RenderFunction", "PublishFunction", "HitsRollupFunction"):
        assert sorted(p.name for p in (build / function).iterdir()) == ["app.py"]
        # Import each handler as Lambda would: its folder, then the layer, before site-packages.
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, app, cdr_policy; assert callable(app.lambda_handler); "
                "assert cdr_policy.__file__.startswith(sys.argv[1]), cdr_policy.__file__",
                str(layer),
            ],
            cwd=build / function,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(build / function), str(layer)]),
                "AWS_DEFAULT_REGION": REGION,
            },
            capture_output=True,
            text=True,
            check=False,
        )
        assert probe.returncode == 0, f"{function}: {probe.stderr}"

"""Helpers of the infrastructure tests: the repository, the command-line tools of the virtualenv, and a
resolver for the few intrinsic functions the template uses in names and environment variables.
(Templates are read with fakes/stack.py's ``load_template``.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ACCOUNT, REGION = "123456789012", "us-east-1"


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable} (pip install -e '.[dev]')")
    return str(path)


def run(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool from the repository root, offline-friendly (no SAM telemetry), capturing output."""
    full_env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": REGION, **(env or {})}
    return subprocess.run(args, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)


CHECKOV = Path(os.environ.get("CHECKOV", REPO / ".venv-tools" / "bin" / "checkov"))


def checkov(path: Path) -> dict[str, Any]:
    """checkov's JSON report on a CloudFormation template (from its own virtualenv, ``make tools``)."""
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV}: run `make tools` (make test does)")
    result = run(
        str(CHECKOV), "-f", str(path), "--framework", "cloudformation", "--skip-download", "-o", "json", timeout=300
    )
    assert result.returncode in (0, 1), result.stderr  # 1: some check failed
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    return report


NO_VALUE = "<AWS::NoValue>"  # a property or variable left out


class Resolver:
    """Resolves ``Ref`` / ``Fn::Sub`` / ``Fn::GetAtt`` as a deployment of Environment=dev in ``ACCOUNT`` and
    ``REGION`` would (parameters take their defaults, other resources a recognisable placeholder)."""

    def __init__(self, template: dict[str, Any], overrides: dict[str, str] | None = None) -> None:
        self.parameters = {name: str(p.get("Default", "")) for name, p in template.get("Parameters", {}).items()}
        self.parameters.update(overrides or {})
        self.parameters.update({"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": "aws"})
        self.resources = template["Resources"]
        self.conditions = template.get("Conditions", {})

    def _name(self, name: str) -> str:
        if name in self.parameters:
            return self.parameters[name]
        if "." in name:
            logical, attribute = name.split(".", 1)
            return self.get_att(logical, attribute)
        return self.ref(name)

    def ref(self, logical: str) -> str:
        resource = self.resources[logical]
        props = resource.get("Properties", {})
        for key in ("BucketName", "QueueName", "TableName", "FunctionName", "TopicName", "LogGroupName"):
            if key in props:
                value = self(props[key])
                if resource["Type"] == "AWS::SQS::Queue":
                    return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{value}"
                return value
        return f"<{logical}>"

    def get_att(self, logical: str, attribute: str) -> str:
        resource = self.resources[logical]
        if resource["Type"] == "AWS::SQS::Queue" and attribute == "QueueName":
            return self(resource["Properties"]["QueueName"])
        if resource["Type"] == "AWS::SQS::Queue" and attribute == "Arn":
            return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{self(resource['Properties']['QueueName'])}"
        if resource["Type"] == "AWS::S3::Bucket" and attribute == "Arn":
            return f"arn:aws:s3:::{self(resource['Properties']['BucketName'])}"
        return f"<{logical}.{attribute}>"

    def __call__(self, value: Any) -> str:
        if isinstance(value, str | int | float):
            return str(value)
        if isinstance(value, dict) and len(value) == 1:
            ((fn, arg),) = value.items()
            if fn == "Ref" and arg == "AWS::NoValue":
                return NO_VALUE
            if fn == "Ref":
                return self._name(arg)
            if fn == "Fn::GetAtt":
                logical, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(logical, attribute)
            if fn == "Fn::Sub" and isinstance(arg, str):
                return re.sub(r"\$\{([^}]+)\}", lambda m: self._name(m.group(1)), arg)
            if fn == "Fn::If":
                condition, when_true, when_false = arg
                return self(when_true if self.condition(condition) else when_false)
        raise AssertionError(f"cannot resolve {value!r}")

    def condition(self, name: str) -> bool:
        """A condition of the template (``Fn::Not``, ``Fn::Equals`` of references and strings)."""
        return self._truth(self.conditions[name])

    def _truth(self, value: Any) -> bool:
        ((fn, arg),) = value.items()
        if fn == "Fn::Not":
            return not self._truth(arg[0])
        if fn == "Fn::Equals":
            return self(arg[0]) == self(arg[1])
        if fn == "Condition":
            return self.condition(arg)
        raise AssertionError(f"cannot evaluate {value!r}")

"""Fixtures of the infrastructure tests: the SAM template as plain data (intrinsic functions as
``{"Ref": ...}`` / ``{"Fn::Sub": ...}``) and a resolver of its names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.infra.support import REPO, Resolver


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml

    # Round-trip through JSON: plain dicts and lists instead of cfn-lint's node types.
    return json.loads(json.dumps(cfn_yaml.load(str(REPO / "template.yaml"))))


@pytest.fixture(scope="session")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


@pytest.fixture(scope="session")
def functions(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}


@pytest.fixture(scope="session")
def resolve(template: dict[str, Any]) -> Resolver:
    return Resolver(template)

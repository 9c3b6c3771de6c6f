"""Fixtures of the infrastructure tests: the SAM template as plain data (intrinsic functions as
``{"Ref": ...}`` / ``{"Fn::Sub": ...}``) and a resolver of its names."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from tests.infra.support import REGION, REPO, Resolver, load_cfn


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_cfn(REPO / "template.yaml")


@pytest.fixture(scope="session")
def cluster_access() -> dict[str, Any]:
    """deploy/cluster-access/template.yaml, the stack each cluster gets, as plain data."""
    return load_cfn(REPO / "deploy" / "cluster-access" / "template.yaml")


@pytest.fixture(scope="session")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


@pytest.fixture(scope="session")
def functions(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}


@pytest.fixture(scope="session")
def resolve(template: dict[str, Any]) -> Resolver:
    return Resolver(template)


@pytest.fixture(scope="session")
def translated(template: dict[str, Any]) -> dict[str, Any]:
    """The template as CloudFormation receives it after ``sam package`` and the SAM transform."""
    from samtranslator.translator.transform import transform

    class ManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    packaged = copy.deepcopy(template)
    for resource in packaged["Resources"].values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = f"s3://artifacts/{props[key].strip('/')}.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    return transform(packaged, {}, ManagedPolicies())

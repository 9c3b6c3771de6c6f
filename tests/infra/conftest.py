"""Fixtures of the infrastructure tests: the SAM template as plain data (intrinsic functions as
``{"Ref": ...}`` / ``{"Fn::Sub": ...}``) and a resolver of its names."""

from __future__ import annotations

from typing import Any

import pytest

from fakes.stack import code_folders, load_template, sam_transform
from tests.infra.support import REPO, Resolver


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_template(REPO / "template.yaml")


@pytest.fixture(scope="session")
def cluster_access() -> dict[str, Any]:
    """deploy/cluster-access/template.yaml, the stack each cluster gets, as plain data."""
    return load_template(REPO / "deploy" / "cluster-access" / "template.yaml")


@pytest.fixture(scope="session")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = template["Resources"]
    return value


@pytest.fixture(scope="session")
def functions(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}


@pytest.fixture(scope="session")
def resolve(template: dict[str, Any]) -> Resolver:
    return Resolver(template)


@pytest.fixture(scope="session")
def translated(template: dict[str, Any]) -> dict[str, Any]:
    """The template as CloudFormation receives it after ``sam package`` and the SAM transform."""
    folders = set(code_folders(template).values())
    return sam_transform(template, {f: f"s3://artifacts/{f.strip('/')}.zip" for f in folders})

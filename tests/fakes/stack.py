"""template.yaml deployed on a moto server (tests/fakes/moto_server.py) the way ``sam deploy`` deploys it.

``sam package``'s part: each ``CodeUri``/``ContentUri`` folder zipped into an artifacts bucket and the
template pointed at it; ``sam deploy``'s: the SAM transform (samtranslator, as SAM CLI runs it), the
parameters checked against their constraints (CloudFormation refuses a value outside them; moto does
not check), then CloudFormation's ``CreateStack``. Everything else is read back from the deployed
stack: its outputs, its resources and the functions' configuration (tests/fakes/lambda_runtime.py).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes.aws import ACCOUNT, REGION, REPO, MotoServer

TEMPLATE = REPO / "template.yaml"
CLUSTER_ACCESS = REPO / "deploy" / "cluster-access" / "template.yaml"
ARTIFACTS_BUCKET = f"cdr-policy-sam-artifacts-{ACCOUNT}-{REGION}"
CODE_KEYS = ("CodeUri", "ContentUri")


class StackError(RuntimeError):
    """The stack could not be deployed (a parameter CloudFormation would refuse, a failed create)."""


def load_template(path: Path) -> dict[str, Any]:
    """A CloudFormation template as plain data (intrinsic functions as ``{"Ref": ...}`` /
    ``{"Fn::Sub": ...}``): cfn-lint's reader, round-tripped through JSON for plain dicts and lists."""
    from cfnlint.decode import cfn_yaml

    return dict(json.loads(json.dumps(cfn_yaml.load(str(path)))))


def sam_transform(
    template: dict[str, Any], locations: dict[str, str], parameters: dict[str, str] | None = None
) -> dict[str, Any]:
    """``template`` as CloudFormation runs it: every code folder replaced by its location (``locations``:
    folder -> s3://bucket/key, as ``sam package`` writes them), then the SAM transform with the stack's
    ``parameters`` (CloudFormation transforms with them: SAM resolves some names, a layer's among them)."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicyNames:
        """The template names managed policies by ARN only (samtranslator asks IAM for names)."""

        def load(self) -> dict[str, str]:
            return {}

    packaged = copy.deepcopy(template)
    for resource in packaged["Resources"].values():
        properties = resource.get("Properties", {})
        for key in CODE_KEYS:
            if key in properties:
                properties[key] = locations[properties[key]]
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    return dict(transform(packaged, parameters or {}, NoManagedPolicyNames()))


def code_folders(template: dict[str, Any]) -> dict[str, str]:
    """Logical id -> the code folder (``CodeUri``/``ContentUri``) of each function and layer."""
    return {
        logical: props[key]
        for logical, resource in template["Resources"].items()
        for props in [resource.get("Properties", {})]
        for key in CODE_KEYS
        if key in props
    }


def _zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def package(server: MotoServer, template: dict[str, Any]) -> dict[str, str]:
    """``sam package``: each code folder zipped into the artifacts bucket; folder -> its S3 location."""
    s3 = server.client("s3")
    s3.create_bucket(Bucket=ARTIFACTS_BUCKET)
    locations = {}
    for folder in sorted(set(code_folders(template).values())):
        body = _zip(REPO / folder)
        key = f"{folder.strip('/')}/{hashlib.sha256(body).hexdigest()[:32]}.zip"
        s3.put_object(Bucket=ARTIFACTS_BUCKET, Key=key, Body=body)
        locations[folder] = f"s3://{ARTIFACTS_BUCKET}/{key}"
    return locations


def check_parameters(template: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    """The parameters CloudFormation would resolve (defaults filled in), or StackError for a value it
    refuses (unknown name, missing value, outside AllowedValues, AllowedPattern, Min/MaxValue, Min/MaxLength)."""
    declared = template.get("Parameters", {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise StackError(f"parameters {', '.join(unknown)} are not declared by the template")
    resolved = {}
    for name, spec in declared.items():
        if name not in given and "Default" not in spec:
            raise StackError(f"parameter {name} has no value and no default")
        value = str(given.get(name, spec.get("Default")))
        problem = None
        if "AllowedValues" in spec and value not in [str(v) for v in spec["AllowedValues"]]:
            problem = f"not one of {spec['AllowedValues']}"
        elif "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], value):
            problem = f"does not match {spec['AllowedPattern']}"
        elif spec.get("Type") == "Number" and not (
            float(spec.get("MinValue", "-inf")) <= float(value) <= float(spec.get("MaxValue", "inf"))
        ):
            problem = f"outside {spec.get('MinValue')}..{spec.get('MaxValue')}"
        elif not int(spec.get("MinLength", 0)) <= len(value) <= int(spec.get("MaxLength", 1 << 30)):
            problem = "of a length outside MinLength..MaxLength"
        if problem:
            raise StackError(f"parameter {name}={value!r} is {problem}")
        resolved[name] = value
    return resolved


@dataclass(frozen=True)
class Stack:
    """A deployed stack: its outputs and resources, read from CloudFormation."""

    server: MotoServer
    name: str
    template: dict[str, Any]  # as written (before the transform)
    deployed: dict[str, Any]  # as CloudFormation received it (after the transform)
    parameters: dict[str, str]
    outputs: dict[str, str]
    resources: dict[str, tuple[str, str]]  # logical id -> (type, physical id)

    def client(self, service: str) -> Any:
        """A client with the administrator's credentials (the operator's, not a function's)."""
        return self.server.client(service)

    def physical(self, logical: str) -> str:
        return self.resources[logical][1]

    def of_type(self, resource_type: str) -> dict[str, str]:
        return {logical: physical for logical, (kind, physical) in self.resources.items() if kind == resource_type}

    @property
    def state_bucket(self) -> str:
        return self.outputs["StateBucketName"]

    @property
    def dist_bucket(self) -> str:
        return self.outputs["DistributionBucketName"]

    @property
    def signing_key_arn(self) -> str:
        return self.outputs["SigningKeyArn"]


def deploy(
    server: MotoServer,
    *,
    name: str,
    parameters: dict[str, str] | None = None,
    template: Path = TEMPLATE,
) -> Stack:
    """Package and transform (a SAM template) and create stack ``name``."""
    body = load_template(template)
    resolved = check_parameters(body, parameters or {})
    deployed = sam_transform(body, package(server, body), resolved) if "Transform" in body else body
    cloudformation = server.client("cloudformation")
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=json.dumps(deployed),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in resolved.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    (described,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
    if described["StackStatus"] != "CREATE_COMPLETE":
        raise StackError(f"stack {name}: {described['StackStatus']} ({described.get('StackStatusReason', '')})")
    # moto lists a resource whose Condition is false as an entry without a logical id: not created.
    resources = [
        r for r in cloudformation.describe_stack_resources(StackName=name)["StackResources"] if "LogicalResourceId" in r
    ]
    return Stack(
        server=server,
        name=name,
        template=body,
        deployed=deployed,
        parameters=resolved,
        outputs={o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
        resources={r["LogicalResourceId"]: (r["ResourceType"], r.get("PhysicalResourceId", "")) for r in resources},
    )

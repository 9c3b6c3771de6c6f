"""deploy/cluster-access/template.yaml: each cluster reads only its channel and writes only its own status.

Read from the templates (what is granted, to whom), then exercised on a moto server that enforces IAM:
the template deployed through moto's CloudFormation for four clusters, bundles published by the real
Publish stage, and the real agent (``cdr-policy agent --assume-role``) run with each cluster's own
credentials. Two clusters converge on their own channels; a third one, of the same fleet, can neither read
a channel it was not given nor write another cluster's status, and its forged status does not show in
``fleet status``; a cluster outside AWS gets its role through ``credential_process`` (Roles Anywhere's
``aws_signing_helper``) and converges too.

What moto cannot check is read from the template instead: trust conditions (session name, certificate
CN, trust anchor) and the bucket policy's guard on ``status/``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cdr_policy import layout
from cdr_policy.bundle.signing import LocalSigner, generate_local_key
from cdr_policy.cli import main as cdr_policy
from cdr_policy.cli.fleet import fleet_status
from cdr_policy.stages.publish import publish_bundle
from cdr_policy.storage import S3Store, open_store
from cdr_policy.timeutil import utcnow
from fakes.aws import REGION, MotoServer, moto_server
from fakes.stack import load_template
from tests.infra.support import ACCOUNT, REPO, checkov, run, tool
from tests.unit.bundle.factory import ips, network_bundle, render

pytestmark = pytest.mark.infra

TEMPLATE = REPO / "deploy" / "cluster-access" / "template.yaml"
BUCKET = "cdr-policy-dev-dist-123456789012-us-east-1"
TRUST_ANCHOR = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:trust-anchor/0f0e0d0c-0b0a-4908-8706-050403020100"


# -- what the templates say ---------------------------------------------------------------------------


def test_a_cluster_in_aws_is_trusted_through_its_agent_role_and_its_id(cluster_access: dict[str, Any]) -> None:
    trust = cluster_access["Resources"]["ClusterRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    condition, in_aws, outside_aws = trust["Fn::If"]
    assert condition == "FromAws"
    assert in_aws == [
        {
            "Sid": "AgentRole",
            "Effect": "Allow",
            "Principal": {"AWS": {"Ref": "AgentRoleArn"}},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:RoleSessionName": {"Ref": "ClusterId"}}},
        }
    ]
    assert outside_aws == [
        {
            "Sid": "ClusterCertificate",
            "Effect": "Allow",
            "Principal": {"Service": "rolesanywhere.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
            "Condition": {
                "ArnEquals": {"aws:SourceArn": {"Ref": "TrustAnchorArn"}},
                "StringEquals": {"aws:PrincipalTag/x509Subject/CN": {"Ref": "ClusterId"}},
            },
        }
    ]
    assert set(cluster_access["Rules"]) == {"OneWayIn"}


def test_the_cluster_role_may_read_one_prefix_and_write_one_key(cluster_access: dict[str, Any]) -> None:
    role = cluster_access["Resources"]["ClusterRole"]["Properties"]
    assert set(role) == {"RoleName", "Description", "MaxSessionDuration", "AssumeRolePolicyDocument", "Policies"}
    (policy,) = role["Policies"]
    statements = policy["PolicyDocument"]["Statement"]
    assert [(s["Effect"], s["Action"]) for s in statements] == [("Allow", "s3:GetObject"), ("Allow", "s3:PutObject")]
    assert role["RoleName"] == {"Fn::Sub": "cdr-policy-${Environment}-cluster-${ClusterId}"}
    # the resources themselves are compared with cdr_policy.layout in test_layout_grants.py


def test_the_hits_readers_role_reads_the_channel_and_writes_nothing(
    resources: dict[str, Any], cluster_access: dict[str, Any]
) -> None:
    role = cluster_access["Resources"]["ReaderRole"]
    assert role["Condition"] == "HasReaders"
    (policy,) = role["Properties"]["Policies"]
    (statement,) = policy["PolicyDocument"]["Statement"]
    bucket = "arn:${AWS::Partition}:s3:::${DistributionBucket}/"
    assert (statement["Effect"], statement["Action"]) == ("Allow", "s3:GetObject")
    assert statement["Resource"] == {"Fn::Sub": bucket + layout.channel_prefix("${Channel}") + "*"}
    name = role["Properties"]["RoleName"]["Fn::Sub"]
    assert name == "cdr-policy-${Environment}-reader-${ClusterId}"
    (guard,) = [
        s
        for s in resources["DistributionBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        if s["Sid"] == "StatusOnlyFromClusterRoles"
    ]
    allowed = guard["Condition"]["ArnNotLike"]["aws:PrincipalArn"]["Fn::Sub"].rsplit("/", 1)[1]
    assert not fnmatch.fnmatch(name.replace("${ClusterId}", "c1"), allowed.replace("${Environment}", "${Environment}"))
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]["Fn::If"]
    assert trust[1][0]["Condition"] == {"StringEquals": {"sts:RoleSessionName": {"Ref": "ClusterId"}}}
    assert trust[2][0]["Condition"]["StringEquals"] == {
        "aws:PrincipalTag/x509Subject/CN": {"Fn::Sub": "${ClusterId}-reader"}
    }


def test_the_bucket_policy_keeps_status_writes_to_cluster_roles(
    resources: dict[str, Any], cluster_access: dict[str, Any]
) -> None:
    statements = resources["DistributionBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert not [s for s in statements if s["Effect"] == "Allow"], "the bucket policy grants nothing"
    (guard,) = [s for s in statements if s["Sid"] == "StatusOnlyFromClusterRoles"]
    assert (guard["Effect"], guard["Principal"], guard["Action"]) == ("Deny", "*", "s3:PutObject")
    assert guard["Resource"] == {"Fn::Sub": "${DistributionBucket.Arn}/" + layout.STATUS + "*"}
    role_name = cluster_access["Resources"]["ClusterRole"]["Properties"]["RoleName"]["Fn::Sub"]
    allowed = guard["Condition"]["ArnNotLike"]["aws:PrincipalArn"]["Fn::Sub"]
    assert allowed == "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/" + role_name.replace("${ClusterId}", "*")


def test_the_security_tools_pass_the_cluster_template() -> None:
    lint = run(tool("cfn-lint"), "--include-checks", "I", "--", str(TEMPLATE))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    report = checkov(TEMPLATE)
    assert report["summary"]["failed"] == 0 and report["results"]["failed_checks"] == []
    assert report["summary"]["resource_count"] == 4 and report["summary"]["passed"] >= 10


# -- the same on a moto server that enforces IAM --------------------------------------------------------


class Fleet:
    def __init__(self, server: MotoServer, work: Path) -> None:
        self.server, self.work = server, work
        self.cfn, self.iam = self.client("cloudformation"), self.client("iam")
        self.dist = S3Store(self.client("s3"), BUCKET)
        self.keys: dict[str, dict[str, str]] = {}
        self.roles: dict[str, str] = {}
        self.digests: dict[str, str] = {}
        self.public_key = work / "signing-public.pem"
        self.public_key.write_text(generate_local_key(work / "signing.pem"))

    def client(self, service: str, **credentials: str) -> Any:
        return self.server.client(service, **credentials)

    def agent_user(self, cluster: str) -> str:
        """The cluster's own identity (an IAM user here; a role with IRSA in a cluster): it may only assume."""
        name = f"{cluster}-agent"
        self.iam.create_user(UserName=name)
        assume = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
        }
        self.iam.put_user_policy(UserName=name, PolicyName="assume", PolicyDocument=json.dumps(assume))
        key = self.iam.create_access_key(UserName=name)["AccessKey"]
        self.keys[cluster] = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        return f"arn:aws:iam::{ACCOUNT}:user/{name}"

    def deploy(self, cluster: str, channel: str, **way_in: str) -> str:
        body = load_template(TEMPLATE)
        if "TrustAnchorArn" in way_in:  # moto's CloudFormation has no Roles Anywhere: leave the profile out
            del body["Resources"]["CertificateProfile"], body["Outputs"]["CertificateProfileArn"]
        parameters = {"DistributionBucket": BUCKET, "ClusterId": cluster, "Channel": channel, **way_in}
        self.cfn.create_stack(
            StackName=f"cdr-policy-dev-cluster-{cluster}",
            TemplateBody=json.dumps(body),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
            Capabilities=["CAPABILITY_NAMED_IAM"],
        )
        (stack,) = self.cfn.describe_stacks(StackName=f"cdr-policy-dev-cluster-{cluster}")["Stacks"]
        assert stack["StackStatus"] == "CREATE_COMPLETE"
        role: str = next(o["OutputValue"] for o in stack["Outputs"] if o["OutputKey"] == "ClusterRoleArn")
        self.roles[cluster] = role
        return role

    def publish(self, channel: str, first_ip: int) -> None:
        state = open_store(str(self.work / "state"))
        now = utcnow()
        digest = render(state, network_bundle(ips(first_ip, 5), channel=channel), channel=channel, created=now)
        publish_bundle(
            state,
            self.dist,
            channel=channel,
            digest=digest,
            signer=LocalSigner.from_file(self.work / "signing.pem"),
            now=now,
            change_budget_percent=100,
        )
        self.digests[channel] = digest

    def agent(
        self, cluster: str, channel: str, *, assume_role: str | None, env: dict[str, str], folder: str = ""
    ) -> int:
        """``cdr-policy agent --once`` as the cluster runs it, with only ``env``'s credentials, applying to
        a folder (``folder``, else ``<cluster>-<channel>``)."""
        out = self.work / "clusters" / (folder or f"{cluster}-{channel}")
        argv = ["agent", "--bucket", f"s3://{BUCKET}", "--channel", channel, "--cluster-id", cluster]
        argv += ["--public-key", str(self.public_key), "--output-dir", str(out / "objects")]
        argv += ["--state-dir", str(out / "state"), "--once", "--metrics-port", "0"]
        if assume_role is not None:
            argv += ["--assume-role", assume_role]
        with _environment({**self.server.env, **env}):
            return cdr_policy(argv)

    def keys_env(self, cluster: str) -> dict[str, str]:
        return {k.upper(): v for k, v in self.keys[cluster].items()}

    def applied(self, folder: str) -> set[str]:
        objects = self.work / "clusters" / folder / "objects"
        return {p.name for p in objects.rglob("*.yaml")} if objects.exists() else set()


class _environment:
    """The process environment with only the given AWS settings (no other credentials to fall back on)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def __enter__(self) -> None:
        self.saved = dict(os.environ)
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            del os.environ[name]
        os.environ.update(self.values)

    def __exit__(self, *exc: object) -> None:
        os.environ.clear()
        os.environ.update(self.saved)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with moto_server() as server:
        f = Fleet(server, tmp_path_factory.mktemp("cluster-access"))
        f.client("s3").create_bucket(Bucket=BUCKET)
        f.deploy("cluster-a", "staging", AgentRoleArn=f.agent_user("cluster-a"))
        f.deploy("cluster-b", "prod", AgentRoleArn=f.agent_user("cluster-b"))
        f.deploy("cluster-c", "prod", AgentRoleArn=f.agent_user("cluster-c"))
        f.deploy("cluster-d", "staging", TrustAnchorArn=TRUST_ANCHOR)
        f.publish("staging", 0)
        f.publish("prod", 100)
        yield f


def test_two_clusters_converge_each_on_its_own_channel(fleet: Fleet) -> None:
    a = fleet.agent("cluster-a", "staging", assume_role=fleet.roles["cluster-a"], env=fleet.keys_env("cluster-a"))
    b = fleet.agent("cluster-b", "prod", assume_role=fleet.roles["cluster-b"], env=fleet.keys_env("cluster-b"))

    assert (a, b) == (0, 0)
    assert fleet.applied("cluster-a-staging") and fleet.applied("cluster-b-prod")
    rows = {r.cluster_id: r for r in fleet_status(fleet.dist, now=utcnow())}
    assert (rows["cluster-a"].channel, rows["cluster-a"].applied_digest) == ("staging", fleet.digests["staging"])
    assert (rows["cluster-b"].channel, rows["cluster-b"].applied_digest) == ("prod", fleet.digests["prod"])
    assert not rows["cluster-a"].behind and not rows["cluster-b"].behind


def test_a_cluster_cannot_read_a_channel_it_was_not_given(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    code = fleet.agent("cluster-a", "prod", assume_role=fleet.roles["cluster-a"], env=fleet.keys_env("cluster-a"))

    assert code == 1
    assert "AccessDenied" in capsys.readouterr().out
    assert fleet.applied("cluster-a-prod") == set()


def test_without_its_cluster_role_an_agent_reads_nothing(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet.agent("cluster-b", "prod", assume_role=None, env=fleet.keys_env("cluster-b")) == 1
    assert "AccessDenied" in capsys.readouterr().out


def test_assume_role_that_cannot_work_is_one_clear_error_at_start(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    nothing = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null"}
    nothing["AWS_SHARED_CREDENTIALS_FILE"] = "/dev/null"

    code = fleet.agent("cluster-a", "staging", assume_role=fleet.roles["cluster-a"], env=nothing, folder="no-creds")

    assert code == 2
    assert "this pod has no AWS credentials to assume it with" in capsys.readouterr().err
    assert fleet.applied("no-creds") == set()
    one_letter = fleet.agent("a", "staging", assume_role=fleet.roles["cluster-a"], env=fleet.keys_env("cluster-a"))
    assert one_letter == 2 and "which AWS wants 2 to 64 characters long" in capsys.readouterr().err


def test_a_cluster_cannot_write_another_clusters_status_and_the_fleet_view_does_not_show_it(fleet: Fleet) -> None:
    fleet.agent("cluster-a", "staging", assume_role=fleet.roles["cluster-a"], env=fleet.keys_env("cluster-a"))
    before = fleet.dist.get(layout.status_key("cluster-a")).data
    sts = fleet.client("sts", **fleet.keys["cluster-c"])
    creds = sts.assume_role(RoleArn=fleet.roles["cluster-c"], RoleSessionName="cluster-c")["Credentials"]
    as_c = fleet.client(
        "s3",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    forged = json.loads(before) | {"channel": "prod", "applied_digest": fleet.digests["prod"]}

    with pytest.raises(ClientError, match="AccessDenied"):
        as_c.put_object(Bucket=BUCKET, Key=layout.status_key("cluster-a"), Body=json.dumps(forged).encode())
    # its own agent, lying about its cluster id, applies its channel but cannot report as cluster-a
    lying = fleet.agent(
        "cluster-a", "prod", assume_role=fleet.roles["cluster-c"], env=fleet.keys_env("cluster-c"), folder="c-lying"
    )

    assert lying == 0 and fleet.applied("c-lying")
    assert fleet.dist.get(layout.status_key("cluster-a")).data == before
    rows = {r.cluster_id: r for r in fleet_status(fleet.dist, now=utcnow())}
    assert (rows["cluster-a"].channel, rows["cluster-a"].applied_digest) == ("staging", fleet.digests["staging"])
    as_c.put_object(Bucket=BUCKET, Key=layout.status_key("cluster-c"), Body=b"{}")  # its own key: allowed


def test_a_cluster_outside_aws_converges_through_credential_process(fleet: Fleet) -> None:
    # What Roles Anywhere does for a certificate with CN=cluster-d: a session of cluster-d's role. moto has no
    # Roles Anywhere, so the test issues that session with IAM checks off (the trust conditions are read
    # from the template above), and the fake aws_signing_helper hands it to botocore.
    fleet.server.enforce_iam(False)
    try:
        creds = fleet.client("sts").assume_role(RoleArn=fleet.roles["cluster-d"], RoleSessionName="cluster-d")
    finally:
        fleet.server.enforce_iam(True)
    session = fleet.work / "session.json"
    session.write_text(json.dumps({"Version": 1, **{k: str(v) for k, v in creds["Credentials"].items()}}))
    helper = fleet.work / "aws_signing_helper"
    helper.write_text(SIGNING_HELPER.format(python=sys.executable, session=session))
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    config = fleet.work / "aws-config"
    config.write_text(
        (REPO / "deploy" / "agent" / "outside-aws" / "aws-config")
        .read_text()
        .replace("/usr/local/bin/aws_signing_helper", str(helper))
        .replace("REPLACE-trust-anchor-arn", TRUST_ANCHOR)
        .replace("REPLACE-cluster-role-arn", fleet.roles["cluster-d"])
    )

    code = fleet.agent("cluster-d", "staging", assume_role="", env={"AWS_CONFIG_FILE": str(config)})

    assert code == 0
    assert fleet.applied("cluster-d-staging")
    rows = {r.cluster_id: r for r in fleet_status(fleet.dist, now=utcnow())}
    assert rows["cluster-d"].applied_digest == fleet.digests["staging"]


# The command-line contract of aws_signing_helper's credential-process: the flags the README and
# deploy/agent/outside-aws/aws-config give it, and the JSON botocore reads (Version 1, keys, expiry).
SIGNING_HELPER = """#!{python}
import argparse, json, sys
parser = argparse.ArgumentParser()
parser.add_argument("command", choices=["credential-process"])
for flag in ("--certificate", "--private-key", "--trust-anchor-arn", "--profile-arn", "--role-arn"):
    parser.add_argument(flag, required=True)
args = parser.parse_args()
session = json.load(open("{session}"))
print(json.dumps(session | {{"Expiration": session["Expiration"].replace(" ", "T")}}))
"""

"""The AWS side of a local run: a moto server over HTTP (or any S3/SQS endpoint given with
``--endpoint-url``) holding the buckets, queues, KMS key, secrets and idempotency table that
``template.yaml`` declares, under the same names."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import httpx

ACCOUNT = "123456789012"
REGION = "us-east-1"


@dataclass(frozen=True)
class Names:
    """Resource names as template.yaml builds them from the Environment parameter."""

    environment: str
    account: str = ACCOUNT
    region: str = REGION

    @property
    def state_bucket(self) -> str:
        return f"cdr-policy-{self.environment}-state-{self.account}-{self.region}"

    @property
    def dist_bucket(self) -> str:
        return f"cdr-policy-{self.environment}-dist-{self.account}-{self.region}"

    @property
    def render_queue(self) -> str:
        return f"cdr-policy-{self.environment}-render"

    @property
    def publish_queue(self) -> str:
        return f"cdr-policy-{self.environment}-publish"

    @property
    def idempotency_table(self) -> str:
        return f"cdr-policy-{self.environment}-idempotency"

    qualys_secret = "cdr-policy/qualys"

    @property
    def signing_key_alias(self) -> str:
        return f"alias/cdr-policy-{self.environment}-signing"

    @property
    def approver_key_alias(self) -> str:
        return f"alias/cdr-policy-{self.environment}-approver"


@dataclass
class Stack:
    """What the local stack holds; ``env`` is what template.yaml would give the functions."""

    endpoint_url: str
    names: Names
    render_queue_url: str
    publish_queue_url: str
    signing_key_id: str
    approver_key_id: str
    env: dict[str, str]

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.names.region)


@contextmanager
def moto_endpoint(endpoint_url: str | None) -> Iterator[str]:
    """Yield ``endpoint_url``, or start an in-process moto server on loopback and yield its URL."""
    if endpoint_url:
        yield endpoint_url
        return
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines in the demo output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        # moto's backends are global to the process: start from an empty account every time.
        httpx.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
        yield url
    finally:
        server.stop()


def create_stack(endpoint_url: str, *, environment: str = "demo", qualys: dict[str, str] | None = None) -> Stack:
    """Create the template's stateful resources (idempotent) and return their coordinates."""
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(var, value)
    names = Names(environment)
    session = boto3.session.Session(region_name=names.region)

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=endpoint_url)

    s3, sqs = client("s3"), client("sqs")
    for bucket in (names.state_bucket, names.dist_bucket):
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    queue_urls = {}
    for name in (names.render_queue, names.publish_queue):
        dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue_urls[name] = sqs.create_queue(
            QueueName=name,
            Attributes={
                "VisibilityTimeout": "1800",
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}),
            },
        )["QueueUrl"]
    render_arn = sqs.get_queue_attributes(QueueUrl=queue_urls[names.render_queue], AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=names.state_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": render_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                }
                for prefix in ("indicators/", "config/")
            ]
        },
    )
    kms = client("kms")
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    keys = {}
    for alias, purpose in ((names.signing_key_alias, "bundle signing"), (names.approver_key_alias, "approvals")):
        keys[alias] = aliases.get(alias)
        if not keys[alias]:
            created = kms.create_key(
                KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", Description=f"cdr-policy {purpose}"
            )
            keys[alias] = created["KeyMetadata"]["KeyId"]
            kms.create_alias(AliasName=alias, TargetKeyId=keys[alias])
    key_id, approver_key_id = keys[names.signing_key_alias], keys[names.approver_key_alias]
    ddb = client("dynamodb")
    if names.idempotency_table not in ddb.list_tables()["TableNames"]:
        ddb.create_table(
            TableName=names.idempotency_table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    secrets = client("secretsmanager")
    if qualys is not None:
        body = json.dumps(qualys)
        try:
            secrets.create_secret(Name=names.qualys_secret, SecretString=body)
        except secrets.exceptions.ResourceExistsException:
            secrets.put_secret_value(SecretId=names.qualys_secret, SecretString=body)
    env = {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_DEFAULT_REGION": names.region,
        "STATE_BUCKET": names.state_bucket,
        "DIST_BUCKET": names.dist_bucket,
        "PUBLISH_QUEUE_URL": queue_urls[names.publish_queue],
        "QUALYS_SECRET_NAME": names.qualys_secret,
        "SIGNING_KEY_ID": key_id,
        "APPROVER_KEY_ID": approver_key_id,
        "IDEMPOTENCY_TABLE": names.idempotency_table,
        "POWERTOOLS_SERVICE_NAME": "cdr-policy",
        "POWERTOOLS_METRICS_NAMESPACE": "CdrPolicy",
        "POWERTOOLS_TRACE_DISABLED": "1",
    }
    return Stack(
        endpoint_url=endpoint_url,
        names=names,
        render_queue_url=queue_urls[names.render_queue],
        publish_queue_url=queue_urls[names.publish_queue],
        signing_key_id=key_id,
        approver_key_id=approver_key_id,
        env=env,
    )


@contextmanager
def iam_enforcing_moto() -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server in its own process that checks every request against IAM, as AWS does: signed with
    known keys, allowed by the caller's identity policies (moto evaluates Action and Resource, not
    Condition, and no bucket policies). Its own process, because that switch is global to a moto process.
    Yields the URL and an administrator's keys (the only credentials that work until others are made)."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/moto-api/data.json", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the moto server did not start") from None
                time.sleep(0.1)
        iam = boto3.client(
            "iam", endpoint_url=url, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
        )
        iam.create_user(UserName="admin")
        everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="admin", PolicyName="everything", PolicyDocument=json.dumps(everything))
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        enforce_iam(url, True)
        yield url, {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
    finally:
        server.terminate()
        server.wait(timeout=10)


def enforce_iam(url: str, on: bool) -> None:
    """Switch a moto server's IAM checks on or off (off: to act as an AWS service would, e.g. Roles Anywhere)."""
    httpx.post(f"{url}/moto-api/reset-auth", content=b"0" if on else b"inf", timeout=10).raise_for_status()

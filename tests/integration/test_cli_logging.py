"""``cdr-policy`` at log level DEBUG against S3 (a moto server over HTTP, in a separate process as a
user runs it): our own debug lines, but no request or response body, header or signature of the AWS
SDK's wire logging."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3

from fakes.aws import moto_endpoint

ACCESS_KEY, SECRET_KEY = "AKIAWIRELOGGINGTEST1", "wire-logging-secret-key-do-not-print"
BODY = b'{"marker": "response-body-must-not-be-logged"}'


def test_debug_logs_carry_no_wire_traffic(tmp_path: Path) -> None:
    with moto_endpoint(None) as url:
        s3 = boto3.client(
            "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        s3.create_bucket(Bucket="wire-dist")
        s3.put_object(Bucket="wire-dist", Key="channels/prod/manifest.json", Body=BODY)
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "CDR_POLICY_LOG_LEVEL": "DEBUG",
            "HOME": str(tmp_path),
        }
        done = subprocess.run(
            [sys.executable, "-m", "cdr_policy.cli", "channel", "list", "--dist=s3://wire-dist", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    logs = done.stderr
    assert done.returncode in (0, 1), logs
    assert logs.strip(), "the command logs at DEBUG"
    for leaked in (ACCESS_KEY, SECRET_KEY, "Authorization", "AWS4-HMAC-SHA256", "response-body-must-not-be-logged"):
        assert leaked not in logs, leaked

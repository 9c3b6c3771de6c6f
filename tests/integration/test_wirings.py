"""The Lambda functions and the CLI run the same stage code: CdrFetch and then Render, once through
the Lambda wiring (the functions of the stack deployed from template.yaml, with their own roles, boto3
over HTTPS to a moto server that enforces IAM, credentials from Secrets Manager, channels from the state
bucket) and once through the local wiring (a state folder, credentials from the environment, the channel
from a file), against the same fake gateway and clock, leave the two stores byte for byte the same."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cdr_policy import layout
from cdr_policy.settings import Settings
from cdr_policy.storage import S3Store, Store
from cdr_policy.wiring import cloud, local
from demo.runner import create_qualys_secret
from fakes.aws import moto_server
from fakes.lambda_runtime import REPO, LambdaService
from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway
from fakes.stack import deploy

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CHANNELS = b"channels:\n  - name: staging\n    action: Sigkill\n    cilium_version: '1.17'\n    threat_intel: false\n"


def _contents(store: Store) -> dict[str, bytes]:
    return {key: store.get(key).data for key in store.list("")}


def test_cdr_fetch_and_render_leave_the_same_bytes_through_both_wirings(tmp_path: Path) -> None:
    with (
        FakeQualysGateway(REPO / "events" / "findings", rebase_to=NOW) as gateway,
        moto_server() as server,
    ):
        create_qualys_secret(server, "cdr-policy/qualys")
        parameters = {"Environment": "wirings", "LookbackHours": "24", "CdrTtlHours": "24"}
        parameters["OverlapMinutes"] = str(local.OVERLAP_MINUTES)  # the CLI's
        stack = deploy(server, name="cdr-policy-wirings", parameters=parameters)
        lambdas = LambdaService(stack, tmp_path / "lambda.log")
        # the plain-HTTP loopback gateway (the CLI's) and no publish request: the two stores alone compare
        with lambdas.running_as("CdrFetchFunction") as env:
            cloud_fetch = cloud.cdr_fetch(Settings.from_env({**env, "QUALYS_GATEWAY_URL": gateway.url}), now=NOW)
        state_bucket = S3Store(stack.client("s3"), stack.state_bucket)
        state_bucket.put("config/channels.yaml", CHANNELS)
        with lambdas.running_as("RenderFunction") as env:
            settings = Settings.from_env({**env, "PUBLISH_QUEUE_URL": ""})
            cloud_render = cloud.render(settings, trigger_keys=["indicators/cdr/current.json"], now=NOW)

        channel_file = tmp_path / "channels.yaml"
        channel_file.write_bytes(CHANNELS)
        args = argparse.Namespace(
            channel=str(channel_file),
            action="Sigkill",
            threat_intel=False,
            feeds=None,
            state_dir=str(tmp_path / "state"),
            platform=None,
            gateway=gateway.url,
            categories=None,
            reputation_threshold=None,  # as the parser gives it without the flag (only with threat intel)
            crds=None,
            hours=24,
            interval=3600.0,
        )
        ports = local.LocalPorts.from_args(args, {"QUALYS_USERNAME": DEMO_USERNAME, "QUALYS_PASSWORD": DEMO_PASSWORD})
        ports.state.put("config/channels.yaml", CHANNELS)
        local_fetch = local.cdr_fetch(ports, now=NOW, resume=True).summary().to_json()
        local_render = local.render(ports, now=NOW).summary().to_json()

        in_bucket, in_folder = _contents(state_bucket), _contents(ports.state)

    assert cloud_fetch == local_fetch and cloud_fetch["unique"] == 18
    assert cloud_render == [local_render] and local_render["changed"]
    # the stack alone keeps a Qualys request budget (QualysRequestsPerHour): the CLI has no such limit
    assert in_bucket.pop(layout.CDR_RATE) and sorted(in_bucket) == sorted(in_folder)
    assert any(k.startswith("raw/cdr/") for k in in_folder) and any(k.startswith("bundles/") for k in in_folder)
    different = [key for key in in_bucket if in_bucket[key] != in_folder[key]]
    assert different == []

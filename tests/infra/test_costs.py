"""``make costs``: the request counts the README's cost section is computed from, measured at a moto
server during a real run of the demo pipeline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from demo.costs import S3_PRICE_PER_1000, measure, operation, s3_price_class, table
from demo.runner import CHANNELS
from fakes.lambda_runtime import REPO

pytestmark = [pytest.mark.infra, pytest.mark.integration]


def environ(method: str, path: str, *, service: str = "s3", query: str = "", target: str = "") -> dict[str, str]:
    auth = f"AWS4-HMAC-SHA256 Credential=testing/20261204/us-east-1/{service}/aws4_request, SignedHeaders=host"
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "HTTP_AUTHORIZATION": auth}
    if target:
        env["HTTP_X_AMZ_TARGET"] = target
    return env


def test_operations_are_named_as_the_bill_names_them() -> None:
    assert operation(environ("GET", "/bucket/channels/prod/manifest.json")) == "s3:GetObject"
    assert operation(environ("PUT", "/bucket/status/a.json")) == "s3:PutObject"
    assert operation(environ("GET", "/bucket", query="list-type=2&prefix=x")) == "s3:ListObjects"
    assert operation(environ("PUT", "/bucket", query="versioning")) == "s3:PUT bucket ?versioning"
    assert operation(environ("POST", "/", service="kms", target="TrentService.Sign")) == "kms:Sign"
    assert operation(environ("POST", "/", service="sqs", target="AmazonSQS.SendMessage")) == "sqs:SendMessage"
    assert operation({"REQUEST_METHOD": "POST", "PATH_INFO": "/moto-api/reset"}) == "unsigned:POST"


def test_s3_prices_are_the_cost_guides_and_classed_as_billed() -> None:
    costs = (REPO / "docs" / "costs.md").read_text()
    row = next(line for line in costs.splitlines() if line.startswith("| S3 Standard |"))
    assert f"PUT/COPY/POST/LIST {S3_PRICE_PER_1000['PUT']} USD per 1,000" in row
    assert f"GET/HEAD {S3_PRICE_PER_1000['GET']} USD per 1,000" in row
    assert [s3_price_class(op) for op in ("s3:GetObject", "s3:HeadObject", "s3:ListObjects", "s3:PutObject")] == [
        "GET", "GET", "PUT", "PUT",
    ]  # fmt: skip
    assert s3_price_class("s3:DeleteObject") is None and s3_price_class("kms:Sign") is None


@pytest.mark.slow
def test_request_counts_of_one_run_and_of_a_fleet_poll(tmp_path: Path) -> None:
    lines: list[str] = []
    counter = measure(tmp_path / "out", lines.append)
    by_stage: dict[str, dict[str, int]] = {}
    for (stage, op), n in counter.counts.items():
        by_stage.setdefault(stage, {})[op] = n
    assert list(by_stage) == [
        "setup", "CdrFetch", "FeedSync", "Render", "Publish", "Sync", "Promotion", "Hits", "restarted-poll",
        "unchanged-poll",
    ]  # fmt: skip
    channels = len(CHANNELS)
    # One signature per channel per publish; each render (one per batch of notifications: the set
    # uploads, and the configuration uploaded before them) asks for one publish per channel.
    assert by_stage["Publish"]["kms:Sign"] == channels
    [batches] = [int(m.group(1)) for line in lines if (m := re.search(r"notification\(s\) in (\d+) batch", line))]
    assert by_stage["Render"]["sqs:SendMessage"] == channels * batches
    # Render signs nothing; for the promoting channel it reads the signing and approver keys' public halves
    assert {op for op in by_stage["Render"] if op.startswith("kms:")} == {"kms:GetPublicKey"}
    # The steady state of a fleet (README): per agent and poll, one conditional GET of the manifest; the
    # status is rewritten only when it says something new or its heartbeat is due; no KMS (agents verify
    # with the public key they fetched once at start).
    assert by_stage["unchanged-poll"] == {"s3:GetObject": channels}
    assert counter.snapshot("unchanged-poll") == {
        "s3:GetObject": {"requests": channels, "request_bytes": 0, "response_bytes": 0, "status_304": channels}
    }
    assert counter.snapshot("restarted-poll")["s3:PutObject"]["request_bytes"] > 0  # the status documents
    assert by_stage["restarted-poll"]["kms:GetPublicKey"] == 1
    # Hits: the readers and the fleet only read; the writers are the agents (their statuses) and
    # HitsRollup (hits/fleet.json).
    assert by_stage["Hits"]["s3:PutObject"] == channels + 1
    assert not any(op.startswith("kms:") for op in by_stage["Hits"])
    assert all(line.endswith("(manifest unchanged (ETag))") for line in lines[-channels:])
    rendered = table(counter)
    assert rendered[0].split()[:2] == ["stage", "seconds"]
    assert all(counter.seconds[stage] > 0 for stage in by_stage)

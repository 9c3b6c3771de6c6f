"""The templates grant each writer exactly the prefixes ``cdr_policy.layout`` says it writes (the
functions in ``template.yaml``, a cluster's agent in ``deploy/cluster-access/template.yaml``), and the S3
notification filter is the layout's indicator prefix: one module owns the bucket layout, and the
templates cannot drift from it unnoticed."""

from __future__ import annotations

import re
from typing import Any

import pytest

from cdr_policy import layout

pytestmark = pytest.mark.infra

WRITERS = {
    "CdrFetch": "CdrFetchFunction",
    "FeedSync": "FeedSyncFunction",
    "Render": "RenderFunction",
    "Publish": "PublishFunction",
    "approver": "ApproverRole",
    "HitsRollup": "HitsRollupFunction",
}
BUCKETS = {"StateBucket": "state", "DistributionBucket": "dist"}
_OBJECT_ARN = re.compile(r"^\$\{(\w+)\.Arn\}/(.*)\*$")


def _statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    policies = resource["Properties"]["Policies"]
    return [s for p in policies if isinstance(p, dict) for s in p.get("PolicyDocument", p).get("Statement", [])]


def _put_grants(statements: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(store, prefix) for every object ARN that a statement allows ``s3:PutObject`` on."""
    grants = set()
    for s in statements:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        if s["Effect"] != "Allow" or "s3:PutObject" not in actions:
            continue
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        for r in resources:
            match = _OBJECT_ARN.match(r["Fn::Sub"])
            assert match, f"PutObject on {r!r} is not a prefix of a bucket"
            grants.add((BUCKETS[match.group(1)], match.group(2)))
    return grants


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_write_grants_are_the_layouts_prefixes(resources: dict[str, Any], writer: str) -> None:
    store, prefixes = layout.WRITE_PREFIXES[writer]
    assert _put_grants(_statements(resources[WRITERS[writer]])) == {(store, p) for p in prefixes}


def test_a_cluster_reads_its_channel_prefix_and_writes_its_status_key(cluster_access: dict[str, Any]) -> None:
    statements = _statements(cluster_access["Resources"]["ClusterRole"])
    granted = {s["Action"]: s["Resource"]["Fn::Sub"] for s in statements}
    bucket = "arn:${AWS::Partition}:s3:::${DistributionBucket}/"
    assert granted == {
        "s3:GetObject": bucket + layout.channel_prefix("${Channel}") + "*",
        "s3:PutObject": bucket + layout.status_key("${ClusterId}"),
    }
    assert layout.WRITE_PREFIXES["agent"] == ("dist", (layout.STATUS,))
    assert layout.status_key("${ClusterId}").startswith(layout.STATUS)


def test_every_layout_writer_is_granted_in_a_template() -> None:
    assert set(layout.WRITE_PREFIXES) == {*WRITERS, "agent"}


def test_render_queue_hears_the_indicator_prefix(resources: dict[str, Any]) -> None:
    config = resources["StateBucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"][0]
    assert config["Filter"] == {"S3Key": {"Rules": [{"Name": "prefix", "Value": layout.INDICATORS}]}}

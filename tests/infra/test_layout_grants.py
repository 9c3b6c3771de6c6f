"""The template grants each writer exactly the prefixes ``cdr_policy.layout`` says it writes, and the
S3 notification filter is the layout's indicator prefix: one module owns the bucket layout, and the
template cannot drift from it unnoticed."""

from __future__ import annotations

import re
from typing import Any

import pytest

from cdr_policy import layout

pytestmark = pytest.mark.infra

WRITERS = {
    "CdrFetch": ("CdrFetchFunction", "Policies"),
    "FeedSync": ("FeedSyncFunction", "Policies"),
    "Render": ("RenderFunction", "Policies"),
    "Publish": ("PublishFunction", "Policies"),
    "agent": ("AgentAccessPolicy", "PolicyDocument"),
}
BUCKETS = {"StateBucket": "state", "DistributionBucket": "dist"}
_OBJECT_ARN = re.compile(r"^\$\{(\w+)\.Arn\}/(.*)\*$")


def _statements(resource: dict[str, Any], where: str) -> list[dict[str, Any]]:
    props = resource["Properties"]
    if where == "PolicyDocument":
        return list(props["PolicyDocument"]["Statement"])
    return [s for policy in props["Policies"] if isinstance(policy, dict) for s in policy.get("Statement", [])]


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
def test_write_grants_are_the_layouts_prefixes(resources, writer):
    name, where = WRITERS[writer]
    store, prefixes = layout.WRITE_PREFIXES[writer]
    assert _put_grants(_statements(resources[name], where)) == {(store, p) for p in prefixes}


def test_every_layout_writer_is_granted_in_the_template():
    assert set(layout.WRITE_PREFIXES) == set(WRITERS)


def test_render_queue_hears_the_indicator_prefix(resources):
    config = resources["StateBucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"][0]
    assert config["Filter"] == {"S3Key": {"Rules": [{"Name": "prefix", "Value": layout.INDICATORS}]}}

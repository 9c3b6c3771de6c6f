"""The status contract from the reading side: malformed status documents are refused."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from cdr_policy import jsonio
from cdr_policy.agent.status import read_status
from cdr_policy.errors import BundleError

GOOD = {
    "schema_version": 1,
    "cluster_id": "eks-prod-1",
    "channel": "prod",
    "agent_version": "0.1.0",
    "applier": "kubernetes https://10.96.0.1:443",
    "applied_digest": "a" * 64,
    "applied_generation": 4,
    "drift": None,
    "applied_at": "2026-01-10T16:01:00Z",
    "applied_expires_at": "2026-01-13T16:00:00Z",
    "last_poll": {"at": "2026-01-10T16:02:00Z", "result": "unchanged", "detail": "manifest unchanged (ETag)"},
    "verification": {
        "ok": True,
        "code": None,
        "reason": None,
        "digest": "a" * 64,
        "at": "2026-01-10T16:01:00Z",
    },
    "objects": {"applied": 3, "deleted": 0},
    "apply_errors": [{"kind": "TracingPolicy", "name": "t", "namespace": None, "action": "apply", "error": "x"}],
}


def test_a_valid_status_reads_back() -> None:
    assert read_status(jsonio.dumps(GOOD)) == GOOD


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("verification"),
        lambda d: d["last_poll"].update(result="fine"),
        lambda d: d.update(applied_digest="abc"),
        lambda d: d.update(cluster_id="../etc"),
        lambda d: d["apply_errors"][0].update(action="patch"),
        lambda d: d.update(extra=1),
        lambda d: d["last_poll"].update(at="yesterday"),
    ],
)
def test_malformed_status_is_refused(mutate: Callable[[dict[str, Any]], object]) -> None:
    doc = copy.deepcopy(GOOD)
    mutate(doc)
    with pytest.raises(BundleError, match="malformed agent status"):
        read_status(jsonio.dumps(doc))


def test_non_json_status_is_refused() -> None:
    with pytest.raises(BundleError, match="not valid JSON"):
        read_status(b"{")

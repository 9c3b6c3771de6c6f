"""The status contract from the reading side: malformed status documents are refused."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from cdr_policy import jsonio
from cdr_policy.agent.status import AgentStatus
from cdr_policy.errors import ContractError

GOOD: dict[str, Any] = {
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


def test_a_valid_status_reads_back_as_it_was_written() -> None:
    status = AgentStatus.parse(jsonio.dumps(GOOD))
    assert status.last_poll.result == "unchanged" and status.apply_errors[0].action == "apply"
    assert status.to_json() == {**GOOD, "preflight": None, "hits": None}
    assert AgentStatus.from_json(status.to_json()) == status


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("verification"), "<root>: 'verification' is a required property"),
        (lambda d: d["last_poll"].update(result="fine"), "last_poll/result"),
        (lambda d: d.update(applied_digest="abc"), "applied_digest"),
        (lambda d: d.update(cluster_id="../etc"), "cluster_id"),
        (lambda d: d["apply_errors"][0].update(action="patch"), "apply_errors/0/action"),
        (lambda d: d.update(extra=1), "<root>: has 1 property the schema does not allow"),
        (lambda d: d["last_poll"].update(at="yesterday"), "last_poll/at"),
        (lambda d: d.update(applied_generation="4"), "applied_generation"),
        (lambda d: d["objects"].update(applied=-1), "objects/applied"),
    ],
)
def test_malformed_status_is_refused_naming_the_field_not_the_value(
    mutate: Callable[[dict[str, Any]], object], field: str
) -> None:
    doc = copy.deepcopy(GOOD)
    mutate(doc)
    with pytest.raises(ContractError, match="malformed agent status") as caught:
        AgentStatus.parse(jsonio.dumps(doc))
    assert field in str(caught.value) and "../etc" not in str(caught.value) and "yesterday" not in str(caught.value)
    with pytest.raises(ContractError, match="malformed agent status"):
        AgentStatus.from_json(doc)


@pytest.mark.parametrize(
    "data",
    [b"{", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b"null", b"[]", jsonio.dumps({"a" * 10_000: 1})],
)
def test_hostile_status_bytes_are_one_contract_error(data: bytes) -> None:
    with pytest.raises(ContractError, match="^malformed agent status: ") as caught:
        AgentStatus.parse(data)
    assert "a" * 100 not in str(caught.value)


def test_a_deeply_nested_document_handed_over_parsed_is_one_contract_error() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5_000):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ContractError, match="nested deeper than"):
        AgentStatus.from_json({**GOOD, "drift": deep})

"""``check_object``: the CRD schema plus the enforcement checklist (docs/ENFORCEMENT.md §5) for one object."""

from __future__ import annotations

from typing import Any

from cdr_policy.policy.checker.cilium import check_cidr_group, check_policy
from cdr_policy.policy.checker.common import BlockGuard, check_common
from cdr_policy.policy.checker.problem import Problem, error
from cdr_policy.policy.checker.schema import SchemaSet
from cdr_policy.policy.checker.tetragon import check_tracing_policy

TETRAGON_KINDS = frozenset({"TracingPolicy", "TracingPolicyNamespaced"})
CILIUM_POLICY_KINDS = frozenset({"CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"})
CIDR_GROUP_KIND = "CiliumCIDRGroup"


def check_object(obj: Any, schemas: SchemaSet | None, *, guard: BlockGuard | None = None) -> list[Problem]:
    """Every problem of ``obj``, errors first. ``schemas`` None skips the schema part (checklist only);
    ``guard`` None skips the never-block overlap check. An empty list means: ship it."""
    problems: list[Problem] = []
    if schemas is not None:
        problems.extend(schemas.validate(obj))
    if not isinstance(obj, dict):
        if schemas is None:
            problems.append(error("schema.not-an-object", "", "a Kubernetes object must be a mapping"))
        return problems
    problems.extend(check_common(obj))
    kind = obj.get("kind")
    if kind in TETRAGON_KINDS:
        problems.extend(check_tracing_policy(obj, guard))
    elif kind in CILIUM_POLICY_KINDS:
        problems.extend(check_policy(obj, guard))
    elif kind == CIDR_GROUP_KIND:
        problems.extend(check_cidr_group(obj, guard))
    unique = sorted(set(problems), key=lambda p: (p.severity != "error", p.path, p.code, p.message))
    return unique


def errors_of(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]

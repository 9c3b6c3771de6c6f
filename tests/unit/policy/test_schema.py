"""The strict CRD validator against the upstream CRDs (../shared/crds)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from cdr_policy.errors import PolicyCheckError
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.policy.checker.cel import Unsupported, compile_rule
from cdr_policy.policy.checker.problem import Problem
from cdr_policy.policy.serialize import load_yaml_documents

TP: dict[str, Any] = {
    "apiVersion": "cilium.io/v1alpha1",
    "kind": "TracingPolicy",
    "metadata": {"name": "ok"},
    "spec": {
        "podSelector": {},
        "kprobes": [
            {
                "call": "tcp_connect",
                "syscall": False,
                "args": [{"index": 0, "type": "sock"}],
                "selectors": [{"matchArgs": [{"index": 0, "operator": "DPort", "values": ["4444"]}]}],
            }
        ],
    },
}
CCNP: dict[str, Any] = {
    "apiVersion": "cilium.io/v2",
    "kind": "CiliumClusterwideNetworkPolicy",
    "metadata": {"name": "ok"},
    "spec": {
        "endpointSelector": {},
        "enableDefaultDeny": {"egress": False, "ingress": False},
        "egressDeny": [{"toCIDRSet": [{"cidrGroupRef": "g"}]}],
    },
}


def codes(problems: Iterable[Problem]) -> set[str]:
    return {p.code for p in problems if p.severity == "error"}


def test_loads_every_served_kind(schemas: SchemaSet) -> None:
    assert schemas.kinds() == [
        "cilium.io/v1alpha1 TracingPolicy",
        "cilium.io/v1alpha1 TracingPolicyNamespaced",
        "cilium.io/v2 CiliumCIDRGroup",
        "cilium.io/v2 CiliumClusterwideNetworkPolicy",
        "cilium.io/v2 CiliumNetworkPolicy",
        "cilium.io/v2alpha1 CiliumCIDRGroup",
    ]
    # Two Cilium releases in the folder: a CCNP must be valid for both.
    assert len(schemas.lookup("cilium.io/v2", "CiliumClusterwideNetworkPolicy")) == 2


def test_every_upstream_example_is_schema_valid(schemas: SchemaSet, crds_dir: Path) -> None:
    files = sorted((crds_dir / "examples").glob("*.yaml"))
    assert len(files) == 5
    for file in files:
        for obj in load_yaml_documents(file.read_bytes()):
            assert codes(schemas.validate(obj)) == set(), file.name


def test_valid_objects_pass(schemas: SchemaSet) -> None:
    assert schemas.validate(TP) == []
    assert schemas.validate(CCNP) == []


@pytest.mark.parametrize(
    ("path", "value", "code"),
    [
        (("spec", "kprobes", 0, "bogus"), 1, "schema.unknown-field"),  # Strict: would be pruned
        (("spec", "kprobes", 0, "syscall"), "false", "schema.type"),
        (("spec", "kprobes", 0, "args", 0, "type"), "socket_t", "schema.enum"),
        (("spec", "kprobes", 0, "tags"), [str(i) for i in range(17)], "schema.max-items"),
        (
            ("spec", "kprobes", 0, "selectors", 0, "matchBinaries"),
            [{"operator": "In", "values": ["/a"]}] * 2,
            "schema.max-items",
        ),
        (("spec", "kprobes", 0, "return"), True, "schema.rule"),  # CEL: return needs returnArg
        (("spec", "hostSelector"), {"matchLabels": {"a": "b"}}, "schema.rule"),  # CEL: only {} or null
        (("metadata", "name"), "Block_FQDN", "metadata.name"),
        (("metadata", "labels"), {"ok": "198.51.100.0/24"}, "metadata.labels"),
        (("metadata", "bogus"), 1, "schema.unknown-field"),
        (("metadata", "namespace"), "default", "metadata.namespace"),  # cluster-scoped
    ],
)
def test_tracing_policy_errors(
    schemas: SchemaSet,
    path: tuple[str | int, ...],
    value: object,
    code: str,
) -> None:
    obj = copy.deepcopy(TP)
    target: Any = obj  # a dict or a list, by the path
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert code in codes(schemas.validate(obj))


def test_namespaced_policy_must_not_select_hosts(schemas: SchemaSet) -> None:
    obj = copy.deepcopy(TP)
    obj["kind"] = "TracingPolicyNamespaced"
    obj["metadata"]["namespace"] = "payments"
    assert schemas.validate(obj) == []
    obj["spec"]["hostSelector"] = {}
    problems = schemas.validate(obj)
    assert [p.message for p in problems] == ["TracingPolicyNamespaced should have a null spec.hostSelector."]


@pytest.mark.parametrize(
    ("rule", "code"),
    [
        ({"toFQDNs": [{"matchName": "evil.example"}]}, "schema.unknown-field"),
        ({"toCIDR": ["198.51.100.7"]}, "schema.format"),  # cidr format needs a prefix length
        ({"toCIDRSet": [{"cidr": "198.51.100.0/24", "cidrGroupRef": "g"}]}, "schema.one-of"),
        ({"toEntities": ["internet"]}, "schema.enum"),
        ({"toPorts": [{"ports": [{"port": 443, "protocol": "TCP"}]}]}, "schema.type"),
        ({"toPorts": [{"ports": [{"port": "443", "protocol": "ICMP"}]}]}, "schema.enum"),
    ],
)
def test_cilium_errors(schemas: SchemaSet, rule: dict[str, Any], code: str) -> None:
    obj = copy.deepcopy(CCNP)
    obj["spec"]["egressDeny"] = [rule]
    assert code in codes(schemas.validate(obj))


def test_cidr_format_is_sloppy_like_the_api_server(schemas: SchemaSet) -> None:
    obj = copy.deepcopy(CCNP)
    obj["spec"]["egressDeny"] = [{"toCIDR": ["010.0.0.1/32"]}]  # leading zeros parse (ParseCIDRSloppy)
    assert codes(schemas.validate(obj)) == set()


def test_int_or_string_and_unknown_kinds(schemas: SchemaSet) -> None:
    obj = copy.deepcopy(CCNP)
    obj["spec"]["egressDeny"] = [{"toCIDRSet": [{"cidrGroupRef": "g"}], "icmps": [{"fields": [{"type": 8}]}]}]
    assert codes(schemas.validate(obj)) == set()
    obj["spec"]["egressDeny"][0]["icmps"][0]["fields"][0]["type"] = 8.5
    assert "schema.type" in codes(schemas.validate(obj))
    assert codes(
        schemas.validate({"apiVersion": "cilium.io/v3", "kind": "CiliumCIDRGroup", "metadata": {"name": "a"}})
    ) == {"schema.unknown-kind"}


def test_cidr_group_versions(schemas: SchemaSet) -> None:
    group = {
        "apiVersion": "cilium.io/v2alpha1",
        "kind": "CiliumCIDRGroup",
        "metadata": {"name": "g"},
        "spec": {},
    }
    assert "schema.required" in codes(schemas.validate(group))
    group["spec"] = {"externalCIDRs": ["198.51.100.0/24"]}
    problems = schemas.validate(group)
    assert codes(problems) == set()
    # v2alpha1 is still served by main's CRD but deprecated there: a warning, not an error
    assert [p.code for p in problems] == ["schema.deprecated-version"]


def test_from_crds_uses_only_what_a_cluster_serves(crds_dir: Path) -> None:
    crd = load_yaml_documents((crds_dir / "cilium-v1.16.5" / "v2alpha1_ciliumcidrgroups.yaml").read_bytes())[0]
    schemas = SchemaSet.from_crds([crd])
    assert schemas.kinds() == ["cilium.io/v2alpha1 CiliumCIDRGroup"]
    v2 = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumCIDRGroup",
        "metadata": {"name": "g"},
        "spec": {"externalCIDRs": []},
    }
    assert codes(schemas.validate(v2)) == {"schema.unknown-kind"}


def test_bad_crd_sources_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(PolicyCheckError, match="does not exist"):
        SchemaSet.from_dir(tmp_path / "missing")
    with pytest.raises(PolicyCheckError, match="no CustomResourceDefinition"):
        SchemaSet.from_dir(tmp_path)
    with pytest.raises(PolicyCheckError, match="malformed CRD"):
        SchemaSet.from_crds([{"kind": "CustomResourceDefinition", "metadata": {"name": "x"}, "spec": {}}])


def test_unsupported_cel_rules_are_skipped_visibly() -> None:
    crd = {
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.io"},
        "spec": {
            "group": "example.io",
            "scope": "Cluster",
            "names": {"kind": "Widget", "plural": "widgets"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                    "x-kubernetes-validations": [
                                        {"rule": "self.size() > 1"},
                                        {"rule": "has(self.a) || has(self.b)", "message": "a or b"},
                                    ],
                                }
                            },
                        }
                    },
                },
                {"name": "v0", "served": False},
            ],
        },
    }
    schemas = SchemaSet.from_crds([crd], source="test")
    ok = {
        "apiVersion": "example.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"a": 1, "x": 2},
    }
    assert schemas.validate(ok) == []
    assert schemas.skipped_rules == {("test", "self.size() > 1")}
    bad = {**ok, "spec": {"x": 2}}
    assert [p.message for p in schemas.validate(bad)] == ["a or b"]


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("!has(self.return) || (!self.return || has(self.returnArg))", {}, True),
        ("!has(self.return) || (!self.return || has(self.returnArg))", {"return": True}, False),
        (
            "!has(self.return) || (!self.return || has(self.returnArg))",
            {"return": True, "returnArg": {}},
            True,
        ),
        ("!has(self.return) || (!self.return || has(self.returnArg))", {"return": False}, True),
        ("has(self.spec) || has(self.specs)", {}, False),
        ("!has(self.spec.hostSelector)", {"spec": {"hostSelector": {}}}, False),
        ("!has(self.spec.hostSelector)", {}, True),
        ("self.flag && true", {}, False),  # missing field used as a value: the rule fails
        ("false || self.flag", {"flag": True}, True),
    ],
)
def test_cel_subset(rule: str, value: dict[str, Any], expected: bool) -> None:
    assert compile_rule(rule)(value) is expected


@pytest.mark.parametrize("rule", ["self.size() > 1", "has(self.a", "self.a == 'b'", "has()", "x.y"])
def test_cel_outside_the_subset_is_unsupported(rule: str) -> None:
    with pytest.raises(Unsupported):
        compile_rule(rule)


def test_nulls_are_pruned_like_the_api_server_does(schemas: SchemaSet) -> None:
    obj = copy.deepcopy(TP)
    obj["spec"]["hostSelector"] = None
    problems = schemas.validate(obj)
    assert [(p.severity, p.code) for p in problems] == [("warning", "schema.null-pruned")]
    namespaced = copy.deepcopy(obj)
    namespaced["kind"] = "TracingPolicyNamespaced"
    namespaced["metadata"]["namespace"] = "web"
    assert codes(schemas.validate(namespaced)) == set()  # a null hostSelector is no hostSelector
    obj["spec"]["kprobes"][0]["call"] = None
    assert "schema.required" in codes(schemas.validate(obj))

"""The enforcement checklist (enforcement.md §5): the reference's templates pass, its negative
cases (Appendix A.5) and the other traps of §1–§2 are flagged."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from cdr_policy.guards import NeverBlock
from cdr_policy.policy.checker import SchemaSet, check_object, errors_of

# Appendix A templates (our construction in the reference), with the names made valid.
A1 = """
apiVersion: cilium.io/v2
kind: CiliumCIDRGroup
metadata:
  name: blocklist-feed-abuse-ch-0001
  labels: {blocklist.example.io/managed-by: policy-generator, blocklist.example.io/feed: abuse-ch}
spec:
  externalCIDRs: ["198.51.100.7/32", "203.0.113.0/24", "2001:db8:dead::/48"]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: blocklist-abuse-ch-egress-deny
  labels: {blocklist.example.io/managed-by: policy-generator}
spec:
  description: "Generated: deny egress to abuse-ch feed (threat-intel blocklist)"
  endpointSelector: {}
  enableDefaultDeny: {egress: false, ingress: false}
  egressDeny:
  - toCIDRSet:
    - cidrGroupRef: blocklist-feed-abuse-ch-0001
"""
A2 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ioc-c2-block-payments-api, namespace: payments}
spec:
  endpointSelector: {matchLabels: {app: payments-api}}
  enableDefaultDeny: {egress: false, ingress: false}
  egressDeny:
  - toCIDRSet: [{cidr: 198.51.100.7/32}, {cidr: "2001:db8:beef::1/128"}]
  - toCIDR: [203.0.113.9/32]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"""
A3 = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicyNamespaced
metadata: {name: ioc-c2-tcp-connect-kill, namespace: payments}
spec:
  podSelector: {matchLabels: {app: payments-api}}
  kprobes:
  - call: "tcp_connect"
    syscall: false
    message: "Outbound TCP connection to blocklisted address"
    tags: ["threat-intel", "network"]
    args: [{index: 0, type: "sock"}]
    selectors:
    - matchArgs:
      - index: 0
        operator: "DAddr"
        values: ["198.51.100.7/32", "203.0.113.0/24",
                 "::ffff:198.51.100.7/128", "::ffff:203.0.113.0/120",
                 "2001:db8:dead::/48"]
      matchActions: [{action: Sigkill}]
"""
A4 = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ioc-block-exec-xmrig}
spec:
  podSelector: {}
  options: [{name: "policy-mode", value: "enforce"}]
  lsmhooks:
  - hook: "bprm_check_security"
    args: [{index: 0, type: "linux_binprm"}]
    selectors:
    - matchArgs: [{index: 0, operator: "Postfix", values: ["/xmrig", "/kinsing"]}]
      matchActions: [{action: Override, argError: -1}]
---
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: ioc-block-ns-escape-ptrace-rawsock
  # Override on syscalls needs bpf_override_return: the template's nodes declare it (issue 11)
  annotations: {cdr-policy.io/kernel-override-helper: "true"}
spec:
  podSelector: {}
  options:
  - {name: "disable-kprobe-multi", value: "1"}
  - {name: "policy-mode", value: "monitor"}
  kprobes:
  - call: "sys_setns"
    syscall: true
    args: [{index: 0, type: "int"}, {index: 1, type: "int"}]
    selectors: [{matchActions: [{action: Sigkill}]}]
  - call: "sys_unshare"
    syscall: true
    args: [{index: 0, type: "int"}]
    selectors:
    - matchArgs: [{index: 0, operator: "Mask", values: ["0x10000000", "0x40000000", "0x00020000"]}]
      matchActions: [{action: Override, argError: -1}]
  - call: "sys_ptrace"
    syscall: true
    args: [{index: 0, type: "int"}]
    selectors: [{matchActions: [{action: Override, argError: -1}]}]
  - call: "security_socket_create"
    syscall: false
    args: [{index: 0, type: "int"}, {index: 1, type: "int"}]
    selectors:
    - matchArgs: [{index: 1, operator: "Equal", values: ["3"]}]
      matchActions: [{action: Override, argError: -1}]
"""


def docs(text: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(text))


def error_codes(obj: dict[str, Any], schemas: SchemaSet | None, guard: NeverBlock | None = None) -> set[str]:
    return {p.code for p in errors_of(check_object(obj, schemas, guard=guard))}


@pytest.mark.parametrize("text", [A1, A2, A3, A4])
def test_reference_templates_pass(schemas: SchemaSet, text: str) -> None:
    # The templates use documentation ranges, which our never-block list refuses: no guard here.
    for obj in docs(text):
        assert errors_of(check_object(obj, schemas)) == [], obj["metadata"]["name"]


def test_documentation_ranges_are_refused_by_the_never_block_check(schemas: SchemaSet) -> None:
    group = docs(A1)[0]
    assert error_codes(group, schemas, NeverBlock()) == {"cidr.never-block"}


# --- Appendix A.5: what a validator should flag -------------------------------------------------


def _deny_policy(*items: dict[str, Any], default_deny: bool = True, name: str = "deny") -> dict[str, Any]:
    spec: dict[str, Any] = {"endpointSelector": {}, "egressDeny": list(items)}
    if default_deny:
        spec["enableDefaultDeny"] = {"egress": False, "ingress": False}
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def _tracing_policy(
    kprobe: dict[str, Any], *, scoped: bool = True, options: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"kprobes": [kprobe]}
    if scoped:
        spec["podSelector"] = {}
    if options:
        spec["options"] = options
    return {
        "apiVersion": "cilium.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": "tp"},
        "spec": spec,
    }


TCP_CONNECT: dict[str, Any] = {
    "call": "tcp_connect",
    "syscall": False,
    "args": [{"index": 0, "type": "sock"}],
    "selectors": [
        {
            "matchArgs": [{"index": 0, "operator": "DAddr", "values": ["45.33.32.0/24", "::ffff:45.33.32.0/120"]}],
            "matchActions": [{"action": "Sigkill"}],
        }
    ],
}


def _with(kprobe: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(kprobe)
    out.update(changes)
    return out


A5 = {
    "bare IP in toCIDR": (_deny_policy({"toCIDR": ["45.33.32.7"]}), {"schema.format", "cidr.form"}),
    "toFQDNs in egressDeny": (
        _deny_policy({"toFQDNs": [{"matchName": "evil.example"}]}),
        {"cilium.fqdn-deny"},
    ),
    "invalid name": (_deny_policy({"toCIDR": ["45.33.32.7/32"]}, name="Block_FQDN"), {"metadata.name"}),
    "missing enableDefaultDeny": (
        _deny_policy({"toCIDR": ["45.33.32.7/32"]}, default_deny=False),
        {"cilium.default-deny"},
    ),
    "toCIDR and toCIDRSet in one rule": (
        _deny_policy({"toCIDR": ["45.33.32.7/32"], "toCIDRSet": [{"cidr": "45.33.33.0/24"}]}),
        {"cilium.mixed-peers"},
    ),
    "unscoped enforcing TracingPolicy": (
        _tracing_policy(TCP_CONNECT, scoped=False),
        {"tetragon.unscoped-enforcement"},
    ),
    "Override on tcp_connect": (
        _tracing_policy(
            _with(
                TCP_CONNECT,
                selectors=[{**TCP_CONNECT["selectors"][0], "matchActions": [{"action": "Override", "argError": -1}]}],
            )
        ),
        {"tetragon.override-hook"},
    ),
    "DAddr on a sockaddr argument": (
        _tracing_policy(
            {
                "call": "security_socket_connect",
                "syscall": False,
                "args": [{"index": 0, "type": "socket"}, {"index": 1, "type": "sockaddr"}],
                "selectors": [
                    {
                        "matchArgs": [
                            {
                                "index": 1,
                                "operator": "DAddr",
                                "values": ["45.33.32.0/24", "::ffff:45.33.32.0/120"],
                            }
                        ],
                        "matchActions": [{"action": "Post"}],
                    }
                ],
            }
        ),
        {"tetragon.operator"},
    ),
    "Override on security_* without disable-kprobe-multi": (
        _tracing_policy(
            {
                "call": "security_bprm_check",
                "syscall": False,
                "args": [{"index": 0, "type": "linux_binprm"}],
                "selectors": [
                    {
                        "matchArgs": [{"index": 0, "operator": "Postfix", "values": ["/xmrig"]}],
                        "matchActions": [{"action": "Override", "argError": -1}],
                    }
                ],
            }
        ),
        {"tetragon.override-kprobe-multi"},
    ),
}


def test_override_on_a_syscall_needs_the_declared_kernel_helper(schemas: SchemaSet) -> None:
    [obj] = docs(A4.split("---")[1])
    assert error_codes(obj, schemas) == set()
    obj["metadata"]["annotations"]["cdr-policy.io/kernel-override-helper"] = "false"
    problems = [p for p in errors_of(check_object(obj, schemas)) if p.code == "tetragon.override-helper"]
    # sys_unshare and sys_ptrace carry Override; sys_setns (Sigkill) and security_socket_create do not count
    assert [p.path for p in problems] == [
        "spec.kprobes[1].selectors[0].matchActions[0]",
        "spec.kprobes[2].selectors[0].matchActions[0]",
    ]
    del obj["metadata"]["annotations"]
    assert "tetragon.override-helper" in error_codes(obj, schemas)


@pytest.mark.parametrize("case", sorted(A5))
def test_appendix_a5_negative_cases_are_flagged(schemas: SchemaSet, case: str) -> None:
    obj, expected = A5[case]
    found = error_codes(obj, schemas)
    assert expected <= found, f"{case}: {found}"


# --- more traps from §1, §2 and §5 ----------------------------------------------------------------


def _selectors(n: int) -> list[dict[str, Any]]:
    return [copy.deepcopy(TCP_CONNECT["selectors"][0]) for _ in range(n)]


MORE = {
    "six selectors": (_tracing_policy(_with(TCP_CONNECT, selectors=_selectors(6))), "tetragon.selectors"),
    "missing IPv4-mapped twin": (
        _tracing_policy(
            _with(
                TCP_CONNECT,
                selectors=[
                    {
                        "matchArgs": [{"index": 0, "operator": "DAddr", "values": ["45.33.32.0/24"]}],
                        "matchActions": [{"action": "Sigkill"}],
                    }
                ],
            )
        ),
        "tetragon.ipv4-mapped",
    ),
    "NotDAddr kill policy": (
        _tracing_policy(
            _with(
                TCP_CONNECT,
                selectors=[
                    {
                        "matchArgs": [
                            {
                                "index": 0,
                                "operator": "NotDAddr",
                                "values": ["10.0.0.0/8", "::ffff:10.0.0.0/104"],
                            }
                        ],
                        "matchActions": [{"action": "Sigkill"}],
                    }
                ],
            )
        ),
        "tetragon.not-addr-kill",
    ),
    "non-canonical prefix": (
        _tracing_policy(
            _with(
                TCP_CONNECT,
                selectors=[
                    {
                        "matchArgs": [{"index": 0, "operator": "DAddr", "values": ["45.33.32.9/24"]}],
                        "matchActions": [{"action": "Post"}],
                    }
                ],
            )
        ),
        "cidr.form",
    ),
    "kernel function without syscall: false": (
        _tracing_policy(_with(TCP_CONNECT, syscall=True)),
        "tetragon.syscall-flag",
    ),
    "enforcing on sys_execve arguments": (
        _tracing_policy(
            {
                "call": "sys_execve",
                "syscall": True,
                "args": [{"index": 0, "type": "string"}],
                "selectors": [
                    {
                        "matchArgs": [{"index": 0, "operator": "Postfix", "values": ["/curl"]}],
                        "matchActions": [{"action": "Sigkill"}],
                    }
                ],
            }
        ),
        "tetragon.toctou",
    ),
    "six matchArgs": (
        _tracing_policy(
            _with(
                TCP_CONNECT,
                selectors=[
                    {
                        "matchArgs": [{"index": 0, "operator": "DPort", "values": [str(p)]} for p in range(1, 7)],
                        "matchActions": [{"action": "Post"}],
                    }
                ],
            )
        ),
        "tetragon.match-args",
    ),
    "matchArgs index without an arg": (
        _tracing_policy(
            _with(
                TCP_CONNECT,
                selectors=[
                    {
                        "matchArgs": [{"index": 1, "operator": "DPort", "values": ["1"]}],
                        "matchActions": [{"action": "Post"}],
                    }
                ],
            )
        ),
        "tetragon.arg-index",
    ),
    "five inline int values": (
        _tracing_policy(
            {
                "call": "sys_ptrace",
                "syscall": True,
                "args": [{"index": 0, "type": "int"}],
                "selectors": [
                    {
                        "matchArgs": [{"index": 0, "operator": "Equal", "values": ["1", "2", "3", "4", "5"]}],
                        "matchActions": [{"action": "Post"}],
                    }
                ],
            }
        ),
        "tetragon.values",
    ),
    "relative binary path": (
        _tracing_policy(
            {
                "call": "security_bprm_check",
                "syscall": False,
                "args": [{"index": 0, "type": "linux_binprm"}],
                "selectors": [
                    {
                        "matchArgs": [{"index": 0, "operator": "Equal", "values": ["xmrig"]}],
                        "matchActions": [{"action": "Post"}],
                    }
                ],
            }
        ),
        "tetragon.relative-path",
    ),
    "postfix over 128 characters": (
        _tracing_policy(
            {
                "call": "security_bprm_check",
                "syscall": False,
                "args": [{"index": 0, "type": "linux_binprm"}],
                "selectors": [
                    {
                        "matchArgs": [{"index": 0, "operator": "Postfix", "values": ["/" + "x" * 128]}],
                        "matchActions": [{"action": "Post"}],
                    }
                ],
            }
        ),
        "tetragon.postfix-length",
    ),
    "bad policy-mode": (
        _tracing_policy(TCP_CONNECT, options=[{"name": "policy-mode", "value": "audit"}]),
        "tetragon.policy-mode",
    ),
    "empty peer list": (_deny_policy({"toCIDR": []}), "cilium.empty-list"),
    "empty rule": (_deny_policy({}), "cilium.empty-rule"),
    "41 ports": (
        _deny_policy(
            {
                "toEntities": ["world"],
                "toPorts": [{"ports": [{"port": str(p), "protocol": "TCP"} for p in range(1000, 1041)]}],
            }
        ),
        "cilium.too-many-ports",
    ),
    "L7 rules in a deny": (
        _deny_policy(
            {
                "toEntities": ["world"],
                "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [{}]}}],
            }
        ),
        "cilium.l7-deny",
    ),
    "cidrGroupRef with except": (
        _deny_policy({"toCIDRSet": [{"cidrGroupRef": "g", "except": ["45.33.32.0/25"]}]}),
        "cilium.group-except",
    ),
    "policy without rules": (
        {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "x"},
            "spec": {"endpointSelector": {}},
        },
        "cilium.no-rules",
    ),
    "address as a label value": (
        {
            **_deny_policy({"toCIDR": ["45.33.32.7/32"]}),
            "metadata": {"name": "x", "labels": {"ip": "45.33.32.7"}},
        },
        "metadata.labels",
    ),
}


@pytest.mark.parametrize("case", sorted(MORE))
def test_other_traps_are_flagged(schemas: SchemaSet, case: str) -> None:
    obj, expected = MORE[case]
    assert expected in error_codes(obj, schemas), case


def test_duplicate_symbol_in_one_policy(schemas: SchemaSet) -> None:
    obj = _tracing_policy(TCP_CONNECT)
    obj["spec"]["kprobes"].append(copy.deepcopy(TCP_CONNECT))
    assert "tetragon.duplicate-symbol" in error_codes(obj, schemas)


def test_more_than_eight_address_filters(schemas: SchemaSet) -> None:
    obj = _tracing_policy(TCP_CONNECT)
    for call in ("tcp_sendmsg", "tcp_close", "ip_output", "udp_sendmsg"):
        kp = _with(TCP_CONNECT, call=call, selectors=_selectors(2))
        obj["spec"]["kprobes"].append(kp)
    assert "tetragon.address-filters" in error_codes(obj, schemas)


def test_never_block_overlap(schemas: SchemaSet) -> None:
    guard = NeverBlock(extra=[("45.33.0.0/16", "pod range")])
    assert "cidr.never-block" in error_codes(_tracing_policy(TCP_CONNECT), schemas, guard)
    assert "cidr.never-block" in error_codes(_deny_policy({"toCIDR": ["45.33.32.7/32"]}), schemas, guard)
    # A destination restricted to named binaries is not a blocklist: the IMDS rule may name 169.254.169.254.
    imds = _with(
        TCP_CONNECT,
        selectors=[
            {
                "matchArgs": [
                    {
                        "index": 0,
                        "operator": "DAddr",
                        "values": ["169.254.169.254/32", "::ffff:169.254.169.254/128"],
                    }
                ],
                "matchBinaries": [{"operator": "Postfix", "values": ["/curl"]}],
                "matchActions": [{"action": "Sigkill"}],
            }
        ],
    )
    assert error_codes(_tracing_policy(imds), schemas, NeverBlock()) == set()


def test_size_limits(schemas: SchemaSet) -> None:
    group: dict[str, Any] = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumCIDRGroup",
        "metadata": {"name": "big"},
        "spec": {"externalCIDRs": [f"45.{i // 65536}.{i // 256 % 256}.{i % 256}/32" for i in range(40_000)]},
    }
    assert "size.too-large" in error_codes(group, schemas)
    group["spec"]["externalCIDRs"] = group["spec"]["externalCIDRs"] * 3
    assert "size.etcd-limit" in error_codes(group, None)


def test_warnings_do_not_block(schemas: SchemaSet) -> None:
    obj = _tracing_policy(
        {
            "call": "sys_setns",
            "syscall": True,
            "args": [{"index": 0, "type": "int"}],
            "selectors": [{"matchActions": [{"action": "Sigkill"}]}],
        }
    )
    problems = check_object(obj, schemas)
    assert errors_of(problems) == []
    assert [p.code for p in problems] == ["tetragon.runtime-hook"]
    obj["spec"]["options"] = [{"name": "policy-mode", "value": "monitor"}]
    assert check_object(obj, schemas) == []


def test_not_an_object() -> None:
    assert [p.code for p in check_object(["a"], None)] == ["schema.not-an-object"]


# --- issue 9: denies to whole entities, enforcement on every program start -------------------------

EVERY_EXEC = {
    "call": "security_bprm_check",
    "syscall": False,
    "args": [{"index": 0, "type": "linux_binprm"}],
    "selectors": [{"matchActions": [{"action": "Sigkill"}]}],
}


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        (_deny_policy({"toEntities": ["all"]}), "cilium.deny-everything"),
        (_deny_policy({"toEntities": ["world"]}), "cilium.deny-everything"),
        (_tracing_policy(EVERY_EXEC), "tetragon.kill-every-exec"),
        (
            _tracing_policy(
                _with(
                    EVERY_EXEC,
                    call="sys_execve",
                    syscall=True,
                    args=[{"index": 0, "type": "string"}],
                    selectors=[{"matchActions": [{"action": "Override", "argError": -1}]}],
                )
            ),
            "tetragon.kill-every-exec",
        ),
    ],
    ids=["deny to all", "deny to world", "Sigkill on every exec", "Override on every execve"],
)
def test_denying_everything_is_an_error(schemas: SchemaSet, obj: dict[str, Any], code: str) -> None:
    assert code in error_codes(obj, schemas)


def test_a_filtered_exec_block_and_a_ports_only_world_deny_pass(schemas: SchemaSet) -> None:
    filtered = _with(
        EVERY_EXEC,
        selectors=[
            {
                "matchArgs": [{"index": 0, "operator": "Postfix", "values": ["/xmrig"]}],
                "matchActions": [{"action": "Sigkill"}],
            }
        ],
    )
    assert "tetragon.kill-every-exec" not in error_codes(_tracing_policy(filtered), schemas)
    scoped = _tracing_policy(EVERY_EXEC)
    scoped["spec"]["podSelector"] = {"matchLabels": {"app": "build-runner"}}
    assert "tetragon.kill-every-exec" not in error_codes(scoped, schemas)
    ports = _deny_policy({"toEntities": ["world"], "toPorts": [{"ports": [{"port": "23", "protocol": "TCP"}]}]})
    assert "cilium.deny-everything" not in error_codes(ports, schemas)

"""Checklist for Cilium objects (docs/ENFORCEMENT.md §2 and §5 "Cilium")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cdr_policy.policy.checker.common import BlockGuard, as_dict, check_cidr, check_cidrs
from cdr_policy.policy.checker.problem import Problem, error, warning

# EgressCommonRule / IngressCommonRule members that select an L3 peer: Cilium's sanitizer refuses
# two of them in one rule item ("combining %s and %s is not supported yet").
_EGRESS_PEERS = (
    "toCIDR",
    "toCIDRSet",
    "toEndpoints",
    "toEntities",
    "toServices",
    "toGroups",
    "toNodes",
    "toFQDNs",
)
_INGRESS_PEERS = ("fromCIDR", "fromCIDRSet", "fromEndpoints", "fromEntities", "fromGroups", "fromNodes")
_SECTIONS = ("ingress", "ingressDeny", "egress", "egressDeny")
MAX_PORTS = 40


def check_policy(obj: dict[str, Any], guard: BlockGuard | None) -> list[Problem]:
    """CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy."""
    spec, specs = obj.get("spec"), obj.get("specs")
    rules: list[tuple[str, Any]] = []
    if isinstance(spec, dict):
        rules.append(("spec", spec))
    if isinstance(specs, list):
        rules.extend((f"specs[{i}]", rule) for i, rule in enumerate(specs))
    problems: list[Problem] = []
    for path, rule in rules:
        if isinstance(rule, dict):
            problems.extend(_check_rule(rule, path, guard))
    return problems


def _check_rule(rule: dict[str, Any], path: str, guard: BlockGuard | None) -> list[Problem]:
    problems: list[Problem] = []
    present = [s for s in _SECTIONS if s in rule]
    if not present:
        problems.append(
            error(
                "cilium.no-rules",
                path,
                "a rule needs at least one of ingress, ingressDeny, egress, egressDeny",
            )
        )
    problems.extend(_empty_lists(rule, path))
    for section in present:
        items = rule[section]
        if not isinstance(items, list):
            continue
        peers = _EGRESS_PEERS if section.startswith("egress") else _INGRESS_PEERS
        for i, item in enumerate(items):
            where = f"{path}.{section}[{i}]"
            if not isinstance(item, dict):
                continue
            if not item:
                problems.append(
                    error("cilium.empty-rule", where, "an empty rule item ({}) selects everything or nothing")
                )
            kinds = [p for p in peers if p in item]
            if len(kinds) > 1:
                problems.append(
                    error(
                        "cilium.mixed-peers",
                        where,
                        f"one L3 peer kind per rule item, found {', '.join(kinds)}",
                    )
                )
            problems.extend(_ports(item, where, deny=section.endswith("Deny")))
            problems.extend(_cidrs(item, where, guard, blocked=section == "egressDeny"))
            if section.endswith("Deny"):
                problems.extend(_deny_item(item, where))
    problems.extend(_default_deny(rule, path))
    return problems


def _deny_item(item: dict[str, Any], where: str) -> list[Problem]:
    problems = []
    if "toFQDNs" in item:
        problems.append(
            error(
                "cilium.fqdn-deny",
                f"{where}.toFQDNs",
                "deny rules do not support toFQDNs (the field is dropped: default-deny)",
            )
        )
    for key in ("toEntities", "fromEntities"):
        entities = item.get(key) or []
        broad = sorted({"world", "all"} & set(entities)) if isinstance(entities, list) else []
        if not broad:
            continue
        if "toPorts" in item:
            problems.append(warning("cilium.port-deny-world", where, "denies these ports towards the whole internet"))
        else:
            problems.append(
                error(
                    "cilium.deny-everything",
                    f"{where}.{key}",
                    f"a deny to the {'/'.join(broad)} entit{'y' if len(broad) == 1 else 'ies'} cuts every selected "
                    "endpoint off from all of it: block prefixes (toCIDRSet), never whole entities",
                )
            )
    return problems


def _ports(item: dict[str, Any], where: str, *, deny: bool) -> list[Problem]:
    problems = []
    for j, port_rule in enumerate(item.get("toPorts") or []):
        if not isinstance(port_rule, dict):
            continue
        ports = port_rule.get("ports") or []
        if isinstance(ports, list) and len(ports) > MAX_PORTS:
            problems.append(
                error(
                    "cilium.too-many-ports",
                    f"{where}.toPorts[{j}]",
                    f"{len(ports)} ports (at most {MAX_PORTS})",
                )
            )
        if deny and "rules" in port_rule:
            problems.append(error("cilium.l7-deny", f"{where}.toPorts[{j}].rules", "deny rules cannot carry L7 rules"))
    return problems


def _cidrs(item: dict[str, Any], where: str, guard: BlockGuard | None, *, blocked: bool) -> list[Problem]:
    problems = []
    for key in ("toCIDR", "fromCIDR"):
        values = item.get(key) or []
        problems.extend(check_cidrs(values, _indexed(f"{where}.{key}"), guard, blocked=blocked)[0])
    for key in ("toCIDRSet", "fromCIDRSet"):
        for j, entry in enumerate(item.get(key) or []):
            if not isinstance(entry, dict):
                continue
            at = f"{where}.{key}[{j}]"
            if "cidr" in entry:
                problems.extend(check_cidr(entry["cidr"], f"{at}.cidr", guard, blocked=blocked))
            for k, value in enumerate(entry.get("except") or []):
                problems.extend(check_cidr(value, f"{at}.except[{k}]", None, blocked=False))
            if "cidrGroupRef" in entry and entry.get("except"):
                problems.append(error("cilium.group-except", at, "except cannot be combined with cidrGroupRef"))
    return problems


def _default_deny(rule: dict[str, Any], path: str) -> list[Problem]:
    """A deny-only policy must not switch the selected endpoints to default-deny (§2.5)."""
    deny_only = ("egressDeny" in rule or "ingressDeny" in rule) and "egress" not in rule and "ingress" not in rule
    if not deny_only:
        return []
    setting = rule.get("enableDefaultDeny")
    if not isinstance(setting, dict) or setting.get("egress") is not False or setting.get("ingress") is not False:
        return [
            error(
                "cilium.default-deny",
                f"{path}.enableDefaultDeny",
                "a deny-only policy needs enableDefaultDeny: {egress: false, ingress: false}, "
                "or every selected endpoint drops all other traffic",
            )
        ]
    return []


def _empty_lists(value: Any, path: str) -> list[Problem]:
    """Empty lists anywhere in a rule: before 1.16 an empty peer list was a wildcard."""
    problems = []
    if isinstance(value, dict):
        for key, item in value.items():
            problems.extend(_empty_lists(item, f"{path}.{key}"))
    elif isinstance(value, list):
        if not value:
            problems.append(
                error("cilium.empty-list", path, "empty list (selects nothing on >= 1.16, everything before)")
            )
        for i, item in enumerate(value):
            problems.extend(_empty_lists(item, f"{path}[{i}]"))
    return problems


def _indexed(path: str) -> Callable[[int], str]:
    return lambda i: f"{path}[{i}]"


def check_cidr_group(obj: dict[str, Any], guard: BlockGuard | None) -> list[Problem]:
    spec = as_dict(obj.get("spec"))
    problems: list[Problem] = []
    cidrs = spec.get("externalCIDRs")
    if isinstance(cidrs, list):
        problems.extend(check_cidrs(cidrs, lambda i: f"spec.externalCIDRs[{i}]", guard, blocked=True)[0])
        seen: set[str] = set()
        for i, value in enumerate(cidrs):
            if isinstance(value, str) and value in seen:
                problems.append(warning("cidr.duplicate", f"spec.externalCIDRs[{i}]", f"{value} is listed twice"))
            seen.add(value)
    return problems

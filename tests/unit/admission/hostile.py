"""The bundles an adversarial review signed and applied (issue 20, points 1 to 4), built from a real
render: each case takes the objects our compiler emits for an enforcing channel and changes them the
way a buggy renderer, a compromised signer or someone who can write the state bucket would.

``rendered()`` is that render (the objects and the settings it was made with); ``CASES`` maps a case
name to a function of the rendered objects that returns the hostile objects.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

from cdr_policy.bundle.assemble import assemble
from cdr_policy.bundle.manifest import Settings
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.serialize import dump_yaml
from tests.unit.policy.factories import NOW, behaviour, cdr_set, indicator, render

CHANNEL = ChannelSettings(name="prod", action="Sigkill", cilium_version="1.18", deny_ports_to_world=True)
RULES = ("crypto_mining", "cloud_credentials", "webshell", "container_escape", "reverse_shell", "log_tampering")
Objects = list[dict[str, Any]]


@functools.cache
def _rendered() -> tuple[Objects, Settings]:
    sets = [
        cdr_set(
            [indicator("45.33.32.0/24"), indicator("2a00:1450:4001::/48"), indicator("tcp/4444", kind="port")],
            [behaviour(rule, ["xmrig-proxy"]) for rule in RULES],
        )
    ]
    rendered = render(sets, CHANNEL)
    bundle = assemble(rendered.files, CHANNEL, now=NOW, index=rendered.provenance)
    return bundle.objects, bundle.manifest.settings


def rendered() -> tuple[Objects, Settings]:
    """A fresh copy of the render's objects, and the manifest settings they were rendered with."""
    objects, settings = _rendered()
    return copy.deepcopy(objects), settings


def files_of(objects: Objects) -> dict[str, bytes]:
    """One file per object, named by its place (a hostile object may have no usable kind or name)."""
    return {f"object-{i:03d}.yaml": dump_yaml(o) for i, o in enumerate(objects)}


def _one(objects: Objects, kind: str, **labels: str) -> dict[str, Any]:
    for obj in objects:
        have = obj["metadata"]["labels"]
        if obj["kind"] == kind and all(have.get(f"cdr-policy.io/{k}") == v for k, v in labels.items()):
            return obj
    raise LookupError(f"no {kind} {labels} in the render")


def _ccnp(objects: Objects) -> dict[str, Any]:
    return _one(objects, "CiliumClusterwideNetworkPolicy", blocklist="cdr")


def _group(objects: Objects) -> dict[str, Any]:
    return _one(objects, "CiliumCIDRGroup", blocklist="cdr")


def _tetragon_blocklist(objects: Objects) -> dict[str, Any]:
    return _one(objects, "TracingPolicy", component="tetragon-blocklist")


def _behaviour(objects: Objects, rule: str) -> dict[str, Any]:
    return _one(objects, "TracingPolicy", rule=rule)


def _exec_selector(objects: Objects, rule: str = "crypto_mining") -> dict[str, Any]:
    policy = _behaviour(objects, rule)
    [kprobe] = [k for k in policy["spec"]["kprobes"] if k["call"] == "security_bprm_check"]
    selector: dict[str, Any] = kprobe["selectors"][0]
    return selector


def _daddr(objects: Objects) -> dict[str, Any]:
    selector: dict[str, Any] = _tetragon_blocklist(objects)["spec"]["kprobes"][0]["selectors"][0]
    return selector


# -- point 1: never-block dodged through CIDR groups ------------------------------------------------


def group_selected_by_labels(objects: Objects) -> Objects:
    group = _group(objects)
    group["spec"]["externalCIDRs"] = ["10.0.0.0/8", "8.8.8.8/32", "169.254.169.254/32"]
    group["metadata"]["labels"]["team"] = "anything"
    _ccnp(objects)["spec"]["egressDeny"] = [
        {"toCIDRSet": [{"cidrGroupSelector": {"matchLabels": {"team": "anything"}}}]}
    ]
    return objects


def group_selected_by_our_labels(objects: Objects) -> Objects:
    group = _group(objects)
    group["spec"]["externalCIDRs"] = ["10.0.0.0/8", "8.8.8.8/32"]
    selector = {"matchLabels": {"cdr-policy.io/component": "cidr-group"}}
    _ccnp(objects)["spec"]["egressDeny"] = [{"toCIDRSet": [{"cidrGroupSelector": selector}]}]
    return objects


def reference_outside_the_bundle(objects: Objects) -> Objects:
    _ccnp(objects)["spec"]["egressDeny"][0]["toCIDRSet"] = [{"cidrGroupRef": "kube-dns-and-apiserver"}]
    return objects


def unreferenced_group_everything(objects: Objects) -> Objects:
    extra = copy.deepcopy(_group(objects))
    extra["metadata"]["name"] = "ccg-everything"
    extra["spec"]["externalCIDRs"] = ["0.0.0.0/0"]
    return [*objects, extra]


def referenced_group_with_private_ranges(objects: Objects) -> Objects:
    _group(objects)["spec"]["externalCIDRs"] = ["45.33.32.0/24", "10.0.0.0/8", "169.254.169.254/32"]
    return objects


# -- point 2: Tetragon never-block skipped under matchBinaries ------------------------------------------


def _kill_private(objects: Objects, binaries: list[dict[str, Any]] | None, values: list[str]) -> Objects:
    selector = _daddr(objects)
    selector["matchArgs"][0]["values"] = values
    selector["matchActions"] = [{"action": "Sigkill"}]
    if binaries is not None:
        selector["matchBinaries"] = binaries
    return objects


def daddr_private_not_in(objects: Objects) -> Objects:
    values = ["10.0.0.0/8", "::ffff:10.0.0.0/104"]
    return _kill_private(objects, [{"operator": "NotIn", "values": ["/nonexistent"]}], values)


def daddr_everything_prefix_slash(objects: Objects) -> Objects:
    return _kill_private(objects, [{"operator": "Prefix", "values": ["/"]}], ["0.0.0.0/0", "::ffff:0.0.0.0/96", "::/0"])


def daddr_private_for_named_callers(objects: Objects) -> Objects:
    values = ["10.0.0.0/8", "::ffff:10.0.0.0/104"]
    return _kill_private(objects, [{"operator": "Postfix", "values": ["/curl"]}], values)


def daddr_dns_resolver_for_everyone(objects: Objects) -> Objects:
    return _kill_private(objects, None, ["8.8.8.8/32", "::ffff:8.8.8.8/128"])


def daddr_mapped_twin_only(objects: Objects) -> Objects:
    return _kill_private(objects, None, ["45.33.32.0/24", "::ffff:45.33.32.0/120", "::ffff:10.0.0.0/104"])


# -- point 3: kill every program start ------------------------------------------------------------------


def _exec(objects: Objects, change: Callable[[dict[str, Any]], None]) -> Objects:
    change(_exec_selector(objects))
    return objects


def exec_prefix_slash(objects: Objects) -> Objects:
    return _exec(objects, lambda s: s.update(matchArgs=[{"index": 0, "operator": "Prefix", "values": ["/"]}]))


def exec_not_prefix(objects: Objects) -> Objects:
    matches = [{"index": 0, "operator": "NotPrefix", "values": ["/nonexistent/"]}]
    return _exec(objects, lambda s: s.update(matchArgs=matches))


def exec_unfiltered(objects: Objects) -> Objects:
    return _exec(objects, lambda s: s.pop("matchArgs"))


def exec_callers_not_in(objects: Objects) -> Objects:
    def change(selector: dict[str, Any]) -> None:
        selector.pop("matchArgs")
        selector["matchBinaries"] = [{"operator": "NotIn", "values": ["/nonexistent"]}]

    return _exec(objects, change)


def exec_callers_only(objects: Objects) -> Objects:
    def change(selector: dict[str, Any]) -> None:
        selector.pop("matchArgs")
        selector["matchBinaries"] = [{"operator": "Postfix", "values": ["/nginx"]}]

    return _exec(objects, change)


def exec_kills_a_shell(objects: Objects) -> Objects:
    return _exec(objects, lambda s: s["matchArgs"][0].update(values=["/bash", "/xmrig"]))


def exec_kills_an_interpreter(objects: Objects) -> Objects:
    return _exec(objects, lambda s: s["matchArgs"][0].update(values=["/python3.12"]))


def exec_empty_label_selector(objects: Objects) -> Objects:
    policy = _behaviour(objects, "crypto_mining")
    policy["spec"]["podSelector"] = {"matchLabels": {}}
    return _exec(objects, lambda s: s.pop("matchArgs"))


def exec_does_not_exist_selector(objects: Objects) -> Objects:
    policy = _behaviour(objects, "crypto_mining")
    policy["spec"]["podSelector"] = {"matchExpressions": [{"key": "nothing", "operator": "DoesNotExist"}]}
    return exec_prefix_slash(objects)


def exec_namespaced_in_kube_system(objects: Objects) -> Objects:
    policy = _behaviour(objects, "crypto_mining")
    exec_prefix_slash(objects)
    policy["kind"] = "TracingPolicyNamespaced"
    policy["metadata"]["namespace"] = "kube-system"
    return objects


# -- point 4: cluster-wide denies that are not address-based ---------------------------------------


def _deny(objects: Objects, item: dict[str, Any]) -> Objects:
    _ccnp(objects)["spec"]["egressDeny"] = [item]
    return objects


def deny_api_server(objects: Objects) -> Objects:
    return _deny(objects, {"toEntities": ["kube-apiserver"]})


def deny_cluster(objects: Objects) -> Objects:
    return _deny(objects, {"toEntities": ["cluster"]})


def deny_world_https(objects: Objects) -> Objects:
    return _deny(objects, {"toEntities": ["world"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]})


def deny_world_dns(objects: Objects) -> Objects:
    return _deny(objects, {"toEntities": ["world"], "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}]})


def deny_kube_system_endpoints(objects: Objects) -> Objects:
    selector = {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system"}}
    return _deny(objects, {"toEndpoints": [selector]})


def deny_kube_dns_service(objects: Objects) -> Objects:
    service = {"k8sService": {"serviceName": "kube-dns", "namespace": "kube-system"}}
    return _deny(objects, {"toServices": [service]})


def ingress_deny_private(objects: Objects) -> Objects:
    _ccnp(objects)["spec"]["ingressDeny"] = [{"fromCIDR": ["10.0.0.0/8"]}]
    return objects


def ingress_deny_cluster(objects: Objects) -> Objects:
    _ccnp(objects)["spec"]["ingressDeny"] = [{"fromEntities": ["cluster"]}]
    return objects


def allow_only_policy(objects: Objects) -> Objects:
    spec = _ccnp(objects)["spec"]
    spec.pop("egressDeny")
    spec.pop("enableDefaultDeny")
    spec["egress"] = [{"toEntities": ["world"]}]
    return objects


def namespaced_allow_only_policy(objects: Objects) -> Objects:
    policy = _ccnp(objects)
    allow_only_policy(objects)
    policy["kind"] = "CiliumNetworkPolicy"
    policy["metadata"]["namespace"] = "payments"
    return objects


def tetragon_kills_https_and_dns(objects: Objects) -> Objects:
    selector = _daddr(objects)
    selector["matchArgs"] = [{"index": 0, "operator": "DPort", "values": ["443", "53"]}]
    selector["matchActions"] = [{"action": "Sigkill"}]
    return objects


CASES: dict[str, Callable[[Objects], Objects]] = {
    f.__name__.replace("_", " "): f
    for f in (
        group_selected_by_labels,
        group_selected_by_our_labels,
        reference_outside_the_bundle,
        unreferenced_group_everything,
        referenced_group_with_private_ranges,
        daddr_private_not_in,
        daddr_everything_prefix_slash,
        daddr_private_for_named_callers,
        daddr_dns_resolver_for_everyone,
        daddr_mapped_twin_only,
        exec_prefix_slash,
        exec_not_prefix,
        exec_unfiltered,
        exec_callers_not_in,
        exec_callers_only,
        exec_kills_a_shell,
        exec_kills_an_interpreter,
        exec_empty_label_selector,
        exec_does_not_exist_selector,
        exec_namespaced_in_kube_system,
        deny_api_server,
        deny_cluster,
        deny_world_https,
        deny_world_dns,
        deny_kube_system_endpoints,
        deny_kube_dns_service,
        ingress_deny_private,
        ingress_deny_cluster,
        allow_only_policy,
        namespaced_allow_only_policy,
        tetragon_kills_https_and_dns,
    )
}

"""Property tests of admission: objects outside the grammar are refused, whatever the change; for
objects inside it, the computed effect agrees with an independent reading (the CIDR arithmetic of
``ipaddress`` for the addresses, the selector semantics of Tetragon's documentation for kills)."""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdr_policy.admission import Admission, Verdict, protection
from cdr_policy.guards import BUILTIN_PROTECTED
from cdr_policy.policy.binaries import INTERPRETER, SPARED

from .hostile import Objects, files_of, rendered
from .test_shapes import bundle_of

ADMISSION = Admission(protection(where="the test"))
PROTECTED = [ipaddress.ip_network(cidr) for cidr, _ in BUILTIN_PROTECTED]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# where a value sits in a document: its keys and list indexes
Path = tuple[str | int, ...]


def _containers(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every mapping and list inside ``value``, with its path."""
    if isinstance(value, dict | list):
        yield path, value
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            yield from _containers(item, (*path, key))


def _leaves(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, (*path, i))
    else:
        yield path, value


def _at(value: Any, path: Path) -> Any:
    for key in path:
        value = value[key]
    return value


def _verdict(objects: Objects) -> Verdict:
    _, manifest_settings = rendered()
    return ADMISSION.judge(bundle_of(files_of(objects), manifest_settings))


@FAST
@given(data=st.data())
def test_a_field_our_compiler_never_writes_is_refused_wherever_it_is(data: st.DataObject) -> None:
    objects, _ = rendered()
    index = data.draw(st.integers(0, len(objects) - 1))
    mappings = [(p, v) for p, v in _containers(objects[index]) if isinstance(v, dict)]
    path, target = data.draw(st.sampled_from(mappings))
    key = data.draw(st.sampled_from(["surprise", "toFQDNs", "ingress", "cidrGroupSelector", "hostSelector", "x"]))
    if key in target:
        return
    target[key] = data.draw(st.one_of(st.just({}), st.just([]), st.text(max_size=5), st.integers()))
    assert not _verdict(objects).admitted, (index, path, key)


@FAST
@given(data=st.data())
def test_a_value_of_another_type_is_refused_wherever_it_is(data: st.DataObject) -> None:
    objects, _ = rendered()
    index = data.draw(st.integers(0, len(objects) - 1))
    path, value = data.draw(st.sampled_from(list(_leaves(objects[index]))))
    others: st.SearchStrategy[object] = {
        str: st.one_of(st.integers(), st.booleans(), st.just(None), st.just({})),
        int: st.one_of(st.text(max_size=3), st.booleans(), st.just([1])),
        bool: st.one_of(st.integers(0, 1), st.just("false"), st.just(None)),
    }[type(value)]
    _at(objects[index], path[:-1])[path[-1]] = data.draw(others)
    assert not _verdict(objects).admitted, (index, path)


def _prefixes() -> st.SearchStrategy[list[str]]:
    public_v4 = st.builds(
        lambda a, n: str(ipaddress.ip_network((a, n), strict=False)), st.integers(0, 2**32 - 1), st.integers(0, 32)
    )
    special = st.sampled_from(
        ["10.1.0.0/16", "169.254.169.254/32", "8.8.8.8/32", "100.64.0.0/10", "0.0.0.0/0", "192.168.1.0/24"]
    )
    v6 = st.builds(
        lambda a, n: str(ipaddress.ip_network((a, n), strict=False)), st.integers(0, 2**128 - 1), st.integers(0, 128)
    )
    v6_special = st.sampled_from(["fd00:ec2::254/128", "::/0", "2001:db8::/48", "64:ff9b::/96", "fe80::/64"])
    return st.lists(st.one_of(public_v4, public_v4, special, v6, v6_special), min_size=1, max_size=12, unique=True)


def _blockable(prefix: str) -> bool:
    """The independent reading: a prefix may be blocked when it is at least /8 (IPv4) or /32 (IPv6)
    and shares no address with a protected network (IPv4-mapped IPv6 read as the IPv4 it holds)."""
    net = ipaddress.ip_network(prefix)
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(ipaddress.IPv6Network("::ffff:0:0/96")):
        net = ipaddress.ip_network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    if net.prefixlen < (8 if net.version == 4 else 32):
        return False
    return not any(net.version == p.version and net.overlaps(p) for p in PROTECTED)


def _mapped(prefix: str) -> str:
    net = ipaddress.ip_network(prefix)
    return f"::ffff:{net.network_address}/{96 + net.prefixlen}"


@FAST
@given(prefixes=_prefixes())
def test_a_cidr_group_is_admitted_exactly_when_every_prefix_is_blockable(prefixes: list[str]) -> None:
    objects, _ = rendered()
    group = next(o for o in objects if o["kind"] == "CiliumCIDRGroup")
    group["spec"]["externalCIDRs"] = prefixes
    verdict = _verdict(objects)
    assert verdict.admitted == all(_blockable(p) for p in prefixes)
    if verdict.admitted:
        assert set(prefixes) <= verdict.effect.prefixes["cilium"]


@FAST
@given(prefixes=_prefixes(), named_callers=st.booleans())
def test_a_tetragon_address_filter_is_judged_with_its_twins_and_its_callers(
    prefixes: list[str], named_callers: bool
) -> None:
    objects, _ = rendered()
    blocklist = next(o for o in objects if o["metadata"]["labels"]["cdr-policy.io/component"] == "tetragon-blocklist")
    selector = blocklist["spec"]["kprobes"][0]["selectors"][0]
    v4 = [p for p in prefixes if ":" not in p]
    selector["matchArgs"][0]["values"] = prefixes + [_mapped(p) for p in v4]
    if named_callers:
        selector["matchBinaries"] = [{"operator": "Postfix", "values": ["/curl", "/wget"]}]
    metadata_service = {"169.254.169.254/32", "fd00:ec2::254/128"}
    # Tetragon's reading: matchBinaries limits the selector to those callers (selectors.md); the
    # metadata service is the one never-block address our rules block, and only for named callers.
    expected = all(_blockable(p) or (named_callers and p in metadata_service) for p in prefixes)
    verdict = _verdict(objects)
    assert verdict.admitted == expected, verdict.lines()
    if verdict.admitted:
        assert set(prefixes) <= verdict.effect.prefixes["tetragon"]
        assert not any(p.startswith("::ffff:") for p in verdict.effect.prefixes["tetragon"])


NAMES = st.lists(
    st.one_of(
        st.sampled_from(sorted(SPARED)),
        st.sampled_from(["python3", "node", "java11"]),
        st.from_regex(r"[a-z]{3,8}miner", fullmatch=True),
    ),
    min_size=1,
    max_size=6,
    unique=True,
)


@FAST
@given(names=NAMES, scope=st.sampled_from(["every pod", "labelled pods", "named callers", "namespaces"]))
def test_an_exec_kill_is_refused_exactly_when_it_kills_an_everyday_program_everywhere(
    names: list[str], scope: str
) -> None:
    objects, _ = rendered()
    policy = next(o for o in objects if o["metadata"]["labels"].get("cdr-policy.io/rule") == "crypto_mining")
    [kprobe] = [k for k in policy["spec"]["kprobes"] if k["call"] == "security_bprm_check"]
    selector = kprobe["selectors"][0]
    selector["matchArgs"][0]["values"] = [f"/{n}" for n in names]
    if scope == "labelled pods":
        policy["spec"]["podSelector"] = {"matchLabels": {"app": "batch"}}
    elif scope == "named callers":
        selector["matchBinaries"] = [{"operator": "Postfix", "values": ["/nginx"]}]
    elif scope == "namespaces":
        policy["spec"]["podSelector"] = {
            "matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["jobs"]}]
        }
    # Tetragon's reading: podSelector {} selects every pod (k8s-filtering.md); a positive
    # matchBinaries limits the callers; matchLabels and a namespace In limit the pods.
    everywhere = scope == "every pod"
    everyday = any(n in SPARED or re.match(INTERPRETER, n) for n in names)
    verdict = _verdict(objects)
    assert verdict.admitted == (not (everywhere and everyday)), verdict.lines()
    if verdict.admitted:
        assert {f"/{n}" for n in names} <= verdict.effect.programs


def test_the_originals_are_admitted() -> None:
    objects, _ = rendered()
    assert _verdict(copy.deepcopy(objects)).admitted

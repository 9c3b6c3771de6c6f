"""A second, independent validator for everything the demo and the CLI emit: plain ``jsonschema`` on
the upstream CRDs' ``openAPIV3Schema`` (made strict the way ``fieldValidation=Strict`` is) plus the
core of the enforcement checklist written again from ``enforcement.md`` §5, sharing no code with
``cdr_policy.policy.checker``. If the two ever disagree, one of them is wrong."""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from demo.runner import CHANNELS, PipelineResult

pytestmark = pytest.mark.integration

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
L3_PEERS = {"toCIDR", "toCIDRSet", "toEntities", "toEndpoints", "toServices", "toGroups", "toNodes"}
DENY_PEERS = L3_PEERS | {"toPorts", "icmps"}


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Unknown fields become errors wherever the API server would prune them (structural schemas:
    the branches of oneOf/anyOf/allOf/not only add value checks, so they are left as they are)."""
    schema = copy.deepcopy(schema)

    def walk(node: Any, branch: bool = False) -> None:
        if isinstance(node, dict):
            if (
                not branch
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for key, value in node.items():
                walk(value, branch or key in ("oneOf", "anyOf", "allOf", "not"))
        elif isinstance(node, list):
            for value in node:
                walk(value, branch)

    walk(schema)
    schema.get("properties", {})["metadata"] = {"type": "object"}  # ObjectMeta: checked below
    return schema


def _cidr(value: object) -> bool:
    if not isinstance(value, str) or "/" not in value:
        return False
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def crd_schemas(crds_dir: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(apiVersion, kind) -> every upstream schema for it (main and v1.16.5 for Cilium)."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(crds_dir.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            for version in doc["spec"]["versions"]:
                key = (f"{doc['spec']['group']}/{version['name']}", doc["spec"]["names"]["kind"])
                found.setdefault(key, []).append(_strict(version["schema"]["openAPIV3Schema"]))
    return found


def independent_problems(obj: dict[str, Any], crd_schemas: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    problems = []
    schemas = crd_schemas.get((str(obj.get("apiVersion")), str(obj.get("kind"))))
    if not schemas:
        return [f"no CRD serves {obj.get('apiVersion')} {obj.get('kind')}"]
    checker = jsonschema.FormatChecker()
    checker.checks("cidr")(_cidr)
    for schema in schemas:
        problems += [e.message for e in jsonschema.Draft7Validator(schema, format_checker=checker).iter_errors(obj)]
    meta = obj["metadata"]
    if not DNS1123.match(meta["name"]) or len(meta["name"]) > 63:
        problems.append(f"name {meta['name']!r} is not a DNS-1123 name of at most 63 characters")
    labels = meta.get("labels", {})
    problems += [f"label {k}={v!r}" for k, v in labels.items() if len(v) > 63 or not LABEL_VALUE.match(v)]
    if len(json.dumps(obj)) > 512 * 1024:
        problems.append("object over 512 KiB")
    spec = obj["spec"]
    if obj["kind"] in ("TracingPolicy", "TracingPolicyNamespaced"):
        if obj["kind"] == "TracingPolicy" and spec.get("podSelector") is None:
            problems.append("cluster-wide TracingPolicy without podSelector selects host processes")
        for hook in spec.get("kprobes", []) + spec.get("lsmhooks", []):
            assert len(hook.get("selectors", [])) <= 5, "at most 5 selectors per hook"
            for selector in hook.get("selectors", []):
                for arg in selector.get("matchArgs", []):
                    if arg["operator"] == "NotDAddr":
                        problems.append("NotDAddr kill policy")
                    if arg["operator"] == "DAddr":
                        values = set(arg["values"])
                        for v in values:
                            net = ipaddress.ip_network(v)
                            if net.version == 4:
                                mapped = f"::ffff:{net.network_address}/{96 + net.prefixlen}"
                                if mapped not in values:
                                    problems.append(f"{v} without its IPv4-mapped twin")
                for action in selector.get("matchActions", []):
                    if action["action"] == "Override" and not hook.get("call", hook.get("hook", "")).startswith(
                        ("sys_", "security_", "bprm_", "file_", "socket_")
                    ):
                        problems.append(f"Override on {hook.get('call')}")
    if obj["kind"] in ("CiliumClusterwideNetworkPolicy", "CiliumNetworkPolicy"):
        if spec.get("egressDeny") and spec.get("enableDefaultDeny") != {"egress": False, "ingress": False}:
            problems.append("deny policy without enableDefaultDeny false")
        for item in spec.get("egressDeny", []):
            if set(item) - DENY_PEERS:
                problems.append(f"egressDeny item with {sorted(set(item) - DENY_PEERS)}")
            if sum(k in item for k in L3_PEERS) > 1:
                problems.append("two L3 peer kinds in one egressDeny item")
            if "toPorts" in item and len(item) == 1:
                problems.append("ports denied towards every destination")
            if any(isinstance(v, list) and not v for v in item.values()):
                problems.append("empty peer list")
    if obj["kind"] == "CiliumCIDRGroup":
        for cidr in spec["externalCIDRs"]:
            net = ipaddress.ip_network(cidr)
            if not net.is_global:
                problems.append(f"{cidr} is not globally routable")
    return problems


def _objects(folder: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))]


def test_the_checker_flags_what_the_independent_validator_flags(
    crd_schemas: dict[tuple[str, str], list[dict[str, Any]]],
) -> None:
    bad = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "Block_FQDN"},
        "spec": {"endpointSelector": {}, "egressDeny": [{"toFQDNs": [{"matchName": "evil.example"}]}]},
    }
    problems = independent_problems(bad, crd_schemas)
    assert any("toFQDNs" in p for p in problems)
    assert any("DNS-1123" in p for p in problems)
    assert any("enableDefaultDeny" in p for p in problems)


def test_every_demo_object_passes_the_independent_validator(
    pipeline: tuple[PipelineResult, list[str]], crd_schemas: dict[tuple[str, str], list[dict[str, Any]]]
) -> None:
    result, _ = pipeline
    objects = [o for c in CHANNELS for o in _objects(result.channel_dir(c["name"]))]
    assert len(objects) >= 20
    for obj in objects:
        assert independent_problems(obj, crd_schemas) == [], obj["metadata"]["name"]


@pytest.mark.parametrize("action", ["Post", "Sigkill"])
def test_every_cli_object_passes_the_independent_validator(
    tmp_path: Path,
    crd_schemas: dict[tuple[str, str], list[dict[str, Any]]],
    capsys: pytest.CaptureFixture[str],
    action: str,
) -> None:
    from cdr_policy.cli import main
    from cdr_policy.timeutil import utcnow
    from demo.runner import FINDINGS
    from fakes.feeds import DEMO_FEEDS_DIR, FeedServer, demo_feeds_yaml
    from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway

    with FakeQualysGateway(FINDINGS, rebase_to=utcnow()) as gateway, FeedServer(root=DEMO_FEEDS_DIR) as feeds:
        feed_file = tmp_path / "feeds.yaml"
        feed_file.write_text(demo_feeds_yaml(feeds.url("/")))
        env = {
            "QUALYS_USERNAME": DEMO_USERNAME,
            "QUALYS_PASSWORD": DEMO_PASSWORD,
            "QUALYS_GATEWAY_URL": gateway.url,
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
        }
        argv = ["--once", "--threat-intel", f"--feeds={feed_file}", f"--action={action}", f"--output={tmp_path / 'p'}"]
        assert main(argv, env) == 0, capsys.readouterr().err
    objects = _objects(tmp_path / "p")
    assert len(objects) >= 10
    for obj in objects:
        assert independent_problems(obj, crd_schemas) == [], obj["metadata"]["name"]

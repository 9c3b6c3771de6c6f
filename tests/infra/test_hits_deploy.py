"""deploy/hits/: the node readers as kustomize renders them: valid against the Kubernetes schemas,
one per node, hardened (no capability, read-only root, the engines' export folders read only), the
arguments the real reader CLI accepts, and RBAC that lets a reader write reports in its own
namespace only and the agent list them; the agent turns the sum on with HITS_NAMESPACE."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from cdr_policy.cli.hits import reader_parser
from tests.infra.manifests import DEPLOY, by_kind, expand, granted, kustomize, mounts, one, pod_spec, schema_errors
from tests.infra.test_agent_deploy import agent_arguments

pytestmark = pytest.mark.infra

NAMESPACE = "cdr-policy-hits"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return kustomize(DEPLOY / "hits")


@pytest.fixture(scope="module")
def daemonset(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "DaemonSet")


@pytest.fixture(scope="module")
def container(daemonset: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(daemonset)["containers"]
    (container,) = containers
    return container


def _args(objects: list[dict[str, Any]], container: dict[str, Any]) -> argparse.Namespace:
    (source,) = container["envFrom"]
    config = one(objects, "ConfigMap", source["configMapRef"]["name"])
    env = {**config["data"], **{e["name"]: e.get("value", f"<{e['name']}>") for e in container["env"]}}
    assert container["command"] == ["cdr-policy", "hits-reader"]
    return reader_parser({}).parse_args(expand(container["args"], env))


def test_manifests_match_the_kubernetes_schemas(objects: list[dict[str, Any]]) -> None:
    assert {o["kind"] for o in objects} == {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "DaemonSet",
    }
    assert schema_errors(objects) == []
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_one_reader_per_node_whatever_its_taints(daemonset: dict[str, Any]) -> None:
    spec = pod_spec(daemonset)
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"


def test_the_reader_is_hardened_and_reads_the_exports_only(
    objects: list[dict[str, Any]], daemonset: dict[str, Any], container: dict[str, Any]
) -> None:
    pod = pod_spec(daemonset)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["privileged"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    args = _args(objects, container)
    mounted = mounts(pod, container)
    for export in (args.tetragon_export, args.hubble_export):
        mount = mounted[str(export.parent)]
        assert mount["readOnly"] is True and "hostPath" in mount["volume"]
    assert "hostPath" in mounted[str(args.state_dir)]["volume"], "positions survive the pod"
    writable = {path for path, m in mounted.items() if not m.get("readOnly")}
    assert writable == {str(args.state_dir), "/tmp"}
    namespace = one(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"  # hostPath


def test_reader_arguments_are_accepted_by_the_cli(
    objects: list[dict[str, Any]], daemonset: dict[str, Any], container: dict[str, Any]
) -> None:
    args = _args(objects, container)
    assert args.bucket.startswith("s3://") and args.reports_namespace == "<POD_NAMESPACE>"
    assert args.node_name == "<NODE_NAME>" and args.once is False and args.interval == 60
    assert args.assume_role.split(":role/")[1].startswith("cdr-policy-dev-reader-"), "the read-only role"
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    (port,) = container["ports"]
    assert port["containerPort"] == args.metrics_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    key = mounts(pod_spec(daemonset), container)[str(args.public_key.parent)]
    assert key["readOnly"] is True and key["volume"]["configMap"]["name"] == "cdr-policy-signing-key"


def test_readers_write_reports_in_their_namespace_and_the_agent_lists_them(objects: list[dict[str, Any]]) -> None:
    roles = {r["metadata"]["name"]: granted(r["rules"]) for r in by_kind(objects, "Role")}
    assert roles == {
        "cdr-policy-hits-reader": {("", "configmaps", v, None) for v in ("get", "create", "update")},
        "cdr-policy-hits-agent": {("", "configmaps", "list", None)},
    }
    bindings = {b["roleRef"]["name"]: b["subjects"] for b in by_kind(objects, "RoleBinding")}
    assert bindings["cdr-policy-hits-reader"] == [
        {"kind": "ServiceAccount", "name": "cdr-policy-hits-reader", "namespace": NAMESPACE}
    ]
    assert bindings["cdr-policy-hits-agent"] == [
        {"kind": "ServiceAccount", "name": "cdr-policy-agent", "namespace": "cdr-policy-system"}
    ]
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")


def test_the_agent_sums_the_reports_only_when_told() -> None:
    agent = kustomize(DEPLOY / "agent")
    deployment = one(agent, "Deployment")
    (container,) = pod_spec(deployment)["containers"]
    assert agent_arguments(deployment, container, agent).hits_namespace == ""  # off until deploy/hits
    config = one(agent, "ConfigMap", "cdr-policy-agent")
    config["data"]["HITS_NAMESPACE"] = NAMESPACE
    assert agent_arguments(deployment, container, agent).hits_namespace == NAMESPACE

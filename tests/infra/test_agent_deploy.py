"""deploy/agent/: the Kubernetes manifests as kustomize renders them (valid against the Kubernetes
schemas, least-privilege RBAC, hardened Deployment whose arguments the real agent CLI accepts, a
liveness probe that works), the Dockerfile, and the package the image installs."""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdr_policy.agent.cli import poll_interval
from tests.infra.manifests import (
    CLUSTER_SCOPED,
    DEPLOY,
    assert_hardened,
    by_kind,
    expand,
    granted,
    kustomize,
    mounts,
    one,
    pod_spec,
    schema_errors,
)
from tests.infra.support import REPO

pytestmark = pytest.mark.infra

AGENT = DEPLOY / "agent"
NAMESPACE = "cdr-policy-system"
POLICY_RESOURCES = {
    "tracingpolicies",
    "tracingpoliciesnamespaced",
    "ciliumclusterwidenetworkpolicies",
    "ciliumnetworkpolicies",
    "ciliumcidrgroups",
}
POLICY_VERBS = {"get", "list", "watch", "create", "patch", "delete"}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((AGENT / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == NAMESPACE
    used = set(kustomization["resources"]) | {p["path"] for p in kustomization.get("patches", []) if "path" in p}
    on_disk = {p.name for p in AGENT.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk <= used, "every manifest is used by kustomization.yaml"
    return kustomize(AGENT)


def test_manifests_match_the_kubernetes_schemas(objects: list[dict[str, Any]]) -> None:
    assert {o["kind"] for o in objects} == {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
    }
    assert schema_errors(objects) == []


@pytest.fixture(scope="module")
def deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    return deployment


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def test_everything_lives_in_the_agent_namespace(objects: list[dict[str, Any]]) -> None:
    (namespace,) = by_kind(objects, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_rbac_is_least_privilege(objects: list[dict[str, Any]]) -> None:
    (role,) = by_kind(objects, "ClusterRole")
    # the one core-API grant: get Cilium's cilium-config by name, for the pre-flight
    [cilium_config] = [rule for rule in role["rules"] if rule["apiGroups"] == [""]]
    assert cilium_config == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["cilium-config"],
        "verbs": ["get"],
    }
    rules = [rule for rule in role["rules"] if rule is not cilium_config]
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert all("*" not in item for item in rule[field]), (field, rule)
        assert not rule.get("nonResourceURLs") and not rule.get("resourceNames")
    grants = granted(rules)
    expected = {("cilium.io", r, v, None) for r in POLICY_RESOURCES for v in POLICY_VERBS} | {
        ("apiextensions.k8s.io", "customresourcedefinitions", v, None) for v in ("get", "list")
    }
    assert grants == expected
    assert not {g[1] for g in grants} & {"secrets", "configmaps", "pods", "serviceaccounts", "nodes"}
    assert not {g[2] for g in grants} & {"escalate", "bind", "impersonate", "update", "deletecollection"}


def test_the_only_namespaced_grant_is_the_agent_state_configmap(objects: list[dict[str, Any]]) -> None:
    """Replay protection lives in one ConfigMap in the agent's namespace: get/update only that name;
    create cannot be limited to a name by RBAC (and needs no more than the namespace)."""
    (role,) = by_kind(objects, "Role")
    (binding,) = by_kind(objects, "RoleBinding")
    (account,) = by_kind(objects, "ServiceAccount")
    granted = {
        (group, resource, verb, tuple(rule.get("resourceNames") or ()))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("", "configmaps", "get", ("cdr-policy-agent-state",)),
        ("", "configmaps", "update", ("cdr-policy-agent-state",)),
        ("", "configmaps", "create", ()),
    }
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]


def test_binding_and_service_account(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> None:
    (role,) = by_kind(objects, "ClusterRole")
    (binding,) = by_kind(objects, "ClusterRoleBinding")
    (account,) = by_kind(objects, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    role_arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/\S+", role_arn), "IRSA placeholder keeps the ARN shape"


def test_deployment_is_hardened(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}, "two agents must never apply at once"
    assert_hardened(pod_spec(deployment), container)


def agent_arguments(
    deployment: dict[str, Any], container: dict[str, Any], objects: list[dict[str, Any]]
) -> argparse.Namespace:
    """The container's command line after Kubernetes expands $(VAR) from its ConfigMap, parsed by the
    real agent CLI."""
    from cdr_policy.agent.cli import add_arguments

    assert container["command"] == ["cdr-policy", "agent"]
    (source,) = container["envFrom"]
    config = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == source["configMapRef"]["name"])
    env = {**config["data"], **{e["name"]: e["value"] for e in container.get("env", [])}}
    parser = argparse.ArgumentParser(prog="cdr-policy agent", exit_on_error=False)
    add_arguments(parser)
    return parser.parse_args(expand(container["args"], env))


def test_agent_arguments_are_accepted_by_the_cli(
    deployment: dict[str, Any], container: dict[str, Any], objects: list[dict[str, Any]]
) -> None:
    args = agent_arguments(deployment, container, objects)
    assert args.bucket.startswith("s3://")
    assert args.kubernetes is True and args.output_dir is None
    assert poll_interval(args) == 60 and args.profile == "default"  # PROFILE in the ConfigMap: default or fast
    assert args.once is False
    mounted = mounts(pod_spec(deployment), container)
    # The public key comes from a ConfigMap, mounted read-only.
    key_mount = mounted[str(args.public_key.parent)]
    assert key_mount["readOnly"] is True
    config_map = key_mount["volume"]["configMap"]
    assert {"key": "signing-public.pem", "path": args.public_key.name} in config_map["items"]
    key_source = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == config_map["name"])
    assert "signing-public.pem" in key_source["data"]
    # State and /tmp are the only writable places (emptyDir) under a read-only root filesystem.
    assert "emptyDir" in mounted[str(args.state_dir)]["volume"]
    assert "emptyDir" in mounted["/tmp"]["volume"]
    writable = {path for path, m in mounted.items() if not m.get("readOnly")}
    assert writable == {str(args.state_dir), "/tmp"}


def test_the_agent_assumes_its_clusters_role(
    deployment: dict[str, Any], container: dict[str, Any], objects: list[dict[str, Any]]
) -> None:
    args = agent_arguments(deployment, container, objects)
    # the placeholder keeps the shape of the role deploy/cluster-access creates for a cluster
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/cdr-policy-dev-cluster-\S+", args.assume_role)


def test_the_outside_aws_component_gets_the_role_from_the_certificate(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(AGENT, overlay)],  # kustomize takes relative paths only
                "components": [os.path.relpath(AGENT / "outside-aws", overlay)],
            }
        )
    )
    objects = kustomize(overlay)
    assert schema_errors(objects) == []
    deployment = one(objects, "Deployment")
    (container,) = pod_spec(deployment)["containers"]
    args = agent_arguments(deployment, container, objects)
    assert args.assume_role is None, "the certificate's session is the cluster's role already"
    assert "eks.amazonaws.com/role-arn" not in (one(objects, "ServiceAccount")["metadata"].get("annotations") or {})
    mounted = mounts(pod_spec(deployment), container)
    env = {e["name"]: e.get("value") for e in container["env"]}
    config_dir, config_name = env["AWS_CONFIG_FILE"].rsplit("/", 1)
    config_map = one(objects, "ConfigMap", mounted[config_dir]["volume"]["configMap"]["name"])
    process = configparser.ConfigParser()
    process.read_string(config_map["data"][config_name])
    helper = shlex.split(process["default"]["credential_process"])
    flags = dict(zip(helper[2::2], helper[3::2], strict=True))
    certificate = mounted[flags["--certificate"].rsplit("/", 1)[0]]
    assert certificate["readOnly"] is True
    assert certificate["volume"]["secret"]["secretName"] == "cdr-policy-agent-certificate"
    assert flags["--private-key"].rsplit("/", 1)[0] == flags["--certificate"].rsplit("/", 1)[0]
    assert helper[:2] == ["/usr/local/bin/aws_signing_helper", "credential-process"]
    assert set(flags) == {"--certificate", "--private-key", "--trust-anchor-arn", "--profile-arn", "--role-arn"}
    assert "ARG AWS_SIGNING_HELPER_SHA256" in [f"{op} {arg}".split("=")[0] for op, arg in dockerfile_instructions()]


def test_probes_and_metrics_are_the_agents_endpoints(
    deployment: dict[str, Any], container: dict[str, Any], objects: list[dict[str, Any]]
) -> None:
    args = agent_arguments(deployment, container, objects)
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": args.metrics_port, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # Liveness tolerates the three intervals /healthz allows before it calls the loop stalled.
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= poll_interval(args)
    service = one(objects, "Service", "cdr-policy-agent-metrics")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_the_monitoring_variant_adds_a_service_monitor_for_the_metrics_service() -> None:
    objects = kustomize(DEPLOY / "monitoring")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = one(objects, "Service", "cdr-policy-agent-metrics")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    readers = one(objects, "PodMonitor")
    assert readers["metadata"]["namespace"] == "cdr-policy-hits"
    assert readers["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "cdr-policy-hits-reader"}
    dashboard = one(objects, "ConfigMap", "cdr-policy-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboard["data"]) == {"grafana-dashboard.json"}
    # Everything else is the agent, unchanged, and valid for Kubernetes (the monitors are the
    # Prometheus Operator's own kinds).
    agent = [o for o in objects if o["kind"] not in ("ServiceMonitor", "PodMonitor") and o is not dashboard]
    assert agent == kustomize(AGENT) and schema_errors(agent) == []


def dockerfile_instructions() -> list[tuple[str, str]]:
    lines = (AGENT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerfile(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("ARG", "BASE=python:3.12-slim"), "the public base unless build-image.sh gives another"
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms and all(f.split()[0] == "${BASE}" for f in froms), "every stage on the one base"
    final = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    final_stage = instructions[final:]
    users = [arg for op, arg in final_stage if op == "USER"]
    assert users, "the image must not run as root"
    uid = int(users[-1].split(":")[0])
    assert uid != 0 and uid == deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    # No entrypoint: the Deployment's command is `cdr-policy agent`, the CronJob's `cdr-policy`.
    assert not [arg for op, arg in final_stage if op == "ENTRYPOINT"]
    (cmd,) = [arg for op, arg in final_stage if op == "CMD"]
    assert yaml.safe_load(cmd)[0] == container["command"][0]
    # Only the wheels build-image.sh puts in the context; nothing is fetched during the build.
    assert [arg for op, arg in instructions if op == "COPY" and not arg.startswith("--from")] == ["wheels /wheels"]
    (install,) = [arg for op, arg in instructions if op == "RUN" and "pip install" in arg]
    assert "--no-index" in install


def test_the_wheel_the_image_installs_holds_the_package_data(tmp_path: Path) -> None:
    """build-image.sh builds cdr-policy's wheel from the repository (the image installs it with --no-index):
    it must carry the package data and the ``cdr-policy`` entry point. (tests/infra/test_image.py runs it.)"""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "out"), str(REPO)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "out").glob("cdr_policy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "cdr_policy/agent/cli.py" in names
    assert any(re.fullmatch(r"cdr_policy/schemas/.+\.schema\.json", n) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cdr-policy = cdr_policy.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

"""deploy/agent/: the Kubernetes manifests (least-privilege RBAC, hardened Deployment whose arguments the
real agent CLI accepts, a liveness probe that works), the Dockerfile, and the package the image installs."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from typing import Any

import pytest
import yaml

from tests.infra.support import REPO

pytestmark = pytest.mark.infra

DEPLOY = REPO / "deploy" / "agent"
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
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == NAMESPACE
    files = kustomization["resources"]
    on_disk = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(files) == on_disk, "every manifest is listed in kustomization.yaml"
    docs = []
    for name in files:
        docs.extend(d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d)
    return docs


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="module")
def deployment(objects) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    return deployment


@pytest.fixture(scope="module")
def container(deployment) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_everything_lives_in_the_agent_namespace(objects):
    (namespace,) = by_kind(objects, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_rbac_is_least_privilege(objects):
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
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    expected = {("cilium.io", r, v) for r in POLICY_RESOURCES for v in POLICY_VERBS} | {
        ("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list")
    }
    assert granted == expected
    assert not {r for _, r, _ in granted} & {"secrets", "configmaps", "pods", "serviceaccounts", "nodes"}
    assert not {v for _, _, v in granted} & {"escalate", "bind", "impersonate", "update", "deletecollection"}


def test_the_only_namespaced_grant_is_the_agent_state_configmap(objects):
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
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]


def test_binding_and_service_account(objects, deployment):
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


def test_deployment_is_hardened(deployment, container):
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}, "two agents must never apply at once"
    pod = spec["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security.get("privileged", False) is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


def agent_arguments(deployment, container, objects) -> argparse.Namespace:
    """The container's command line after Kubernetes expands $(VAR) from its ConfigMap, parsed by the
    real agent CLI."""
    from cdr_policy.agent.cli import add_arguments

    assert container["command"] == ["cdr-policy", "agent"]
    (source,) = container["envFrom"]
    config = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == source["configMapRef"]["name"])
    env = {**config["data"], **{e["name"]: e["value"] for e in container.get("env", [])}}

    def expand(arg: str) -> str:
        def var(match: re.Match[str]) -> str:
            assert match.group(1) in env, f"$({match.group(1)}) is not defined for the container"
            return env[match.group(1)]

        return re.sub(r"\$\(([A-Z_]+)\)", var, arg)

    parser = argparse.ArgumentParser(prog="cdr-policy agent", exit_on_error=False)
    add_arguments(parser)
    return parser.parse_args([expand(a) for a in container["args"]])


def mounts(deployment, container) -> dict[str, dict[str, Any]]:
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: {**m, "volume": volumes[m["name"]]} for m in container["volumeMounts"]}


def test_agent_arguments_are_accepted_by_the_cli(deployment, container, objects):
    args = agent_arguments(deployment, container, objects)
    assert args.bucket.startswith("s3://")
    assert args.kubernetes is True and args.output_dir is None
    assert args.interval == 60
    assert args.once is False
    mounted = mounts(deployment, container)
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


def test_liveness_probe_reads_the_agent_status_file(deployment, container, objects, tmp_path):
    from cdr_policy.agent.state import STATUS

    args = agent_arguments(deployment, container, objects)
    command = container["livenessProbe"]["exec"]["command"]
    status = f"{args.state_dir}/{STATUS}"
    assert command[:2] == ["python", "-c"] and status in command[2]
    code = command[2].replace(status, str(tmp_path / STATUS))

    def probe() -> int:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode

    assert probe() != 0, "no status file yet: not alive"
    (tmp_path / STATUS).write_text("{}")
    assert probe() == 0
    stale = time.time() - 3600
    os.utime(tmp_path / STATUS, (stale, stale))
    assert probe() != 0, "a status file an hour old means the loop is stuck"
    assert container["livenessProbe"]["initialDelaySeconds"] >= 60


def dockerfile_instructions() -> list[tuple[str, str]]:
    lines = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerfile(deployment, container):
    instructions = dockerfile_instructions()
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms and all(f.split()[0] == "python:3.12-slim" for f in froms)
    final = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    final_stage = instructions[final:]
    users = [arg for op, arg in final_stage if op == "USER"]
    assert users, "the image must not run as root"
    uid = int(users[-1].split(":")[0])
    assert uid != 0 and uid == deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    (entrypoint,) = [arg for op, arg in final_stage if op == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == container["command"]
    for op, arg in instructions:
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (REPO / source).exists(), source


def test_the_image_package_builds_from_what_the_dockerfile_copies(tmp_path):
    """The Dockerfile copies pyproject.toml and layers/shared/cdr_policy only: that must be enough for a
    wheel with the package data and the ``cdr-policy`` entry point."""
    src = tmp_path / "src"
    for op, arg in dockerfile_instructions():
        if op == "COPY" and not arg.startswith("--from"):
            *sources, dest = arg.split()
            for source in sources:
                target = src / dest if dest not in ("./", ".") else src / source
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / source, target)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "out"),
            ".",
        ],
        cwd=src,
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

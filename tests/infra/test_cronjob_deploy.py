"""deploy/cronjob/: the original Go operator's deployment (a CronJob in qualys-system reading the
Secrets qualys-credentials and abuseipdb-credentials), as kustomize renders it: valid against the
Kubernetes schemas, the agent's RBAC and image, a hardened pod, arguments the real CLI accepts,
Secrets created by the migration guide's own commands mapped onto the CLI's variables, and that command line
run against the fake gateway and the fake API server, within the ServiceAccount's grants."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.manifests import (
    CLUSTER_SCOPED,
    DEPLOY,
    assert_hardened,
    granted,
    kustomize,
    mounts,
    one,
    pod_environment,
    pod_spec,
    schema_errors,
)
from tests.infra.support import REPO, tool

pytestmark = pytest.mark.infra

CRONJOB = DEPLOY / "cronjob"
NAMESPACE = "qualys-system"
MIGRATION_GUIDE = "docs/migration.md"
# What a user has exported before running the migration guide's commands (the original's variables).
USER_ENV = {
    "QUALYS_USERNAME": "demo_user",
    "QUALYS_PASSWORD": "d3mo p@ss&word=1",
    "ABUSEIPDB_API_KEY": "abuseipdb-key",
    "QUALYS_GATEWAY_URL": "gateway.qg2.apps.qualys.com",
}

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    return kustomize(CRONJOB)


@pytest.fixture(scope="module")
def threat_intel() -> list[Obj]:
    return kustomize(CRONJOB / "threat-intel")


@pytest.fixture(scope="module")
def agent() -> list[Obj]:
    return kustomize(DEPLOY / "agent")


def generator(objects: list[Obj]) -> tuple[Obj, Obj, Obj]:
    """The CronJob, its pod spec and its one container."""
    cronjob = one(objects, "CronJob")
    pod = pod_spec(cronjob)
    (container,) = pod["containers"]
    return cronjob, pod, container


def test_manifests_match_the_kubernetes_schemas(objects: list[Obj], threat_intel: list[Obj]) -> None:
    kinds = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "CronJob"}
    assert {o["kind"] for o in objects} == kinds
    assert schema_errors(objects) == []
    assert schema_errors(threat_intel) == []


def test_everything_lives_in_the_originals_namespace(objects: list[Obj]) -> None:
    namespace = one(objects, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    assert one(objects, "CronJob")["metadata"]["name"] == "qualys-policy-generator", "the original's name"


def test_rbac_is_the_agents(objects: list[Obj], agent: list[Obj]) -> None:
    role, binding, account = (one(objects, k) for k in ("ClusterRole", "ClusterRoleBinding", "ServiceAccount"))
    assert role["rules"] == one(agent, "ClusterRole")["rules"]
    assert granted(role["rules"]) == granted(one(agent, "ClusterRole")["rules"])
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    _, pod, _ = generator(objects)
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True, "--apply uses the pod's service-account token"
    assert not account["metadata"].get("annotations"), "no cloud identity: this mode needs no AWS"
    # Both can be installed in one cluster without one's binding replacing the other's.
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        assert one(objects, kind)["metadata"]["name"] != one(agent, kind)["metadata"]["name"]


def test_same_image_and_hardening_as_the_agent(objects: list[Obj], agent: list[Obj]) -> None:
    _, pod, container = generator(objects)
    agent_pod = pod_spec(one(agent, "Deployment"))
    (agent_container,) = agent_pod["containers"]
    assert container["image"] == agent_container["image"]
    # The image has no entrypoint (tests/infra/test_agent_deploy.py): the command is the CLI itself.
    assert container["command"] == ["cdr-policy"]
    assert_hardened(pod, container)
    assert pod["securityContext"] == agent_pod["securityContext"]
    assert container["securityContext"] == agent_container["securityContext"]


def test_schedule_and_job_limits(objects: list[Obj]) -> None:
    cronjob, pod, container = generator(objects)
    spec = cronjob["spec"]
    assert spec["schedule"] == "0 * * * *", "the original's hourly schedule"
    assert spec["concurrencyPolicy"] == "Forbid", "two runs must never apply at once"
    assert 1 <= spec["successfulJobsHistoryLimit"] <= 5 and 1 <= spec["failedJobsHistoryLimit"] <= 5
    assert 0 < spec["startingDeadlineSeconds"] < 3600
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] < 3600, "a run ends before the next one is due"
    assert pod["restartPolicy"] == "Never"
    (no_retry,) = [r for r in job["podFailurePolicy"]["rules"] if "onExitCodes" in r]
    assert no_retry["action"] == "FailJob"
    assert no_retry["onExitCodes"] == {"containerName": container["name"], "operator": "In", "values": [1, 2]}


def cli_arguments(objects: list[Obj], env: dict[str, str]) -> argparse.Namespace:
    """The container's command line, parsed by the real CLI's parser (argparse exits on a bad flag)."""
    from cdr_policy.cli import build_parser

    _, _, container = generator(objects)
    assert not any("$(" in a for a in container["args"])
    return build_parser(env).parse_args(container["args"])


def test_arguments_are_the_originals_and_the_cli_accepts_them(objects: list[Obj], threat_intel: list[Obj]) -> None:
    args = cli_arguments(objects, {})
    assert (args.once, args.apply, args.hours, args.action) == (True, True, 24, "Post")
    assert not args.threat_intel  # None: not given (a --channel file's threat_intel would apply)
    _, pod, container = generator(objects)
    mounted = mounts(pod, container)
    # Output, state and /tmp are the only writable places, each an emptyDir under a read-only root.
    assert {path for path, m in mounted.items() if not m.get("readOnly")} == {args.output, args.state_dir, "/tmp"}
    assert all("emptyDir" in m["volume"] for m in mounted.values())
    # The threat-intel variant is the same CronJob with one more flag.
    ti_args = cli_arguments(threat_intel, {})
    assert ti_args.threat_intel is True
    assert {**vars(ti_args), "threat_intel": None} == vars(args)
    _, _, ti_container = generator(threat_intel)
    assert ti_container["args"] == [*container["args"], "--threat-intel"]
    others = [o for o in threat_intel if o["kind"] != "CronJob"]
    assert others == [o for o in objects if o["kind"] != "CronJob"]


def migration_blocks() -> list[str]:
    """The bash blocks of the migration guide (docs/migration.md)."""
    return re.findall(r"```bash\n(.*?)```", (REPO / MIGRATION_GUIDE).read_text(), re.S)


def migration_kubectl_creates() -> list[str]:
    """The migration guide's ``kubectl create secret|configmap`` commands, one line each."""
    commands = []
    for block in migration_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith(("kubectl create secret", "kubectl create configmap")):
                commands.append(line.split("|", 1)[0].replace("--dry-run=client -o yaml", "").strip())
    return commands


def migration_objects(env: dict[str, str]) -> list[Obj]:
    """What those commands create, run as written (``--dry-run=client``: no cluster needed)."""
    kubectl = tool("kubectl")
    created = []
    for command in migration_kubectl_creates():
        result = subprocess.run(
            ["bash", "-c", f"{shlex.quote(kubectl)} {command[len('kubectl ') :]} --dry-run=client -o yaml"],
            env={"PATH": os.environ["PATH"], "HOME": "/nonexistent", "KUBECONFIG": "/nonexistent", **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{command}: {result.stderr}"
        created.append(yaml.safe_load(result.stdout))
    return created


def test_the_guides_secrets_map_onto_the_cli_variables(objects: list[Obj]) -> None:
    from cdr_policy.qualys.credentials import load_credentials
    from cdr_policy.qualys.platforms import resolve_gateway

    created = migration_objects(USER_ENV)
    secrets = {o["metadata"]["name"]: o for o in created if o["kind"] == "Secret"}
    # The original's Secret names and keys, in the original's namespace.
    assert {name: sorted(s["data"]) for name, s in secrets.items()} == {
        "qualys-credentials": ["password", "username"],
        "abuseipdb-credentials": ["api-key"],
    }
    assert {o["metadata"]["namespace"] for o in created} == {NAMESPACE}
    _, _, container = generator(objects)
    refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"]}
    assert refs == {
        "QUALYS_USERNAME": {"name": "qualys-credentials", "key": "username"},
        "QUALYS_PASSWORD": {"name": "qualys-credentials", "key": "password"},
        "ABUSEIPDB_API_KEY": {"name": "abuseipdb-credentials", "key": "api-key", "optional": True},
    }
    env = pod_environment(container, created)
    assert env == USER_ENV
    credentials = load_credentials(None, env)
    assert (credentials.username, credentials.password) == (USER_ENV["QUALYS_USERNAME"], USER_ENV["QUALYS_PASSWORD"])
    args = cli_arguments(objects, env)
    assert resolve_gateway(args.platform, args.gateway) == "https://gateway.qg2.apps.qualys.com"
    # Without the optional AbuseIPDB Secret the pod still starts, with no key.
    without = [o for o in created if o["metadata"]["name"] != "abuseipdb-credentials"]
    assert "ABUSEIPDB_API_KEY" not in pod_environment(container, without)


def test_the_cronjob_command_line_applies_within_its_grants(
    objects: list[Obj], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The container's exact arguments and environment (mount paths mapped to temporary folders), run
    by the real CLI against the fake Qualys gateway and the fake API server: it applies through the
    agent's path, writes the original's output files, and every request it makes is one its
    ClusterRole grants. (The pod reaches the API with its service-account token: that in-cluster
    resolution is tests/unit/agent/test_kubeconfig.py::test_in_cluster_service_account_comes_first.)"""
    from cdr_policy.agent.kinds import KINDS
    from cdr_policy.cli import main
    from cdr_policy.timeutil import utcnow
    from demo.runner import FINDINGS
    from fakes.kube import FakeKubeAPI
    from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway

    _, pod, container = generator(objects)
    folders = {path: tmp_path / m["name"] for path, m in mounts(pod, container).items()}

    def local(arg: str) -> str:
        """``--flag=PATH`` inside a mount -> the same path inside the mount's temporary folder."""
        flag, equals, value = arg.partition("=")
        for path, folder in folders.items():
            if equals and (value == path or value.startswith(path + "/")):
                return f"{flag}={folder}{value[len(path) :]}"
        return arg

    with FakeQualysGateway(FINDINGS, rebase_to=utcnow()) as gateway, FakeKubeAPI() as api:
        user_env = {**USER_ENV, "QUALYS_USERNAME": DEMO_USERNAME, "QUALYS_PASSWORD": DEMO_PASSWORD}
        env = pod_environment(container, migration_objects({**user_env, "QUALYS_GATEWAY_URL": gateway.url}))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "clusters": [{"name": "c", "cluster": {"server": api.url}}],
                    "users": [{"name": "u", "user": {"token": api.token}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "c",
                }
            )
        )
        env.update({"KUBECONFIG": str(kubeconfig), "HOME": str(folders["/tmp"])})
        code = main([local(a) for a in container["args"]], env)
        out, err = capsys.readouterr()
        assert code == 0, out + err
        output = folders[cli_arguments(objects, {}).output]
        assert {"cdr-dynamic-blocklist.yaml", "cilium-cdr-blocklist.yaml", "report.json"} <= {
            p.name for p in output.iterdir()
        }
        applied = [o for o in api.objects() if o["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by")]
        assert len(applied) == len(list(output.glob("*.yaml")))
        # What deploy/cronjob/README.md's clean-up selector matches.
        assert {o["metadata"]["labels"]["cdr-policy.io/channel"] for o in applied} == {"local"}
        operations = list(api.operations)
    grants = granted(one(objects, "ClusterRole")["rules"])
    needed: set[tuple[str, str, str, str | None]] = set()
    for op in operations:
        if op.verb == "crds":
            needed.add(("apiextensions.k8s.io", "customresourcedefinitions", "list", None))
        elif op.verb == "configmap":
            needed.add(("", "configmaps", "get", op.name))
        else:
            # Server-side apply creates a missing object and patches an existing one.
            assert op.kind is not None, op
            for verb in ("create", "patch") if op.verb == "apply" else (op.verb,):
                needed.add(("cilium.io", KINDS[op.kind].plural, verb, op.name))
    assert {g[2] for g in needed} >= {"create", "patch", "list"}
    assert ("", "configmaps", "get", "cilium-config") in needed, "the pre-flight reads Cilium's configuration"
    refused = {g for g in needed if g not in grants and (*g[:3], None) not in grants}
    assert not refused


def test_the_migration_guides_apply_commands_render_what_is_tested(
    objects: list[Obj], threat_intel: list[Obj], tmp_path: Path
) -> None:
    """``kubectl apply -k`` of the migration guide applies the folders tested here, and its registry overlay,
    written by its own commands, renders the threat-intel CronJob with the pushed image."""
    applied = {p for block in migration_blocks() for p in re.findall(r"^kubectl apply -k (\S+)", block, re.M)}
    assert applied == {"deploy/cronjob", "deploy/cronjob/threat-intel", "overlays/qualys-system"}
    assert kustomize(REPO / "deploy/cronjob") == objects
    (block,) = [b for b in migration_blocks() if "cat > overlays/" in b]
    script = block[block.index("mkdir -p overlays/") : block.index("\nEOF\n") + len("\nEOF\n")]
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    image = "registry.example.com:5000/team/cdr-policy-agent"
    written = subprocess.run(
        ["bash", "-euc", script], cwd=tmp_path, env={"IMAGE_REPO": image}, capture_output=True, text=True, check=False
    )
    assert written.returncode == 0, written.stderr
    overlay = kustomize(tmp_path / "overlays" / "qualys-system")
    _, _, container = generator(overlay)
    assert container["image"] == f"{image}:0.1.0"
    assert [o for o in overlay if o["kind"] != "CronJob"] == [o for o in threat_intel if o["kind"] != "CronJob"]
    assert container["args"] == generator(threat_intel)[2]["args"]
    # Its commented-out option: the state folder on a volume (deploy/cronjob/keep-state).
    kustomization = tmp_path / "overlays" / "qualys-system" / "kustomization.yaml"
    text = kustomization.read_text()
    assert "# components:" in text
    kustomization.write_text(
        re.sub(r"^# (components:|  - \.\./\.\./deploy/cronjob/keep-state)$", r"\1", text, flags=re.M)
    )
    kept = kustomize(kustomization.parent)
    assert schema_errors(kept) == []
    claim = one(kept, "PersistentVolumeClaim")
    assert claim["metadata"]["namespace"] == NAMESPACE
    cronjob, pod, container = generator(kept)
    state = mounts(pod, container)[cli_arguments(kept, {}).state_dir]["volume"]
    assert state == {"name": "state", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid", "ReadWriteOnce holds with one run at a time"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"], "the volume is writable"
    assert [o for o in kept if o["kind"] not in ("CronJob", "PersistentVolumeClaim")] == [
        o for o in overlay if o["kind"] != "CronJob"
    ]

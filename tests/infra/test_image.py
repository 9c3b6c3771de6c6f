"""The image of deploy/agent/Dockerfile, built by ``make image``'s script and run as the manifests run it.

Each container gets what its pod gets from Kubernetes, read from the rendered manifests: the user and group
(``runAsUser``, ``runAsGroup``, ``fsGroup``), a read-only root filesystem, no capabilities, no privilege
escalation, the memory and CPU limits, a ConfigMap as a read-only folder, an ``emptyDir`` as a folder on
this machine's disk, and the service-account token, CA and namespace that ``automountServiceAccountToken``
mounts, with ``KUBERNETES_SERVICE_HOST``/``PORT``. The fakes listen on loopback and the containers share
the host's network (``--network host``). Skipped only where Docker Engine cannot run at all (not root
and no engine, or an engine that will not start).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cdr_policy import layout
from cdr_policy.bundle.signing import LocalSigner, generate_local_key
from cdr_policy.stages.publish import publish_bundle
from cdr_policy.storage import LocalStore
from cdr_policy.timeutil import utcnow
from fakes.kube import FakeKubeAPI
from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway
from fakes.tls import self_signed, server_context
from tests.infra.manifests import DEPLOY, by_kind, expand, kustomize, mounts, one, pod_environment, pod_spec
from tests.infra.support import REPO
from tests.infra.test_cronjob_deploy import USER_ENV, migration_objects
from tests.unit.bundle.factory import ips, network_bundle, render

pytestmark = [pytest.mark.infra, pytest.mark.slow]

BUILD = REPO / "deploy" / "agent" / "build-image.sh"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
NO_ENGINE = 3  # build-image.sh --engine-only: Docker Engine cannot run on this machine
Obj = dict[str, Any]


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``make image``'s script with a tag of this run (removed afterwards) and a context of its own."""
    engine = subprocess.run([str(BUILD), "--engine-only"], capture_output=True, text=True, timeout=600, check=False)
    if engine.returncode == NO_ENGINE:
        pytest.skip(f"Docker Engine cannot run here: {engine.stderr.strip()}")
    assert engine.returncode == 0, engine.stdout + engine.stderr
    tag = f"cdr-policy-agent:test-{uuid.uuid4().hex[:12]}"
    context = tmp_path_factory.mktemp("image-context")
    built = subprocess.run(
        [str(BUILD), "--tag", tag, "--context", str(context)], capture_output=True, text=True, timeout=1200, check=False
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert re.search(rf"==> {re.escape(tag)}: \d+ MB \(base \S+\), built in \d+ s", built.stdout), built.stdout
    try:
        yield tag
    finally:
        docker("rmi", "--force", tag)


@pytest.fixture(scope="module")
def agent_objects() -> list[Obj]:
    return kustomize(DEPLOY / "agent")


@pytest.fixture(scope="module")
def cronjob_objects() -> list[Obj]:
    return kustomize(DEPLOY / "cronjob")


def workload(objects: list[Obj], kind: str) -> tuple[Obj, Obj]:
    pod = pod_spec(one(objects, kind))
    (container,) = pod["containers"]
    return pod, container


def quantity(value: str) -> int:
    """A Kubernetes memory quantity (``512Mi``, ``1Gi``, ``500M``) in bytes."""
    match = re.fullmatch(r"(\d+)([KMGT]i?|)", value)
    assert match is not None, value
    number, unit = match.groups()
    power = "KMGT".index(unit[0]) + 1 if unit else 0
    return int(number) * int((1024 if unit.endswith("i") else 1000) ** power)


def cpus(value: str) -> str:
    return str(int(value[:-1]) / 1000) if value.endswith("m") else value


class Pod:
    """``docker run`` arguments for a pod's one container, as the kubelet would run it on this node."""

    def __init__(self, pod: Obj, container: Obj, work: Path, api: FakeKubeAPI, ca: bytes, namespace: str) -> None:
        self.pod, self.container, self.work = pod, container, work
        self.name = f"cdr-policy-test-{uuid.uuid4().hex[:12]}"
        # automountServiceAccountToken: the token, the API server's CA and the pod's namespace.
        self.service_account = work / "serviceaccount"
        self.service_account.mkdir(parents=True)
        (self.service_account / "token").write_text(api.token)
        (self.service_account / "ca.crt").write_bytes(ca)
        (self.service_account / "namespace").write_text(namespace)
        self.api_port = api.base_url.rsplit(":", 1)[1]

    def empty_dir(self, name: str, fs_group: int | None) -> Path:
        """An emptyDir as the kubelet makes it: a folder on the node's disk, writable by all, owned by the
        pod's fsGroup (set-group-ID, so that what the pod creates there keeps that group)."""
        folder = self.work / "volumes" / name
        folder.mkdir(parents=True)
        if fs_group is not None and os.geteuid() == 0:
            os.chown(folder, 0, fs_group)
            folder.chmod(0o2777)
        else:
            folder.chmod(0o777)
        return folder

    def config_map_volume(self, volume: Obj, data: dict[str, str]) -> Path:
        """A ConfigMap volume's folder: its items (or every key) as files."""
        folder: Path = self.work / "volumes" / volume["name"]
        folder.mkdir(parents=True)
        items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            (folder / item["path"]).write_text(data[item["key"]])
        return folder

    def run_args(self, image: str, env: dict[str, str], config_maps: dict[str, dict[str, str]]) -> list[str]:
        pod_security, security = self.pod["securityContext"], self.container["securityContext"]
        args = ["--name", self.name, "--network", "host"]
        user, group = security.get("runAsUser", pod_security["runAsUser"]), pod_security.get("runAsGroup")
        args += ["--user", f"{user}:{group}" if group is not None else str(user)]
        if pod_security.get("fsGroup") is not None:
            args += ["--group-add", str(pod_security["fsGroup"])]
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        for capability in security.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", capability]
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        limits = self.container["resources"]["limits"]
        args += ["--memory", str(quantity(limits["memory"])), "--cpus", cpus(limits["cpu"])]
        for path, mount in mounts(self.pod, self.container).items():
            volume = mount["volume"]
            if "emptyDir" in volume:
                args += ["--volume", f"{self.empty_dir(volume['name'], pod_security.get('fsGroup'))}:{path}:rw"]
            elif "configMap" in volume:
                folder = self.config_map_volume(volume, config_maps[volume["configMap"]["name"]])
                args += ["--volume", f"{folder}:{path}:{'ro' if mount.get('readOnly') else 'rw'}"]
            else:
                raise AssertionError(f"volume {volume['name']}: this test has no docker equivalent for it")
        if self.pod.get("automountServiceAccountToken"):
            args += ["--volume", f"{self.service_account}:{SERVICE_ACCOUNT}:ro"]
            env = {**env, "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": self.api_port}
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        return [*args, image]

    def logs(self) -> str:
        result = docker("logs", self.name)
        return result.stdout + result.stderr


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[FakeKubeAPI, bytes]]:
    """The fake API server over HTTPS, with a certificate for 127.0.0.1 (what the pod's CA file trusts)."""
    cert, key = self_signed("kubernetes", ip_addresses=("127.0.0.1",))
    with FakeKubeAPI(tls=server_context(cert, key)) as fake:
        yield fake, cert


def managed(api: FakeKubeAPI) -> list[Obj]:
    return [o for o in api.objects() if o["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by")]


def test_the_image_runs_cdr_policy_as_the_manifests_user(image: str, agent_objects: list[Obj]) -> None:
    pod, container = workload(agent_objects, "Deployment")
    version = docker("run", "--rm", image, "cdr-policy", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "cdr-policy 0.1.0"
    # The image's own user is the manifests' (runAsNonRoot refuses a container that would run as root).
    ids = docker("run", "--rm", image, "sh", "-c", "id -u; id -g")
    assert ids.stdout.split() == [str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"])]
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert config["Entrypoint"] is None and config["Cmd"][0] == container["command"][0]


def test_the_root_filesystem_is_read_only_and_the_mounts_are_writable(
    image: str, agent_objects: list[Obj], api: tuple[FakeKubeAPI, bytes], tmp_path: Path
) -> None:
    """The pod's settings take effect: the same commands write where the manifests mount and fail elsewhere."""
    fake, ca = api
    pod_spec_, container = workload(agent_objects, "Deployment")
    run = Pod(pod_spec_, container, tmp_path, fake, ca, "cdr-policy-system")
    config_maps = {"cdr-policy-signing-key": {"signing-public.pem": "-"}}
    script = "id -u; for d in /var/lib/cdr-policy /tmp /opt/cdr-policy /etc/cdr-policy; do touch $d/x && echo $d; done"
    result = docker("run", "--rm", *run.run_args(image, {}, config_maps), "sh", "-c", script)
    lines = result.stdout.split()
    assert lines == [str(pod_spec_["securityContext"]["runAsUser"]), "/var/lib/cdr-policy", "/tmp"], result.stderr
    assert result.stderr.count("Read-only file system") == 2


def test_the_agent_applies_a_signed_bundle_in_its_pod(
    image: str, agent_objects: list[Obj], api: tuple[FakeKubeAPI, bytes], tmp_path: Path
) -> None:
    """The Deployment's command line with the distribution store a folder (directory mode, no AWS): it
    verifies and applies the channel's bundle through the in-cluster API, turns ready, reports its status,
    and stops on SIGTERM (PID 1) with exit status 0."""
    fake, ca = api
    pod, container = workload(agent_objects, "Deployment")
    config = next(o for o in by_kind(agent_objects, "ConfigMap") if o["metadata"]["name"] == "cdr-policy-agent")
    env = pod_environment(container, [{**config, "data": {**config["data"], "CLUSTER_ID": "image-test"}}])
    channel = env["CHANNEL"]
    dist_dir, state_dir = tmp_path / "dist", tmp_path / "state"
    public_pem = generate_local_key(tmp_path / "signing.pem")
    now = utcnow()
    state = LocalStore(state_dir)
    digest = render(state, network_bundle(ips(0, 5), channel=channel), channel=channel, created=now)
    signer = LocalSigner.from_file(tmp_path / "signing.pem")
    publish_bundle(
        state, LocalStore(dist_dir), channel=channel, digest=digest, signer=signer, now=now, change_budget_percent=100
    )
    for folder, _, files in os.walk(dist_dir):  # the agent (user 10001) writes status/<cluster>.json there
        os.chmod(folder, 0o777)
        for name in files:
            os.chmod(Path(folder) / name, 0o666)
    with httpx.Client() as probe:
        port = _free_port()
        args = expand(container["args"], env)
        # Directory mode: the bucket is the mounted folder and there is no AWS role to assume.
        args[args.index("--bucket") + 1] = "/dist"
        del args[args.index("--assume-role") : args.index("--assume-role") + 2]
        args[args.index("--metrics-port") + 1] = str(port)
        run = Pod(pod, container, tmp_path, fake, ca, "cdr-policy-system")
        docker_args = run.run_args(image, env, {"cdr-policy-signing-key": {"signing-public.pem": public_pem}})
        started = docker("run", "--detach", "--volume", f"{dist_dir}:/dist", *docker_args, *container["command"], *args)
        assert started.returncode == 0, started.stderr
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if probe.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the agent did not turn ready: " + run.logs()
                time.sleep(0.5)
            assert probe.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            stopped = docker("stop", "--time", "20", run.name)
            assert stopped.returncode == 0, stopped.stderr
            exit_code = docker("inspect", "--format", "{{.State.ExitCode}}", run.name).stdout.strip()
            assert exit_code == "0", run.logs()
        finally:
            docker("rm", "--force", run.name)
    applied = managed(fake)
    assert {o["metadata"]["name"] for o in applied} == {"ccg-blocklist-a", "ccnp-blocklist-a", "tp-blocklist-a"}
    status = json.loads((dist_dir / layout.status_key("image-test")).read_text())
    assert (status["channel"], status["applied_digest"]) == (channel, digest)
    record = fake.configmap("cdr-policy-system", "cdr-policy-agent-state")
    assert record is not None
    assert record is not None, "the applied generation is kept in the pod's namespace"


def test_the_cronjob_command_line_runs_in_its_pod(
    image: str, cronjob_objects: list[Obj], api: tuple[FakeKubeAPI, bytes], tmp_path: Path
) -> None:
    """The CronJob's exact command, arguments and environment (its Secrets and ConfigMap as the README
    creates them) against the fake Qualys gateway: it fetches, renders and applies through the API."""
    from demo.runner import FINDINGS

    fake, ca = api
    pod, container = workload(cronjob_objects, "CronJob")
    with FakeQualysGateway(FINDINGS, rebase_to=utcnow()) as gateway:
        user_env = {**USER_ENV, "QUALYS_USERNAME": DEMO_USERNAME, "QUALYS_PASSWORD": DEMO_PASSWORD}
        env = pod_environment(container, migration_objects({**user_env, "QUALYS_GATEWAY_URL": gateway.url}))
        run = Pod(pod, container, tmp_path, fake, ca, "qualys-system")
        result = docker(
            "run", "--rm", *run.run_args(image, env, {}), *container["command"], *container["args"], timeout=300
        )
    assert result.returncode == 0, result.stdout + result.stderr
    applied = managed(fake)
    assert {o["kind"] for o in applied} >= {"TracingPolicy", "CiliumCIDRGroup", "CiliumClusterwideNetworkPolicy"}
    assert {o["metadata"]["labels"]["cdr-policy.io/channel"] for o in applied} == {"local"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

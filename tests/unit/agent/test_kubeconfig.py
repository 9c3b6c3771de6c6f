"""Finding the API server and credentials: in-cluster service account, then kubeconfig."""

from __future__ import annotations

import base64
import json
import ssl
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdr_policy.agent.kube import KubeApplier
from cdr_policy.agent.kubeconfig import ExecPlugin, KubeConnection, from_kubeconfig, resolve, ssl_context
from cdr_policy.errors import ConfigError
from fakes.kube import FakeKubeAPI
from fakes.tls import self_signed
from tests.unit.bundle.factory import ccg


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(
    path: Path, *, user: dict[str, Any], cluster: dict[str, Any] | None = None, current: str | None = "dev"
) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c1", "cluster": cluster or {"server": "https://api.example:6443"}}],
        "users": [{"name": "u1", "user": user}],
        "contexts": [{"name": "dev", "context": {"cluster": "c1", "user": "u1"}}],
    }
    if current:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text("sa-token\n")
    (d / "ca.crt").write_bytes(self_signed()[0])
    return d


def test_in_cluster_service_account_comes_first(sa_dir: Path, tmp_path: Path) -> None:
    env = {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBECONFIG": str(kubeconfig(tmp_path / "kc", user={"token": "kc-token"})),
    }
    conn = resolve(env, sa_dir=sa_dir)
    assert (conn.server, conn.token_file, conn.ca_file) == (
        "https://10.96.0.1:443",
        sa_dir / "token",
        sa_dir / "ca.crt",
    )
    assert ssl_context(conn).verify_mode == ssl.CERT_REQUIRED
    applier = KubeApplier.from_environment(env, sa_dir=sa_dir)
    assert applier.describe() == "kubernetes https://10.96.0.1:443"
    assert applier._bearer() == "sa-token"


def test_ipv6_service_host_is_bracketed(sa_dir: Path) -> None:
    conn = resolve({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, sa_dir=sa_dir)
    assert conn.server == "https://[fd00::1]:443"


def test_kubeconfig_with_token_and_inline_ca(tmp_path: Path) -> None:
    ca, _ = self_signed()
    path = kubeconfig(
        tmp_path / "config",
        user={"token": "abc"},
        cluster={"server": "https://api.example:6443", "certificate-authority-data": b64(ca)},
    )
    conn = resolve({"KUBECONFIG": str(path)}, sa_dir=tmp_path / "none")
    assert (conn.server, conn.token, conn.ca_data, conn.insecure) == (
        "https://api.example:6443",
        "abc",
        ca,
        False,
    )
    assert conn.source == "kubeconfig context dev"
    assert ssl_context(conn).verify_mode == ssl.CERT_REQUIRED


def test_default_kubeconfig_location_and_relative_paths(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    ca, _ = self_signed()
    (home / ".kube" / "ca.pem").write_bytes(ca)
    (home / ".kube" / "token").write_text("from-file")
    kubeconfig(
        home / ".kube" / "config",
        user={"tokenFile": "token"},
        cluster={"server": "https://api.example", "certificate-authority": "ca.pem"},
    )
    conn = resolve({}, sa_dir=tmp_path / "none", home=home)
    assert conn.token_file == (home / ".kube" / "token").resolve()
    assert conn.ca_file == (home / ".kube" / "ca.pem").resolve()
    ssl_context(conn)


def test_client_certificate_credentials(tmp_path: Path) -> None:
    cert, key = self_signed("client")
    path = kubeconfig(
        tmp_path / "config",
        user={"client-certificate-data": b64(cert), "client-key-data": b64(key)},
        cluster={"server": "https://api.example", "insecure-skip-tls-verify": True},
    )
    conn = from_kubeconfig([path])
    assert conn.client_cert == (cert, key) and conn.insecure
    ctx = ssl_context(conn)  # loads the chain; the temporary copies are gone afterwards
    assert ctx.verify_mode == ssl.CERT_NONE


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    cert, _ = self_signed("client")
    with pytest.raises(ConfigError, match="both a client certificate and a key"):
        from_kubeconfig([kubeconfig(tmp_path / "c", user={"client-certificate-data": b64(cert)})])


def _plugin(tmp_path: Path, body: str) -> Path:
    """An exec credential plugin script: counts its runs, checks it got KUBERNETES_EXEC_INFO."""
    script = tmp_path / "get-token"
    script.write_text(
        "#!" + sys.executable + "\n"
        "import json, os, sys, pathlib\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['kind'] == 'ExecCredential' and info['spec']['interactive'] is False\n"
        "runs = pathlib.Path(sys.argv[0] + '.runs')\n"
        "runs.write_text(str(int(runs.read_text()) + 1 if runs.exists() else 1))\n" + body
    )
    script.chmod(0o755)
    return script


def test_exec_plugins_give_a_token_cached_until_it_expires(tmp_path: Path) -> None:
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    credential = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": "eks-token", "expirationTimestamp": expires}}  # fmt: skip
    answer = json.dumps(json.dumps(credential))
    check = "assert os.environ['CLUSTER'] == 'prod' and sys.argv[1:] == ['eks', 'get-token']\n"
    script = _plugin(tmp_path, check + f"print({answer})\n")
    path = kubeconfig(
        tmp_path / "c",
        user={"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script),
                       "args": ["eks", "get-token"], "env": [{"name": "CLUSTER", "value": "prod"}]}},
    )  # fmt: skip
    conn = from_kubeconfig([path])
    assert conn.exec_plugin is not None and conn.token is None
    assert conn.exec_plugin.token() == "eks-token"
    assert conn.exec_plugin.token() == "eks-token"
    assert (tmp_path / "get-token.runs").read_text() == "1", "cached until shortly before it expires"


def _plugin_of(conn: KubeConnection) -> ExecPlugin:
    assert conn.exec_plugin is not None
    return conn.exec_plugin


def test_exec_plugin_failures_and_bad_answers_are_explained(tmp_path: Path) -> None:
    failing = _plugin(tmp_path, "print('token expired, run aws sso login', file=sys.stderr); sys.exit(3)\n")
    conn = from_kubeconfig([kubeconfig(tmp_path / "c", user={"exec": {"command": str(failing)}})])
    with pytest.raises(ConfigError, match="failed \\(3\\).*aws sso login"):
        _plugin_of(conn).token()
    (tmp_path / "x").mkdir()
    junk = _plugin(tmp_path / "x", "print('{}')\n")
    conn = from_kubeconfig([kubeconfig(tmp_path / "c2", user={"exec": {"command": str(junk)}})])
    with pytest.raises(ConfigError, match="no ExecCredential with status.token"):
        _plugin_of(conn).token()
    with pytest.raises(ConfigError, match="apiVersion"):
        from_kubeconfig([kubeconfig(tmp_path / "c3", user={"exec": {"command": "x", "apiVersion": "v0"}})])


def test_legacy_auth_providers_are_refused_with_a_way_out(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "c", user={"auth-provider": {"name": "gcp"}})
    with pytest.raises(ConfigError, match="legacy auth-provider.*exec credential plugin"):
        from_kubeconfig([path])


def test_the_applier_sends_the_plugins_token(tmp_path: Path) -> None:
    from fakes.kube import FakeKubeAPI

    with FakeKubeAPI() as api:
        credential = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                      "status": {"token": api.token}}  # fmt: skip
        script = _plugin(tmp_path, f"print({json.dumps(json.dumps(credential))})\n")
        path = tmp_path / "kc"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "dev",
            "clusters": [{"name": "c1", "cluster": {"server": api.url}}],
            "users": [{"name": "u1", "user": {"exec": {"command": str(script)}}}],
            "contexts": [{"name": "dev", "context": {"cluster": "c1", "user": "u1"}}],
        }))  # fmt: skip
        applier = KubeApplier.from_environment({"KUBECONFIG": str(path)}, sa_dir=tmp_path / "none")
        try:
            assert applier.owned({"app.kubernetes.io/managed-by": "cdr-policy"}) == []
        finally:
            applier.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"user": {"token": "t"}, "current": None}, "no current-context"),
        ({"user": {"token": "t"}, "current": "elsewhere"}, "'elsewhere' is not defined"),
        ({"user": {}}, "no token or client certificate"),
        ({"user": {"token": "t"}, "cluster": {"certificate-authority-data": "AAAA"}}, "has no server"),
    ],
)
def test_broken_kubeconfigs_are_explained(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_kubeconfig([kubeconfig(tmp_path / "c", **kwargs)])


def test_no_credentials_at_all(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Kubernetes credentials: not running in a pod"):
        KubeApplier.from_environment({}, sa_dir=tmp_path / "none", home=tmp_path)


def test_kubeconfig_files_merge_first_wins(tmp_path: Path) -> None:
    first = kubeconfig(tmp_path / "a", user={"token": "first"}, current=None)
    second = kubeconfig(tmp_path / "b", user={"token": "second"}, current="dev")
    conn = resolve({"KUBECONFIG": f"{first}:{tmp_path / 'missing'}:{second}"}, sa_dir=tmp_path / "none")
    assert conn.token == "first"


def test_kubeconfig_reaches_the_api_server(tmp_path: Path) -> None:
    with FakeKubeAPI() as kube:
        path = kubeconfig(tmp_path / "c", user={"token": kube.token}, cluster={"server": kube.url})
        applier = KubeApplier.from_environment({"KUBECONFIG": str(path)}, sa_dir=tmp_path / "none")
        applier.apply(ccg("g1", []))
        assert kube.get_object("CiliumCIDRGroup", "g1") is not None

"""How the agent reaches the Kubernetes API server: the pod's service account when it runs in a
cluster, otherwise a kubeconfig (``KUBECONFIG`` or ``~/.kube/config``).

Supported kubeconfig credentials: ``token``, ``tokenFile``, client certificates (files or
``-data``) and exec credential plugins that return a token (``aws eks get-token``,
``gke-gcloud-auth-plugin``, ``kubelogin``): the plugin is run without a terminal, its token cached
until shortly before its ``expirationTimestamp``. Legacy ``auth-provider`` entries are refused with
a clear error.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from cdr_policy.errors import ConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_TIMEOUT_S = 60.0
# Ask the plugin again this long before its token expires (or every time when it gives no expiry).
EXEC_REFRESH_MARGIN_S = 60.0


@dataclass
class ExecPlugin:
    """A kubeconfig ``exec`` credential plugin (client.authentication.k8s.io ExecCredential)."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = EXEC_API_VERSIONS[0]
    _cached: tuple[str, float] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_kubeconfig(cls, spec: Any, user: str) -> ExecPlugin:
        if not isinstance(spec, dict) or not isinstance(spec.get("command"), str) or not spec["command"]:
            raise ConfigError(f"kubeconfig: user {user!r}: exec needs a command")
        api_version = spec.get("apiVersion", EXEC_API_VERSIONS[0])
        if api_version not in EXEC_API_VERSIONS:
            raise ConfigError(
                f"kubeconfig: user {user!r}: exec apiVersion {api_version!r} is not one of "
                f"{', '.join(EXEC_API_VERSIONS)}"
            )
        env = tuple((str(e["name"]), str(e["value"])) for e in spec.get("env") or [] if isinstance(e, dict))
        return cls(str(spec["command"]), tuple(str(a) for a in spec.get("args") or []), env, api_version)

    def token(self) -> str:
        """A current token: cached while it is valid, else the plugin's fresh answer."""
        if self._cached is not None and time.time() < self._cached[1] - EXEC_REFRESH_MARGIN_S:
            return self._cached[0]
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
        try:
            done = subprocess.run(  # noqa: S603 - the command is the kubeconfig owner's choice, as with kubectl
                [self.command, *self.args],
                env={**os.environ, **dict(self.env), "KUBERNETES_EXEC_INFO": json.dumps(info)},
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=EXEC_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"kubeconfig exec plugin {self.command!r} could not run: {exc}") from exc
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip()[-500:]
            raise ConfigError(f"kubeconfig exec plugin {self.command!r} failed ({done.returncode}): {detail}")
        try:
            status = json.loads(done.stdout)["status"]
            token = status["token"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"kubeconfig exec plugin {self.command!r} gave no ExecCredential with status.token "
                "(client certificates from plugins are not supported)"
            ) from exc
        expires = status.get("expirationTimestamp")
        until = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp() if expires else 0.0
        self._cached = (str(token), until)
        return str(token)


@dataclass(frozen=True)
class KubeConnection:
    server: str
    source: str
    token: str | None = None
    # Re-read on every request: projected service-account tokens are rotated by the kubelet.
    token_file: Path | None = None
    ca_file: Path | None = None
    ca_data: bytes | None = None
    client_cert: tuple[bytes, bytes] | None = None  # (certificate PEM, key PEM)
    insecure: bool = False
    exec_plugin: ExecPlugin | None = None


def in_cluster(env: Mapping[str, str], sa_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeConnection | None:
    """The pod's service account, or None when not running in a pod."""
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    token_file = sa_dir / "token"
    if not host or not port or not token_file.is_file():
        return None
    if ":" in host:
        host = f"[{host}]"
    ca = sa_dir / "ca.crt"
    return KubeConnection(
        server=f"https://{host}:{port}",
        source="in-cluster service account",
        token_file=token_file,
        ca_file=ca if ca.is_file() else None,
    )


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"kubeconfig: {what} is not valid base64") from exc


def _named(docs: list[tuple[Path, dict[str, Any]]], section: str, entry: str) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Merge the named entries of ``section`` over all files; the first file to define a name wins."""
    merged: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path, doc in docs:
        for item in doc.get(section) or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                merged.setdefault(item["name"], (path, item.get(entry) or {}))
    return merged


def from_kubeconfig(paths: list[Path]) -> KubeConnection:
    """The current context of the merged kubeconfig files (missing files are skipped, as kubectl does)."""
    docs = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"kubeconfig {path} is not a mapping")
        docs.append((path, doc))
    if not docs:
        raise ConfigError(f"no kubeconfig found (looked at {', '.join(map(str, paths))})")
    context_name = next((d.get("current-context") for _, d in docs if d.get("current-context")), None)
    if not context_name:
        raise ConfigError("kubeconfig has no current-context: run `kubectl config use-context <name>`")
    contexts = _named(docs, "contexts", "context")
    if context_name not in contexts:
        raise ConfigError(f"kubeconfig: current-context {context_name!r} is not defined")
    context = contexts[context_name][1]
    clusters, users = _named(docs, "clusters", "cluster"), _named(docs, "users", "user")
    if context.get("cluster") not in clusters:
        raise ConfigError(f"kubeconfig: context {context_name!r} names unknown cluster {context.get('cluster')!r}")
    cluster_path, cluster = clusters[context["cluster"]]
    user_path, user = users.get(str(context.get("user")), (cluster_path, {}))
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise ConfigError(f"kubeconfig: cluster {context['cluster']!r} has no server")

    def rel(base: Path, value: str) -> Path:
        return (base.parent / value).resolve() if not os.path.isabs(value) else Path(value)

    cert: bytes | None = None
    key: bytes | None = None
    try:
        if user.get("client-certificate-data"):
            cert = _b64(user["client-certificate-data"], "client-certificate-data")
        elif user.get("client-certificate"):
            cert = rel(user_path, user["client-certificate"]).read_bytes()
        if user.get("client-key-data"):
            key = _b64(user["client-key-data"], "client-key-data")
        elif user.get("client-key"):
            key = rel(user_path, user["client-key"]).read_bytes()
    except OSError as exc:
        raise ConfigError(f"kubeconfig: cannot read client certificate or key: {exc}") from exc
    if (cert is None) != (key is None):
        raise ConfigError(f"kubeconfig: user {context.get('user')!r} needs both a client certificate and a key")
    token = user.get("token") or None
    token_file = rel(user_path, user["tokenFile"]) if user.get("tokenFile") else None
    plugin = ExecPlugin.from_kubeconfig(user["exec"], str(context.get("user"))) if user.get("exec") else None
    if not (token or token_file or cert or plugin):
        if user.get("auth-provider"):
            raise ConfigError(
                f"kubeconfig: user {context.get('user')!r} uses a legacy auth-provider, which is not run; use "
                "its exec credential plugin, a service-account token (token, tokenFile) or a client cert"
            )
        raise ConfigError(f"kubeconfig: user {context.get('user')!r} has no token or client certificate")
    return KubeConnection(
        server=server,
        source=f"kubeconfig context {context_name}",
        token=token,
        token_file=token_file,
        ca_file=rel(cluster_path, cluster["certificate-authority"]) if cluster.get("certificate-authority") else None,
        ca_data=_b64(cluster["certificate-authority-data"], "certificate-authority-data")
        if cluster.get("certificate-authority-data")
        else None,
        client_cert=(cert, key) if cert is not None and key is not None else None,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        exec_plugin=plugin,
    )


def resolve(env: Mapping[str, str], *, sa_dir: Path = SERVICE_ACCOUNT_DIR, home: Path | None = None) -> KubeConnection:
    """In-cluster first, then ``KUBECONFIG`` (a path list), then ``~/.kube/config``."""
    conn = in_cluster(env, sa_dir)
    if conn is not None:
        return conn
    if env.get("KUBECONFIG"):
        paths = [Path(p).expanduser() for p in env["KUBECONFIG"].split(os.pathsep) if p]
    else:
        paths = [(home or Path.home()) / ".kube" / "config"]
    if not any(p.is_file() for p in paths):
        raise ConfigError(
            "no Kubernetes credentials: not running in a pod (KUBERNETES_SERVICE_HOST/PORT and "
            f"{sa_dir / 'token'}) and no kubeconfig at {', '.join(map(str, paths))}"
        )
    return from_kubeconfig(paths)


def ssl_context(conn: KubeConnection) -> ssl.SSLContext:
    """Server verification (the cluster CA, or none when the kubeconfig says insecure-skip-tls-verify)
    and the client certificate, if any."""
    if conn.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            ctx = ssl.create_default_context(
                cafile=str(conn.ca_file) if conn.ca_file else None,
                cadata=conn.ca_data.decode() if conn.ca_data else None,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"cannot load the cluster CA ({conn.source}): {exc}") from exc
    if conn.client_cert is not None:
        # load_cert_chain only reads files: hand it private temporary copies, removed straight after.
        with tempfile.TemporaryDirectory(prefix="cdr-policy-") as tmp:
            cert_path, key_path = Path(tmp) / "client.crt", Path(tmp) / "client.key"
            for path, data in ((cert_path, conn.client_cert[0]), (key_path, conn.client_cert[1])):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            try:
                ctx.load_cert_chain(str(cert_path), str(key_path))
            except ssl.SSLError as exc:
                raise ConfigError(f"unusable client certificate or key ({conn.source}): {exc}") from exc
    return ctx

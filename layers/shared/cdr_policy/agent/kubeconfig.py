"""How the agent reaches the Kubernetes API server: the pod's service account when it runs in a
cluster, otherwise a kubeconfig (``KUBECONFIG`` or ``~/.kube/config``).

Supported kubeconfig credentials: ``token``, ``tokenFile`` and client certificates (files or
``-data``). Exec plugins and auth providers (``aws eks get-token`` and the like) are not run; the
error says so and what to use instead.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cdr_policy.errors import ConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


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


def _named(docs: list[tuple[Path, dict[str, Any]]], section: str, entry: str) -> dict[str, tuple[Path, dict]]:
    """Merge the named entries of ``section`` over all files; the first file to define a name wins."""
    merged: dict[str, tuple[Path, dict]] = {}
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
        raise ConfigError(
            f"kubeconfig: context {context_name!r} names unknown cluster {context.get('cluster')!r}"
        )
    cluster_path, cluster = clusters[context["cluster"]]
    user_path, user = users.get(context.get("user"), (cluster_path, {}))
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
        raise ConfigError(
            f"kubeconfig: user {context.get('user')!r} needs both a client certificate and a key"
        )
    token = user.get("token") or None
    token_file = rel(user_path, user["tokenFile"]) if user.get("tokenFile") else None
    if not (token or token_file or cert):
        if user.get("exec") or user.get("auth-provider"):
            raise ConfigError(
                f"kubeconfig: user {context.get('user')!r} uses an exec or auth-provider plugin, which the "
                "agent does not run; give it a service-account token (token, tokenFile) or a client cert"
            )
        raise ConfigError(f"kubeconfig: user {context.get('user')!r} has no token or client certificate")
    return KubeConnection(
        server=server,
        source=f"kubeconfig context {context_name}",
        token=token,
        token_file=token_file,
        ca_file=rel(cluster_path, cluster["certificate-authority"])
        if cluster.get("certificate-authority")
        else None,
        ca_data=_b64(cluster["certificate-authority-data"], "certificate-authority-data")
        if cluster.get("certificate-authority-data")
        else None,
        client_cert=(cert, key) if cert is not None and key is not None else None,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


def resolve(
    env: Mapping[str, str], *, sa_dir: Path = SERVICE_ACCOUNT_DIR, home: Path | None = None
) -> KubeConnection:
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

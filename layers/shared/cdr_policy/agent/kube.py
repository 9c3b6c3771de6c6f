"""Apply objects to a Kubernetes API server with server-side apply.

Every object goes through ``PATCH …?fieldManager=cdr-policy&force=true&fieldValidation=Strict`` with
``Content-Type: application/apply-patch+yaml``: server-side apply has no 262 KiB
``last-applied-configuration`` annotation limit, and Strict validation makes the server refuse a field
its CRD does not know instead of silently pruning it (a pruned ``enableDefaultDeny`` would put every
selected pod into default-deny). Transient failures (connection errors, 429, 5xx) are retried.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import stamina
import stamina.instrumentation

from cdr_policy import jsonio
from cdr_policy.agent import kubeconfig
from cdr_policy.agent.applier import ApplyError, Conflict
from cdr_policy.agent.kinds import KINDS, Kind
from cdr_policy.bundle.objects import ref_of
from cdr_policy.errors import ConfigError
from cdr_policy.observability import logger
from cdr_policy.policy.naming import is_dns_label

FIELD_MANAGER = "cdr-policy"
APPLY_PARAMS = {"fieldManager": FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"}
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CRD_GROUP = "cilium.io"
# Where Cilium's agent configuration (the cilium-config ConfigMap) lives; the pre-flight reads it.
CILIUM_NAMESPACE_ENV = "CDR_POLICY_CILIUM_NAMESPACE"
DEFAULT_CILIUM_NAMESPACE = "kube-system"
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


def _log_retry(details: stamina.instrumentation.RetryDetails) -> None:
    """stamina's retries, in our structured log (its own hook writes bare ``stamina.retry_scheduled``
    lines to standard error when nothing else configured logging)."""
    logger.info(
        "retrying a Kubernetes API request",
        extra={"attempt": details.retry_num, "wait_s": round(details.wait_for, 2), "cause": str(details.caused_by)},
    )


stamina.instrumentation.set_on_retry_hooks([_log_retry])


class _Transient(Exception):
    pass


def _check_url(api_url: str) -> str:
    parts = urlsplit(api_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"Kubernetes API URL {api_url!r} must be https://host[:port]")
    if parts.scheme == "http":
        host = parts.hostname
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ConfigError(f"refusing plain http to {host}: the API token would travel unencrypted; use https")
    return api_url.rstrip("/")


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason_phrase
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])[:1000]
    return resp.text.strip()[:300]


def _object_missing(resp: httpx.Response, name: str) -> bool:
    """A 404 for a missing object (a Status naming it), not for a resource the server does not serve."""
    try:
        body = resp.json()
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and body.get("kind") == "Status"
        and body.get("reason") == "NotFound"
        and (body.get("details") or {}).get("name") == name
    )


class KubeApplier:
    def __init__(
        self,
        api_url: str,
        token: str | None,
        ca_file: str | os.PathLike[str] | None = None,
        *,
        http: httpx.Client | None = None,
        token_file: str | os.PathLike[str] | None = None,
        token_plugin: kubeconfig.ExecPlugin | None = None,
        timeout: float = 30.0,
        attempts: int = 3,
        cilium_namespace: str = DEFAULT_CILIUM_NAMESPACE,
    ) -> None:
        """``token``, ``token_file`` (re-read on every request) or ``token_plugin`` (a kubeconfig exec
        credential plugin) authenticate with a bearer token; a client certificate is configured on
        ``http``. ``ca_file`` verifies the server; it cannot be
        combined with ``http``, which carries its own TLS settings. ``cilium_namespace`` is where
        the pre-flight looks for the ``cilium-config`` ConfigMap."""
        self.api_url = _check_url(api_url)
        if not is_dns_label(cilium_namespace):
            raise ConfigError(f"Cilium namespace {cilium_namespace!r} is not a DNS label")
        self.cilium_namespace = cilium_namespace
        if http is not None and ca_file is not None:
            raise ConfigError("pass ca_file or an http client with its own TLS settings, not both")
        if http is None:
            verify: ssl.SSLContext | bool = True
            if ca_file is not None:
                try:
                    verify = ssl.create_default_context(cafile=str(ca_file))
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(f"cannot load the cluster CA {ca_file}: {exc}") from exc
            http = httpx.Client(verify=verify, timeout=timeout)
        self._http = http
        self._token = token
        self._token_file = Path(token_file) if token_file is not None else None
        self._token_plugin = token_plugin
        self.attempts = attempts
        self._deadline: float | None = None

    def set_deadline(self, deadline: float | None) -> None:
        """A ``time.monotonic()`` instant after which no request starts or is retried, and no request
        waits past (its timeout is cut to what is left): one sync's overall deadline."""
        self._deadline = deadline

    def _left(self, what: str) -> float | None:
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise ApplyError(f"{what}: the sync's deadline has passed; not attempted")
        return left

    @classmethod
    def from_environment(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        sa_dir: Path = kubeconfig.SERVICE_ACCOUNT_DIR,
        home: Path | None = None,
        timeout: float = 30.0,
    ) -> KubeApplier:
        """The pod's service account when in a cluster, else the current kubeconfig context.
        Raises ConfigError saying what is missing when neither is available."""
        env = os.environ if env is None else env
        conn = kubeconfig.resolve(env, sa_dir=sa_dir, home=home)
        if conn.insecure:
            logger.warning(
                "TLS verification of the API server is off (insecure-skip-tls-verify)",
                extra={"server": conn.server},
            )
        http = httpx.Client(verify=kubeconfig.ssl_context(conn), timeout=timeout)
        logger.info("Kubernetes API", extra={"server": conn.server, "credentials": conn.source})
        return cls(
            conn.server,
            conn.token,
            http=http,
            token_file=conn.token_file,
            token_plugin=conn.exec_plugin,
            cilium_namespace=env.get(CILIUM_NAMESPACE_ENV) or DEFAULT_CILIUM_NAMESPACE,
        )

    def describe(self) -> str:
        return f"kubernetes {self.api_url}"

    def close(self) -> None:
        self._http.close()

    def _bearer(self) -> str | None:
        if self._token_plugin is not None:
            try:
                return self._token_plugin.token()
            except ConfigError as exc:
                raise ApplyError(str(exc)) from exc
        if self._token_file is not None:
            try:
                return self._token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ApplyError(f"cannot read the API token {self._token_file}: {exc.strerror}") from exc
        return self._token

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> httpx.Response:
        headers = {"Accept": "application/json"}
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        left = self._left(f"{method} {path}")
        try:
            for attempt in stamina.retry_context(on=_Transient, attempts=self.attempts, timeout=left or 120):
                with attempt:
                    left = self._left(f"{method} {path}")
                    timeout = httpx.Timeout(left) if left is not None else httpx.USE_CLIENT_DEFAULT
                    try:
                        resp = self._http.request(
                            method,
                            self.api_url + path,
                            params=params,
                            content=content,
                            headers=headers,
                            timeout=timeout,
                        )
                    except httpx.TransportError as exc:
                        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
                    if resp.status_code in _TRANSIENT_STATUS:
                        raise _Transient(f"HTTP {resp.status_code}: {_message(resp)}")
                    return resp
        except _Transient as exc:
            raise ApplyError(
                f"{method} {path}: no answer from {self.api_url} after {self.attempts} attempts: {exc}"
            ) from exc
        raise AssertionError("unreachable: retry_context either returns or raises")

    @staticmethod
    def _path(api_version: str, kind: Kind, namespace: str | None, name: str | None = None) -> str:
        path = f"/apis/{api_version}"
        if namespace:
            path += f"/namespaces/{namespace}"
        path += f"/{kind.plural}"
        return f"{path}/{name}" if name else path

    def _fail(self, resp: httpx.Response, what: str) -> ApplyError:
        msg = _message(resp)
        if resp.status_code == 401:
            return ApplyError(f"{what}: unauthorized: the API server rejected the token ({msg})")
        if resp.status_code == 403:
            return ApplyError(f"{what}: forbidden: the agent's RBAC role does not allow it ({msg})")
        if resp.status_code == 404:
            return ApplyError(f"{what}: not served by this cluster (is the CRD installed at this version?)")
        if resp.status_code == 422:
            return ApplyError(f"{what}: rejected by the API server: {msg}")
        return ApplyError(f"{what}: HTTP {resp.status_code}: {msg}")

    def owned(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        found: list[dict[str, Any]] = []
        for kind in KINDS.values():
            for api_version in kind.api_versions:
                resp = self._request("GET", self._path(api_version, kind, None), params={"labelSelector": selector})
                if resp.status_code == 404:
                    continue  # this version (or the whole CRD) is not served here
                if resp.status_code != 200:
                    raise self._fail(resp, f"list {kind.name}")
                for item in resp.json().get("items") or []:
                    item.setdefault("apiVersion", api_version)
                    item.setdefault("kind", kind.name)
                    found.append(item)
                break
        return found

    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        ref = ref_of(obj)
        resp = self._request("GET", self._path(obj["apiVersion"], KINDS[ref.kind], ref.namespace, ref.name))
        if resp.status_code == 404 and _object_missing(resp, ref.name):
            return None
        if resp.status_code != 200:
            raise self._fail(resp, f"get {ref}")
        live: dict[str, Any] = resp.json()
        return live

    def apply(self, obj: dict[str, Any]) -> None:
        ref = ref_of(obj)
        resp = self._request(
            "PATCH",
            self._path(obj["apiVersion"], KINDS[ref.kind], ref.namespace, ref.name),
            params=APPLY_PARAMS,
            # JSON is YAML: sending it avoids any YAML 1.1 re-interpretation of strings on the way.
            content=jsonio.dumps(obj),
            content_type="application/apply-patch+yaml",
        )
        if resp.status_code not in (200, 201):
            raise self._fail(resp, f"apply {ref}")

    def delete(self, obj: dict[str, Any]) -> None:
        ref = ref_of(obj)
        resp = self._request("DELETE", self._path(obj["apiVersion"], KINDS[ref.kind], ref.namespace, ref.name))
        if resp.status_code == 404 and _object_missing(resp, ref.name):
            return
        if resp.status_code not in (200, 202):
            raise self._fail(resp, f"delete {ref}")

    def crds(self) -> list[dict[str, Any]]:
        """The installed CustomResourceDefinitions of the ``cilium.io`` group (Cilium and Tetragon), so that
        a policy check validates against the versions this cluster actually serves."""
        resp = self._request("GET", CRD_PATH)
        if resp.status_code != 200:
            raise self._fail(resp, "list CustomResourceDefinitions")
        items = resp.json().get("items") or []
        return sorted(
            (crd for crd in items if (crd.get("spec") or {}).get("group") == CRD_GROUP),
            key=lambda crd: (crd.get("metadata") or {}).get("name", ""),
        )

    # -- ConfigMaps: Cilium's cilium-config (pre-flight), the agent's own state record, hit reports --

    def config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        """The ``data`` of a ConfigMap, or None when there is no such ConfigMap."""
        obj = self.get_configmap(namespace, name)
        if obj is None:
            return None
        return {str(k): str(v) for k, v in (obj.get("data") or {}).items()}

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The whole ConfigMap (with ``metadata.resourceVersion``), or None."""
        resp = self._request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        if resp.status_code == 404 and _object_missing(resp, name):
            return None
        if resp.status_code != 200:
            raise self._fail(resp, f"get ConfigMap {namespace}/{name}")
        body = resp.json()
        if not isinstance(body, dict):
            raise ApplyError(f"get ConfigMap {namespace}/{name}: the answer is not an object")
        return body

    def list_configmaps(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """The ConfigMaps of ``namespace`` carrying every label of ``labels`` (the node readers' hit
        reports, ``hits.reports``)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        resp = self._request("GET", f"/api/v1/namespaces/{namespace}/configmaps", params={"labelSelector": selector})
        if resp.status_code != 200:
            raise self._fail(resp, f"list ConfigMaps in {namespace}")
        items = resp.json().get("items") if isinstance(resp.json(), dict) else None
        return [item for item in items or [] if isinstance(item, dict)]

    def write_configmap(self, obj: dict[str, Any]) -> None:
        """Create ``obj`` (no ``metadata.resourceVersion``) or replace the version it names.
        Conflict when someone else wrote it first."""
        meta = obj["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/configmaps"
        update = "resourceVersion" in meta
        resp = self._request(
            "PUT" if update else "POST",
            f"{path}/{meta['name']}" if update else path,
            content=jsonio.dumps(obj),
            content_type="application/json",
        )
        if resp.status_code == 409:
            raise Conflict(f"ConfigMap {meta['namespace']}/{meta['name']}: {_message(resp)}")
        if resp.status_code not in (200, 201):
            raise self._fail(resp, f"write ConfigMap {meta['namespace']}/{meta['name']}")

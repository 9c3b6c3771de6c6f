"""A loopback fake of the Kubernetes API server: the part of it the sync agent speaks.

Real HTTP on 127.0.0.1 (an ephemeral port) in a thread:
- server-side apply: ``PATCH`` with ``Content-Type: application/apply-patch+yaml`` creates the object
  or replaces the live one's content (``fieldManager`` required; labels and annotations a manager stops
  setting are removed, those of other managers kept; ``generation`` moves only when ``spec`` changes);
  with ``fieldValidation=Strict`` the injected validator runs and its messages come back as a 422;
- ``GET`` of one object and of lists (all namespaces or one) with equality ``labelSelector``s
  (``k=v``, ``k==v``, ``k!=v``), each served version returning the same stored object;
- ``DELETE``;
- ``GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions``;
- ConfigMaps in the core API (``/api/v1/namespaces/<ns>/configmaps[/<name>]``): ``GET`` (verb
  ``configmap``: Cilium's ``cilium-config`` read by the agent's pre-flight, put in place with
  ``set_config_map``), a ``GET`` of the list with a ``labelSelector`` (``configmap-list``: the
  node readers' hit reports), ``POST`` (``configmap-create``, 409 ``AlreadyExists``) and ``PUT``
  (``configmap-update``, 409 ``Conflict`` unless ``metadata.resourceVersion`` is the stored one), as
  the agent keeps its applied generation in one;
- a bearer-token check on every request, and an ordered log of operations for tests;
- ``delay_s``: an answer time for every request, to play a slow API server.

Resources are those of the given CRDs (their served versions), or a schema-less default set of the
five kinds the product emits. ConfigMaps: by default the ``kube-system/cilium-config`` of a Cilium
with non-default-deny policies on (``DEFAULT_CONFIG_MAPS``). Unknown resources get the API server's
plain ``404 page not found``.
"""

from __future__ import annotations

import copy
import itertools
import json
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from fakes.loopback import LoopbackServer

Validator = Callable[[dict[str, Any]], list[str]]
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
APPLY_PATCH = "application/apply-patch+yaml"


def _minimal_crd(kind: str, plural: str, scope: str, versions: tuple[str, ...]) -> dict[str, Any]:
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.cilium.io"},
        "spec": {
            "group": "cilium.io",
            "names": {"kind": kind, "plural": plural, "listKind": f"{kind}List"},
            "scope": scope,
            "versions": [
                {"name": v, "served": True, "storage": i == 0, "schema": schema} for i, v in enumerate(versions)
            ],
        },
    }


DEFAULT_CRDS: tuple[dict[str, Any], ...] = (
    _minimal_crd("CiliumCIDRGroup", "ciliumcidrgroups", "Cluster", ("v2", "v2alpha1")),
    _minimal_crd("CiliumClusterwideNetworkPolicy", "ciliumclusterwidenetworkpolicies", "Cluster", ("v2",)),
    _minimal_crd("CiliumNetworkPolicy", "ciliumnetworkpolicies", "Namespaced", ("v2",)),
    _minimal_crd("TracingPolicy", "tracingpolicies", "Cluster", ("v1alpha1",)),
    _minimal_crd("TracingPolicyNamespaced", "tracingpoliciesnamespaced", "Namespaced", ("v1alpha1",)),
)


DEFAULT_CONFIG_MAPS: dict[tuple[str, str], dict[str, str]] = {
    ("kube-system", "cilium-config"): {"enable-non-default-deny-policies": "true", "enable-policy": "default"},
}


@dataclass(frozen=True)
class Operation:
    """One request as the fake understood it. ``verb``: apply, get, list, delete, crds, configmap,
    configmap-create or configmap-update."""

    verb: str
    kind: str | None
    namespace: str | None
    name: str | None
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool


@dataclass
class _Fault:
    """The next ``times`` requests of ``verb`` (for object ``name``, or any) are answered ``status``."""

    verb: str
    name: str | None
    status: int
    times: int


class _HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any] | str) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        doc["details"] = details
    return doc


def _parse_selector(text: str) -> list[tuple[str, str, str]]:
    """``k=v,k2!=v2`` into (key, op, value); only equality-based selectors."""
    terms = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        for op in ("!=", "==", "="):
            if op in raw:
                key, value = raw.split(op, 1)
                terms.append((key.strip(), "!=" if op == "!=" else "=", value.strip()))
                break
        else:
            raise _HttpError(400, _status(400, "BadRequest", f"unable to parse requirement: {raw!r}"))
    return terms


def _matches(labels: dict[str, str], terms: list[tuple[str, str, str]]) -> bool:
    return all((labels.get(k) == v) == (op == "=") for k, op, v in terms)


class FakeKubeAPI(LoopbackServer):
    def __init__(
        self,
        crds: Iterable[dict[str, Any]] = (),
        validator: Validator | None = None,
        config_maps: Mapping[tuple[str, str], dict[str, str]] | None = None,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``config_maps``: ``{(namespace, name): data}`` (default ``DEFAULT_CONFIG_MAPS``); ``port``: where to
        listen (0: any free port; a given one, to come back where a client expects it after an outage);
        ``tls``: serve HTTPS, as a real API server does (a pod's in-cluster configuration speaks only HTTPS)."""
        self.crds = [copy.deepcopy(c) for c in crds] or [copy.deepcopy(c) for c in DEFAULT_CRDS]
        self.validator = validator
        self.token = secrets.token_urlsafe(24)
        self.operations: list[Operation] = []
        self._resources: dict[tuple[str, str, str], _Resource] = {}
        for crd in self.crds:
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    res = _Resource(
                        spec["group"],
                        version["name"],
                        spec["names"]["plural"],
                        spec["names"]["kind"],
                        spec["scope"] == "Namespaced",
                    )
                    self._resources[(res.group, res.version, res.plural)] = res
        # (group, plural, namespace, name) -> object; (..., manager) -> label/annotation keys it set
        self._objects: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
        # (namespace, name) -> the stored ConfigMap object
        self._config_maps: dict[tuple[str, str], dict[str, Any]] = {}
        for (namespace, name), data in (DEFAULT_CONFIG_MAPS if config_maps is None else config_maps).items():
            self._config_maps[(namespace, name)] = self._config_map_object(namespace, name, data, "0")
        self._owned_keys: dict[tuple[Any, ...], dict[str, set[str]]] = {}
        self._faults: list[_Fault] = []
        self.delay_s = 0.0
        self._versions = itertools.count(1)
        self._lock = threading.Lock()
        api = self

        class Handler(_Handler):
            fake = api

        super().__init__(Handler, port=port, tls=tls)

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig whose current context is this fake (token authentication)."""
        return write_kubeconfig(path, self.url, self.token)

    @property
    def url(self) -> str:
        return self.base_url

    # -- test helpers ----------------------------------------------------------------------------

    def _resource_for(self, obj: dict[str, Any]) -> _Resource:
        group, _, version = obj["apiVersion"].partition("/")
        for res in self._resources.values():
            if res.group == group and res.version == version and res.kind == obj["kind"]:
                return res
        raise ValueError(f"{obj['apiVersion']} {obj['kind']} is not served by this fake")

    def add_object(self, obj: dict[str, Any]) -> None:
        """Put an object in place directly, as another tool would have created it."""
        res = self._resource_for(obj)
        meta = obj["metadata"]
        with self._lock:
            stored = copy.deepcopy(obj)
            stored["metadata"].setdefault("uid", secrets.token_hex(8))
            stored["metadata"]["resourceVersion"] = str(next(self._versions))
            self._objects[(res.group, res.plural, meta.get("namespace"), meta["name"])] = stored

    def set_config_map(self, namespace: str, name: str, data: dict[str, str] | None) -> None:
        """Create or replace a ConfigMap (``data`` None removes it), as an operator would."""
        with self._lock:
            if data is None:
                self._config_maps.pop((namespace, name), None)
            else:
                version = str(next(self._versions))
                self._config_maps[(namespace, name)] = self._config_map_object(namespace, name, data, version)

    def objects(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Stored objects (optionally of one kind), sorted by kind, namespace and name."""
        with self._lock:
            found = [copy.deepcopy(o) for o in self._objects.values() if kind is None or o["kind"] == kind]
        return sorted(found, key=lambda o: (o["kind"], o["metadata"].get("namespace") or "", o["metadata"]["name"]))

    def get_object(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return next(
            (
                o
                for o in self.objects(kind)
                if o["metadata"]["name"] == name and o["metadata"].get("namespace") == namespace
            ),
            None,
        )

    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self._config_maps.get((namespace, name)))

    def delete_object(self, kind: str, name: str, namespace: str | None = None) -> None:
        """Remove an object out of band, as ``kubectl delete`` would."""
        with self._lock:
            for key, obj in list(self._objects.items()):
                if obj["kind"] == kind and key[2] == namespace and key[3] == name:
                    del self._objects[key]

    def fail(self, verb: str, status: int, *, name: str | None = None, times: int = 1) -> None:
        """Answer the next ``times`` requests of ``verb`` (for object ``name``, if given) with ``status``."""
        with self._lock:
            self._faults.append(_Fault(verb, name, status, times))

    def ops(self, *verbs: str) -> list[tuple[str, str | None, str | None]]:
        """``(verb, kind, name)`` of the logged operations, optionally only the given verbs."""
        return [(o.verb, o.kind, o.name) for o in self.operations if not verbs or o.verb in verbs]

    # -- request handling (called from the handler threads) ----------------------------------------

    def _fault(self, verb: str, name: str | None) -> int | None:
        with self._lock:
            for fault in self._faults:
                if fault.verb == verb and fault.name in (None, name) and fault.times > 0:
                    fault.times -= 1
                    return fault.status
        return None

    def _route(self, path: str) -> tuple[_Resource, str | None, str | None]:
        parts = path.strip("/").split("/")
        if len(parts) < 4 or parts[0] != "apis":
            raise _HttpError(404, "404 page not found")
        group, version, rest = parts[1], parts[2], parts[3:]
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if len(rest) not in (1, 2):
            raise _HttpError(404, "404 page not found")
        res = self._resources.get((group, version, rest[0]))
        if res is None or (namespace is not None and not res.namespaced):
            raise _HttpError(404, "404 page not found")
        name = rest[1] if len(rest) == 2 else None
        if name is not None and res.namespaced and namespace is None:
            raise _HttpError(404, "404 page not found")
        return res, namespace, name

    def _view(self, obj: dict[str, Any], res: _Resource) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        out["apiVersion"] = f"{res.group}/{res.version}"
        return out

    def _not_found(self, res: _Resource, name: str) -> _HttpError:
        return _HttpError(
            404,
            _status(
                404,
                "NotFound",
                f'{res.plural}.{res.group} "{name}" not found',
                name=name,
                group=res.group,
                kind=res.plural,
            ),
        )

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict[str, Any] | str]:
        if self.delay_s:
            time.sleep(self.delay_s)
        split = urlsplit(raw_path)
        params = dict(parse_qsl(split.query))
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        try:
            if split.path == CRD_PATH and method == "GET":
                self.operations.append(Operation("crds", None, None, None, params))
                return 200, {
                    "apiVersion": "apiextensions.k8s.io/v1",
                    "kind": "CustomResourceDefinitionList",
                    "metadata": {},
                    "items": copy.deepcopy(self.crds),
                }
            if split.path.startswith("/api/v1/"):
                return self._core(method, split.path, body, params)
            res, namespace, name = self._route(split.path)
            verb = {"PATCH": "apply", "DELETE": "delete", "GET": "get" if name else "list"}.get(method)
            if verb is None or (verb in ("apply", "delete") and name is None):
                return 405, _status(405, "MethodNotAllowed", f"{method} is not supported here")
            self.operations.append(Operation(verb, res.kind, namespace, name, params))
            status = self._fault(verb, name)
            if status is not None:
                return status, _status(status, "InternalError", f"injected failure for {verb} {name}")
            if verb == "list":
                return 200, self._list(res, namespace, params)
            assert name is not None
            if verb == "get":
                return 200, self._get(res, namespace, name)
            if verb == "delete":
                return self._delete(res, namespace, name)
            return self._apply(res, namespace, name, params, headers.get("Content-Type", ""), body)
        except _HttpError as exc:
            return exc.status, exc.body

    @staticmethod
    def _config_map_object(namespace: str, name: str, data: Mapping[str, str], version: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": version},
            "data": dict(data),
        }

    def _core(self, method: str, path: str, body: bytes, params: dict[str, str]) -> tuple[int, dict[str, Any] | str]:
        """The core API: ConfigMaps (get, list by label, create, update with optimistic concurrency)."""
        parts = path.strip("/").split("/")  # api v1 namespaces <ns> configmaps [<name>]
        if len(parts) not in (5, 6) or parts[2] != "namespaces" or parts[4] != "configmaps":
            raise _HttpError(404, "404 page not found")
        namespace, name = parts[3], (parts[5] if len(parts) == 6 else None)
        verb = {"GET": "configmap", "POST": "configmap-create", "PUT": "configmap-update"}.get(method)
        if verb == "configmap" and name is None:
            verb = "configmap-list"
        if verb is None or (verb in ("configmap-create", "configmap-list")) != (name is None):
            return 405, _status(405, "MethodNotAllowed", f"{method} is not supported here")
        self.operations.append(Operation(verb, "ConfigMap", namespace, name))
        status = self._fault(verb, name)
        if status is not None:
            reason = "Forbidden" if status == 403 else "InternalError"
            return status, _status(status, reason, f"injected failure for {verb} {name}")
        if verb == "configmap-list":
            terms = _parse_selector(params.get("labelSelector", ""))
            with self._lock:
                items = [
                    copy.deepcopy(cm)
                    for (ns, _), cm in sorted(self._config_maps.items())
                    if ns == namespace and _matches(cm["metadata"].get("labels") or {}, terms)
                ]
            return 200, {"apiVersion": "v1", "kind": "ConfigMapList", "items": items}
        if verb == "configmap":
            with self._lock:
                found = copy.deepcopy(self._config_maps.get((namespace, str(name))))
            if found is None:
                return 404, _status(404, "NotFound", f'configmaps "{name}" not found', name=name, kind="configmaps")
            return 200, found
        try:
            obj = json.loads(body)
        except ValueError:
            return 400, _status(400, "BadRequest", "the body is not JSON")
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict) or not meta.get("name") or (name is not None and meta["name"] != name):
            return 400, _status(400, "BadRequest", "metadata.name is missing or does not match the URL")
        key = (namespace, meta["name"])
        with self._lock:
            live = self._config_maps.get(key)
            if verb == "configmap-create" and live is not None:
                return 409, _status(409, "AlreadyExists", f'configmaps "{meta["name"]}" already exists')
            if verb == "configmap-update":
                if live is None:
                    return 404, _status(404, "NotFound", f'configmaps "{name}" not found', name=name)
                if meta.get("resourceVersion") != live["metadata"]["resourceVersion"]:
                    return 409, _status(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on configmaps "{name}": the object has been modified; '
                        "please apply your changes to the latest version and try again",
                    )
            stored = {"apiVersion": "v1", "kind": "ConfigMap", **copy.deepcopy(obj)}
            stored["metadata"]["namespace"] = namespace
            stored["metadata"]["resourceVersion"] = str(next(self._versions))
            self._config_maps[key] = stored
            return (201 if verb == "configmap-create" else 200), copy.deepcopy(stored)

    def _list(self, res: _Resource, namespace: str | None, params: dict[str, str]) -> dict[str, Any]:
        terms = _parse_selector(params.get("labelSelector", ""))
        with self._lock:
            items = [
                self._view(obj, res)
                for (group, plural, ns, _), obj in self._objects.items()
                if group == res.group
                and plural == res.plural
                and (namespace is None or ns == namespace)
                and _matches(obj["metadata"].get("labels") or {}, terms)
            ]
            version = str(next(self._versions))
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return {
            "apiVersion": f"{res.group}/{res.version}",
            "kind": f"{res.kind}List",
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    def _get(self, res: _Resource, namespace: str | None, name: str) -> dict[str, Any]:
        with self._lock:
            obj = self._objects.get((res.group, res.plural, namespace, name))
        if obj is None:
            raise self._not_found(res, name)
        return self._view(obj, res)

    def _delete(self, res: _Resource, namespace: str | None, name: str) -> tuple[int, dict[str, Any]]:
        key = (res.group, res.plural, namespace, name)
        with self._lock:
            obj = self._objects.pop(key, None)
            for owned in [k for k in self._owned_keys if k[:4] == key]:
                del self._owned_keys[owned]
        if obj is None:
            raise self._not_found(res, name)
        return 200, _status(200, "", "", name=name, group=res.group, kind=res.plural)

    def _apply(
        self,
        res: _Resource,
        namespace: str | None,
        name: str,
        params: dict[str, str],
        content_type: str,
        body: bytes,
    ) -> tuple[int, dict[str, Any]]:
        if content_type.split(";")[0].strip() != APPLY_PATCH:
            raise _HttpError(
                415,
                _status(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types include: {APPLY_PATCH}",
                ),
            )
        manager = params.get("fieldManager")
        if not manager:
            raise _HttpError(
                400,
                _status(400, "BadRequest", "PATCH, fieldManager: Required value: is required for apply patch"),
            )
        try:
            obj = yaml.safe_load(body)
        except yaml.YAMLError as exc:
            raise _HttpError(400, _status(400, "BadRequest", f"error decoding YAML: {exc}")) from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            raise _HttpError(400, _status(400, "BadRequest", "the body is not an object with metadata"))
        meta = obj["metadata"]
        if (obj.get("apiVersion"), obj.get("kind")) != (f"{res.group}/{res.version}", res.kind):
            raise _HttpError(
                400,
                _status(
                    400,
                    "BadRequest",
                    f"apiVersion/kind {obj.get('apiVersion')}/{obj.get('kind')} does not match the URL",
                ),
            )
        if meta.get("name") != name or meta.get("namespace") != namespace:
            raise _HttpError(400, _status(400, "BadRequest", "metadata.name/namespace do not match the URL"))
        if params.get("fieldValidation") == "Strict" and self.validator is not None:
            problems = self.validator(obj)
            if problems:
                raise _HttpError(
                    422,
                    _status(
                        422,
                        "Invalid",
                        f'{res.kind}.{res.group} "{name}" is invalid: ' + "; ".join(problems),
                        name=name,
                        group=res.group,
                        kind=res.kind,
                        causes=[{"reason": "FieldValueInvalid", "message": p} for p in problems],
                    ),
                )
        key = (res.group, res.plural, namespace, name)
        with self._lock:
            live = self._objects.get(key)
            merged = copy.deepcopy(obj)
            new_meta = merged["metadata"]
            previous = self._owned_keys.get((*key, manager), {"labels": set(), "annotations": set()})
            for section in ("labels", "annotations"):
                kept = {
                    k: v
                    for k, v in ((live or {}).get("metadata", {}).get(section) or {}).items()
                    if k not in previous[section]
                }
                combined = {**kept, **(new_meta.get(section) or {})}
                if combined:
                    new_meta[section] = combined
            self._owned_keys[(*key, manager)] = {s: set((meta.get(s) or {}).keys()) for s in ("labels", "annotations")}
            if live is None:
                new_meta["uid"] = secrets.token_hex(8)
                new_meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                new_meta["generation"] = 1
            else:
                for keep in ("uid", "creationTimestamp"):
                    new_meta[keep] = live["metadata"].get(keep)
                changed = live.get("spec") != merged.get("spec")
                new_meta["generation"] = live["metadata"].get("generation", 1) + (1 if changed else 0)
            new_meta["resourceVersion"] = str(next(self._versions))
            self._objects[key] = merged
        return (201 if live is None else 200), self._view(merged, res)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubeAPI
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY each keep-alive response
    # would wait for the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.fake.handle(method, self.path, self.headers, body)
        if isinstance(payload, str):
            data, ctype = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._serve("GET")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base-class signature)
        return


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    """A kubeconfig whose current context is the API server at ``server`` (token authentication),
    whether or not anything answers there."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "fake", "user": {"token": token}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    return path

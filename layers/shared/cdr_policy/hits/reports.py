"""How a node's hits reach its cluster's agent, the cluster's one writer of the bucket: each node
reader writes its *node report* (schema ``hit-report.schema.json``: the node, the channel and its
hits section, ``hits.aggregate``), the agent reads them all and sums them into its status.

- ``ConfigMapReports``: one ConfigMap per node, ``cdr-policy-hits-<node>``, in a namespace of its
  own (``cdr-policy-hits``): the readers' Role there creates and updates ConfigMaps and nothing
  else, so a reader can never touch the agent's state record; the agent's Role lists them.
- ``DirectoryReports``: one file per node in a folder (the agent's directory mode, the demo).

A report is a cumulative snapshot (counts since the reader's state began), so writing it again is
harmless and a lost write is made good by the next. Reading is bounded: at most ``MAX_REPORTS``
reports of at most ``MAX_REPORT_BYTES`` each; one that fails its schema is skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cdr_policy.agent.applier import ApplyError, Conflict
from cdr_policy.errors import BundleError, StorageError
from cdr_policy.hits.aggregate import HitsSection, HitTable
from cdr_policy.policy.naming import is_dns_subdomain
from cdr_policy.schemas import check_contract, parse_contract
from cdr_policy.storage import LocalStore, NotFound, TooLarge

SCHEMA = "hit-report.schema.json"
SCHEMA_VERSION = 1
MAX_REPORT_BYTES = 768 << 10  # a ConfigMap holds at most 1 MiB
MAX_REPORTS = 5_000  # nodes of one cluster
CONFIGMAP_PREFIX = "cdr-policy-hits-"
DATA_KEY = "report.json"
LABELS = {"app.kubernetes.io/managed-by": "cdr-policy", "cdr-policy.io/component": "hit-report"}
_ATTEMPTS = 5


@dataclass(frozen=True)
class NodeReport:
    """One node reader's report (``hit-report.schema.json``)."""

    node: str
    channel: str
    hits: HitsSection

    @classmethod
    def from_json(cls, doc: Any, where: str) -> NodeReport:
        """The report after its schema and the section's own checks; ContractError or BundleError
        naming ``where`` and the field, never quoting it."""
        check_contract(doc, SCHEMA, f"hit report {where}")
        return cls(doc["node"], doc["channel"], HitsSection.from_json(doc["hits"]).check(where))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "node": self.node,
            "channel": self.channel,
            "hits": self.hits.to_json(),
        }

    @property
    def table(self) -> HitTable:
        return self.hits.table()


def read_report(data: bytes | None, where: str) -> NodeReport:
    """A node report read with its bound (None: one too large to read) and checked."""
    if data is None or len(data) > MAX_REPORT_BYTES:
        raise BundleError(f"{where}: larger than {MAX_REPORT_BYTES} bytes")
    return NodeReport.from_json(parse_contract(data, SCHEMA, f"hit report {where}"), where)


class ReportStore(Protocol):
    def describe(self) -> str: ...

    def write(self, node: str, data: bytes) -> None:
        """Store a node's report (StorageError or ApplyError when it cannot)."""
        ...

    def read_all(self) -> list[tuple[str, bytes | None]]:
        """Every node report as ``(where, bytes)``, None for one over ``MAX_REPORT_BYTES``
        (StorageError or ApplyError when they cannot be listed)."""
        ...


class DirectoryReports:
    def __init__(self, folder: Path) -> None:
        self.store = LocalStore(folder)

    def describe(self) -> str:
        return self.store.describe()

    def write(self, node: str, data: bytes) -> None:
        try:
            self.store.put(f"{node}.json", data, "application/json")
        except OSError as exc:
            raise StorageError(f"cannot write the report to {self.describe()}: {exc.strerror}") from exc

    def read_all(self) -> list[tuple[str, bytes | None]]:
        out: list[tuple[str, bytes | None]] = []
        for key in [k for k in self.store.list("") if k.endswith(".json") and "/" not in k][:MAX_REPORTS]:
            where = f"{self.describe()}/{key}"
            try:
                out.append((where, self.store.get(key, max_bytes=MAX_REPORT_BYTES).data))
            except TooLarge:
                out.append((where, None))
            except NotFound:
                continue  # gone since the listing
        return out


class ConfigMapClient(Protocol):
    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def write_configmap(self, obj: dict[str, Any]) -> None: ...

    def list_configmaps(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]: ...


class ConfigMapReports:
    def __init__(self, client: ConfigMapClient, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def describe(self) -> str:
        return f"ConfigMaps {self.namespace}/{CONFIGMAP_PREFIX}*"

    def write(self, node: str, data: bytes) -> None:
        name = f"{CONFIGMAP_PREFIX}{node}"
        if not is_dns_subdomain(name):
            raise ApplyError(f"node name {node[:64]!r} makes no valid ConfigMap name")
        for _ in range(_ATTEMPTS):
            live = self.client.get_configmap(self.namespace, name)
            meta: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": dict(LABELS)}
            if live is not None:
                meta["resourceVersion"] = live["metadata"]["resourceVersion"]
            try:
                self.client.write_configmap(
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {DATA_KEY: data.decode()}}
                )
                return
            except Conflict:
                continue
        raise ApplyError(f"ConfigMap {self.namespace}/{name}: still changing after {_ATTEMPTS} attempts")

    def read_all(self) -> list[tuple[str, bytes | None]]:
        items = self.client.list_configmaps(self.namespace, LABELS)[:MAX_REPORTS]
        out: list[tuple[str, bytes | None]] = []
        for item in items:
            name = str((item.get("metadata") or {}).get("name"))
            text = (item.get("data") or {}).get(DATA_KEY)
            if name.startswith(CONFIGMAP_PREFIX) and isinstance(text, str):
                data = text.encode()
                out.append((f"ConfigMap {self.namespace}/{name}", data if len(data) <= MAX_REPORT_BYTES else None))
        return out

"""Tolerant parsing of one CDR finding (an element of the findings page's ``content``).

No official schema exists (reference §4): every field but ``uuid`` and ``threatCategory`` is
optional, types vary (``severity`` as 3 or "HIGH" or "3"; ``mitreRulesInfo`` as a map, a list or
null), unknown fields are ignored, strings may be huge. Text meant for reports is cleaned and
truncated; the raw object is always kept as it came. A finding that cannot be used comes back as
:class:`Malformed` with the reason, for the report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cdr_policy.policy.naming import is_dns_label, is_dns_subdomain, is_label_key, is_label_value
from cdr_policy.timeutil import parse_iso

TEXT_LIMIT = 256
UUID_LIMIT = 128
SEVERITY_NAMES = {1: "LOW", 2: "MEDIUM", 3: "HIGH", 4: "CRITICAL", 5: "CRITICAL"}
_SEVERITY_BY_NAME = {"LOW": 1, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4}
_TECHNIQUE = re.compile(r"^T(\d{4})(?:[._](\d{3}))?$", re.IGNORECASE)
_TECHNIQUE_KEYS = ("technique", "techniqueId", "technique_id", "id", "mitreId")
# Epoch numbers above this are milliseconds (2001-09-09 in seconds); Qualys-wide APIs use both.
_EPOCH_MS_THRESHOLD = 1e12
# ``podLabels`` (reference §4.2, read defensively): the pod sandbox's labels as the container runtime
# holds them, the pod's own labels plus the kubelet's ``io.kubernetes.*`` ones, of which
# ``io.kubernetes.pod.namespace`` is the only place a finding names its namespace.
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
_RUNTIME_LABEL_PREFIXES = ("io.kubernetes.", "io.cri-containerd.", "annotation.")
# Labels a controller sets per pod or per run: a selector on them matches one pod, or none after the
# next rollout, so they are not part of a workload's labels.
_PER_POD_LABELS = frozenset(
    {
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "controller-uid",
        "job-name",
        "batch.kubernetes.io/controller-uid",
        "batch.kubernetes.io/job-name",
        "batch.kubernetes.io/job-completion-index",
    }
)
MAX_WORKLOAD_LABELS = 16


def clean_text(value: Any, limit: int = TEXT_LIMIT) -> str | None:
    """A printable, single-line, bounded string for reports and annotations; None when empty."""
    if value is None or isinstance(value, dict | list | bool):
        return None
    text = value if isinstance(value, str) else str(value)
    text = "".join(ch if ch.isprintable() else " " for ch in text[: limit * 4])
    text = " ".join(text.split())
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_severity(value: Any) -> int | None:
    """1 (LOW) .. 5 (CRITICAL) from an int, a numeric string or a name; None when unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip().upper()
        if text in _SEVERITY_BY_NAME:
            return _SEVERITY_BY_NAME[text]
        if text.isdigit():
            value = int(text)
    if isinstance(value, int) and 1 <= value <= 5:
        return value
    return None


def parse_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime from ISO-8601 text or epoch seconds/milliseconds; None when unusable."""
    try:
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            seconds = value / 1000 if abs(value) >= _EPOCH_MS_THRESHOLD else value
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str) and value.strip():
            text = value.strip()
            if text.replace(".", "", 1).isdigit():
                return parse_timestamp(float(text))
            return parse_iso(text.replace(" ", "T", 1) if "T" not in text else text)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _technique(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    m = _TECHNIQUE.match(value.strip())
    if not m:
        return None
    return f"T{m.group(1)}" + (f".{m.group(2)}" if m.group(2) else "")


def parse_techniques(value: Any) -> tuple[str, ...]:
    """MITRE technique ids from ``mitreRulesInfo``: a map keyed by id, a list of ids or of
    ``{"technique": id}`` objects, a single id or null. Sorted, de-duplicated, canonical (``T1552.005``)."""
    candidates: list[Any] = []
    if isinstance(value, Mapping):
        candidates.extend(value.keys())
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping):
                candidates.extend(item.get(key) for key in _TECHNIQUE_KEYS)
            else:
                candidates.append(item)
    elif isinstance(value, str):
        candidates.extend(value.replace(";", ",").split(","))
    return tuple(sorted({t for t in map(_technique, candidates) if t}))


@dataclass(frozen=True)
class Workload:
    """Where a finding happened, as far as it says and only what passes Kubernetes' own rules:
    the namespace, the Deployment name and the workload's pod labels (at most
    ``MAX_WORKLOAD_LABELS``; None when any label is invalid or there are more, because a selector
    on fewer labels would select more pods)."""

    namespace: str | None = None
    deployment: str | None = None
    labels: dict[str, str] | None = None


def parse_workload(pod_labels: Any, deployment_name: Any) -> Workload:
    """The workload of a finding from its ``podLabels`` and ``deploymentName``. Never raises;
    anything that is not a valid Kubernetes name or label is left out, never repaired."""
    deployment = deployment_name if is_dns_subdomain(deployment_name) else None
    if not isinstance(pod_labels, Mapping):
        return Workload(deployment=deployment)
    namespace = pod_labels.get(NAMESPACE_LABEL)
    own = {
        k: v
        for k, v in pod_labels.items()
        if not (isinstance(k, str) and (k.startswith(_RUNTIME_LABEL_PREFIXES) or k in _PER_POD_LABELS))
    }
    valid = 0 < len(own) <= MAX_WORKLOAD_LABELS and all(is_label_key(k) and is_label_value(v) for k, v in own.items())
    return Workload(
        namespace=namespace if is_dns_label(namespace) else None,
        deployment=deployment,
        labels=dict(sorted(own.items())) if valid else None,
    )


@dataclass(frozen=True)
class Malformed:
    """A finding we cannot use, and why. ``uuid`` when it had a usable one."""

    reason: str
    uuid: str | None = None

    def to_dict(self) -> dict[str, str]:
        d = {"reason": self.reason}
        if self.uuid is not None:
            d["uuid"] = self.uuid
        return d


@dataclass(frozen=True)
class Finding:
    uuid: str
    category: str  # as Qualys sent it (cleaned, bounded)
    timestamp: datetime | None
    severity: int | None
    techniques: tuple[str, ...]
    process_name: str | None
    process_path: str | None
    container_name: str | None
    pod: str | None
    image_name: str | None
    resource_type: str | None
    resource_id: str | None
    message: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    workload: Workload = field(default_factory=Workload)

    @property
    def severity_name(self) -> str | None:
        return None if self.severity is None else SEVERITY_NAMES[self.severity]


def _uuid(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    if not text or len(text) > UUID_LIMIT or not text.isprintable() or any(ch.isspace() for ch in text):
        return None
    return text


def parse_finding(obj: Any) -> Finding | Malformed:
    """One element of ``content`` → a Finding, or Malformed with the reason. Never raises."""
    if not isinstance(obj, Mapping):
        return Malformed(f"finding is not a JSON object (got {type(obj).__name__})")
    raw_uuid = obj.get("uuid")
    uuid = _uuid(raw_uuid)
    if uuid is None:
        reason = "missing uuid" if raw_uuid in (None, "") else "uuid is not a short printable string"
        return Malformed(reason)
    category = clean_text(obj.get("threatCategory"))
    if category is None:
        return Malformed("missing threatCategory", uuid)
    return Finding(
        uuid=uuid,
        category=category,
        timestamp=parse_timestamp(obj.get("timestamp")),
        severity=parse_severity(obj.get("severity")),
        techniques=parse_techniques(obj.get("mitreRulesInfo")),
        process_name=clean_text(obj.get("processName"), 128),
        process_path=clean_text(obj.get("processPath")),
        container_name=clean_text(obj.get("containerName")),
        pod=clean_text(obj.get("pod")),
        image_name=clean_text(obj.get("imageName")),
        resource_type=clean_text(obj.get("resourceType"), 64),
        resource_id=clean_text(obj.get("resourceId")),
        message=clean_text(obj.get("eventMessage"), 512),
        raw=obj,
        workload=parse_workload(obj.get("podLabels"), obj.get("deploymentName")),
    )

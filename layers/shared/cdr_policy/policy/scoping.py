"""Where a behaviour rule enforces the process names CDR saw (docs/ENFORCEMENT.md, "Evidence").

Each name of a behaviour's evidence (``Behaviour.processes``, with the workloads it was seen in,
``Behaviour.sightings``) gets one placement:

- ``refused``: not a bare executable name, or a shell, interpreter, runtime or everyday utility
  (``binaries.refuse_on_evidence``); never enforced on evidence.
- ``rule``: the rule blocks it by itself already.
- ``cluster-wide``: it joins the rule's own policy. Only when ``binaries.refuse_cluster_wide``
  has nothing against it **and** it is corroborated: seen in at least the channel's
  ``evidence_min_workloads`` distinct workloads. A workload is a namespace and Deployment name,
  else a namespace and set of pod labels; findings that name neither count as none (CDR findings
  name no cluster, so clusters are not counted). At most ``MAX_CLUSTER_WIDE`` per rule.
- ``workloads``: enforced only where it was seen: one policy per workload whose pod selector names
  the finding's namespace and the workload's pod labels (``Scope``, ``tetragon.workload_selector``). Never in a system
  namespace (:func:`is_system_namespace`), outside the channel's ``namespaces`` or against its
  ``pod_labels``; at most ``MAX_WORKLOAD_SCOPES`` workloads per rule, ``MAX_WORKLOAD_POLICIES``
  per channel (each is a Tetragon policy of its own on every node) and ``MAX_CLUSTER_WIDE`` names
  per workload.
- ``audit``: what is left, and every sighting no scope covers: a cluster-wide policy that only
  reports (``Post``, ``policy-mode: monitor``).

Every placement comes with its reason for the run report. A name is shown there only when it is a
bare executable name; anything else is referred to by the fingerprint of what was seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdr_policy import jsonio
from cdr_policy.models import Behaviour, Sighting
from cdr_policy.policy.binaries import bare_name, is_executable_name, refuse_cluster_wide, refuse_on_evidence
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.naming import is_system_namespace

MAX_CLUSTER_WIDE = 16
MAX_WORKLOAD_SCOPES = 16
MAX_WORKLOAD_POLICIES = 32
# Labels in a workload policy's selector, the workload's and the channel's together (what the
# admission grammar admits in a pod selector).
MAX_SELECTOR_LABELS = 16
RULE = "rule"
CLUSTER_WIDE = "cluster-wide"
WORKLOADS = "workloads"
AUDIT = "audit"
REFUSED = "refused"


def fingerprint(text: str) -> str:
    """How the report refers to input it must not copy: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def workload_of(s: Sighting) -> tuple[Any, ...] | None:
    """The workload a sighting counts for (corroboration), or None when the finding named none."""
    if s.deployment is not None:
        return ("deployment", s.namespace, s.deployment)
    if s.labels is not None:
        return ("labels", s.namespace, tuple(sorted(s.labels.items())))
    return None


@dataclass(frozen=True)
class Scope:
    """One workload a rule enforces names in: its namespace and the pod labels that select it
    (the finding's workload labels and the channel's ``pod_labels``)."""

    namespace: str
    labels: dict[str, str]
    names: tuple[str, ...]
    findings: int

    @property
    def workload(self) -> str:
        return fingerprint(jsonio.dumps([self.namespace, self.labels]).decode())


@dataclass(frozen=True)
class Placement:
    """Where one rule's evidence goes: the names added to the rule's own policy, the workload
    scopes, the names only audited, and one report row per name seen."""

    cluster_wide: tuple[str, ...] = ()
    scopes: tuple[Scope, ...] = ()
    audited: tuple[str, ...] = ()
    rows: list[dict[str, Any]] = field(default_factory=list)


def place_evidence(
    behaviour: Behaviour, channel: ChannelSettings, covered: Iterable[str], *, room: int = MAX_WORKLOAD_SCOPES
) -> Placement:
    """The placement of every name of ``behaviour``'s evidence on ``channel``; ``covered`` are
    the names the rule blocks by itself, ``room`` how many workload policies the channel has left
    for this rule (see the module docstring)."""
    rows: dict[str, dict[str, Any]] = {}
    candidates: list[str] = []
    covered_names = set(covered)
    for raw in sorted({*behaviour.processes, *(s.process for s in behaviour.sightings)}):
        bare = bare_name(raw)
        refusal = refuse_on_evidence(raw)
        key = bare if is_executable_name(bare) else f"#{fingerprint(raw)}"
        if key in rows:
            continue
        if refusal is not None:
            rows[key] = _row(key, REFUSED, refusal)
        elif bare in covered_names:
            rows[key] = _row(key, RULE, "blocked by the rule itself")
        else:
            rows[key] = _row(key, "", "")
            candidates.append(bare)
    sightings = {name: [s for s in behaviour.sightings if s.process == name] for name in candidates}
    cluster_wide: list[str] = []
    scoped_names: list[str] = []
    for name in candidates:
        seen = sightings[name]
        workloads = len({w for w in map(workload_of, seen) if w is not None})
        row = rows[name]
        row.update(findings=sum(s.findings for s in seen), workloads=workloads)
        reason = refuse_cluster_wide(name)
        if reason is None and workloads < channel.evidence_min_workloads:
            reason = (
                f"not corroborated: seen in {workloads} workload(s), the channel asks for "
                f"{channel.evidence_min_workloads} (evidence_min_workloads)"
            )
        if reason is None and len(cluster_wide) >= MAX_CLUSTER_WIDE:
            reason = f"over the {MAX_CLUSTER_WIDE} evidence names a rule adds cluster-wide"
        if reason is None:
            cluster_wide.append(name)
            row.update(
                placement=CLUSTER_WIDE,
                reason=f"corroborated: seen in {workloads} workloads",
                corroborated_by=_corroborating(seen),
            )
        else:
            scoped_names.append(name)
            row["reason"] = reason
    scopes, unscoped = _scopes(scoped_names, sightings, channel, min(room, MAX_WORKLOAD_SCOPES))
    audited: list[str] = []
    for name in scoped_names:
        row = rows[name]
        row["scopes"] = [{"namespace": s.namespace, "workload": s.workload} for s in scopes if name in s.names]
        why = "; ".join(sorted(unscoped.get(name, ())))
        if why and len(audited) < MAX_CLUSTER_WIDE:
            audited.append(name)
            row["audited"] = why
        elif why:
            row["unenforced"] = f"{why}; over the {MAX_CLUSTER_WIDE} names a rule audits"
        row["placement"] = WORKLOADS if row["scopes"] else AUDIT if name in audited else REFUSED
    return Placement(
        cluster_wide=tuple(cluster_wide),
        scopes=tuple(scopes),
        audited=tuple(audited),
        rows=[rows[k] for k in sorted(rows)],
    )


def _corroborating(seen: Sequence[Sighting]) -> list[dict[str, str | None]]:
    """The workloads that corroborate a name (at most ``MAX_WORKLOAD_SCOPES``): each namespace
    and the fingerprint of the workload's identity (Deployment name or pod labels)."""
    workloads = {w for w in map(workload_of, seen) if w is not None}
    shown = sorted(({"namespace": w[1], "workload": fingerprint(repr(w))} for w in workloads), key=repr)
    return shown[:MAX_WORKLOAD_SCOPES]


def _row(key: str, placement: str, reason: str, **counts: int) -> dict[str, Any]:
    shown = {"process": None, "fingerprint": key[1:]} if key.startswith("#") else {"process": key}
    return {**shown, "placement": placement, "reason": reason, **counts}


def _scopes(
    names: Sequence[str], sightings: dict[str, list[Sighting]], channel: ChannelSettings, limit: int
) -> tuple[list[Scope], dict[str, set[str]]]:
    """The workload scopes of ``names`` (at most ``limit``, the most findings first) and, per
    name, why some sightings have none."""
    unscoped: dict[str, set[str]] = {}
    by_scope: dict[str, tuple[str, dict[str, str], dict[str, int]]] = {}
    for name in names:
        if not sightings[name]:
            unscoped.setdefault(name, set()).add("no finding names its workload")
        for s in sightings[name]:
            labels, why = _selector(s, channel)
            if labels is None:
                unscoped.setdefault(name, set()).add(why)
                continue
            assert s.namespace is not None  # _selector gives labels only with a namespace
            key = jsonio.dumps([s.namespace, labels]).decode()
            namespace, _, counts = by_scope.setdefault(key, (s.namespace, labels, {}))
            counts[name] = counts.get(name, 0) + s.findings
    ranked = sorted(by_scope.items(), key=lambda kv: (-sum(kv[1][2].values()), kv[0]))
    scopes = []
    for index, (_, (namespace, labels, counts)) in enumerate(ranked):
        kept = sorted(counts)[:MAX_CLUSTER_WIDE] if index < limit else []
        for name in sorted(set(counts) - set(kept)):
            unscoped.setdefault(name, set()).add(
                f"over the workload policies a rule ({MAX_WORKLOAD_SCOPES}) or channel ({MAX_WORKLOAD_POLICIES}) "
                f"may have, or the {MAX_CLUSTER_WIDE} names per workload"
            )
        if kept:
            scopes.append(Scope(namespace, labels, tuple(kept), sum(counts[n] for n in kept)))
    return scopes, unscoped


def _selector(s: Sighting, channel: ChannelSettings) -> tuple[dict[str, str] | None, str]:
    """The pod labels that select the sighting's workload on ``channel``, or None and why not."""
    if s.namespace is None or s.labels is None:
        return None, "a finding names no namespace with valid pod labels (podLabels)"
    if is_system_namespace(s.namespace):
        return None, "seen in a system namespace, where evidence is only audited"
    if channel.namespaces and s.namespace not in channel.namespaces:
        return None, "seen outside the channel's namespaces"
    if any(s.labels.get(k, v) != v for k, v in channel.pod_labels.items()):
        return None, "the workload's pod labels contradict the channel's pod_labels"
    labels = {**s.labels, **channel.pod_labels}
    if len(labels) > MAX_SELECTOR_LABELS:
        return None, f"the workload's and the channel's pod labels are more than {MAX_SELECTOR_LABELS} together"
    return dict(sorted(labels.items())), ""

"""What a bundle holds, in terms two channels can compare: the addresses its blocklists block,
the ports it names and, per behaviour rule, a fingerprint of what the rule's objects match.

The audit channel and the enforcing channel render the same indicators with other actions
(``Post`` against ``Sigkill`` or ``Override``), so a rule's fingerprint leaves out what only the
action decides: each selector's ``matchActions`` and the policy's ``options`` (``policy-mode``),
and the channel's own scoping (namespaced copies, the channel's pod selector); a workload-scoped
object keeps the workload's selector. What the objects match is the same on both channels when
they place the rule's evidence alike (the same ``evidence_min_workloads``).

``published_content`` reads a published bundle's provenance index and its behaviour files only
(each checked against the verified manifest), not its blocklists' YAML.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cdr_policy import jsonio
from cdr_policy.bundle.loader import Bundle, load_files
from cdr_policy.bundle.manifest import Manifest
from cdr_policy.bundle.objects import file_name, placed_objects
from cdr_policy.bundle.provenance import PATH, ProvenanceIndex, load_published, read_index
from cdr_policy.errors import BundleError
from cdr_policy.hits.attribute import RULE
from cdr_policy.netprefix.aggregate import collapse
from cdr_policy.netprefix.vector import V6, merge_intervals
from cdr_policy.policy import naming
from cdr_policy.promotion.addresses import AddressSet
from cdr_policy.storage import Store

FINGERPRINT_SHOWN = 16  # hex digits of a rule's fingerprint in a change id (rule:<id>@<16>)


def change_id(kind: str, value: str, fingerprint: str | None = None) -> str:
    """``prefix:203.0.113.0/24``, ``port:tcp/4444``, ``rule:crypto_mining@<16 hex digits>``."""
    if kind == RULE:
        return f"{RULE}:{value}@{(fingerprint or '')[:FINGERPRINT_SHOWN]}"
    return f"{kind}:{value}"


@dataclass(frozen=True)
class Content:
    addresses: AddressSet
    ports: frozenset[str]
    rules: Mapping[str, str]  # rule id -> fingerprint

    @classmethod
    def empty(cls) -> Content:
        return cls(AddressSet.empty(), frozenset(), {})


def _matching(obj: Mapping[str, Any]) -> str:
    """What one behaviour object matches, as canonical JSON (see the module docstring)."""
    spec = jsonio.loads(jsonio.dumps(obj.get("spec") or {}))
    spec.pop("options", None)
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if labels.get(naming.SCOPE_KEY) != naming.SCOPE_WORKLOAD:
        spec.pop("podSelector", None)
    for hook in spec.get("kprobes") or []:
        for selector in hook.get("selectors") or []:
            selector.pop("matchActions", None)
    return jsonio.dumps(spec).decode()


def rule_fingerprints(objects: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Per behaviour rule of ``objects``: the sha256 of the sorted set of what its objects match."""
    matched: dict[str, set[str]] = {}
    for obj in objects:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(naming.COMPONENT_KEY) == naming.COMPONENT_BEHAVIOUR and labels.get(naming.RULE_KEY):
            matched.setdefault(str(labels[naming.RULE_KEY]), set()).add(_matching(obj))
    return {rule: hashlib.sha256(jsonio.dumps(sorted(shapes))).hexdigest() for rule, shapes in matched.items()}


def content_of(index: ProvenanceIndex, objects: Iterable[Mapping[str, Any]]) -> Content:
    """A bundle's content from its provenance index (addresses, ports) and its behaviour objects."""
    firsts, lasts = [], []
    six: list[tuple[int, int]] = []
    for b in index.blocklists:
        first, last = b.ipv4.intervals()
        firsts.append(first)
        lasts.append(last)
        six.extend(zip(b.ipv6.networks, b.ipv6.lengths, strict=True))
    first, last = merge_intervals(*_ordered(firsts, lasts))
    v6 = collapse(6, networks=six)
    addresses = AddressSet(first, last, V6(list(v6.networks), bytes(v6.lengths)))
    return Content(addresses, frozenset(p.port for p in index.ports), rule_fingerprints(objects))


def _ordered(firsts: list[Any], lasts: list[Any]) -> tuple[Any, Any]:
    if not firsts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    first, last = np.concatenate(firsts), np.concatenate(lasts)
    order = np.argsort(first, kind="stable")
    return first[order], last[order]


def rule_paths(index: ProvenanceIndex, rules: Iterable[str] | None = None) -> list[str]:
    """The bundle files of the objects of ``rules`` (all the index's rules when None)."""
    wanted = None if rules is None else set(rules)
    paths = []
    for rule in index.rules:
        if wanted is None or rule.rule in wanted:
            for ref in rule.objects:
                kind = "TracingPolicyNamespaced" if ref.namespace else "TracingPolicy"
                metadata = {"name": ref.name, **({"namespace": ref.namespace} if ref.namespace else {})}
                paths.append(file_name({"kind": kind, "metadata": metadata}))
    return sorted(set(paths))


def published_content(dist: Store, manifest: Manifest) -> tuple[Content, ProvenanceIndex | None]:
    """What a published, verified bundle holds (and its index; None: a bundle rendered before
    indexes, which holds nothing promotion can compare, so every change over it is pending).
    VerificationError or StorageError when its files cannot be used."""
    index = load_published(dist, manifest)
    if index is None:
        return Content.empty(), None
    files = load_files(dist, manifest, rule_paths(index), published=True)
    return content_of(index, (obj for _, obj in placed_objects(files))), index


def rendered_content(bundle: Bundle) -> Content:
    """What a loaded bundle holds (its files are verified already)."""
    data = bundle.files.get(PATH)
    if data is None:
        raise BundleError(f"bundle {bundle.digest[:12]} has no provenance index: promotion cannot compare it")
    return content_of(read_index(data, PATH), bundle.objects)

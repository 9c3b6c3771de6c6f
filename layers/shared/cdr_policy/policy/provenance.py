"""``build_index``: a channel's rendered objects and what they were rendered from -> the bundle's
provenance index (``bundle.provenance``, the format and its reader).

Each aggregated prefix of a blocklist gets the provenance of every ranked entry it covers (an entry
lies inside exactly one of the prefixes its blocklist's aggregate is made of): the sources of the
entries (a feed prefix shares its feed's), the finding ids of the CDR detections among them (the
merged indicator's refs that name no source), their categories, and the primary category and source
kind of the best-ranked one. The work is done on the ranking's arrays (``policy.ranked``): source
sets as bit masks, one pass over the per-entry indicators (CDR, AbuseIPDB, resolved domains), never
a Python object per feed prefix.

Which object holds which prefixes and ports is read from the objects themselves (their part
annotation, their port selectors), so the index says what the objects do.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cdr_policy.bundle.provenance import (
    MAX_CLASSES,
    MAX_FINDINGS,
    Blocklist,
    Holder,
    ObjectRef,
    Port,
    Provenance,
    ProvenanceIndex,
    Rule,
)
from cdr_policy.errors import PolicyCheckError
from cdr_policy.evidence import category_weight
from cdr_policy.models import Behaviour, Indicator
from cdr_policy.netprefix import BITS
from cdr_policy.netprefix.vector import V4, V6, intervals_v4
from cdr_policy.policy import naming
from cdr_policy.policy.capacity import Cut
from cdr_policy.policy.output import PolicyFile
from cdr_policy.policy.ranked import CDR, RankedTable
from cdr_policy.policy.tetragon import PREFIXES_PER_POLICY

ENGINE_OF_COMPONENT = {
    naming.COMPONENT_TETRAGON_BLOCKLIST: "tetragon",
    naming.COMPONENT_CILIUM_BLOCKLIST: "cilium",
}
# Per-entry sources that are reputation services rather than feeds (their entries carry a score).
REPUTATION_SOURCES = frozenset({"abuseipdb"})


@dataclass
class _Classes:
    """The distinct provenances, numbered in the order they are first needed."""

    items: list[Provenance] = field(default_factory=list)
    numbers: dict[Provenance, int] = field(default_factory=dict)

    def number(self, provenance: Provenance) -> int | None:
        """The class number of ``provenance``; None when it is new and the index is full."""
        found = self.numbers.get(provenance)
        if found is None:
            if len(self.items) >= MAX_CLASSES:
                return None
            found = self.numbers[provenance] = len(self.items)
            self.items.append(provenance)
        return found


def build_index(
    channel: str,
    detail: str,
    *,
    cuts: Mapping[str, Cut],
    files: Sequence[PolicyFile],
    ports: Sequence[tuple[Indicator, tuple[str, int]]],
    behaviours: Mapping[str, Behaviour],
    feed_categories: Mapping[str, str],
) -> ProvenanceIndex:
    """The index of one channel's render (``cuts``: the Tetragon and Cilium cuts, one object when
    both budgets cut alike; ``feed_categories``: each compact feed's category)."""
    classes = _Classes()
    lists: dict[tuple[str, bytes], Cut] = {}  # (group, digest of the prefix list) -> a cut holding it
    keys: dict[tuple[str, str], tuple[str, bytes]] = {}  # (engine, group) -> its list's key
    for engine, the_cut in cuts.items():
        for group, prefixes in the_cut.kept.items():
            key = (group, hashlib.sha256("\n".join(prefixes).encode()).digest())
            keys[engine, group] = key
            lists.setdefault(key, the_cut)
    holders = _holders(files, cuts, keys)
    blocklists = []
    for key, the_cut in lists.items():
        group = key[0]
        ipv4, ipv6 = the_cut.kept_arrays[group]
        klass = _prefix_classes(the_cut, group, ipv4, ipv6, feed_categories, classes)
        blocklists.append(Blocklist(group, ipv4, ipv6, klass, tuple(holders.get(key, ()))))
    port_objects = _port_objects(files)
    port_list = []
    for indicator, (protocol, number) in sorted(ports, key=lambda p: p[1]):
        text = f"{protocol}/{number}"
        objects = tuple(port_objects.get(text, ()))
        if objects:
            port_list.append(Port(text, _required(classes, _indicator_provenance(indicator)), objects))
    rules = []
    for rule in sorted(behaviours):
        objects = tuple(
            ObjectRef("tetragon", f.name, f.obj["metadata"].get("namespace"))
            for f in files
            if f.obj["metadata"]["labels"].get(naming.RULE_KEY) == rule
        )
        if objects:
            rules.append(Rule(rule, _required(classes, _behaviour_provenance(behaviours[rule])), objects))
    return ProvenanceIndex(channel, detail, tuple(classes.items), tuple(blocklists), tuple(port_list), tuple(rules))


def _required(classes: _Classes, provenance: Provenance) -> int:
    number = classes.number(provenance)
    if number is None:
        raise PolicyCheckError(f"more than {MAX_CLASSES} distinct provenances: the provenance index cannot hold them")
    return number


# -- objects ---------------------------------------------------------------------------------------


def _holders(
    files: Sequence[PolicyFile], cuts: Mapping[str, Cut], keys: Mapping[tuple[str, str], tuple[str, bytes]]
) -> dict[tuple[str, bytes], list[Holder]]:
    """Per prefix list: the objects holding a range of it. A Tetragon blocklist part ``p/n``
    (annotation ``cdr-policy.io/shard``) holds the ``p``-th slice of ``PREFIXES_PER_POLICY``; a
    Cilium policy holds its groups' prefixes, all of them."""
    out: dict[tuple[str, bytes], list[Holder]] = {}
    for f in files:
        meta = f.obj["metadata"]
        labels = meta.get("labels") or {}
        engine = ENGINE_OF_COMPONENT.get(labels.get(naming.COMPONENT_KEY, ""))
        group = labels.get(naming.BLOCKLIST_KEY)
        if engine is None or (engine, group) not in keys:
            continue
        total = len(cuts[engine].kept[str(group)])
        first, count = 0, total
        if engine == "tetragon":
            part = int(str((meta.get("annotations") or {}).get(naming.SHARD, "1/1")).split("/")[0])
            first = (part - 1) * PREFIXES_PER_POLICY
            count = max(0, min(PREFIXES_PER_POLICY, total - first))
        out.setdefault(keys[engine, str(group)], []).append(
            Holder(ObjectRef(engine, f.name, meta.get("namespace")), first, count)
        )
    return out


def _port_objects(files: Sequence[PolicyFile]) -> dict[str, list[ObjectRef]]:
    """``tcp/4444`` -> the objects whose selectors or rules match that destination port."""
    out: dict[str, list[ObjectRef]] = {}
    for f in files:
        meta = f.obj["metadata"]
        engine = ENGINE_OF_COMPONENT.get((meta.get("labels") or {}).get(naming.COMPONENT_KEY, ""))
        if engine is None:
            continue
        found = _tetragon_ports(f.obj) if engine == "tetragon" else _cilium_ports(f.obj)
        for port in sorted(found):
            out.setdefault(port, []).append(ObjectRef(engine, f.name, meta.get("namespace")))
    return out


def _tetragon_ports(obj: dict[str, Any]) -> set[str]:
    found = set()
    for kp in obj["spec"].get("kprobes", []):
        for selector in kp.get("selectors", []):
            args = {m["operator"]: m["values"] for m in selector.get("matchArgs", [])}
            protocol = "udp" if args.get("Protocol") == ["IPPROTO_UDP"] else "tcp"
            for value in args.get("DPort", []) + args.get("SPort", []):
                found.add(f"{protocol}/{value}")
    return found


def _cilium_ports(obj: dict[str, Any]) -> set[str]:
    return {
        f"{p['protocol'].lower()}/{p['port']}"
        for item in obj["spec"].get("egressDeny", [])
        for rule in item.get("toPorts", [])
        for p in rule.get("ports", [])
    }


# -- provenance ------------------------------------------------------------------------------------


def _source_kind(sources: set[str]) -> str:
    if CDR in sources:
        return "cdr"
    return "feed" if sources - REPUTATION_SOURCES else "reputation"


def _feeds(sources: set[str]) -> tuple[str, ...]:
    """Every source but ``cdr``, by feed name (a per-entry feed set's sources are ``feed:<name>``)."""
    return tuple(sorted({s.removeprefix("feed:") for s in sources - {CDR}}))


def _findings(refs: Sequence[str], sources: set[str]) -> list[str]:
    """The refs that are finding ids (a merged indicator's refs also name the sources that listed
    it, and a resolved domain's ``domain:<name>``)."""
    names = sources | {s.removeprefix("feed:") for s in sources}
    return sorted({r for r in refs if r not in names and not r.startswith("domain:")})


def _indicator_provenance(indicator: Indicator) -> Provenance:
    sources = set(indicator.sources)
    findings = _findings(indicator.refs, sources) if CDR in sources else []
    return Provenance(
        feeds=_feeds(sources),
        findings=tuple(findings[:MAX_FINDINGS]),
        categories=(indicator.category,),
        category=indicator.category,
        source=_source_kind(sources),
        findings_more=max(0, len(findings) - MAX_FINDINGS),
    )


def _behaviour_provenance(behaviour: Behaviour) -> Provenance:
    counts = Counter(behaviour.categories)
    findings = sorted(set(behaviour.refs))
    return Provenance(
        feeds=(),
        findings=tuple(findings[:MAX_FINDINGS]),
        categories=tuple(sorted(counts)),
        category=min(counts, key=lambda c: (-counts[c], c)) if counts else "",
        source="cdr",
        findings_more=max(0, len(findings) - MAX_FINDINGS),
    )


def _prefix_classes(
    the_cut: Cut,
    group: str,
    ipv4: V4,
    ipv6: V6,
    feed_categories: Mapping[str, str],
    classes: _Classes,
) -> npt.NDArray[np.uint32]:
    """The class of each aggregated prefix of ``group`` in ``the_cut`` (see the module docstring)."""
    table = the_cut.table
    rows = the_cut.kept_rows(group)
    n = len(ipv4) + len(ipv6)
    holder = np.full(len(table), -1, dtype=np.int64)  # row -> its aggregated prefix
    v4 = table.version[rows] == 4
    firsts, _ = intervals_v4(table.lo[rows[v4]], table.length[rows[v4]])
    holder[rows[v4]] = np.searchsorted(ipv4.intervals()[0], firsts, side="right") - 1
    for row in rows[~v4].tolist():
        holder[row] = len(ipv4) + _v6_position(ipv6, int(table.hi[row]) << 64 | int(table.lo[row]))
    # The sources of each prefix, as bit masks over the table's sources.
    words = max(1, (len(table.sources) + 63) // 64)
    masks = np.zeros((n, words), dtype=np.uint64)
    prefix_of_pair = holder[table.pair_row]
    mine = prefix_of_pair >= 0
    pairs_prefix, pairs_source = prefix_of_pair[mine], table.pair_source[mine].astype(np.int64)
    for w in range(words):
        in_word = (pairs_source >> 6) == w
        bits = np.left_shift(np.uint64(1), (pairs_source[in_word] & 63).astype(np.uint64))
        np.bitwise_or.at(masks[:, w], pairs_prefix[in_word], bits)
    # The best-ranked row of each prefix (rows are in rank order).
    best = np.full(n, len(table), dtype=np.int64)
    np.minimum.at(best, holder[rows], rows)
    per_entry = _per_entry(table, rows, holder)
    unique_masks, mask_id = np.unique(masks, axis=0, return_inverse=True)
    mask_id = mask_id.reshape(-1)
    mask_sources = [_sources_of(m, table.sources) for m in unique_masks]
    out = np.empty(n, dtype=np.uint32)
    # Prefixes of feed entries only: one class per source set, numbered best-ranked first.
    feed_only = np.ones(n, dtype=bool)
    feed_only[list(per_entry)] = False
    first_seen = np.full(len(unique_masks), len(table), dtype=np.int64)
    np.minimum.at(first_seen, mask_id[feed_only], best[feed_only])
    mask_class = np.zeros(len(unique_masks), dtype=np.uint32)
    for m in np.argsort(first_seen, kind="stable").tolist():
        if first_seen[m] < len(table):
            sources = mask_sources[m]
            primary = _heaviest(sources, feed_categories)
            mask_class[m] = _required(classes, _provenance(sources, primary, set(), [], feed_categories))
    out[feed_only] = mask_class[mask_id[feed_only]]
    # Prefixes with per-entry indicators (CDR detections, reputation, resolved domains), best first.
    # Past the cap, the lowest-ranked share a class without finding ids (room for those is kept).
    ordered = sorted(per_entry, key=lambda q: int(best[q]))
    wanted: dict[int, Provenance] = {}
    for p in ordered:
        cats, findings = per_entry[p]
        obj = int(table.obj[best[p]])
        sources = mask_sources[mask_id[p]]
        primary = table.objects[obj].category if obj >= 0 else _heaviest(sources, feed_categories)
        wanted[p] = _provenance(sources, primary, cats, findings, feed_categories)
    room = MAX_CLASSES - len(classes.items) - len({_bare(w) for w in wanted.values()} - set(classes.numbers))
    if room < 0:
        raise PolicyCheckError(f"more than {MAX_CLASSES} distinct provenances: the provenance index cannot hold them")
    spilled: dict[Provenance, list[int]] = {}
    for p in ordered:
        provenance = wanted[p]
        if provenance not in classes.numbers and room > 0:
            room -= 1
        elif provenance not in classes.numbers:
            spilled.setdefault(_bare(provenance), []).append(p)
            continue
        out[p] = _required(classes, provenance)
    for bare, prefixes in spilled.items():
        left_out = sum(len(wanted[p].findings) + wanted[p].findings_more for p in prefixes)
        shared = Provenance(bare.feeds, (), bare.categories, bare.category, bare.source, left_out)
        out[prefixes] = _required(classes, shared)
    return out


def _provenance(
    sources: set[str], primary: str, cats: set[str], findings: list[str], feed_categories: Mapping[str, str]
) -> Provenance:
    return Provenance(
        feeds=_feeds(sources),
        findings=tuple(findings[:MAX_FINDINGS]),
        categories=tuple(sorted(cats | {feed_categories[s] for s in sources if s in feed_categories} | {primary})),
        category=primary,
        source=_source_kind(sources),
        findings_more=max(0, len(findings) - MAX_FINDINGS),
    )


def _bare(p: Provenance) -> Provenance:
    """``p`` without its finding ids: the class a prefix shares once the index is full."""
    return Provenance(p.feeds, (), p.categories, p.category, p.source, 0)


def _v6_position(ipv6: V6, network: int) -> int:
    """The IPv6 aggregate holding ``network`` (``bisect`` over the sorted networks)."""
    i = bisect.bisect_right(ipv6.networks, network) - 1
    if i < 0 or network > ipv6.networks[i] | ((1 << (BITS[6] - ipv6.lengths[i])) - 1):
        raise AssertionError("an IPv6 entry outside every aggregate of its own blocklist")
    return i


def _per_entry(
    table: RankedTable, rows: npt.NDArray[np.int64], holder: npt.NDArray[np.int64]
) -> dict[int, tuple[set[str], list[str]]]:
    """Per prefix that covers per-entry indicators: their categories and finding ids."""
    out: dict[int, tuple[set[str], list[str]]] = {}
    objs = table.obj[rows]
    for row, obj in zip(rows[objs >= 0].tolist(), objs[objs >= 0].tolist(), strict=True):
        indicator = table.objects[obj]
        cats, findings = out.setdefault(int(holder[row]), (set(), []))
        cats.add(indicator.category)
        sources = set(indicator.sources)
        if CDR in sources:
            findings.extend(f for f in _findings(indicator.refs, sources | set(table.sources)) if f not in findings)
    for _, findings in out.values():
        findings.sort()
    return out


def _sources_of(mask: npt.NDArray[np.uint64], names: Sequence[str]) -> set[str]:
    return {names[i] for i in range(len(names)) if int(mask[i >> 6]) >> (i & 63) & 1}


def _heaviest(sources: set[str], feed_categories: Mapping[str, str]) -> str:
    cats = [feed_categories[s] for s in sources if s in feed_categories]
    return min(cats, key=lambda c: (-category_weight(c), c)) if cats else "other"

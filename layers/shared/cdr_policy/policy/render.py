"""``compile_policies``: every current indicator set + one channel's settings -> that channel's
policy files and report.

1. Sets: ``disabled`` ones are ignored; on a channel without ``threat_intel`` only the CDR set feeds
   the network blocklists. Entries are merged across sources (``policy.merge.merge_indicators``:
   provenance kept, expired entries dropped).
2. Domains are reported or resolved (``policy.domains``), ports parsed and checked against the ports
   nobody may block (``policy.ports``).
3. Every prefix goes through the never-block list again: the caller's guard and the channel's
   ``protected_cidrs`` (its pod, service and node ranges). Refusals are reported, never silent.
4. The remaining prefixes, with the compact feed sets' (a million prefixes as arrays), are merged
   by value and ranked (``policy.ranked``; with the fleet's hits, a feed entry that fired ranks
   first in its evidence class) and cut to the channel's Tetragon and Cilium budgets
   (``policy.capacity``); what is left out is counted and the best-ranked of it listed with its
   rank; ``hits`` and each budget's ``kept_by_hits`` say what the hits changed.
5. Objects: behaviour policies per CDR rule (``policy.behaviours``), Tetragon blocklists
   (``cdr`` and ``threat-intel``), Cilium groups and policies (``policy.cilium``), and their
   provenance index (``policy.provenance``): which feed, finding and category each prefix, port
   and rule comes from.
6. The checker runs on every object (checklist always; CRD schemas when ``schemas`` is given) and
   an error stops the render with ``PolicyCheckError``: nothing that fails is ever shipped.

Output is deterministic: same inputs (``now`` included), same objects in the same order, same bytes.
Files are ordered CiliumCIDRGroups first (applied before the policies that reference them), then
the others by file name. File names are documented in ``policy.naming``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from aws_lambda_powertools.metrics import MetricUnit

from cdr_policy.bundle.provenance import ProvenanceIndex
from cdr_policy.errors import PolicyCheckError
from cdr_policy.guards import NeverBlock, parse_protected
from cdr_policy.hits.fleet import Fired
from cdr_policy.models import MAX_REFS, Behaviour, Indicator, IndicatorSet, Rejection
from cdr_policy.netprefix import parse_explicit
from cdr_policy.observability import logger, metrics
from cdr_policy.policy import cilium, naming, tetragon
from cdr_policy.policy.behaviours import CATALOGUE, compile_behaviour, covered_names, evidence_hooks
from cdr_policy.policy.capacity import Cut, cut, listed_left_out
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet, check_object
from cdr_policy.policy.domains import Resolver, handle_domains
from cdr_policy.policy.merge import merge_indicators
from cdr_policy.policy.output import ObjectMeta, PolicyFile
from cdr_policy.policy.ports import parse_port, port_refusal
from cdr_policy.policy.provenance import build_index
from cdr_policy.policy.ranked import CDR, MAX_RANKED_FEED_PREFIXES, THREAT_INTEL, RankedTable, rank_ips
from cdr_policy.policy.scoping import MAX_WORKLOAD_POLICIES, Placement, place_evidence
from cdr_policy.policy.tetragon import Enforcement
from cdr_policy.rules import RULES
from cdr_policy.timeutil import iso, parse_iso

MAX_REFS_ANNOTATION = 20
MAX_PROBLEMS_IN_ERROR = 20

_TETRAGON_BASE = {CDR: "cdr-dynamic-blocklist", THREAT_INTEL: "threat-intel-blocklist"}
_CILIUM_BASE = {CDR: "cilium-cdr-blocklist", THREAT_INTEL: "cilium-threat-intel-blocklist"}
_MESSAGE = {
    CDR: "cdr-policy: connection to an address seen in Qualys CDR detections",
    THREAT_INTEL: "cdr-policy: connection to an address on a threat-intel blocklist",
}


# What a promoting channel's gate is given and gives back: its ranking, its port indicators and
# its behaviour rules' files.
Ports = list[tuple[Indicator, tuple[str, int]]]


class Gate(Protocol):
    """Composes a promoting channel's render from what it ships now and the changes that qualify
    (``cdr_policy.promotion.compose.Composer``): the ranking's rows, the ports and each rule's
    files it may ship."""

    def compose(
        self, table: RankedTable, ports: Ports, rules: dict[str, list[PolicyFile]]
    ) -> tuple[RankedTable, Ports, dict[str, list[PolicyFile]]]: ...


@dataclass
class RenderResult:
    files: list[PolicyFile]
    report: dict[str, Any]
    provenance: ProvenanceIndex


class GuardChain:
    """The caller's never-block list followed by the channel's protected ranges."""

    def __init__(self, guards: Sequence[NeverBlock]) -> None:
        self.guards = list(guards)

    def check_interval(self, version: int, first: int, last: int, prefixlen: int) -> str | None:
        for guard in self.guards:
            reason = guard.check_interval(version, first, last, prefixlen)
            if reason:
                return reason
        return None

    def protected_ranges(self, version: int) -> list[tuple[int, int]]:
        return [r for guard in self.guards for r in guard.protected_ranges(version)]

    def min_prefix_length(self, version: int) -> int:
        return max(guard.min_prefix_length(version) for guard in self.guards)

    def check_domain(self, name: str) -> str | None:
        for guard in self.guards:
            reason = guard.check_domain(name)
            if reason:
                return reason
        return None


@dataclass
class _Inputs:
    ips: list[Indicator] = field(default_factory=list)  # per-entry, merged by value
    feed_sets: list[IndicatorSet] = field(default_factory=list)  # compact
    ports: list[tuple[Indicator, tuple[str, int]]] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    domains: int = 0  # domain indicators, resolved or not
    ips_refused: int = 0  # IP indicators a guard refused before ranking
    report: dict[str, Any] = field(default_factory=dict)  # the report's sources, domains and ports


def compile_policies(
    sets: list[IndicatorSet],
    channel: ChannelSettings,
    *,
    now: datetime,
    guard: NeverBlock,
    schemas: SchemaSet | None = None,
    resolver: Resolver | None = None,
    fired: Fired | None = None,
    gate: Gate | None = None,
) -> RenderResult:
    """Render one channel (see the module docstring). Raises ``ConfigError`` for a channel that
    cannot be served (Cilium < 1.16) and ``PolicyCheckError`` when an object fails the checker.
    ``fired``: what fired in the fleet (``hits.fleet``), which reorders feed entries within their
    evidence class when a budget cuts. ``gate``: a promoting channel's (step 4 and 5 take only
    what it lets through)."""
    cilium.require_supported(channel)
    guards = GuardChain(
        [guard]
        + (
            [NeverBlock(extra=parse_protected(channel.protected_cidrs, f"protected range of channel {channel.name}"))]
            if channel.protected_cidrs
            else []
        )
    )
    inputs = _collect(sets, channel, now=now, guards=guards, resolver=resolver)
    ranking = rank_ips(
        inputs.ips, inputs.feed_sets, now=now, guard=guards, fired=(fired.v4, fired.v6) if fired else None
    )
    inputs.rejected.extend(ranking.rejected)
    unranked = sum(ranking.unranked.values())
    rules: dict[str, list[PolicyFile]] = {}
    behaviour_report = []
    room = MAX_WORKLOAD_POLICIES
    for rule in sorted(inputs.behaviours):
        rules[rule], entry, scoped = _behaviour_files(rule, inputs.behaviours[rule], channel, room)
        behaviour_report.append(entry)
        room -= scoped
    table, ports = ranking.table, inputs.ports
    if gate is not None:
        table, ports, rules = gate.compose(table, ports, rules)
    tetragon_cut = cut(table, channel.tetragon_max_prefixes)
    cilium_limit = cilium.prefix_limit(channel)
    cilium_cut = tetragon_cut if cilium_limit == tetragon_cut.limit else cut(table, cilium_limit)

    files = [f for rule in sorted(rules) for f in rules[rule]]
    files.extend(_network_files(channel, tetragon_cut, cilium_cut, ports))
    files.sort(key=lambda f: (f.kind != "CiliumCIDRGroup", f.filename))
    checks = _check(files, schemas, guards)

    left_out, left_out_total = listed_left_out({"tetragon": tetragon_cut, "cilium": cilium_cut})
    left_out_total += unranked  # never ranked, so never listed: counted per feed in left_out_unranked
    if unranked:
        logger.warning(
            "feed prefixes over the render's cap left out before ranking",
            extra={"cap": MAX_RANKED_FEED_PREFIXES, "left_out": ranking.unranked},
        )
    rejected = sorted({(r.value, r.source, r.reason) for r in inputs.rejected})
    report = {
        "channel": {
            "name": channel.name,
            "action": channel.action,
            "cilium_version": channel.cilium_version,
            # Override channels without it put Sigkill on syscall hooks (policy.tetragon)
            "kernel": {"override_helper": channel.kernel.override_helper},
        },
        **inputs.report,
        "indicators": {
            "ips": len(ranking.table) + len(ranking.rejected) + inputs.ips_refused + unranked,
            "domains": inputs.domains,
            "ports": len(inputs.ports),
        },
        "policies": [f.summary() for f in files],
        "behaviours": behaviour_report,
        "budget": {"tetragon": tetragon_cut.report(), "cilium": cilium_cut.report()},
        "hits": _hits_report(ranking.table, fired),
        "left_out": left_out,
        "left_out_total": left_out_total,
        "left_out_unranked": ranking.unranked,
        "rejected": [{"value": v, "source": s, "reason": r} for v, s, r in rejected],
        "checks": checks,
    }
    metrics.add_metric(name="PrefixesLeftOut", unit=MetricUnit.Count, value=left_out_total)
    metrics.add_metric(name="IndicatorsRejected", unit=MetricUnit.Count, value=len(rejected))
    logger.info(
        "policies compiled",
        extra={
            "channel": channel.name,
            "files": len(files),
            "tetragon_prefixes": tetragon_cut.used,
            "cilium_prefixes": cilium_cut.used,
            "left_out": left_out_total,
            "rejected": len(rejected),
        },
    )
    index = build_index(
        channel.name,
        channel.hit_detail,
        cuts={"tetragon": tetragon_cut, "cilium": cilium_cut},
        files=files,
        ports=ports,
        behaviours=inputs.behaviours,
        feed_categories={
            s.source.removeprefix("feed:"): s.prefixes.category for s in inputs.feed_sets if s.prefixes is not None
        },
    )
    return RenderResult(files=files, report=report, provenance=index)


def _collect(
    sets: Iterable[IndicatorSet],
    channel: ChannelSettings,
    *,
    now: datetime,
    guards: GuardChain,
    resolver: Resolver | None,
) -> _Inputs:
    inputs = _Inputs()
    used, excluded = [], []
    for ind_set in sorted(sets, key=lambda s: s.source):
        if ind_set.status == "disabled" or (not channel.threat_intel and ind_set.source != "cdr"):
            excluded.append(ind_set.source)
        elif ind_set.prefixes is not None:
            used.append(ind_set)
            inputs.feed_sets.append(ind_set)
        else:
            used.append(ind_set)
        if ind_set.source == "cdr" and ind_set.status != "disabled":
            _merge_behaviours(inputs, ind_set.behaviours, now)
    merged = merge_indicators(used, now)
    domains = [i for i in merged if i.kind == "domain"]
    ips = [i for i in merged if i.kind == "ip"]
    outcome = handle_domains(
        domains,
        mode=channel.domain_enforcement,
        now=now,
        refuse_domain=guards.check_domain,
        resolver=resolver,
    )
    inputs.rejected.extend(outcome.rejected)
    if outcome.indicators:
        extra = IndicatorSet(source="render", fetched_at=iso(now), status="ok", entries=ips + outcome.indicators)
        ips = [i for i in merge_indicators([extra], now) if i.kind == "ip"]
    refused = 0
    for indicator in ips:
        reason = _ip_refusal(indicator.value, guards)
        if reason:
            inputs.rejected.append(Rejection(indicator.value, ",".join(indicator.sources), reason))
            refused += 1
        else:
            inputs.ips.append(indicator)
    port_values = []
    for indicator in (i for i in merged if i.kind == "port"):
        try:
            port = parse_port(indicator.value)
        except ValueError as exc:
            inputs.rejected.append(Rejection(indicator.value, ",".join(indicator.sources), str(exc)))
            continue
        reason = port_refusal(port, {parse_port(p) for p in channel.protected_ports})
        if reason:
            inputs.rejected.append(Rejection(indicator.value, ",".join(indicator.sources), reason))
        else:
            inputs.ports.append((indicator, port))
            port_values.append(indicator.value)
    inputs.domains, inputs.ips_refused = len(domains), refused
    inputs.report = {
        "sources": {"used": [s.source for s in used], "excluded": excluded},
        "domains": outcome.report,
        "ports": {
            "values": port_values,
            "tetragon": "deny" if channel.deny_ports_to_world else "audit",
            "cilium": "deny towards the world"
            if channel.deny_ports_to_world
            else "not enforced (deny_ports_to_world is off)",
        },
    }
    return inputs


def _ip_refusal(value: str, guards: GuardChain) -> str | None:
    prefix, reason = parse_explicit(value)
    if prefix is None or reason:
        return f"not a canonical prefix: {reason}"
    return guards.check_interval(prefix.version, prefix.network, prefix.last, prefix.length)


def _merge_behaviours(inputs: _Inputs, behaviours: Iterable[Behaviour], now: datetime) -> None:
    for b in behaviours:
        if b.rule not in CATALOGUE:
            inputs.rejected.append(Rejection(b.rule, "cdr", "unknown behaviour rule (not in cdr_policy.rules)"))
            continue
        if parse_iso(b.expires_at) <= now:
            continue
        alive = [s for s in b.sightings if parse_iso(s.expires_at) > now]
        current = inputs.behaviours.get(b.rule)
        if current is None:
            inputs.behaviours[b.rule] = Behaviour(
                rule=b.rule,
                categories=dict(b.categories),
                processes=sorted(set(b.processes)),
                refs=sorted(set(b.refs)),
                first_seen=b.first_seen,
                last_seen=b.last_seen,
                expires_at=b.expires_at,
                sightings=alive,
            )
            continue
        current.categories = dict(Counter(current.categories) + Counter(b.categories))
        current.processes = sorted(set(current.processes) | set(b.processes))
        current.refs = sorted(set(current.refs) | set(b.refs))
        current.sightings = [*current.sightings, *alive]
        current.first_seen = min(current.first_seen, b.first_seen, key=parse_iso)
        current.last_seen = max(current.last_seen, b.last_seen, key=parse_iso)
        current.expires_at = max(current.expires_at, b.expires_at, key=parse_iso)


def _behaviour_files(
    rule: str, behaviour: Behaviour, channel: ChannelSettings, room: int
) -> tuple[list[PolicyFile], dict[str, Any], int]:
    """The rule's own policy (with the evidence names placed cluster-wide), one policy per
    workload its other evidence names were seen in (at most ``room``), and the audit policy of
    the rest (``policy.scoping``); the rule's report entry; how many workload policies it made."""
    spec = CATALOGUE[rule]
    placement = place_evidence(behaviour, channel, covered_names(rule), room=room) if spec.evidence else Placement()
    kprobes, enforcement, spec = compile_behaviour(rule, channel, placement.cluster_wide)
    annotations = {
        naming.EXPIRES_AT: iso(parse_iso(behaviour.expires_at)),
        naming.MITRE: RULES[rule][0],
        naming.CATEGORIES: ",".join(f"{c}={n}" for c, n in sorted(behaviour.categories.items())),
        naming.REFS: _refs(behaviour.refs),
        naming.SOURCES: "cdr",
    }
    if placement.cluster_wide:
        annotations[naming.EVIDENCE] = ",".join(placement.cluster_wide)
    meta = ObjectMeta(
        labels=naming.ownership_labels(channel.name, naming.COMPONENT_BEHAVIOUR, rule=rule),
        annotations=annotations,
    )
    files = tetragon.tracing_policies(
        channel,
        kprobes=kprobes,
        enforcement=enforcement,
        meta=meta,
        purpose=naming.rule_slug(rule),
        base=naming.behaviour_base(rule, behaviour.first_seen),
        entries=_entries(kprobes),
        spare_namespaces=spec.spare_namespaces,
    )
    for scope in placement.scopes:
        scoped = evidence_hooks(rule, channel, enforcement, scope.names)
        scope_meta = ObjectMeta(
            labels=naming.ownership_labels(
                channel.name, naming.COMPONENT_BEHAVIOUR, rule=rule, scope=naming.SCOPE_WORKLOAD
            ),
            annotations={**annotations, naming.EVIDENCE: ",".join(scope.names), naming.WORKLOAD: scope.workload},
        )
        filename = naming.workload_filename(
            naming.behaviour_base(rule, behaviour.first_seen), scope.namespace, scope.workload
        )
        selects = tetragon.workload_selector(scope.namespace, scope.labels)
        files.append(
            tetragon.tracing_policy(
                None,
                selects,
                scoped,
                enforcement,
                scope_meta,
                naming.rule_slug(rule),
                filename,
                _entries(scoped),
            )
        )
    if placement.audited:
        audit = Enforcement.for_channel(channel, audit_only=True)
        audited = evidence_hooks(rule, channel, audit, placement.audited)
        files.extend(
            tetragon.tracing_policies(
                channel,
                kprobes=audited,
                enforcement=audit,
                meta=ObjectMeta(
                    labels=naming.ownership_labels(
                        channel.name, naming.COMPONENT_BEHAVIOUR, rule=rule, scope=naming.SCOPE_AUDIT
                    ),
                    annotations={**annotations, naming.EVIDENCE: ",".join(placement.audited)},
                ),
                purpose=f"{naming.rule_slug(rule)}-audit",
                base=naming.audit_base(rule, behaviour.first_seen),
                entries=_entries(audited),
            )
        )
    report = {
        "rule": rule,
        "files": [f.filename for f in files],
        "mode": "monitor" if enforcement.monitor else "enforce",
        "action": enforcement.action,
        "evidence_added": list(placement.cluster_wide),
        "evidence": placement.rows,
    }
    return files, report, len(placement.scopes)


def policy_file(obj: dict[str, Any], filename: str) -> PolicyFile:
    """A behaviour object a promoting channel ships again as it was (``cdr_policy.promotion``)."""
    return PolicyFile(filename, obj["kind"], obj["metadata"]["name"], obj, _entries(obj["spec"].get("kprobes", [])))


def _entries(kprobes: list[dict[str, Any]]) -> int:
    return sum(len(m.get("values", [])) for kp in kprobes for s in kp["selectors"] for m in s.get("matchArgs", []))


def _network_files(
    channel: ChannelSettings,
    tetragon_cut: Cut,
    cilium_cut: Cut,
    ports: list[tuple[Indicator, tuple[str, int]]],
) -> list[PolicyFile]:
    files: list[PolicyFile] = []
    port_pairs = sorted({p for _, p in ports})
    tcp_ports = [n for proto, n in port_pairs if proto == "tcp"]
    udp_ports = (
        [n for proto, n in port_pairs if proto == "udp"] if channel.tetragon_network_hook != "tcp_connect" else []
    )
    port_indicators = [i for i, _ in ports]
    for group in (CDR, THREAT_INTEL):
        group_ports = group == CDR
        for engine, the_cut in (("tetragon", tetragon_cut), ("cilium", cilium_cut)):
            prefixes = the_cut.kept.get(group, [])
            rows = the_cut.kept_rows(group)
            extra = port_indicators if group_ports else []
            if not len(rows) and not extra:
                continue
            provenance = _provenance(the_cut.table, rows, extra, len(prefixes), group)
            component = (
                naming.COMPONENT_TETRAGON_BLOCKLIST if engine == "tetragon" else naming.COMPONENT_CILIUM_BLOCKLIST
            )
            labels = naming.ownership_labels(channel.name, component, blocklist=group)
            meta = ObjectMeta(labels=labels, annotations=provenance)
            if engine == "tetragon":
                files.extend(
                    tetragon.network_blocklist(
                        channel,
                        prefixes=prefixes,
                        tcp_ports=tcp_ports if group_ports else (),
                        udp_ports=udp_ports if group_ports else (),
                        meta=meta,
                        purpose=f"{group}-blocklist",
                        base=_TETRAGON_BASE[group],
                        message=_MESSAGE[group],
                        tags=["cdr-policy", group, "network"],
                    )
                )
            else:
                group_meta = ObjectMeta(
                    labels=naming.ownership_labels(channel.name, naming.COMPONENT_CIDR_GROUP, blocklist=group),
                    annotations=dict(provenance),
                )
                files.extend(
                    cilium.blocklist(
                        channel,
                        prefixes=prefixes,
                        ports=port_pairs if group_ports else (),
                        meta=meta,
                        group_meta=group_meta,
                        purpose=group,
                        base=_CILIUM_BASE[group],
                        description=f"cdr-policy: deny egress to the {group} blocklist ({channel.name})",
                    )
                )
    return files


def _provenance(
    table: RankedTable, rows: npt.NDArray[np.int64], extra: list[Indicator], prefixes: int, group: str
) -> dict[str, str]:
    """Annotations of a blocklist: its sources (with the number of kept entries from each), the
    latest expiry, the prefix count and, for the CDR blocklist, the findings behind it."""
    in_rows = np.zeros(len(table), dtype=bool)
    in_rows[rows] = True
    pair_sources = table.pair_source[in_rows[table.pair_row]]
    per_source = np.bincount(pair_sources, minlength=len(table.sources)).tolist()
    counts = Counter(dict(zip(table.sources, per_source, strict=True)))
    counts.update(source for i in extra for source in i.sources)
    expiries = [iso(datetime.fromtimestamp(int(np.max(table.expires[rows])), UTC))] if len(rows) else []
    annotations = {
        naming.EXPIRES_AT: max(expiries + [i.expires_at for i in extra], key=parse_iso),
        naming.SOURCES: ",".join(f"{s}={n}" for s, n in sorted(counts.items()) if n),
        naming.ENTRIES: str(prefixes),
    }
    if group == CDR:
        refs = [r for i in extra if "cdr" in i.sources for r in i.refs]
        for row in rows.tolist():
            obj = int(table.obj[row])
            if obj >= 0 and "cdr" in table.objects[obj].sources:
                refs.extend(_capped_refs(table, row, table.objects[obj]))
        annotations[naming.REFS] = _refs(refs)
    return annotations


def _capped_refs(table: RankedTable, row: int, indicator: Indicator) -> list[str]:
    """The refs of a CDR-detected value as the merge keeps them: its own, plus the names of the
    compact feeds that list it too, at most ``MAX_REFS``."""
    names = {table.sources[s] for s in table.pair_source[table.pair_row == row].tolist()}
    return sorted(set(indicator.refs) | (names - set(indicator.sources)))[:MAX_REFS]


def _refs(refs: Iterable[str]) -> str:
    unique = sorted(set(refs))
    shown = ",".join(unique[:MAX_REFS_ANNOTATION])
    return f"{shown} (+{len(unique) - MAX_REFS_ANNOTATION} more)" if len(unique) > MAX_REFS_ANNOTATION else shown


def _hits_report(table: RankedTable, fired: Fired | None) -> dict[str, Any] | None:
    """What the fleet's hits changed in the ranking: the feed entries that fired, and how many
    entries moved (what each budget kept only because of them is in ``budget``)."""
    if fired is None:
        return None
    without = table.rank_without_hits
    return {
        "since": fired.since,
        "until": fired.until,
        "fired": int(table.fired.sum()) if table.fired is not None else 0,
        "rank_changes": 0 if without is None else int((without != np.arange(len(without))).sum()),
    }


def _check(files: list[PolicyFile], schemas: SchemaSet | None, guards: GuardChain) -> dict[str, Any]:
    failures: list[str] = []
    warnings: list[dict[str, Any]] = []
    for f in files:
        for problem in check_object(f.obj, schemas, guard=guards):
            if problem.severity == "error":
                failures.append(f"{f.filename} ({f.kind}/{f.name}): {problem}")
            else:
                warnings.append({"file": f.filename, **problem.to_dict()})
    if failures:
        shown = "\n".join(failures[:MAX_PROBLEMS_IN_ERROR])
        more = (
            f"\n... and {len(failures) - MAX_PROBLEMS_IN_ERROR} more" if len(failures) > MAX_PROBLEMS_IN_ERROR else ""
        )
        raise PolicyCheckError(f"refusing to ship {len(failures)} checker error(s):\n{shown}{more}")
    return {"schemas": schemas is not None, "errors": 0, "warnings": warnings}

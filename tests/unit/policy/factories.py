"""Indicator sets of our own for the policy tests (same formats as the pipeline's)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cdr_policy.guards import NeverBlock
from cdr_policy.models import Behaviour, FeedPrefixes, Indicator, IndicatorKind, IndicatorSet, SetStatus, Sighting
from cdr_policy.netprefix.vector import V4, V6
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.policy.render import RenderResult, compile_policies

NOW = datetime(2026, 1, 10, 16, 45, tzinfo=UTC)
FIRST_SEEN = "2026-01-09T08:00:00Z"
LAST_SEEN = "2026-01-10T12:00:00Z"
EXPIRES = "2026-01-17T12:00:00Z"


def indicator(
    value: str,
    kind: IndicatorKind = "ip",
    *,
    sources: Sequence[str] = ("cdr",),
    category: str = "c2",
    score: int | None = None,
    refs: Sequence[str] = ("finding-1",),
    last_seen: str = LAST_SEEN,
    expires_at: str = EXPIRES,
) -> Indicator:
    return Indicator(
        value=value,
        kind=kind,
        category=category,
        sources=list(sources),
        first_seen=FIRST_SEEN,
        last_seen=last_seen,
        expires_at=expires_at,
        refs=list(refs),
        score=score,
    )


def behaviour(
    rule: str,
    processes: Sequence[str] = (),
    *,
    first_seen: str = FIRST_SEEN,
    expires_at: str = EXPIRES,
    sightings: Sequence[Sighting] = (),
) -> Behaviour:
    return Behaviour(
        rule=rule,
        categories={f"Category_For_{rule}": 3},
        processes=sorted({*processes, *(s.process for s in sightings)}),
        refs=[f"uuid-{rule}-1", f"uuid-{rule}-2"],
        first_seen=first_seen,
        last_seen=LAST_SEEN,
        expires_at=expires_at,
        sightings=list(sightings),
    )


def sighting(
    process: str,
    namespace: str | None = "shop",
    labels: dict[str, str] | None = None,
    *,
    deployment: str | None = None,
    findings: int = 1,
    expires_at: str = EXPIRES,
) -> Sighting:
    """``process`` seen in a workload (default: namespace ``shop``, pod labels ``app: web``)."""
    return Sighting(
        process=process,
        namespace=namespace,
        deployment=deployment,
        labels={"app": "web"} if labels is None and namespace is not None else labels,
        findings=findings,
        last_seen=LAST_SEEN,
        expires_at=expires_at,
    )


def cdr_set(entries: Iterable[Indicator] = (), behaviours: Iterable[Behaviour] = ()) -> IndicatorSet:
    return IndicatorSet(
        source="cdr",
        fetched_at="2026-01-10T16:30:00Z",
        status="ok",
        entries=list(entries),
        behaviours=list(behaviours),
    )


def feed_set(name: str, values: Iterable[str], category: str = "c2", status: SetStatus = "ok") -> IndicatorSet:
    source = f"feed:{name}"
    return IndicatorSet(
        source=source,
        fetched_at="2026-01-10T16:00:00Z",
        status=status,
        entries=[indicator(v, sources=(source,), category=category, refs=(name,)) for v in values],
    )


def render(
    sets: list[IndicatorSet],
    channel: ChannelSettings | None = None,
    schemas: SchemaSet | None = None,
    **kwargs: Any,
) -> RenderResult:
    return compile_policies(
        sets, channel or ChannelSettings(name="prod"), now=NOW, guard=NeverBlock(), schemas=schemas, **kwargs
    )


def by_file(result: RenderResult) -> dict[str, dict[str, Any]]:
    return {f.filename: f.obj for f in result.files}


def file_bytes(result: RenderResult) -> dict[str, bytes]:
    """``{file name: bytes}`` of a ``RenderResult``: what the determinism tests compare."""
    return {f.filename: f.to_bytes() for f in result.files}


def compact(name: str, values: list[str], category: str = "attacker", expires_at: str = EXPIRES) -> IndicatorSet:
    nets = [ipaddress.ip_network(v) for v in values]
    v4 = sorted(n for n in nets if n.version == 4)
    v6 = sorted(n for n in nets if n.version == 6)
    prefixes = FeedPrefixes(
        category=category,
        last_seen=LAST_SEEN,
        expires_at=expires_at,
        ipv4=V4(
            np.array([int(n.network_address) for n in v4], np.uint32), np.array([n.prefixlen for n in v4], np.uint8)
        ),
        ipv6=V6([int(n.network_address) for n in v6], bytes(n.prefixlen for n in v6)),
    )
    return IndicatorSet(source=f"feed:{name}", fetched_at=LAST_SEEN, status="ok", prefixes=prefixes)


def exec_targets(obj: dict[str, Any]) -> set[str]:
    """The ``Postfix`` values of a Tetragon policy's ``security_bprm_check`` selectors."""
    return {
        v
        for hook in obj["spec"]["kprobes"]
        if hook["call"] == "security_bprm_check"
        for sel in hook["selectors"]
        for m in sel.get("matchArgs", [])
        if m["operator"] == "Postfix"
        for v in m["values"]
    }

"""The run report (``report.json``, schema ``schemas/report.schema.json``): what a run fetched,
what each feed contributed, everything a guard refused and why, and the policies written.

Written beside the policies by the CLI and beside each rendered bundle in the state bucket.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cdr_policy import schemas
from cdr_policy.models import IndicatorSet
from cdr_policy.summaries import CdrRunSummary
from cdr_policy.timeutil import iso

if TYPE_CHECKING:
    from cdr_policy.last_good import Unreadable

SCHEMA = "report.schema.json"
SCHEMA_VERSION = 1
WHAT = "run report"
_RENDER_KEYS = (
    "behaviours",
    "budget",
    "hits",
    "left_out",
    "left_out_total",
    "left_out_unranked",
    "checks",
    "domains",
    "ports",
)


@dataclass(frozen=True)
class FeedReport:
    """One feed's set as the render found it: its status, entries, download error and statistics."""

    status: str
    entries: int
    error: str | None
    fetched_at: str
    stats: dict[str, Any]


@dataclass(frozen=True)
class EngineBudget:
    """One engine's capacity budget (``policy.capacity.Cut.report``)."""

    limit: int
    used: int
    covered: int
    left_out: int
    kept_by_hits: int


@dataclass(frozen=True)
class RunReport:
    """``report.json``: the contract is ``schemas/report.schema.json``, checked on both sides. The
    parts nobody reads field by field (the events, the policies, the checks ...) stay JSON values."""

    generated_at: str
    channel: dict[str, Any]
    events: dict[str, Any]
    indicators: dict[str, int]
    feeds: dict[str, FeedReport]
    rejected: list[dict[str, str]]
    policies: list[dict[str, Any]]
    behaviours: list[dict[str, Any]]
    budget: dict[str, EngineBudget]
    hits: dict[str, Any] | None
    left_out: list[dict[str, Any]]
    left_out_total: int
    left_out_unranked: dict[str, int]
    checks: dict[str, Any]
    domains: dict[str, Any]
    ports: dict[str, Any]
    unreadable_sets: list[dict[str, Any]] = field(default_factory=list)  # absent from the document when empty

    def to_json(self) -> dict[str, Any]:
        doc = {"schema_version": SCHEMA_VERSION, **asdict(self)}
        if not self.unreadable_sets:
            del doc["unreadable_sets"]
        schemas.validate(doc, SCHEMA)
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> RunReport:
        schemas.check_contract(doc, SCHEMA, WHAT)
        parts = {name: doc[name] for name in cls.__dataclass_fields__ if name in doc}
        parts["feeds"] = {name: FeedReport(**feed) for name, feed in doc["feeds"].items()}
        parts["budget"] = {engine: EngineBudget(**used) for engine, used in doc["budget"].items()}
        return cls(**parts)


def _events(cdr: CdrRunSummary | None) -> dict[str, Any]:
    if cdr is None:  # no fetch has run yet
        return {
            "fetched": 0,
            "unique": 0,
            "duplicates": 0,
            "malformed": 0,
            "by_category": {},
            "unmapped_categories": {},
            "complete": True,
            "range": None,
        }
    return {
        "fetched": cdr.fetched,
        "unique": cdr.unique,
        "duplicates": cdr.duplicates,
        "malformed": cdr.malformed_count,
        "by_category": dict(cdr.by_category),
        "unmapped_categories": dict(cdr.unmapped_categories),
        "complete": cdr.complete,
        "range": cdr.range,
    }


def _feeds_from_sets(sets: Iterable[IndicatorSet]) -> dict[str, Any]:
    feeds = {}
    for s in sets:
        if s.source == "cdr":
            continue
        name = s.source.removeprefix("feed:")
        feeds[name] = {
            "status": s.status,
            "entries": s.size,
            "error": s.error,
            "fetched_at": s.fetched_at,
            "stats": dict(s.stats),
        }
    return dict(sorted(feeds.items()))


def _rejected(*groups: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen = {(r["value"], r["source"], r["reason"]) for group in groups for r in group}
    return [{"value": v, "source": s, "reason": r} for v, s, r in sorted(seen)]


def build_report(
    *,
    now: datetime,
    render: dict[str, Any],
    cdr: CdrRunSummary | None,
    feeds: dict[str, Any],
    rejected: Iterable[dict[str, Any]],
    unreadable: Sequence[Unreadable] = (),
) -> RunReport:
    """Assemble and check a report. ``render`` is ``RenderResult.report``; ``cdr`` the CDR fetch's
    summary (None when no fetch ran); ``feeds`` maps feed name to its status entry."""
    report = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": iso(now),
        "channel": render["channel"],
        "events": _events(cdr),
        "indicators": dict(cdr.indicators) if cdr else {"ips": 0, "domains": 0, "ports": 0},
        "feeds": feeds,
        "rejected": _rejected(cdr.rejected if cdr else [], rejected, render.get("rejected", [])),
        "policies": render["policies"],
        **{k: render[k] for k in _RENDER_KEYS if k in render},
    }
    if unreadable:
        report["unreadable_sets"] = [u.to_report() for u in unreadable]
    return RunReport.from_json(report)


def bundle_report(
    render: dict[str, Any],
    sets: list[IndicatorSet],
    last_cdr_run: CdrRunSummary | None,
    *,
    now: datetime,
    unreadable: Sequence[Unreadable] = (),
) -> RunReport:
    """The report stored beside a rendered bundle: the last CDR run, every set in force and the
    sets that could not be read (``unreadable_sets``: rendered from their last good copy, or left out)."""
    return build_report(
        now=now,
        render=render,
        cdr=last_cdr_run,
        feeds=_feeds_from_sets(sets),
        rejected=(r.to_dict() for s in sets for r in s.rejected),
        unreadable=unreadable,
    )

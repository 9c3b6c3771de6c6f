"""The typed summaries that cross stage boundaries: what one CdrFetch run did (stored as
``state/cdr/last-run.json`` and read back by Render for the report), what FeedSync and Render did
(the handlers' return values and the CLI's console lines). Each is a frozen dataclass with
``to_dict``/``from_dict``; the stored one is checked against its schema on both sides, so a renamed
field fails loudly instead of reading back as a silent zero."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from cdr_policy import jsonio, layout, schemas
from cdr_policy.errors import StorageError
from cdr_policy.storage import NotFound, Store

CDR_RUN_SCHEMA = "cdr-run.schema.json"


@dataclass(frozen=True)
class CdrRunSummary:
    """One CdrFetch run, each finding counted once: ``fetched = unique + duplicates + malformed_count``."""

    complete: bool
    stopped_reason: str | None
    range: dict[str, str | None]  # start, end, checkpoint (the one the run started from)
    windows: dict[str, int]  # planned, done
    pages: int
    fetched: int
    unique: int
    new: int
    duplicates: int
    by_category: dict[str, int]
    by_rule: dict[str, int]
    unmapped_categories: dict[str, int]
    malformed_count: int
    malformed: list[dict[str, Any]]  # the first MALFORMED_REPORT_CAP, by position (page key, index)
    indicators: dict[str, int]  # touched by this run: ips, domains, ports
    indicators_total: dict[str, int]  # in the stored set: ips, domains, ports, behaviours
    expired: int
    rejected: list[dict[str, str]]
    authentications: int
    retries: int

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        schemas.validate(doc, CDR_RUN_SCHEMA)
        return doc

    @classmethod
    def from_dict(cls, doc: Any) -> CdrRunSummary:
        schemas.validate(doc, CDR_RUN_SCHEMA)
        return cls(**{f.name: doc[f.name] for f in fields(cls)})


def read_last_run(store: Store) -> CdrRunSummary | None:
    """The last run's summary (``state/cdr/last-run.json``), checked against its schema; None before the first run."""
    try:
        data = store.get(layout.CDR_LAST_RUN).data
    except NotFound:
        return None
    try:
        doc = jsonio.loads(data)
    except ValueError as exc:
        raise StorageError(f"{store.describe()}/{layout.CDR_LAST_RUN} is not valid JSON: {exc}") from exc
    return CdrRunSummary.from_dict(doc)


@dataclass(frozen=True)
class FeedSummary:
    status: str
    entries: int


@dataclass(frozen=True)
class FeedSyncSummary:
    feeds: dict[str, FeedSummary]
    written: list[str]
    rejected: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RenderSummary:
    """One channel's render: its bundle digest, and whether the bundle is new in the state store."""

    channel: str
    digest: str
    changed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

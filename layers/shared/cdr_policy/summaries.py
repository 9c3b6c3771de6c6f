"""The typed summaries that cross stage boundaries: what one CdrFetch run did (stored as
``state/cdr/last-run.json`` and read back by Render for the report), what FeedSync, Render and
HitsRollup did (the handlers' return values, read back by the demo, and the CLI's console lines).
Each is a frozen dataclass with ``to_json``/``from_json``: the stored one is checked against its
schema on both sides, the others against the dataclass itself (``schemas.fields_from_json``), so a
renamed field fails loudly instead of reading back as a silent zero, and a new field of a handler's
summary is added in the dataclass alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from cdr_policy import jsonio, layout, schemas
from cdr_policy.errors import ContractError, StorageError
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

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        schemas.validate(doc, CDR_RUN_SCHEMA)
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> CdrRunSummary:
        schemas.check_contract(doc, CDR_RUN_SCHEMA, "CdrFetch run summary")
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
    return CdrRunSummary.from_json(doc)


@dataclass(frozen=True)
class FeedSummary:
    status: str
    entries: int

    @classmethod
    def from_json(cls, doc: Any, where: str) -> FeedSummary:
        return cls(**schemas.fields_from_json(cls, doc, where))


@dataclass(frozen=True)
class FeedSyncSummary:
    feeds: dict[str, FeedSummary]
    written: list[str]
    rejected: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any) -> FeedSyncSummary:
        what = "FeedSync summary"
        if not isinstance(doc, dict) or set(doc) != {"feeds", "written", "rejected"}:
            raise ContractError(f"malformed {what}: not an object of feeds, written and rejected")
        feeds, written, rejected = doc["feeds"], doc["written"], doc["rejected"]
        if not isinstance(feeds, dict) or not isinstance(written, list) or not all(isinstance(k, str) for k in written):
            raise ContractError(f"malformed {what}: feeds or written")
        if not isinstance(rejected, int) or isinstance(rejected, bool):
            raise ContractError(f"malformed {what}: rejected is not an integer")
        return cls(
            {
                str(name): FeedSummary.from_json(feed, f"{what}: feeds/{i}")
                for i, (name, feed) in enumerate(feeds.items())
            },
            list(written),
            rejected,
        )


@dataclass(frozen=True)
class RenderSummary:
    """One channel's render: its bundle digest, and whether the bundle is new in the state store."""

    channel: str
    digest: str
    changed: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any) -> RenderSummary:
        return cls(**schemas.fields_from_json(cls, doc, "Render summary"))


@dataclass(frozen=True)
class HitsRollupSummary:
    """One HitsRollup run: what fired in the fleet within the window, and what was refused."""

    since: str
    clusters: int
    hits: int
    refused: int
    unreadable_statuses: int
    addresses: int
    rules: int
    ports: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any) -> HitsRollupSummary:
        return cls(**schemas.fields_from_json(cls, doc, "HitsRollup summary"))

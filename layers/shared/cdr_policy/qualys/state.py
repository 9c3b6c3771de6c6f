"""What CdrFetch keeps between runs in the state store, and the order it is written in.

- ``state/cdr/checkpoint.json``: the end of the last window whose findings are fully stored.
- ``state/cdr/seen.json``: the uuid ledger (uuid → end of the window it was fetched in), pruned
  past the refetch horizon, plus the rejection ledger (value, reason → last seen) kept for the TTL.
- ``indicators/cdr/current.json``: the CDR IndicatorSet.
- ``state/cdr/rate-limit.json``: the Qualys request budget (:mod:`cdr_policy.qualys.ratelimit`).
- ``raw/cdr/<yyyy>/<mm>/<dd>/<window-start>-<page>.json.gz``: every page exactly as received.

Commit protocol, per window, so that a crash anywhere loses nothing and counts nothing twice:
raw pages first; then ``seen.json`` with the window's uuids marked *pending* under a fresh commit
id; then ``current.json`` carrying that commit id in its stats; then the checkpoint. On load,
pending uuids count as seen only when ``current.json`` carries their commit id (that is, when the
indicators they produced were stored); otherwise they are forgotten and the window is processed
again from the raw gateway data. ``seen.json`` is also rewritten on its own (nothing pending) when
a known uuid comes back later than recorded, so that it is remembered for as long as it can return.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cdr_policy import layout
from cdr_policy.errors import StorageError
from cdr_policy.jsonio import dumps, loads
from cdr_policy.models import IndicatorSet
from cdr_policy.observability import logger
from cdr_policy.qualys.ratelimit import RequestBudget
from cdr_policy.storage import NotFound, Store
from cdr_policy.timeutil import format_instant, iso, parse_iso

STATE_VERSION = 1


def commit_id(window_end: datetime, fresh: Mapping[str, str], content: bytes | None) -> str:
    """The id of one commit, derived from what it commits (the window, its new uuids, the set's
    content): a retried commit of the same data gets the same id, and runs are reproducible."""
    digest = hashlib.sha256(iso(window_end).encode())
    digest.update(dumps(sorted(fresh.items())))
    digest.update(content or b"")
    return digest.hexdigest()[:16]


def _get_json(store: Store, key: str) -> object | None:
    try:
        data = store.get(key).data
    except NotFound:
        return None
    try:
        doc: object = loads(data)
    except ValueError as exc:
        raise StorageError(f"{store.describe()}/{key} is not valid JSON: {exc}") from exc
    return doc


def read_checkpoint(store: Store) -> datetime | None:
    """The stored checkpoint; None when absent or unreadable (then the caller falls back to the
    look-back, which refetches more but, thanks to the uuid ledger, counts nothing twice)."""
    try:
        data = store.get(layout.CDR_CHECKPOINT).data
    except NotFound:
        return None
    try:
        doc = loads(data)
        if not isinstance(doc, dict) or doc.get("schema_version") != STATE_VERSION:
            raise ValueError("unexpected document shape or version")
        return parse_iso(doc["window_end"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning(
            "cdr checkpoint unreadable; using the look-back", extra={"key": layout.CDR_CHECKPOINT, "error": str(exc)}
        )
        return None


def write_checkpoint(store: Store, window_end: datetime, now: datetime) -> None:
    doc = {"schema_version": STATE_VERSION, "window_end": format_instant(window_end), "updated_at": iso(now)}
    store.put(layout.CDR_CHECKPOINT, dumps(doc), "application/json")


def read_current(store: Store) -> IndicatorSet | None:
    doc = _get_json(store, layout.CDR_SET)
    if doc is None:
        return None
    try:
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        current = IndicatorSet.from_dict(doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(
            f"{store.describe()}/{layout.CDR_SET} is not a valid indicator set ({exc}); "
            "fix or delete it (the next fetch rebuilds it from the look-back)"
        ) from exc
    if current.source != "cdr":
        raise StorageError(f"{store.describe()}/{layout.CDR_SET} has source {current.source!r}, expected 'cdr'")
    return current


def write_current(store: Store, indicator_set: IndicatorSet) -> None:
    store.put(layout.CDR_SET, dumps(indicator_set.to_dict()), "application/json")


@dataclass
class SeenLedger:
    uuids: dict[str, str] = field(default_factory=dict)  # uuid -> end of the window it came from
    rejections: dict[tuple[str, str], str] = field(default_factory=dict)  # (value, reason) -> last seen

    def prune(self, cutoff: datetime) -> int:
        before = len(self.uuids)
        self.uuids = {u: t for u, t in self.uuids.items() if parse_iso(t) >= cutoff}
        return before - len(self.uuids)


def read_seen(store: Store, current: IndicatorSet | None) -> SeenLedger:
    doc = _get_json(store, layout.CDR_SEEN)
    if doc is None:
        return SeenLedger()
    try:
        if not isinstance(doc, dict) or doc.get("schema_version") != STATE_VERSION:
            raise ValueError("unexpected document shape or version")
        uuids = {str(k): str(v) for k, v in doc["uuids"].items()}
        pending = {str(k): str(v) for k, v in doc.get("pending", {}).items()}
        rejections = {(str(v), str(r)): str(t) for v, r, t in doc.get("rejections", [])}
        for stamp in (*uuids.values(), *pending.values(), *rejections.values()):
            parse_iso(stamp)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StorageError(
            f"{store.describe()}/{layout.CDR_SEEN} is not a valid uuid ledger ({exc}); fix or delete it "
            "(deleting it may count findings of the overlap twice once)"
        ) from exc
    commit = doc.get("pending_commit")
    if pending:
        stored_commit = current.stats.get("commit") if current is not None else None
        if commit and stored_commit == commit:
            uuids.update(pending)
        else:
            logger.info("cdr fetch: discarding uuids of an unfinished commit", extra={"uuids": len(pending)})
    return SeenLedger(uuids=uuids, rejections=rejections)


def write_seen(store: Store, ledger: SeenLedger, pending: dict[str, str], commit: str | None) -> None:
    """The ledger, with ``pending`` uuids under ``commit`` (None: nothing pending)."""
    doc = {
        "schema_version": STATE_VERSION,
        "uuids": dict(sorted(ledger.uuids.items())),
        "pending_commit": commit,
        "pending": dict(sorted(pending.items())),
        "rejections": [[v, r, t] for (v, r), t in sorted(ledger.rejections.items())],
    }
    store.put(layout.CDR_SEEN, dumps(doc), "application/json")


def read_request_budget(store: Store, per_hour: int) -> RequestBudget:
    """The stored request budget under ``per_hour``; an empty one when absent. An unreadable one is
    replaced by an empty one with a warning (the gateway's own limit still answers 429, which is
    honoured): refusing every run until someone repairs it would stop the fetch for nothing."""
    try:
        data = store.get(layout.CDR_RATE).data
    except NotFound:
        return RequestBudget(per_hour)
    try:
        return RequestBudget.from_dict(loads(data), per_hour)
    except ValueError as exc:
        logger.warning(
            "qualys request budget unreadable; starting a new one", extra={"key": layout.CDR_RATE, "error": str(exc)}
        )
        return RequestBudget(per_hour, changed=True)


def write_request_budget(store: Store, budget: RequestBudget) -> None:
    """The budget, when it changed since it was read."""
    if budget.changed:
        store.put(layout.CDR_RATE, dumps(budget.to_dict()), "application/json")
        budget.changed = False

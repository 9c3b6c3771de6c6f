"""The plausibility gate: is a downloaded feed fit to replace the last good copy?

A download that fails the gate leaves the feed ``stale``: its last good copy stays in force and
the verdict's reason goes to the log, a metric and the report. The checks, in order:

1. ``html``: an HTML page (portal, error or "moved" page) or an HTML content type, served with 200.
2. ``content_type``: any other content type that is not a list (JSON, images ...).
3. ``empty``: an empty body. Legitimate for feeds with ``can_be_empty`` (status ``empty``).
4. ``format``: the format changed (e.g. the pre-2021 Feodo CSV layout).
5. ``truncated``: an abuse.ch list without its ``# END N entries`` trailer, or with an N that does
   not match the data lines, or with data after the trailer.
6. ``error_ratio``: more than ``max_error_ratio`` of the data lines are not addresses.
7. ``collapse`` / ``explosion``: fewer than ``min_ratio`` or more than ``max_ratio`` times the
   entries of the last good copy (only once that copy had ``min_baseline`` entries or more).
"""

from __future__ import annotations

from dataclasses import dataclass

from cdr_policy.feeds.config import FeedConfig
from cdr_policy.feeds.parse import ParsedFeed

TEXT_CONTENT_TYPES = frozenset(
    {
        "text/plain",
        "text/csv",
        "text/x-csv",
        "application/csv",
        "application/octet-stream",
        "binary/octet-stream",
        "application/gzip",
        "application/x-gzip",
    }
)
HTML_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TRAILER_FORMATS = frozenset({"abusech", "feodo-csv"})


@dataclass(frozen=True)
class GateThresholds:
    max_error_ratio: float = 0.10
    min_ratio: float = 0.5
    max_ratio: float = 5.0
    min_baseline: int = 20


DEFAULT_THRESHOLDS = GateThresholds()


@dataclass(frozen=True)
class Verdict:
    status: str  # "ok" | "empty" | "stale"
    check: str | None = None  # which check failed (see the module docstring)
    reason: str | None = None

    @property
    def passed(self) -> bool:
        return self.status != "stale"


def _stale(check: str, reason: str) -> Verdict:
    return Verdict(status="stale", check=check, reason=reason)


def check(
    feed: FeedConfig,
    parsed: ParsedFeed,
    *,
    content_type: str | None,
    last_good_count: int | None,
    thresholds: GateThresholds = DEFAULT_THRESHOLDS,
) -> Verdict:
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if parsed.html or mime in HTML_CONTENT_TYPES:
        return _stale("html", f"an HTML page was served instead of the list (content-type {mime or 'not given'})")
    if mime and mime not in TEXT_CONTENT_TYPES:
        return _stale("content_type", f"unexpected content type {mime!r} for an address list")
    if parsed.data_lines == 0 and parsed.comments == 0:
        return _empty(feed, "the body is empty")
    if parsed.format_error:
        return _stale("format", f"format changed: {parsed.format_error}")
    truncated = _truncation(parsed)
    if truncated:
        return _stale("truncated", truncated)
    if parsed.data_lines and parsed.rejected_count / parsed.data_lines > thresholds.max_error_ratio:
        return _stale(
            "error_ratio",
            f"{parsed.rejected_count} of {parsed.data_lines} data lines are not addresses "
            f"(over {thresholds.max_error_ratio:.0%})",
        )
    if parsed.entries == 0:
        return _empty(feed, "the list has no entries")
    if last_good_count is not None and last_good_count >= thresholds.min_baseline:
        if parsed.entries < thresholds.min_ratio * last_good_count:
            return _stale(
                "collapse",
                f"entry count collapsed from {last_good_count} to {parsed.entries} "
                f"(below {thresholds.min_ratio:g}x the last good copy)",
            )
        if parsed.entries > thresholds.max_ratio * last_good_count:
            return _stale(
                "explosion",
                f"entry count exploded from {last_good_count} to {parsed.entries} "
                f"(over {thresholds.max_ratio:g}x the last good copy)",
            )
    return Verdict(status="ok")


def _empty(feed: FeedConfig, what: str) -> Verdict:
    if feed.can_be_empty:
        return Verdict(status="empty", check="empty", reason=f"{what} (allowed for this feed)")
    return _stale("empty", f"{what} (this feed is never legitimately empty)")


def _truncation(parsed: ParsedFeed) -> str | None:
    if parsed.trailer is None:
        if parsed.format in TRAILER_FORMATS:
            return "truncated: the '# END N entries' trailer is missing"
        return None
    if parsed.trailer != parsed.data_lines:
        return f"truncated or altered: the trailer says {parsed.trailer} entries, the body has {parsed.data_lines}"
    if not parsed.trailer_is_last:
        return "altered: data follows the '# END N entries' trailer"
    return None

"""UTC timestamps in one format everywhere: ``2026-01-10T16:45:00Z`` (and the Qualys CDR API's
millisecond form, ``format_instant``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """Second precision, exactly one ``Z``; naive datetimes are taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_instant(dt: datetime) -> str:
    """``2025-01-27T08:54:41.396Z``: UTC, millisecond precision, exactly one ``Z`` (the Qualys CDR
    API's ``startAt``/``endAt`` format, also kept in the CdrFetch checkpoint)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(value: str) -> datetime:
    """Parse an ISO-8601 timestamp (``Z`` or an offset, optional fraction) into an aware UTC datetime."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds in a duration like ``30s``, ``5m``, ``1h``, ``1h30m``, ``250ms`` or ``2d``.

    A bare number is seconds. Raises ValueError (with the accepted forms) on anything else.
    """
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        return float(raw)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not raw or pos != len(raw):
        raise ValueError(f"invalid duration {text!r}: use forms like 30s, 5m, 1h, 1h30m, 2d")
    return total


def format_duration(seconds: float) -> str:
    """A duration as ``parse_duration`` reads it: in the largest whole unit (``7d``, ``24h``, ``5m``),
    else in seconds (``90s``)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"

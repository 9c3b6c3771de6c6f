"""The Qualys API request rate, held within a configured limit across runs.

The gateway's limits are per subscription (the documented example: 300 calls per 3600 s, ``/auth``
exempt) and shared with every other integration of that subscription; a one-minute CdrFetch schedule
alone makes 60 calls an hour. :class:`RequestBudget` keeps this deployment's findings requests at most
``per_hour`` in any sliding hour, and remembers a wait the gateway asked for (``Retry-After`` or
``X-RateLimit-ToWait-Sec`` on a 429, or a ``X-RateLimit-Remaining: 0`` answer) beyond the run that got
it. :class:`~cdr_policy.qualys.retry.Retrier` books every findings request in it and consults it before
the first page of each window: a wait that fits the run's time budget is slept, a longer one stops the
run as incomplete
(:class:`~cdr_policy.qualys.retry.QualysRateBudget`, a ``QualysDeadline``: resume next run), and
the next run starts no earlier than the gateway allowed. A window begun is read to its end (it is
stored whole or not at all: stopping inside it would refetch it, and a window of more pages than the
budget would never be stored); its pages count against the hour, so later windows wait the longer.
CdrFetch stores the budget with its state
(``state/cdr/rate-limit.json``, :mod:`cdr_policy.qualys.state`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WINDOW_S = 3600.0
SCHEMA_VERSION = 1


@dataclass
class RequestBudget:
    """At most ``per_hour`` findings requests in any hour, none before ``not_before`` (epoch seconds).

    ``sent`` holds the wall times of the requests of the last hour (oldest first). ``changed`` says
    whether there is anything new to store."""

    per_hour: int
    sent: list[float] = field(default_factory=list)
    not_before: float | None = None
    changed: bool = False

    def __post_init__(self) -> None:
        if self.per_hour < 1:
            raise ValueError(f"the Qualys request budget must be at least 1 an hour, got {self.per_hour}")

    def wait(self, now: float) -> tuple[float, str | None]:
        """Seconds to wait from ``now`` before the next request may go, and why (None: it may go now)."""
        self._forget(now)
        waits: list[tuple[float, str]] = []
        if self.not_before is not None and self.not_before > now:
            waits.append((self.not_before - now, "the gateway asked to wait"))
        if len(self.sent) >= self.per_hour:
            # the request that makes room is the one per_hour places back from the end
            frees_at = self.sent[len(self.sent) - self.per_hour] + WINDOW_S
            waits.append((frees_at - now, f"{self.per_hour} requests an hour (QualysRequestsPerHour) reached"))
        if not waits:
            return 0.0, None
        return max(waits)

    def record(self, now: float) -> None:
        """A findings request goes out at ``now``."""
        self._forget(now)
        self.sent.append(now)
        self.changed = True

    def defer(self, until: float) -> None:
        """The gateway asked for no request before ``until``."""
        if self.not_before is None or until > self.not_before:
            self.not_before = until
            self.changed = True

    def _forget(self, now: float) -> None:
        cut = 0
        while cut < len(self.sent) and self.sent[cut] <= now - WINDOW_S:
            cut += 1
        if cut:
            del self.sent[:cut]
            self.changed = True
        if self.not_before is not None and self.not_before <= now - WINDOW_S:
            self.not_before = None  # long past: nothing left to remember
            self.changed = True

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "sent": list(self.sent), "not_before": self.not_before}

    @classmethod
    def from_dict(cls, doc: object, per_hour: int) -> RequestBudget:
        """The stored budget under today's ``per_hour``; ValueError when ``doc`` is not one."""
        if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
            raise ValueError("unexpected document shape or version")
        sent, not_before = doc.get("sent"), doc.get("not_before")
        if not isinstance(sent, list) or not all(_number(t) for t in sent):
            raise ValueError("'sent' must be a list of times")
        if not_before is not None and not _number(not_before):
            raise ValueError("'not_before' must be a time or null")
        return cls(per_hour, sorted(float(t) for t in sent), None if not_before is None else float(not_before))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value

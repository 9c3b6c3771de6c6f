"""The change budget: a circuit breaker that holds back a bundle which would change too many of the
enforced entries at once (a feed that suddenly doubles, or collapses to nothing, or a renderer bug).

Entries are the canonical IP prefixes the bundle's objects name (``objects.prefixes``), compared as
sets, so churn counts even when the totals stay the same: replacing every entry of a 1,000-entry list
is 2,000 changes (1,000 added, 1,000 removed), 200% of the current bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Below this many added + removed entries a bundle is never held, whatever the percentage: a
# three-entry list gaining two entries is not a blast-radius event.
DEFAULT_MIN_CHANGES = 20


@dataclass(frozen=True)
class BudgetCheck:
    current: int
    proposed: int
    added: int
    removed: int
    percent: float
    budget_percent: int
    min_changes: int

    @property
    def changes(self) -> int:
        return self.added + self.removed

    @property
    def exceeded(self) -> bool:
        return self.changes >= max(self.min_changes, 1) and self.percent > self.budget_percent

    def reason(self) -> str:
        return (
            f"{self.changes} entry changes ({self.added} added, {self.removed} removed) against "
            f"{self.current} current entries is {self.percent:.1f}%, over the change budget of "
            f"{self.budget_percent}%"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "proposed": self.proposed,
            "added": self.added,
            "removed": self.removed,
            "percent": round(self.percent, 2),
            "budget_percent": self.budget_percent,
            "min_changes": self.min_changes,
        }


def assess(current: set[str], proposed: set[str], *, budget_percent: int, min_changes: int) -> BudgetCheck:
    """How much ``proposed`` changes ``current``, as a share of ``current`` (100% per entry when
    ``current`` is empty and anything is added)."""
    if not 1 <= budget_percent <= 100:
        raise ValueError(f"change budget must be 1..100 percent, got {budget_percent}")
    if min_changes < 0:
        raise ValueError(f"min_changes must be >= 0, got {min_changes}")
    added = len(proposed - current)
    removed = len(current - proposed)
    percent = 100.0 * (added + removed) / max(len(current), 1)
    return BudgetCheck(
        current=len(current),
        proposed=len(proposed),
        added=added,
        removed=removed,
        percent=percent,
        budget_percent=budget_percent,
        min_changes=min_changes,
    )

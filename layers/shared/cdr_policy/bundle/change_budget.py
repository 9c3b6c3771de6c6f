"""The change budget: a circuit breaker that holds back a bundle which would change too many of the
enforced entries at once (a feed that suddenly doubles, or collapses to nothing, or a renderer bug).

Two measures:
- churn (``assess``): entries are the canonical IP prefixes the bundle's objects name
  (``objects.prefixes``), compared as sets, so churn counts even when the totals stay the same:
  replacing every entry of a 1,000-entry list is 2,000 changes (1,000 added, 1,000 removed), 200% of
  the current bundle. Below ``min_changes`` changes a bundle is never held for churn;
- shrink (``shrink_reasons``): what protection a bundle takes away, whatever the channel's size: an
  empty bundle over a non-empty one, any behaviour policy (``cdr-policy.io/rule``) gone, more than
  N% fewer objects or N% of the prefixes removed. Publish holds such a bundle unless approved, and
  the sync agent refuses it unless the signed manifest carries that approval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdr_policy.bundle.objects import prefixes
from cdr_policy.policy.naming import COMPONENT_BEHAVIOUR, COMPONENT_KEY, RULE_KEY

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


def behaviour_rules(objects: Iterable[Mapping[str, Any]]) -> set[str]:
    """The behaviour rules an object set enforces (by rule id, which survives a content rename)."""
    rules = set()
    for obj in objects:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(COMPONENT_KEY) == COMPONENT_BEHAVIOUR:
            rules.add(str(labels.get(RULE_KEY) or (obj.get("metadata") or {}).get("name")))
    return rules


def shrink_reasons(
    current: Sequence[Mapping[str, Any]], proposed: Sequence[Mapping[str, Any]], *, max_percent: int
) -> list[str]:
    """Why going from ``current`` to ``proposed`` takes protection away (empty when it does not)."""
    if not 1 <= max_percent <= 100:
        raise ValueError(f"shrink limit must be 1..100 percent, got {max_percent}")
    if not current:
        return []
    if not proposed:
        return [f"removes every object ({len(current)} now enforced)"]
    reasons = []
    lost = sorted(behaviour_rules(current) - behaviour_rules(proposed))
    if lost:
        reasons.append(f"removes behaviour polic{'y' if len(lost) == 1 else 'ies'} {', '.join(lost[:10])}")
    fewer = len(current) - len(proposed)
    if fewer > 0 and 100.0 * fewer / len(current) > max_percent:
        reasons.append(f"{len(proposed)} objects instead of {len(current)}: more than {max_percent}% fewer")
    before = prefixes(current)
    removed = len(before - prefixes(proposed))
    if before and 100.0 * removed / len(before) > max_percent:
        reasons.append(f"removes {removed} of {len(before)} prefixes: more than {max_percent}%")
    return reasons

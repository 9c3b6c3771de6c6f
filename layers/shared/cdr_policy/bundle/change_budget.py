"""The change budget: a circuit breaker that holds back a bundle which would change too much of what
is enforced at once (a feed that suddenly doubles or collapses, a renderer bug, a flood of detections).

It measures each engine on its own (``ENGINES``), so that replacing every Cilium prefix cannot hide
behind an unchanged Tetragon list:

- ``tetragon`` and ``cilium``: the canonical prefixes each engine's objects block (admission's
  ``BundleEffect``: IPv4-mapped twins folded, CIDR groups included);
- ``programs``: the programs the enforcing exec rules kill (``/xmrig``): a new binary in a kill
  rule counts like a new prefix.

- churn (``assess``): per engine, added + removed against the current count, so churn counts even
  when the totals stay the same (replacing every entry of a 1,000-entry list is 200%). Below
  ``min_changes`` changes an engine is never held for churn;
- shrink (``shrink_reasons``): what protection a bundle takes away, whatever the channel's size: an
  empty bundle over a non-empty one, any behaviour policy (``cdr-policy.io/rule``) gone, more than N%
  fewer objects or N% of an engine's prefixes removed. Publish holds such a bundle unless approved;
  the sync agent refuses it unless the signed manifest carries that approval (or the signed chain of
  steps that leads to it from what the cluster applied).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdr_policy.admission.effect import BundleEffect
from cdr_policy.bundle.objects import prefixes
from cdr_policy.errors import ContractError
from cdr_policy.policy.naming import COMPONENT_BEHAVIOUR, COMPONENT_KEY, RULE_KEY
from cdr_policy.schemas import fields_from_json

# Below this many added + removed entries an engine is never held, whatever the percentage: a
# three-entry list gaining two entries is not a blast-radius event.
DEFAULT_MIN_CHANGES = 20
ENGINES = ("tetragon", "cilium", "programs")
_TETRAGON_KINDS = ("TracingPolicy", "TracingPolicyNamespaced")


@dataclass(frozen=True)
class EngineChange:
    engine: str
    current: int
    proposed: int
    added: int
    removed: int
    vetted: bool = False  # its additions were promoted on evidence (``cdr_policy.promotion``)

    @property
    def changes(self) -> int:
        """What counts against the budget: what is added and removed; only removed when vetted."""
        return self.removed + (0 if self.vetted else self.added)

    @property
    def percent(self) -> float:
        """Changes as a share of the current entries (100% per entry when there were none)."""
        return 100.0 * self.changes / max(self.current, 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "proposed": self.proposed,
            "added": self.added,
            "removed": self.removed,
            "percent": round(self.percent, 2),
        }

    @classmethod
    def from_json(cls, engine: str, doc: Any, what: str, *, vetted: bool = False) -> EngineChange:
        """``percent`` is derived: read back, it must be the one the counts give (``vetted``: the
        budget's, which says whether the additions count)."""
        fields = fields_from_json(cls, doc, what, given=("engine", "vetted"), derived=("percent",))
        change = cls(engine, vetted=vetted, **fields)
        if doc.get("percent") != round(change.percent, 2):
            raise ContractError(f"malformed {what}: percent is not what its counts give")
        return change


@dataclass(frozen=True)
class Budget:
    """What a bundle changes, per engine, against the budget."""

    engines: tuple[EngineChange, ...]
    budget_percent: int
    min_changes: int
    shrink: tuple[str, ...] = ()

    def over(self) -> list[EngineChange]:
        return [e for e in self.engines if e.changes >= max(self.min_changes, 1) and e.percent > self.budget_percent]

    def reasons(self) -> list[str]:
        """Why the bundle must be held (empty: it need not)."""
        churn = [
            f"{e.engine}: {e.changes} changes ({e.added} added{' on evidence, not counted' if e.vetted else ''}, "
            f"{e.removed} removed) against {e.current} current entries is {e.percent:.1f}%, over the change "
            f"budget of {self.budget_percent}%"
            for e in self.over()
        ]
        return churn + list(self.shrink)

    def to_json(self) -> dict[str, Any]:
        return {
            "budget_percent": self.budget_percent,
            "min_changes": self.min_changes,
            "engines": {e.engine: e.to_json() for e in self.engines},
            "shrink": list(self.shrink),
            "vetted": any(e.vetted for e in self.engines),
        }

    @classmethod
    def from_json(cls, doc: Any, what: str = "change budget") -> Budget:
        limits = fields_from_json(cls, doc, what, nested=("engines", "shrink"), derived=("vetted",))
        engines, shrink, vetted = doc["engines"], doc["shrink"], doc["vetted"]
        if (
            not isinstance(engines, dict)
            or not set(engines) <= set(ENGINES)
            or not all(isinstance(e, dict) for e in engines.values())
        ):
            raise ContractError(f"malformed {what}: engines")
        if not isinstance(shrink, list) or not all(isinstance(r, str) for r in shrink):
            raise ContractError(f"malformed {what}: shrink")
        if not isinstance(vetted, bool):
            raise ContractError(f"malformed {what}: vetted")
        return cls(
            tuple(
                EngineChange.from_json(e, engines[e], f"{what}: engines/{e}", vetted=vetted)
                for e in ENGINES
                if e in engines
            ),
            shrink=tuple(shrink),
            **limits,
        )


def _check_limits(percent: int, min_changes: int) -> None:
    if not 1 <= percent <= 100:
        raise ValueError(f"change budget must be 1..100 percent, got {percent}")
    if min_changes < 0:
        raise ValueError(f"min_changes must be >= 0, got {min_changes}")


def assess(
    current: BundleEffect,
    proposed: BundleEffect,
    *,
    budget_percent: int,
    min_changes: int,
    shrink: Sequence[str] = (),
    vetted: bool = False,
) -> Budget:
    """How much ``proposed`` changes ``current``, per engine (``vetted``: its additions were
    promoted on evidence, and only its removals count)."""
    _check_limits(budget_percent, min_changes)
    before, after = _entries(current), _entries(proposed)
    engines = tuple(
        EngineChange(
            engine,
            current=len(before[engine]),
            proposed=len(after[engine]),
            added=len(after[engine] - before[engine]),
            removed=len(before[engine] - after[engine]),
            vetted=vetted,
        )
        for engine in ENGINES
    )
    return Budget(engines, budget_percent, min_changes, tuple(shrink))


def _entries(effect: BundleEffect) -> dict[str, set[str]]:
    return {"tetragon": effect.prefixes["tetragon"], "cilium": effect.prefixes["cilium"], "programs": effect.programs}


def behaviour_rules(objects: Iterable[Mapping[str, Any]]) -> set[str]:
    """The behaviour rules an object set enforces (by rule id, which survives a content rename)."""
    rules = set()
    for obj in objects:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(COMPONENT_KEY) == COMPONENT_BEHAVIOUR:
            rules.add(str(labels.get(RULE_KEY) or (obj.get("metadata") or {}).get("name")))
    return rules


def engine_prefixes(objects: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """The prefixes each engine's objects name (live objects too, which admission does not read)."""
    objects = list(objects)
    return {
        "tetragon": prefixes(o for o in objects if o.get("kind") in _TETRAGON_KINDS),
        "cilium": prefixes(o for o in objects if o.get("kind") not in _TETRAGON_KINDS),
    }


def shrink_reasons(
    current: Sequence[Mapping[str, Any]], proposed: Sequence[Mapping[str, Any]], *, max_percent: int
) -> list[str]:
    """Why going from ``current`` to ``proposed`` takes protection away (empty when it does not)."""
    _check_limits(max_percent, 0)
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
    before, after = engine_prefixes(current), engine_prefixes(proposed)
    for engine in ("tetragon", "cilium"):
        removed = len(before[engine] - after[engine])
        if before[engine] and 100.0 * removed / len(before[engine]) > max_percent:
            reasons.append(f"removes {removed} of {len(before[engine])} {engine} prefixes: more than {max_percent}%")
    return reasons

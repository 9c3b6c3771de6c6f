"""A reason not to let a bundle reach a cluster, and the bounded list that collects them.

A refusal names the object by its position (``cilium-cdr-blocklist.yaml, document 1``) and, once
the grammar has found its kind and name valid, by ``Kind/name``; the field by its path
(``spec.egressDeny[0].toCIDRSet[2]``); and the rule it breaks. It never quotes the offending value:
the bundle may be hostile, and these lines reach logs, status documents and alarms.
"""

from __future__ import annotations

from dataclasses import dataclass

# One object (or one bundle) is refused for its first problems; more add nothing but length.
MAX_REFUSALS = 20


@dataclass(frozen=True)
class Refusal:
    where: str
    path: str
    code: str
    reason: str

    def line(self) -> str:
        at = f" at {self.path}" if self.path else ""
        return f"{self.where}{at}: {self.reason} [{self.code}]"


class Refusals:
    """The refusals of one bundle, at most ``MAX_REFUSALS`` kept (all of them counted)."""

    def __init__(self) -> None:
        self.items: list[Refusal] = []
        self.count = 0
        self.final = False  # a refusal for what the bundle is (not for the target's CRDs, which may change)

    def add(self, where: str, path: str, code: str, reason: str) -> None:
        self.count += 1
        self.final = self.final or not code.startswith("crd.")
        if len(self.items) < MAX_REFUSALS:
            self.items.append(Refusal(where, path, code, reason))

    def __bool__(self) -> bool:
        return self.count > 0

    def lines(self) -> list[str]:
        more = self.count - len(self.items)
        return [r.line() for r in self.items] + ([f"and {more} more"] if more else [])

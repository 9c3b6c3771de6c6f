"""One finding of the checker: where, what, how bad."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Problem:
    """``error`` blocks shipping (render, publish, the agent and ``cdr-policy validate`` refuse);
    ``warning`` is advice that does not. ``code`` is stable (``schema.unknown-field``,
    ``tetragon.unscoped-enforcement`` …) so that tests and tooling can match on it; ``path`` is a
    JSONPath-like location inside the object (``spec.kprobes[0].selectors[1]``)."""

    severity: Severity
    code: str
    path: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "path": self.path, "message": self.message}

    def line(self) -> str:
        """``error code at where: message``: one line of ``cdr-policy validate``."""
        where = f" at {self.path}" if self.path else ""
        return f"{self.severity} {self.code}{where}: {self.message}"

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.severity}: {self.code}{where}: {self.message}"


def error(code: str, path: str, message: str) -> Problem:
    return Problem("error", code, path, message)


def warning(code: str, path: str, message: str) -> Problem:
    return Problem("warning", code, path, message)

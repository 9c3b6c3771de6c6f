"""The small part of CEL that the Tetragon and Cilium CRDs use in ``x-kubernetes-validations``.

Supported: ``self`` and field selection (``self.spec.hostSelector``), ``has(<selection>)``,
``!``, ``&&``, ``||``, parentheses, ``true``/``false``. That covers every rule in the upstream CRDs
we validate against (mutually exclusive fields, "hostSelector must be null in a namespaced
policy", "spec or specs", "return needs returnArg"). Anything else raises ``Unsupported`` and the
caller records the rule as skipped, visibly, instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_TOKEN = re.compile(r"\s*(&&|\|\||!|\(|\)|\.|[A-Za-z_][A-Za-z0-9_]*)")
_MISSING = object()


class Unsupported(Exception):
    """The rule uses CEL beyond the supported subset."""


def _tokens(rule: str) -> list[str]:
    out, pos = [], 0
    rule = rule.strip()
    while pos < len(rule):
        m = _TOKEN.match(rule, pos)
        if not m:
            raise Unsupported(f"unsupported CEL syntax at {rule[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
        while pos < len(rule) and rule[pos].isspace():
            pos += 1
    return out


class _NoSuchKey(Exception):
    """A selected field does not exist (a CEL runtime error: the rule fails)."""


class _Parser:
    """Recursive descent into a tree of closures; evaluation follows CEL's commutative ``&&``/``||``
    (an error on one side is absorbed when the other side decides the result)."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise Unsupported(f"expected {expected or 'a token'}, found {token!r}")
        self.pos += 1
        return token

    def parse(self) -> Callable[[Any], bool]:
        node = self.disjunction()
        if self.peek() is not None:
            raise Unsupported(f"unexpected {self.peek()!r}")
        return node

    def disjunction(self) -> Callable[[Any], bool]:
        node = self.conjunction()
        while self.peek() == "||":
            self.take()
            node = _logical(node, self.conjunction(), decisive=True)
        return node

    def conjunction(self) -> Callable[[Any], bool]:
        node = self.unary()
        while self.peek() == "&&":
            self.take()
            node = _logical(node, self.unary(), decisive=False)
        return node

    def unary(self) -> Callable[[Any], bool]:
        if self.peek() == "!":
            self.take()
            inner = self.unary()
            return lambda value: not inner(value)
        return self.primary()

    def primary(self) -> Callable[[Any], bool]:
        token = self.peek()
        if token == "(":
            self.take()
            node = self.disjunction()
            self.take(")")
            return node
        if token in ("true", "false"):
            self.take()
            constant = token == "true"
            return lambda value: constant
        if token == "has":
            self.take()
            self.take("(")
            fields = self.selection()
            self.take(")")
            if not fields:
                raise Unsupported("has() needs a field selection")
            return lambda value: _select(value, fields) is not _MISSING

        fields = self.selection()

        def condition(value: Any) -> bool:
            selected = _select(value, fields)
            if selected is _MISSING:
                raise _NoSuchKey(".".join(fields))
            if not isinstance(selected, bool):
                raise _NoSuchKey(f"{'.'.join(fields)} is not a boolean")
            return selected

        return condition

    def selection(self) -> list[str]:
        self.take("self")
        fields = []
        while self.peek() == ".":
            self.take()
            field = self.take()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", field) or field in ("has", "self"):
                raise Unsupported(f"bad field name {field!r}")
            fields.append(field)
        return fields


def _select(value: Any, fields: list[str]) -> Any:
    """The selected field, or ``_MISSING``; a null counts as absent (the API server prunes it)."""
    for field in fields:
        value = value.get(field, _MISSING) if isinstance(value, dict) else _MISSING
        if value is None:
            return _MISSING
    return value


def _logical(left: Callable[[Any], bool], right: Callable[[Any], bool], *, decisive: bool) -> Callable[[Any], bool]:
    """``||`` when ``decisive`` is True (a True side decides), ``&&`` otherwise (a False side decides)."""

    def node(value: Any) -> bool:
        failure: _NoSuchKey | None = None
        for side in (left, right):
            try:
                if side(value) is decisive:
                    return decisive
            except _NoSuchKey as exc:
                failure = exc
        if failure is not None:
            raise failure
        return not decisive

    return node


def compile_rule(rule: str) -> Callable[[Any], bool]:
    """A predicate for ``rule``; raises ``Unsupported`` for CEL outside the subset."""
    predicate = _Parser(_tokens(rule)).parse()

    def check(value: Any) -> bool:
        try:
            return predicate(value)
        except _NoSuchKey:
            return False

    return check

"""Admission: what may reach a cluster, decided by this one module for Publish (before it signs a
bundle) and for the sync agent (before it applies one), with the same code.

A signature says who sent a bundle, not that it is safe: the renderer can be wrong, the signer
compromised, and whoever can write the state bucket can put objects in front of Publish. So every
bundle is judged twice over, whoever sent it:

1. **the closed grammar** (``admission.grammar``): every object is one of the shapes our compilers
   emit — exact kinds, keys, hooks, argument positions, operators, actions and bounds — or it is
   refused with a named reason;
2. **its effect** (``admission.effect``): what each admitted object blocks and kills, and where, is
   computed and refused when it meets the never-block list, the protected ranges and ports of the
   channel or cluster, or kills program starts, connections or system calls too broadly;
3. **the target's CRDs**, when known (``SchemaSet``: the state bucket's ``crds/`` at Publish, the
   cluster's own in the agent).

``Admission.judge`` returns a ``Verdict``: the refusals (each naming the object by its place and the
field by its path, never quoting a value) and the ``BundleEffect`` the change budget compares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cdr_policy.admission.effect import BundleEffect, Judge, Protection
from cdr_policy.admission.grammar import CIDR_GROUP, Context, Shape, check_object
from cdr_policy.admission.refusal import Refusals
from cdr_policy.bundle.loader import Bundle
from cdr_policy.bundle.manifest import VerificationError
from cdr_policy.guards import NeverBlock, parse_protected
from cdr_policy.policy.checker.schema import SchemaSet
from cdr_policy.policy.ports import parse_port

__all__ = ["Admission", "Protection", "Verdict", "protection"]


@dataclass(frozen=True)
class Verdict:
    refusals: Refusals
    effect: BundleEffect

    @property
    def admitted(self) -> bool:
        return not self.refusals

    @property
    def final(self) -> bool:
        """Refused for what the bundle is: the same bytes are refused again, wherever they go (a
        refusal by the target's CRDs alone may pass once the CRDs change)."""
        return self.refusals.final

    def lines(self) -> list[str]:
        return self.refusals.lines()


@dataclass(frozen=True)
class Admission:
    """How one place (Publish for a channel, or the agent of a cluster) admits bundles."""

    protection: Protection
    schemas: SchemaSet | None = None

    @classmethod
    def baseline(cls) -> Admission:
        """The never-block list and ports alone, no CRDs: what every place admits at least."""
        return cls(protection(where="the never-block list"))

    def judge(self, bundle: Bundle) -> Verdict:
        """The verdict on ``bundle``: the grammar, the effect, then the CRDs (Publish)."""
        verdict = self.judge_objects(bundle)
        if verdict.admitted:
            verdict = Verdict(self.crd_problems(bundle), verdict.effect)
        return verdict

    def judge_objects(self, bundle: Bundle) -> Verdict:
        """The grammar and the effect alone: what the bundle is, whatever cluster it goes to."""
        refusals = Refusals()
        manifest = bundle.manifest
        try:
            placed = bundle.placed
        except VerificationError as exc:  # not objects at all: malformed YAML, aliases, two of one name
            refusals.add("", "", "grammar.document", str(exc))
            return Verdict(refusals, BundleEffect())
        context = Context(
            channel=manifest.channel,
            action=manifest.settings.action,
            cilium_version=manifest.settings.cilium_version,
            groups=frozenset(
                o["metadata"]["name"]
                for _, o in placed
                if o.get("kind") == CIDR_GROUP and isinstance(o.get("metadata"), dict)
            ),
        )
        judge = Judge(self.protection, refusals)
        for where, obj in placed:
            shape = Shape(refusals, where)
            check_object(obj, shape, context)
            if not shape.failed:
                judge.judge(obj, f"{where} ({obj['kind']}/{obj['metadata']['name']})", shape.intervals)
        effect = judge.finish()
        return Verdict(refusals, effect)

    def crd_problems(self, bundle: Bundle, applied: Callable[[dict[str, Any]], bool] | None = None) -> Refusals:
        """What the target's CRDs (None: not known here) refuse of the objects that will be
        ``applied`` (default: all; the agent's pre-flight holds some Cilium objects back). Run on
        admitted bundles only."""
        refusals = Refusals()
        for where, obj in bundle.placed if self.schemas is not None else ():
            if applied is None or applied(obj):
                named = f"{where} ({obj['kind']}/{obj['metadata']['name']})"
                for problem in self.schemas.validate(obj) if self.schemas is not None else ():
                    if problem.severity == "error":
                        refusals.add(named, problem.path, f"crd.{problem.code}", problem.message)
        return refusals


def protection(cidrs: Iterable[str] = (), ports: Iterable[str] = (), *, where: str) -> Protection:
    """The never-block list plus ``cidrs`` (a channel's or a cluster's own ranges) and ``ports``
    (``tcp/8080``). ValueError naming a bad entry."""
    guard = NeverBlock(extra=parse_protected(cidrs, f"protected range of {where}"))
    parsed = set()
    for port in ports:
        try:
            parsed.add(parse_port(port))
        except ValueError as exc:
            raise ValueError(f"protected port of {where}: {exc}") from exc
    return Protection(guard, frozenset(parsed))

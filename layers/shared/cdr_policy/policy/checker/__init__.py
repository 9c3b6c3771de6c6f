"""The policy checker: CRD schemas (strict) plus the enforcement checklist, for generated and
hand-written objects alike. Render refuses to write an object with an error and ``cdr-policy
validate`` runs it on files; what may reach a cluster is decided by ``cdr_policy.admission`` (the
closed grammar of our objects and their effect), which Publish and the agent run, with the CRD
schemas of this package.

Channel settings that change what is valid travel on the objects, so that all four see them: a
``TracingPolicy`` whose channel declares ``kernel.override_helper`` carries the annotation
``cdr-policy.io/kernel-override-helper: "true"``, without which Override on a syscall hook is an error."""

from cdr_policy.policy.checker.check import check_object, errors_of
from cdr_policy.policy.checker.files import (
    check_contents,
    check_files,
)
from cdr_policy.policy.checker.problem import Problem
from cdr_policy.policy.checker.schema import SchemaSet

__all__ = [
    "Problem",
    "SchemaSet",
    "check_contents",
    "check_files",
    "check_object",
    "errors_of",
]

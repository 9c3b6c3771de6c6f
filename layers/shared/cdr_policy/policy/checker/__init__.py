"""The policy checker: CRD schemas (strict) plus the enforcement checklist, for generated and
hand-written objects alike. Render and Publish refuse to ship an object with an error; the agent
runs it against the CRDs installed in its cluster; ``cdr-policy validate`` runs it on files.

Channel settings that change what is valid travel on the objects, so that all four see them: a
``TracingPolicy`` whose channel declares ``kernel.override_helper`` carries the annotation
``cdr-policy.io/kernel-override-helper: "true"``, without which Override on a syscall hook is an error."""

from cdr_policy.policy.checker.check import check_object, errors_of
from cdr_policy.policy.checker.files import (
    BundleCheck,
    bundle_checker,
    check_bundle,
    check_contents,
    check_files,
    error_lines,
)
from cdr_policy.policy.checker.problem import Problem
from cdr_policy.policy.checker.schema import SchemaSet

__all__ = [
    "BundleCheck",
    "Problem",
    "SchemaSet",
    "bundle_checker",
    "check_bundle",
    "check_contents",
    "check_files",
    "check_object",
    "error_lines",
    "errors_of",
]

"""The checker as the publish stage and the sync agent call it: ``check(files) -> [error lines]``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cdr_policy.guards import NeverBlock
from cdr_policy.policy.checker.common import BlockGuard
from cdr_policy.policy.checker.files import check_bundle
from cdr_policy.policy.checker.schema import SchemaSet

BundleCheck = Callable[[Mapping[str, bytes]], list[str]]


def bundle_checker(schemas: SchemaSet | None, *, guard: BlockGuard | None = None) -> BundleCheck:
    """A ``check`` for ``publish_bundle`` and ``Agent``: every error of the bundle's ``.yaml`` objects
    against ``schemas`` (the target clusters' CRDs; None: the checklist alone) and the never-block
    list (``guard``; by default the built-in one, as a last line of defence after render)."""
    never_block = guard if guard is not None else NeverBlock()

    def check(files: Mapping[str, bytes]) -> list[str]:
        return check_bundle(files, schemas, guard=never_block)

    return check

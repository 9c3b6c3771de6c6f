"""Apply a desired set of objects and prune what this owner no longer wants: the one apply path of
the sync agent and of the CLI's ``--apply``.

Ownership is by label (``app.kubernetes.io/managed-by=cdr-policy``, ``cdr-policy.io/channel=<channel>``),
added to every applied object. Objects are applied CiliumCIDRGroups first; only when every apply
succeeded are the owned objects that are no longer wanted deleted, policies before the groups they
reference. An object of the same name that we do not own is left untouched and reported.

Before anything is applied the cluster pre-flight runs (``agent.preflight``): the Cilium objects it
holds back are reported as errors with ``action: "preflight"`` and not applied, the Tetragon objects
still are; held back means the owned Cilium objects already live stay as they are (``withhold``) or
are deleted because Cilium would turn them into an egress outage (``withdraw``).

An object of a wanted name that is not owned by label is left alone, unless it carries the agent's
own stamps (``agent.kinds.stamped_by_agent``): then someone stripped its labels (and perhaps changed
it), and it is restored like any drift.
"""

from __future__ import annotations

from typing import Any

from cdr_policy.agent.applier import Applier, ApplyError
from cdr_policy.agent.kinds import KINDS, ownership_labels, stamped_by_agent
from cdr_policy.agent.preflight import WITHDRAW, Preflight, is_cilium, run_preflight
from cdr_policy.agent.status import ObjectAction, ObjectError
from cdr_policy.bundle.objects import ObjectRef, ref_of
from cdr_policy.observability import logger


def _order(obj: dict[str, Any]) -> tuple[int, ObjectRef]:
    return KINDS[obj["kind"]].rank, ref_of(obj)


def _error(obj: dict[str, Any], action: ObjectAction, error: str) -> ObjectError:
    ref = ref_of(obj)
    return ObjectError(ref.kind, ref.name, ref.namespace, action, error)


def owned_objects(applier: Applier, labels: dict[str, str]) -> dict[ObjectRef, dict[str, Any]]:
    return {ref_of(obj): obj for obj in applier.owned(labels)}


def delete_objects(applier: Applier, objects: list[dict[str, Any]], errors: list[ObjectError]) -> int:
    """Delete policies before the CIDR groups they reference. Appends failures to ``errors``."""
    deleted = 0
    for obj in sorted(objects, key=_order, reverse=True):
        try:
            applier.delete(obj)
            deleted += 1
        except ApplyError as exc:
            errors.append(_error(obj, "delete", str(exc)))
    return deleted


def reconcile(
    applier: Applier,
    objects: list[dict[str, Any]],
    *,
    channel: str,
    preflight: Preflight | None = None,
    owned: dict[ObjectRef, dict[str, Any]] | None = None,
) -> tuple[list[ObjectError], int, int]:
    """Pre-flight, apply all it allows, then prune (only when every apply succeeded). Returns
    (errors, applied, deleted). ``preflight`` is run here unless the caller already ran it (the agent
    does, to report it); ``owned``: the owned live objects when the caller has just listed them.
    Raises ApplyError when the owned objects cannot even be listed (nothing changed then)."""
    if preflight is None:
        preflight = run_preflight(applier, objects)
    labels = ownership_labels(channel)
    if owned is None:
        owned = owned_objects(applier, labels)
    desired: dict[ObjectRef, dict[str, Any]] = {}
    for obj in objects:
        meta = dict(obj["metadata"])
        meta["labels"] = {**(meta.get("labels") or {}), **labels}
        desired[ref_of(obj)] = {**obj, "metadata": meta}
    errors: list[ObjectError] = []
    held = {ref for ref, obj in desired.items() if preflight is not None and preflight.holds_back(obj)}
    if preflight is not None:
        _log_preflight(preflight, channel, len(held))
        errors.extend(_error(desired[ref], "preflight", preflight.reason()) for ref in sorted(held))
    applied = 0
    for obj in sorted(desired.values(), key=_order):
        ref = ref_of(obj)
        if ref in held:
            continue
        try:
            live = applier.get(obj) if ref not in owned else None
            if live is not None and not stamped_by_agent(live, channel):
                why = f"exists but is not managed by cdr-policy for channel {channel}: left untouched"
                errors.append(_error(obj, "apply", why))
                continue
            if live is not None:
                logger.warning(
                    "restoring an object of ours whose ownership labels were removed", extra={"object": str(ref)}
                )
            if ref in owned and KINDS[ref.kind].tetragon and owned[ref].get("spec") != obj.get("spec"):
                logger.warning(
                    "updating a Tetragon policy in place: Tetragon unloads it before loading the new "
                    "version (tetragon#4322); the renderer should name policies by content",
                    extra={"object": str(ref)},
                )
            applier.apply(obj)
            applied += 1
        except ApplyError as exc:
            errors.append(_error(obj, "apply", str(exc)))
    deleted = 0
    if held and preflight is not None and preflight.cilium == WITHDRAW:
        deleted += delete_objects(applier, [obj for obj in owned.values() if is_cilium(obj)], errors)
    if any(e.action != "preflight" for e in errors):
        return errors, applied, deleted
    # held-back Cilium objects keep their live predecessors (last known good) unless withdrawn above
    stale = [obj for ref, obj in owned.items() if ref not in desired and not (held and is_cilium(obj))]
    deleted += delete_objects(applier, stale, errors)
    return errors, applied, deleted


def _log_preflight(preflight: Preflight, channel: str, held: int) -> None:
    extra = {"channel": channel, **preflight.to_log(), "held_back": held}
    if held:
        logger.error("cluster pre-flight: Cilium objects held back, Tetragon objects applied", extra=extra)
    elif preflight.findings:
        logger.warning("cluster pre-flight", extra=extra)

"""What a channel's settings forbid, checked on the signed bundle by Publish and again by the sync
agent (Render is not the only writer of the state bucket that matters).

- ``settings_problems``: the manifest's ``action``/``mode`` must match the objects: an audit channel
  (``Post`` / ``monitor``) ships no Tetragon selector that kills or overrides, a ``Sigkill`` channel
  none that overrides;
- ``protected_guard``: the never-block list plus the channel's (or the cluster's) own ranges, for
  the policy checker (``bundle_checker(..., guard=...)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cdr_policy.bundle.manifest import Manifest
from cdr_policy.guards import NeverBlock, parse_protected

TETRAGON_KINDS = ("TracingPolicy", "TracingPolicyNamespaced")
# The enforcing actions each channel action allows (tcp_connect can only Sigkill, so Override
# channels may carry Sigkill too).
_ALLOWED = {"Post": frozenset(), "Sigkill": frozenset({"Sigkill"}), "Override": frozenset({"Sigkill", "Override"})}
_ENFORCING = frozenset({"Sigkill", "Override"})


def _actions(obj: Mapping[str, Any]) -> set[str]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return set()
    found = set()
    for section in ("kprobes", "lsmhooks", "tracepoints", "uprobes", "usdts", "fentries"):
        for hook in spec.get(section) or []:
            for selector in (hook.get("selectors") or []) if isinstance(hook, dict) else []:
                for action in (selector.get("matchActions") or []) if isinstance(selector, dict) else []:
                    if isinstance(action, dict) and isinstance(action.get("action"), str):
                        found.add(action["action"])
    return found


def settings_problems(manifest: Manifest, objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why the objects do not match the channel settings the manifest carries (empty: they do)."""
    action, mode = manifest.settings.action, manifest.settings.mode
    if (action == "Post") != (mode == "monitor"):
        return [f"settings say action {action} with mode {mode}: Post is monitor, Sigkill/Override enforce"]
    problems = []
    for obj in objects:
        if obj.get("kind") not in TETRAGON_KINDS:
            continue
        forbidden = sorted((_actions(obj) & _ENFORCING) - _ALLOWED[action])
        if forbidden:
            name = (obj.get("metadata") or {}).get("name")
            problems.append(f"{obj['kind']}/{name} uses {', '.join(forbidden)} on a channel whose action is {action}")
    return problems


def protected_guard(cidrs: Iterable[str], where: str) -> NeverBlock:
    """The built-in never-block list plus ``cidrs`` (ValueError naming a bad entry)."""
    return NeverBlock(extra=parse_protected(cidrs, f"protected range of {where}"))

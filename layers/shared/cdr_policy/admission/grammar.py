"""The closed grammar of what may reach a cluster: exactly the object shapes our compilers emit
(``policy.tetragon``, ``policy.behaviours``, ``policy.cilium``), and nothing else.

Every key of every object is known; every value has a form and a bound; anything not listed here is
refused with a named reason (docs/ENFORCEMENT.md §6 lists the grammar in words):

- **Kinds**: ``TracingPolicy`` and ``TracingPolicyNamespaced`` (``cilium.io/v1alpha1``; a namespaced
  one never in a system namespace), ``CiliumClusterwideNetworkPolicy`` (``cilium.io/v2``) and
  ``CiliumCIDRGroup`` (``cilium.io/v2`` or ``v2alpha1``).
- **Metadata**: a DNS-1123 name of at most 63 characters; our labels only (ownership, channel,
  component, blocklist, rule, evidence scope, bundle) with the values we write; our annotations
  only, bounded and printable.
- **Tetragon**: ``podSelector`` (``{}``, our labels, a namespace ``In``/``NotIn``), the
  ``policy-mode`` option (and ``disable-kprobe-multi: "1"``), and ``kprobes`` on the hooks of
  ``HOOKS`` only, each with exactly its argument list; selectors with ``matchArgs`` on the argument
  positions and operators that hook allows (``HookShape.operators``), ``matchBinaries`` only as one
  ``Postfix`` list of bare program names, the one ``matchCapabilities`` form of the user-namespace
  rule, and exactly one action: ``Post`` (rate-limited), ``Sigkill`` or ``Override`` with
  ``argError: -1``. The values of a position the catalogue fills with its own constants (file
  paths, flag masks, ptrace requests, ...) must be among the values the catalogue can emit
  (``catalogue_values``, read from the compiler itself, so the two cannot drift apart); the open
  positions (addresses, ports, program names) have a form and a bound.
- **Cilium**: a cluster-wide policy with a ``description``, an ``endpointSelector`` (``{}``, our
  labels, namespaces ``In``), ``enableDefaultDeny: {egress: false, ingress: false}`` and
  ``egressDeny`` items of three kinds only: ``toCIDRSet`` of ``cidrGroupRef``s to groups *in the
  same bundle*, ``toCIDRSet`` of ``cidr``s, or ``toEntities: [world]`` with ``toPorts``. No
  ``cidrGroupSelector``, other entities, ``toEndpoints``, ``toServices``, ``ingress*``, allow rules
  or namespaced policies. Every CIDR group is referenced by a policy of the bundle.

The grammar decides what an object *is*; what it *does* (the addresses it blocks, the programs it
kills, and where) is judged afterwards by ``admission.effect``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cdr_policy import jsonio
from cdr_policy.admission.refusal import Refusals
from cdr_policy.netprefix import mapped_twin_text, parse_explicit
from cdr_policy.policy import naming
from cdr_policy.policy.checker.common import MAX_OBJECT_BYTES, object_size, v4_interval
from cdr_policy.rules import RULES

TETRAGON_API = "cilium.io/v1alpha1"
CILIUM_API = "cilium.io/v2"
GROUP_APIS = ("cilium.io/v2", "cilium.io/v2alpha1")
TRACING_POLICY, TRACING_POLICY_NAMESPACED = "TracingPolicy", "TracingPolicyNamespaced"
CCNP, CIDR_GROUP = "CiliumClusterwideNetworkPolicy", "CiliumCIDRGroup"
KINDS = (TRACING_POLICY, TRACING_POLICY_NAMESPACED, CCNP, CIDR_GROUP)
NAMESPACE_KEY = "k8s:io.kubernetes.pod.namespace"

MAX_HOOKS = 16
MAX_SELECTORS = 5
MAX_MATCH_ARGS = 5
MAX_ADDRESS_VALUES = 16_000  # a blocklist part's 4,000 prefixes and their mapped twins, with room
MAX_GROUP_CIDRS = 5_000
MAX_PORTS = 64
MAX_CILIUM_PORTS = 40  # Cilium's sanitizer: at most 40 ports per rule
MAX_NAMES = 64
MAX_SELECTOR_LABELS = 16
MAX_NAMESPACES = 64
MAX_EGRESS_ITEMS = 64
MAX_GROUP_REFS = 256
MAX_TAGS = 16
MAX_MESSAGE = 256
MAX_ANNOTATION = 4096
POST_RATE_LIMIT = "1m"
OVERRIDE_ERROR = -1

_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PROGRAM = re.compile(r"^/[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$")
_PORT = re.compile(r"^[1-9][0-9]{0,4}$")
_TIMESTAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
_SHARD = re.compile(r"^[1-9][0-9]{0,4}/[1-9][0-9]{0,4}$")
_VERSION = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}(\.[0-9]{1,4})?$")
_BUNDLE_LABEL = re.compile(r"^[0-9a-f]{40}$")
_WORKLOAD = re.compile(r"^[0-9a-f]{16}$")
_SCOPES = (naming.SCOPE_WORKLOAD, naming.SCOPE_AUDIT)

COMPONENT_KINDS = {
    naming.COMPONENT_BEHAVIOUR: (TRACING_POLICY, TRACING_POLICY_NAMESPACED),
    naming.COMPONENT_TETRAGON_BLOCKLIST: (TRACING_POLICY, TRACING_POLICY_NAMESPACED),
    naming.COMPONENT_CILIUM_BLOCKLIST: (CCNP,),
    naming.COMPONENT_CIDR_GROUP: (CIDR_GROUP,),
}
_BLOCKLISTS = ("cdr", "threat-intel")
_ANNOTATIONS: dict[str, Callable[[str], bool]] = {
    naming.EXPIRES_AT: lambda v: bool(_TIMESTAMP.match(v)),
    naming.SOURCES: lambda v: True,
    naming.ENTRIES: lambda v: v.isdigit() and len(v) <= 9,
    naming.CATEGORIES: lambda v: True,
    naming.REFS: lambda v: True,
    naming.MITRE: lambda v: True,
    naming.EVIDENCE: lambda v: True,
    naming.WORKLOAD: lambda v: bool(_WORKLOAD.match(v)),
    naming.SHARD: lambda v: bool(_SHARD.match(v)),
    naming.KERNEL_OVERRIDE_HELPER: lambda v: v == "true",
    naming.CILIUM_VERSION: lambda v: bool(_VERSION.match(v)),
}


class Shape:
    """Where one object's refusals go: ``at(path)`` names a field of it."""

    def __init__(self, refusals: Refusals, where: str) -> None:
        self.refusals = refusals
        self.where = where
        self.failed = False
        # Per address list checked (by identity): each value's IPv4 interval as ``v4_interval`` read
        # it (None for the others), so that the effect judge does not read a value twice.
        self.intervals: dict[int, list[tuple[int, int, int] | None]] = {}

    def refuse(self, path: str, code: str, reason: str) -> None:
        self.failed = True
        self.refusals.add(self.where, path, code, reason)

    # -- the forms ---------------------------------------------------------------------------------

    def mapping(self, value: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> bool:
        """``value`` is a mapping with every ``required`` key and no key outside ``required`` + ``optional``."""
        if not isinstance(value, dict):
            self.refuse(path, "grammar.type", "must be a mapping")
            return False
        unknown = [k for k in value if k not in required and k not in optional]
        if unknown:
            self.refuse(path, "grammar.key", f"{len(unknown)} field(s) our compiler never writes")
        missing = [k for k in required if k not in value]
        if missing:
            self.refuse(path, "grammar.key", f"missing {', '.join(missing)}")
        return not unknown and not missing

    def items(self, value: Any, path: str, low: int, high: int) -> list[Any]:
        """``value`` as a list of ``low`` to ``high`` items (refused: an empty list)."""
        if not isinstance(value, list):
            self.refuse(path, "grammar.type", "must be a list")
            return []
        if not low <= len(value) <= high:
            self.refuse(path, "grammar.bound", f"{len(value)} items (from {low} to {high})")
            return []
        return value

    def equal(self, value: Any, path: str, expected: Any) -> bool:
        """``value`` is ``expected`` exactly (as JSON: ``0`` is not ``false``)."""
        if jsonio.dumps(value) != jsonio.dumps(expected):
            self.refuse(path, "grammar.value", f"must be {expected!r}")
            return False
        return True

    def among(self, value: Any, path: str, allowed: tuple[Any, ...] | frozenset[Any], what: str) -> bool:
        if not isinstance(value, str | int) or isinstance(value, bool) or value not in allowed:
            self.refuse(path, "grammar.value", f"not one of the {what} our compiler writes")
            return False
        return True

    def text(self, value: Any, path: str, pattern: re.Pattern[str], what: str) -> bool:
        if not isinstance(value, str) or not pattern.match(value):
            self.refuse(path, "grammar.value", f"must be {what}")
            return False
        return True

    def unique_strings(self, values: list[Any], path: str) -> bool:
        if not all(isinstance(v, str) for v in values) or len(set(values)) != len(values):
            self.refuse(path, "grammar.value", "must be distinct strings")
            return False
        return True


# -- Tetragon hooks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookShape:
    """One hook our compiler uses: its ``syscall`` flag, its exact argument list, which argument
    positions a ``matchArgs`` may filter with which operators, and what else a selector may carry."""

    syscall: bool
    hook_class: str  # "kernel", "security" or "syscall": what Override means on it (docs/ENFORCEMENT.md §1.6)
    args: tuple[tuple[int, str], ...]
    operators: Mapping[int, tuple[str, ...]]
    callers: bool = False  # matchBinaries (Postfix program names) allowed
    unfiltered: bool = False  # a selector with no filter at all is ours
    capabilities: bool = False  # the user-namespace rule's matchCapabilities


_CONNECT = {0: ("DAddr", "DPort")}
HOOKS: dict[str, HookShape] = {
    "tcp_connect": HookShape(False, "kernel", ((0, "sock"),), _CONNECT, callers=True),
    "security_socket_connect": HookShape(
        False,
        "security",
        ((0, "socket"), (1, "sockaddr")),
        {0: ("Protocol",), 1: ("SAddr", "SPort")},
        callers=True,
    ),
    "security_bprm_check": HookShape(
        False, "security", ((0, "linux_binprm"),), {0: ("Postfix", "Prefix")}, callers=True
    ),
    "security_file_permission": HookShape(
        False, "security", ((0, "file"), (1, "int")), {0: ("Prefix", "Postfix"), 1: ("Equal",)}, callers=True
    ),
    "security_path_truncate": HookShape(False, "security", ((0, "path"),), {0: ("Prefix", "Postfix")}),
    "security_path_unlink": HookShape(
        False, "security", ((0, "path"), (1, "dentry")), {0: ("Equal", "Prefix"), 1: ("Postfix",)}
    ),
    "security_path_rename": HookShape(
        False,
        "security",
        ((0, "path"), (1, "dentry"), (2, "path"), (3, "dentry")),
        {0: ("Equal", "Prefix"), 2: ("Equal", "Prefix"), 3: ("Postfix",)},
    ),
    "security_path_link": HookShape(
        False, "security", ((0, "dentry"), (1, "path"), (2, "dentry")), {1: ("Equal", "Prefix"), 2: ("Postfix",)}
    ),
    "security_path_symlink": HookShape(
        False, "security", ((0, "path"), (1, "dentry")), {0: ("Equal", "Prefix"), 1: ("Postfix",)}
    ),
    "security_socket_create": HookShape(
        False,
        "security",
        ((0, "int"), (1, "int"), (2, "int"), (3, "int")),
        {0: ("Equal",), 1: ("Equal",), 3: ("Equal",)},
    ),
    "create_user_ns": HookShape(False, "kernel", ((0, "nop"),), {}, capabilities=True),
    "sys_unshare": HookShape(True, "syscall", ((0, "int"),), {0: ("Mask",)}),
    "sys_setns": HookShape(True, "syscall", ((0, "int"), (1, "int")), {}, unfiltered=True),
    "sys_setuid": HookShape(True, "syscall", ((0, "int"),), {0: ("Equal",)}),
    "sys_setreuid": HookShape(True, "syscall", ((0, "int"), (1, "int")), {1: ("Equal",)}),
    "sys_setresuid": HookShape(True, "syscall", ((0, "int"), (1, "int"), (2, "int")), {1: ("Equal",)}),
    "sys_ptrace": HookShape(True, "syscall", ((0, "int"),), {0: ("Equal",)}),
    "sys_process_vm_writev": HookShape(True, "syscall", ((0, "int"),), {}, unfiltered=True),
    "sys_init_module": HookShape(True, "syscall", (), {}, unfiltered=True),
    "sys_finit_module": HookShape(True, "syscall", ((0, "int"),), {}, unfiltered=True),
}
# The positions whose values are open (a form and a bound) rather than the catalogue's constants.
ADDRESS_POSITIONS = frozenset({("tcp_connect", 0, "DAddr"), ("security_socket_connect", 1, "SAddr")})
PORT_POSITIONS = frozenset({("tcp_connect", 0, "DPort"), ("security_socket_connect", 1, "SPort")})
PROGRAM_POSITIONS = frozenset({("security_bprm_check", 0, "Postfix")})
PROTOCOLS = ("IPPROTO_TCP", "IPPROTO_UDP")
CAPABILITIES = [{"type": "Effective", "operator": "NotIn", "isNamespaceCapability": False, "values": ["CAP_SYS_ADMIN"]}]
_ACTIONS = {
    "Post": {"action": "Post", "rateLimit": POST_RATE_LIMIT},
    "Sigkill": {"action": "Sigkill"},
    "Override": {"action": "Override", "argError": OVERRIDE_ERROR},
}


@functools.cache
def catalogue_values() -> dict[tuple[str, int, str], frozenset[str]]:
    """Every value the behaviour catalogue writes at each ``(hook, argument, operator)`` position,
    read from the compiler (every rule, both connect hooks), so that the grammar admits exactly
    the constants the catalogue can emit."""
    from cdr_policy.policy.behaviours import CATALOGUE, compile_behaviour
    from cdr_policy.policy.channel import NETWORK_HOOKS, ChannelSettings

    seen: dict[tuple[str, int, str], set[str]] = {}
    for hook in NETWORK_HOOKS:
        channel = ChannelSettings(name="census", action="Override", tetragon_network_hook=hook)
        for rule in CATALOGUE:
            kprobes, _, _ = compile_behaviour(rule, channel, ())
            for kprobe in kprobes:
                for selector in kprobe["selectors"]:
                    for match in selector.get("matchArgs", []):
                        key = (kprobe["call"], match["index"], match["operator"])
                        seen.setdefault(key, set()).update(match["values"])
    return {key: frozenset(values) for key, values in seen.items()}


# -- the objects ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What the grammar checks an object against: the channel the bundle is for, its action, and the
    CIDR groups the bundle holds."""

    channel: str
    action: str
    cilium_version: str | None
    groups: frozenset[str]


def check_object(obj: dict[str, Any], shape: Shape, context: Context) -> None:
    """Refuse (into ``shape``) everything about ``obj`` that is not one of our shapes."""
    kind = obj.get("kind")
    if kind not in KINDS:
        shape.refuse("kind", "grammar.kind", f"not one of the kinds our compiler writes ({', '.join(KINDS)})")
        return
    size = object_size(obj)
    if size > MAX_OBJECT_BYTES:
        shape.refuse("", "grammar.bound", f"{size} bytes (at most {MAX_OBJECT_BYTES})")
        return
    if not shape.mapping(obj, "", ("apiVersion", "kind", "metadata", "spec")):
        return
    if kind in (TRACING_POLICY, TRACING_POLICY_NAMESPACED):
        shape.equal(obj["apiVersion"], "apiVersion", TETRAGON_API)
        _metadata(obj["metadata"], shape, context, kind)
        _tracing_spec(obj["spec"], shape, context, kind, _annotations_of(obj))
    elif kind == CCNP:
        shape.equal(obj["apiVersion"], "apiVersion", CILIUM_API)
        _metadata(obj["metadata"], shape, context, kind)
        _ccnp_spec(obj["spec"], shape, context)
    else:
        expected = _group_api(context.cilium_version)
        if expected is None:
            shape.among(obj["apiVersion"], "apiVersion", GROUP_APIS, "CiliumCIDRGroup API versions")
        else:
            shape.equal(obj["apiVersion"], "apiVersion", expected)
        _metadata(obj["metadata"], shape, context, kind)
        spec = obj["spec"]
        if shape.mapping(spec, "spec", ("externalCIDRs",)):
            cidrs = shape.items(spec["externalCIDRs"], "spec.externalCIDRs", 1, MAX_GROUP_CIDRS)
            if shape.unique_strings(cidrs, "spec.externalCIDRs"):
                _prefixes(cidrs, "spec.externalCIDRs", shape, twins=False)


def _group_api(cilium_version: str | None) -> str | None:
    """The CiliumCIDRGroup API version for the channel's declared Cilium version (v2 from 1.18)."""
    if cilium_version is None or not _VERSION.match(cilium_version):
        return None
    major, minor = (int(x) for x in cilium_version.split(".")[:2])
    return "cilium.io/v2" if (major, minor) >= (1, 18) else "cilium.io/v2alpha1"


def _annotations_of(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return annotations if isinstance(annotations, dict) else {}


def _metadata(meta: Any, shape: Shape, context: Context, kind: str) -> None:
    namespaced = kind == TRACING_POLICY_NAMESPACED
    required = ("name", "labels", "namespace") if namespaced else ("name", "labels")
    if not shape.mapping(meta, "metadata", required, ("annotations",)):
        return
    shape.text(meta["name"], "metadata.name", _NAME, "a DNS-1123 name of at most 63 characters")
    if namespaced and shape.text(meta["namespace"], "metadata.namespace", _NAME, "a namespace name"):
        if naming.is_system_namespace(meta["namespace"]):
            shape.refuse("metadata.namespace", "grammar.namespace", "never a system namespace")
    _labels(meta["labels"], shape, context, kind)
    annotations = meta.get("annotations", {})
    if not isinstance(annotations, dict):
        shape.refuse("metadata.annotations", "grammar.type", "must be a mapping")
        return
    for key, value in annotations.items():
        valid = _ANNOTATIONS.get(key)
        if valid is None:
            shape.refuse("metadata.annotations", "grammar.key", "an annotation our compiler never writes")
        elif (
            not isinstance(value, str) or len(value) > MAX_ANNOTATION or not _PRINTABLE.match(value) or not valid(value)
        ):
            shape.refuse(f"metadata.annotations[{key}]", "grammar.value", "not the form our compiler writes")


def _labels(labels: Any, shape: Shape, context: Context, kind: str) -> None:
    path = "metadata.labels"
    required = (naming.MANAGED_BY_KEY, naming.CHANNEL_KEY, naming.COMPONENT_KEY)
    optional = (naming.BLOCKLIST_KEY, naming.RULE_KEY, naming.SCOPE_KEY, naming.BUNDLE_KEY)
    if not shape.mapping(labels, path, required, optional):
        return
    shape.equal(labels[naming.MANAGED_BY_KEY], f"{path}[{naming.MANAGED_BY_KEY}]", naming.MANAGED_BY)
    shape.equal(labels[naming.CHANNEL_KEY], f"{path}[{naming.CHANNEL_KEY}]", context.channel)
    component = labels[naming.COMPONENT_KEY]
    if shape.among(component, f"{path}[{naming.COMPONENT_KEY}]", tuple(COMPONENT_KINDS), "components"):
        if kind not in COMPONENT_KINDS[component]:
            shape.refuse(f"{path}[{naming.COMPONENT_KEY}]", "grammar.value", f"a {kind} is never of this component")
    behaviour = component == naming.COMPONENT_BEHAVIOUR
    if behaviour != (naming.RULE_KEY in labels):
        shape.refuse(path, "grammar.key", "a behaviour policy, and only one, carries its rule id")
    if naming.RULE_KEY in labels:
        shape.among(labels[naming.RULE_KEY], f"{path}[{naming.RULE_KEY}]", tuple(RULES), "rule ids")
    if naming.SCOPE_KEY in labels:  # a rule's evidence in one workload, or only audited (policy.scoping)
        if not behaviour:
            shape.refuse(path, "grammar.key", "only a behaviour policy has an evidence scope")
        shape.among(labels[naming.SCOPE_KEY], f"{path}[{naming.SCOPE_KEY}]", _SCOPES, "evidence scopes")
    if not behaviour and naming.BLOCKLIST_KEY not in labels:
        shape.refuse(path, "grammar.key", "a blocklist object names its blocklist")
    if naming.BLOCKLIST_KEY in labels:
        if behaviour:
            shape.refuse(path, "grammar.key", "a behaviour policy names no blocklist")
        shape.among(labels[naming.BLOCKLIST_KEY], f"{path}[{naming.BLOCKLIST_KEY}]", _BLOCKLISTS, "blocklists")
    if naming.BUNDLE_KEY in labels:
        shape.text(labels[naming.BUNDLE_KEY], f"{path}[{naming.BUNDLE_KEY}]", _BUNDLE_LABEL, "40 hex digits")


def _selector_labels(value: Any, path: str, shape: Shape) -> None:
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_SELECTOR_LABELS:
        shape.refuse(path, "grammar.bound", f"from 1 to {MAX_SELECTOR_LABELS} labels")
        return
    for key, label in value.items():
        if not naming.is_label_key(key) or not naming.is_label_value(label) or not label:
            shape.refuse(path, "grammar.value", "labels must be valid, non-empty Kubernetes labels")
            return


def _namespace_expression(value: Any, path: str, shape: Shape, operator: str) -> None:
    expressions = shape.items(value, path, 1, 1)
    if not expressions:
        return
    expression = expressions[0]
    where = f"{path}[0]"
    if not shape.mapping(expression, where, ("key", "operator", "values")):
        return
    shape.equal(expression["key"], f"{where}.key", NAMESPACE_KEY)
    shape.equal(expression["operator"], f"{where}.operator", operator)
    names = shape.items(expression["values"], f"{where}.values", 1, MAX_NAMESPACES)
    if shape.unique_strings(names, f"{where}.values"):
        for name in names:
            if not _NAME.match(name):
                shape.refuse(f"{where}.values", "grammar.value", "must be namespace names")
                break
            if operator == "In" and naming.is_system_namespace(name):
                shape.refuse(f"{where}.values", "grammar.namespace", "never selects a system namespace")
                break


# -- Tetragon ------------------------------------------------------------------------------------------


def _tracing_spec(spec: Any, shape: Shape, context: Context, kind: str, annotations: dict[str, Any]) -> None:
    if not shape.mapping(spec, "spec", ("podSelector", "options", "kprobes")):
        return
    selector = spec["podSelector"]
    if kind == TRACING_POLICY and shape.mapping(selector, "spec.podSelector", (), ("matchLabels", "matchExpressions")):
        if "matchLabels" in selector:
            _selector_labels(selector["matchLabels"], "spec.podSelector.matchLabels", shape)
        if "matchExpressions" in selector:
            expressions = selector["matchExpressions"]
            operator = expressions[0].get("operator") if _first_mapping(expressions) else None
            _namespace_expression(
                expressions, "spec.podSelector.matchExpressions", shape, "In" if operator == "In" else "NotIn"
            )
    elif kind == TRACING_POLICY_NAMESPACED and shape.mapping(selector, "spec.podSelector", (), ("matchLabels",)):
        if "matchLabels" in selector:
            _selector_labels(selector["matchLabels"], "spec.podSelector.matchLabels", shape)
    options = _options(spec["options"], shape)
    override_helper = annotations.get(naming.KERNEL_OVERRIDE_HELPER) == "true"
    kprobes = shape.items(spec["kprobes"], "spec.kprobes", 1, MAX_HOOKS)
    calls = [k.get("call") for k in kprobes if isinstance(k, dict)]
    if len(set(map(str, calls))) != len(calls):
        shape.refuse("spec.kprobes", "grammar.value", "a hook is used twice in one policy (kprobe_multi refuses it)")
    for i, kprobe in enumerate(kprobes):
        _kprobe(kprobe, f"spec.kprobes[{i}]", shape, context, options, override_helper)
    if context.action == "Post" and options.get("policy-mode") != "monitor":
        shape.refuse("spec.options", "grammar.value", "an audit channel's policies are in policy-mode monitor")


def _first_mapping(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def _options(value: Any, shape: Shape) -> dict[str, str]:
    """The policy's options: ``policy-mode`` (monitor or enforce) last, ``disable-kprobe-multi: "1"``
    before it when present."""
    items = shape.items(value, "spec.options", 1, 2)
    options: dict[str, str] = {}
    for i, option in enumerate(items):
        if shape.mapping(option, f"spec.options[{i}]", ("name", "value")):
            options[str(option["name"])] = option["value"]
    names = [str(o.get("name")) for o in items if isinstance(o, dict)]
    if names not in (["policy-mode"], ["disable-kprobe-multi", "policy-mode"]):
        shape.refuse("spec.options", "grammar.value", "policy-mode, after disable-kprobe-multi when present")
    elif options.get("policy-mode") not in ("monitor", "enforce"):
        shape.refuse("spec.options", "grammar.value", "policy-mode is monitor or enforce")
    elif options.get("disable-kprobe-multi", "1") != "1":
        shape.refuse("spec.options", "grammar.value", 'disable-kprobe-multi is "1"')
    return options


def _kprobe(
    kprobe: Any, path: str, shape: Shape, context: Context, options: dict[str, str], override_helper: bool
) -> None:
    if not shape.mapping(kprobe, path, ("call", "syscall", "message", "tags", "selectors"), ("args",)):
        return
    call = kprobe["call"]
    hook = HOOKS.get(call) if isinstance(call, str) else None
    if hook is None:
        shape.refuse(f"{path}.call", "grammar.hook", "not one of the hooks our compiler uses")
        return
    shape.equal(kprobe["syscall"], f"{path}.syscall", hook.syscall)
    if not isinstance(kprobe["message"], str) or not _PRINTABLE.match(kprobe["message"]):
        shape.refuse(f"{path}.message", "grammar.value", "must be printable text")
    elif len(kprobe["message"]) > MAX_MESSAGE:
        shape.refuse(f"{path}.message", "grammar.bound", f"longer than {MAX_MESSAGE} characters")
    tags = shape.items(kprobe["tags"], f"{path}.tags", 1, MAX_TAGS)
    if tags and not all(isinstance(t, str) and naming.is_label_value(t) and t for t in tags):
        shape.refuse(f"{path}.tags", "grammar.value", "tags are short names")
    expected_args = [{"index": i, "type": t} for i, t in hook.args]
    if expected_args or "args" in kprobe:
        shape.equal(kprobe.get("args"), f"{path}.args", expected_args)
    selectors = shape.items(kprobe["selectors"], f"{path}.selectors", 1, MAX_SELECTORS)
    for j, selector in enumerate(selectors):
        _selector(selector, f"{path}.selectors[{j}]", shape, call, hook, context, options, override_helper)


def _selector(
    selector: Any,
    path: str,
    shape: Shape,
    call: str,
    hook: HookShape,
    context: Context,
    options: dict[str, str],
    override_helper: bool,
) -> None:
    optional = ("matchArgs",) + (("matchBinaries",) if hook.callers else ())
    optional += ("matchCapabilities",) if hook.capabilities else ()
    if not shape.mapping(selector, path, ("matchActions",), optional):
        return
    filters = [k for k in optional if k in selector]
    if not filters and not hook.unfiltered:
        shape.refuse(path, "grammar.key", f"a {call} selector of ours always filters")
    if "matchArgs" in selector:
        matches = shape.items(selector["matchArgs"], f"{path}.matchArgs", 1, MAX_MATCH_ARGS)
        for k, match in enumerate(matches):
            _match_arg(match, f"{path}.matchArgs[{k}]", shape, call, hook)
    if "matchBinaries" in selector:
        binaries = shape.items(selector["matchBinaries"], f"{path}.matchBinaries", 1, 1)
        for binary in binaries:
            where = f"{path}.matchBinaries[0]"
            if shape.mapping(binary, where, ("operator", "values")):
                shape.equal(binary["operator"], f"{where}.operator", "Postfix")
                _programs(binary["values"], f"{where}.values", shape)
    if "matchCapabilities" in selector:
        shape.equal(selector["matchCapabilities"], f"{path}.matchCapabilities", CAPABILITIES)
    actions = shape.items(selector["matchActions"], f"{path}.matchActions", 1, 1)
    for action in actions:
        _action(action, f"{path}.matchActions[0]", shape, hook, context, options, override_helper)


def _match_arg(match: Any, path: str, shape: Shape, call: str, hook: HookShape) -> None:
    if not shape.mapping(match, path, ("index", "operator", "values")):
        return
    index, operator = match["index"], match["operator"]
    allowed = hook.operators.get(index, ()) if isinstance(index, int) and not isinstance(index, bool) else ()
    if operator not in allowed:
        shape.refuse(path, "grammar.operator", f"this (argument, operator) pair is not one {call} is filtered on")
        return
    position = (call, index, operator)
    where = f"{path}.values"
    if position in ADDRESS_POSITIONS:
        values = shape.items(match["values"], where, 1, MAX_ADDRESS_VALUES)
        if shape.unique_strings(values, where):
            _prefixes(values, where, shape, twins=True)
    elif position in PORT_POSITIONS:
        values = shape.items(match["values"], where, 1, MAX_PORTS)
        if shape.unique_strings(values, where) and not all(_PORT.match(v) and int(v) <= 65535 for v in values):
            shape.refuse(where, "grammar.value", "ports are decimal numbers from 1 to 65535")
    elif position in PROGRAM_POSITIONS:
        _programs(match["values"], where, shape)
    elif operator == "Protocol":
        values = shape.items(match["values"], where, 1, 1)
        for value in values:
            shape.among(value, where, PROTOCOLS, "protocols")
    else:
        constants = catalogue_values().get(position, frozenset())
        values = shape.items(match["values"], where, 1, max(len(constants), 1))
        if shape.unique_strings(values, where) and not set(values) <= constants:
            shape.refuse(where, "grammar.value", f"values our catalogue never writes for {call} argument {index}")


def _programs(values: Any, path: str, shape: Shape) -> None:
    names = shape.items(values, path, 1, MAX_NAMES)
    if shape.unique_strings(names, path) and not all(_PROGRAM.match(v) for v in names):
        shape.refuse(path, "grammar.value", "program names are '/' and a bare executable name")


def _prefixes(values: list[str], path: str, shape: Shape, *, twins: bool) -> None:
    """Canonical prefixes with an explicit length; with ``twins`` every IPv4 prefix beside its
    IPv4-mapped IPv6 twin and the other way round (cilium/tetragon#4618)."""
    plain: set[str] = set()
    mapped: set[str] = set()
    intervals = shape.intervals[id(values)] = []
    for value in values:
        interval = v4_interval(value)
        intervals.append(interval)
        if interval is not None:  # canonical IPv4 or IPv4-mapped text (the fast path)
            (mapped if value.startswith("::ffff:") else plain).add(value)
            continue
        prefix, reason = parse_explicit(value)
        if prefix is None or reason:
            shape.refuse(path, "grammar.value", "prefixes are canonical, with an explicit length")
            return
        if prefix.version == 4:
            plain.add(value)
        elif value.startswith("::ffff:") and "." in value:
            mapped.add(value)
        elif not twins and prefix.version == 6 and prefix.network >> 32 == 0xFFFF and prefix.length >= 96:
            shape.refuse(path, "grammar.value", "IPv4 addresses are written as IPv4 here")
            return
    if twins and {mapped_twin_text(p) for p in plain} != mapped:
        shape.refuse(path, "grammar.value", "every IPv4 prefix beside its IPv4-mapped twin, and only those")
    if not twins and mapped:
        shape.refuse(path, "grammar.value", "IPv4 addresses are written as IPv4 here")


def _action(
    action: Any,
    path: str,
    shape: Shape,
    hook: HookShape,
    context: Context,
    options: dict[str, str],
    override_helper: bool,
) -> None:
    name = action.get("action") if isinstance(action, dict) else None
    if not isinstance(name, str) or name not in _ACTIONS:
        shape.refuse(path, "grammar.value", "Post, Sigkill or Override")
        return
    shape.equal(action, path, _ACTIONS[name])
    if name == "Post":
        return
    if context.action == "Post":
        shape.refuse(path, "grammar.action", "an audit channel's policies never kill or override")
    if name == "Override":
        if context.action != "Override":
            shape.refuse(path, "grammar.action", "Override only on a channel whose action is Override")
        if hook.hook_class == "kernel":
            shape.refuse(path, "grammar.action", "Tetragon refuses Override on this kernel function")
        if hook.hook_class == "security" and options.get("disable-kprobe-multi") != "1":
            shape.refuse(path, "grammar.action", 'Override on a security_* hook needs disable-kprobe-multi: "1"')
        if hook.hook_class == "syscall" and not override_helper:
            shape.refuse(path, "grammar.action", "Override on a syscall needs the channel's override_helper")


# -- Cilium --------------------------------------------------------------------------------------------


def _ccnp_spec(spec: Any, shape: Shape, context: Context) -> None:
    if not shape.mapping(spec, "spec", ("description", "endpointSelector", "enableDefaultDeny", "egressDeny")):
        return
    description = spec["description"]
    if not isinstance(description, str) or len(description) > MAX_MESSAGE or not _PRINTABLE.match(description):
        shape.refuse("spec.description", "grammar.value", f"printable text of at most {MAX_MESSAGE} characters")
    selector = spec["endpointSelector"]
    if shape.mapping(selector, "spec.endpointSelector", (), ("matchLabels", "matchExpressions")):
        if "matchLabels" in selector:
            _selector_labels(selector["matchLabels"], "spec.endpointSelector.matchLabels", shape)
        if "matchExpressions" in selector:
            _namespace_expression(selector["matchExpressions"], "spec.endpointSelector.matchExpressions", shape, "In")
    shape.equal(spec["enableDefaultDeny"], "spec.enableDefaultDeny", {"egress": False, "ingress": False})
    items = shape.items(spec["egressDeny"], "spec.egressDeny", 1, MAX_EGRESS_ITEMS)
    for i, item in enumerate(items):
        _egress_deny(item, f"spec.egressDeny[{i}]", shape, context)


def _egress_deny(item: Any, path: str, shape: Shape, context: Context) -> None:
    if isinstance(item, dict) and "toEntities" in item:
        if not shape.mapping(item, path, ("toEntities", "toPorts")):
            return
        shape.equal(item["toEntities"], f"{path}.toEntities", ["world"])
        rules = shape.items(item["toPorts"], f"{path}.toPorts", 1, 1)
        for rule in rules:
            where = f"{path}.toPorts[0]"
            if shape.mapping(rule, where, ("ports",)):
                ports = shape.items(rule["ports"], f"{where}.ports", 1, MAX_CILIUM_PORTS)
                for k, port in enumerate(ports):
                    at = f"{where}.ports[{k}]"
                    if shape.mapping(port, at, ("port", "protocol")):
                        if (
                            not (isinstance(port["port"], str) and _PORT.match(port["port"]))
                            or int(port["port"]) > 65535
                        ):
                            shape.refuse(f"{at}.port", "grammar.value", "a decimal port from 1 to 65535")
                        shape.among(port["protocol"], f"{at}.protocol", ("TCP", "UDP"), "protocols")
        return
    if not shape.mapping(item, path, ("toCIDRSet",)):
        return
    entries = shape.items(item["toCIDRSet"], f"{path}.toCIDRSet", 1, max(MAX_GROUP_REFS, MAX_GROUP_CIDRS))
    if not entries or not all(isinstance(e, dict) for e in entries):
        shape.refuse(f"{path}.toCIDRSet", "grammar.type", "entries are mappings")
        return
    kinds = {tuple(sorted(e)) for e in entries}
    if kinds == {("cidrGroupRef",)}:
        refs = [e["cidrGroupRef"] for e in entries]
        if shape.unique_strings(refs, f"{path}.toCIDRSet") and len(refs) <= MAX_GROUP_REFS:
            if not set(refs) <= context.groups:
                shape.refuse(f"{path}.toCIDRSet", "grammar.reference", "names a CIDR group that is not in the bundle")
    elif kinds == {("cidr",)}:
        cidrs = [e["cidr"] for e in entries]
        if shape.unique_strings(cidrs, f"{path}.toCIDRSet"):
            _prefixes(cidrs, f"{path}.toCIDRSet", shape, twins=False)
    else:
        shape.refuse(f"{path}.toCIDRSet", "grammar.key", "entries are all cidrGroupRef or all cidr, nothing else")

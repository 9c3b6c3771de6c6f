"""Checklist for TracingPolicy / TracingPolicyNamespaced (docs/ENFORCEMENT.md §1 and §5 "Tetragon").

The API server accepts policies that the Tetragon agent then refuses to load (BPF limits are not in
the CRD) or that load and do the wrong thing (an Override on ``tcp_connect``, a ``DAddr`` on a
``sockaddr``, a kill policy with no workload selector that also hits host processes). Each of
those is an error here.
"""

from __future__ import annotations

from typing import Any

from cdr_policy.netprefix import mapped_twin_text, parse_explicit
from cdr_policy.policy.checker.common import BlockGuard, check_cidrs
from cdr_policy.policy.checker.problem import Problem, error, warning
from cdr_policy.policy.naming import KERNEL_OVERRIDE_HELPER

MAX_SELECTORS = 5
MAX_MATCH_ARGS = 5
MAX_ARGS = 5
MAX_INLINE_VALUES = 4
MAX_PIDS = 4
MAX_NAMESPACE_VALUES = 4
MAX_ADDRESS_FILTERS = 8
MAX_PREFIX_CHARS = 256
MAX_POSTFIX_CHARS = 128
MAX_MESSAGE = 256

ENFORCING = frozenset({"Sigkill", "Override", "Signal"})
_ADDRESS_OPS = frozenset({"DAddr", "NotDAddr", "SAddr", "NotSAddr"})
_PORT_OPS = frozenset(
    {"DPort", "NotDPort", "SPort", "NotSPort", "DPortPriv", "NotDPortPriv", "SPortPriv", "NotSportPriv"}
)
_SOCK_OPS = _ADDRESS_OPS | _PORT_OPS | {"Protocol", "Family", "State"}
_STRING_OPS = frozenset(
    {"Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix", "SubString", "SubStringIgnCase"}
)
_INT_OPS = frozenset(
    {
        "Equal",
        "NotEqual",
        "Mask",
        "GreaterThan",
        "LessThan",
        "GT",
        "LT",
        "InMap",
        "NotInMap",
        "InRange",
        "NotInRange",
    }
)
_INLINE_INT_OPS = frozenset({"Equal", "NotEqual", "Mask", "GreaterThan", "LessThan", "GT", "LT"})
_INT_TYPES = frozenset(
    {
        "int",
        "sint8",
        "int8",
        "uint8",
        "sint16",
        "int16",
        "uint16",
        "uint32",
        "sint32",
        "int32",
        "ulong",
        "uint64",
        "size_t",
        "long",
        "sint64",
        "int64",
        "syscall64",
    }
)
_PATH_TYPES = frozenset({"file", "path", "fd", "linux_binprm", "dentry"})
_STRING_TYPES = frozenset({"string", "char_buf", "filename", "data_loc", "const_buf", "char_iovec"})
# Which operators each argument type supports (argtypes.md). Types not listed are not checked.
_OPERATORS = {
    "sock": _SOCK_OPS,
    "skb": _SOCK_OPS,
    "socket": _SOCK_OPS,
    # connect()'s destination is matched with SAddr/SPort: there are no destination operators.
    "sockaddr": frozenset({"SAddr", "NotSAddr", "SPort", "NotSPort", "Family"}),
    **{t: _INT_OPS for t in _INT_TYPES},
    **{t: _STRING_OPS | {"FileType", "NotFileType"} for t in _PATH_TYPES},
    **{t: _STRING_OPS for t in _STRING_TYPES},
}
# Syscall argument types that point into user memory: matching on them is racy (TOCTOU).
_USER_MEMORY_TYPES = frozenset({"string", "char_buf", "char_iovec", "sockaddr", "filename", "const_buf", "sockaddr_un"})
# Hooks container runtimes and CNI plugins use: start them in monitor mode (§1.5).
_RUNTIME_HOOKS = frozenset({"sys_setns", "sys_unshare", "create_user_ns", "sys_clone", "sys_clone3", "sys_mount"})
_EXEC_SYSCALLS = frozenset({"sys_execve", "sys_execveat"})
# Well-known directories (FHS, cron, systemd, credentials, Kubernetes): a ``Prefix`` value equal to
# one of them, without the trailing ``/``, also matches its siblings (``/var/log`` matches
# ``/var/logfoo``). The rule cannot know other directories (``/opt/app``): a value is a file for
# it unless listed here. Every directory of the rule catalogue is listed (a test holds them equal).
KNOWN_DIRECTORIES = frozenset(
    {
        "/bin",
        "/boot",
        "/dev",
        "/dev/shm",
        "/etc",
        "/etc/cron.d",
        "/etc/cron.daily",
        "/etc/cron.hourly",
        "/etc/cron.monthly",
        "/etc/cron.weekly",
        "/etc/init.d",
        "/etc/kubernetes",
        "/etc/profile.d",
        "/etc/ssh",
        "/etc/sudoers.d",
        "/etc/systemd",
        "/etc/systemd/system",
        "/home",
        "/lib",
        "/lib/systemd/system",
        "/lib64",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/root/.ssh",
        "/run",
        "/run/secrets",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/usr/bin",
        "/usr/lib",
        "/usr/lib/systemd/system",
        "/usr/local",
        "/usr/local/bin",
        "/usr/local/sbin",
        "/usr/sbin",
        "/var",
        "/var/lib",
        "/var/lib/kubelet",
        "/var/log",
        "/var/run",
        "/var/run/secrets",
        "/var/spool",
        "/var/spool/cron",
        "/var/tmp",
        "/var/www",
    }
)


def check_tracing_policy(obj: dict[str, Any], guard: BlockGuard | None) -> list[Problem]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    options = _options(spec)
    problems = _check_options(options)
    override_helper = _annotations(obj).get(KERNEL_OVERRIDE_HELPER) == "true"
    address_filters = 0
    enforcing_anywhere = False
    seen_calls: dict[str, str] = {}
    for section in ("kprobes", "lsmhooks", "tracepoints", "uprobes", "usdts", "fentries"):
        hooks = spec.get(section)
        if not isinstance(hooks, list):
            continue
        for i, hook in enumerate(hooks):
            if not isinstance(hook, dict):
                continue
            path = f"spec.{section}[{i}]"
            hook_class = _hook_class(section, hook)
            if section == "kprobes":
                problems.extend(_check_kprobe_call(hook, path, seen_calls))
            args = {a.get("index"): a.get("type") for a in hook.get("args") or [] if isinstance(a, dict)}
            if isinstance(hook.get("message"), str) and len(hook["message"]) > MAX_MESSAGE:
                problems.append(error("tetragon.message", f"{path}.message", f"longer than {MAX_MESSAGE} characters"))
            if len(hook.get("args") or []) + len(hook.get("data") or []) > MAX_ARGS:
                problems.append(error("tetragon.args", path, f"more than {MAX_ARGS} args + data"))
            selectors = hook.get("selectors") or []
            if len(selectors) > MAX_SELECTORS:
                problems.append(
                    error("tetragon.selectors", path, f"{len(selectors)} selectors (at most {MAX_SELECTORS})")
                )
            daddr_filters = 0
            for j, selector in enumerate(selectors):
                if not isinstance(selector, dict):
                    continue
                where = f"{path}.selectors[{j}]"
                actions = [a.get("action") for a in selector.get("matchActions") or [] if isinstance(a, dict)]
                enforcing = bool(ENFORCING & set(actions))
                enforcing_anywhere |= enforcing
                problems.extend(_check_selector_limits(selector, where))
                problems.extend(_check_actions(selector, where, hook, hook_class, options, override_helper))
                match_args = [m for m in selector.get("matchArgs") or [] if isinstance(m, dict)]
                blocklist = not selector.get("matchBinaries")
                for k, match in enumerate(match_args):
                    at = f"{where}.matchArgs[{k}]"
                    arg_type = args.get(match.get("index"))
                    problems.extend(_check_match_arg(match, at, arg_type, hook, hook_class, enforcing))
                    operator = match.get("operator")
                    if operator in _ADDRESS_OPS:
                        address_filters += 1
                        if operator in ("DAddr", "SAddr") and arg_type != "skb":
                            daddr_filters += 1
                        problems.extend(
                            _check_addresses(match, at, guard, blocked=blocklist and operator in ("DAddr", "SAddr"))
                        )
                        if operator.startswith("Not") and enforcing:
                            problems.append(
                                error(
                                    "tetragon.not-addr-kill",
                                    at,
                                    f"{operator} with an enforcing action fails open "
                                    "(cilium/tetragon#5654, #4272) and "
                                    "misses IPv4-mapped addresses (#4618): block with DAddr instead",
                                )
                            )
                for k, binaries in enumerate(selector.get("matchBinaries") or []):
                    problems.extend(_check_strings(binaries, f"{where}.matchBinaries[{k}]"))
            if daddr_filters > 1:
                problems.append(
                    warning(
                        "tetragon.split-address-filter",
                        path,
                        "put every blocked prefix in one address filter per hook",
                    )
                )
    if address_filters > MAX_ADDRESS_FILTERS:
        problems.append(
            error(
                "tetragon.address-filters",
                "spec",
                f"{address_filters} address filters (at most {MAX_ADDRESS_FILTERS} per policy)",
            )
        )
    if enforcing_anywhere:
        problems.extend(_check_scope(obj, spec))
        problems.extend(_check_every_exec(obj, spec))
    return problems


# Hooks every program start passes through.
EXEC_HOOKS = frozenset(
    {"security_bprm_check", "security_bprm_creds_for_exec", "bprm_check_security", "sys_execve", "sys_execveat"}
)
# Selector keys that narrow what a selector matches (matchActions does not).
_FILTERS = (
    "matchArgs",
    "matchData",
    "matchBinaries",
    "matchPIDs",
    "matchNamespaces",
    "matchNamespaceChanges",
    "matchCapabilities",
    "matchCapabilityChanges",
    "matchReturnArgs",
)


def _check_every_exec(obj: dict[str, Any], spec: dict[str, Any]) -> list[Problem]:
    """An enforcing selector with no filter on an exec hook, in every pod, stops every program start."""
    pod_selector = spec.get("podSelector")
    every_pod = obj.get("kind") == "TracingPolicy" and not (pod_selector or spec.get("containerSelector"))
    if not every_pod:
        return []
    problems = []
    for section in ("kprobes", "lsmhooks"):
        for i, hook in enumerate(spec.get(section) or []):
            if not isinstance(hook, dict) or str(hook.get("call") or hook.get("hook") or "") not in EXEC_HOOKS:
                continue
            for j, selector in enumerate(hook.get("selectors") or []):
                if not isinstance(selector, dict) or any(selector.get(k) for k in _FILTERS):
                    continue
                actions = {a.get("action") for a in selector.get("matchActions") or [] if isinstance(a, dict)}
                if ENFORCING & actions:
                    problems.append(
                        error(
                            "tetragon.kill-every-exec",
                            f"spec.{section}[{i}].selectors[{j}]",
                            f"{'/'.join(sorted(ENFORCING & actions))} on every program start in every pod: "
                            "match the binaries to stop (matchArgs on the linux_binprm path)",
                        )
                    )
    return problems


def _annotations(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return annotations if isinstance(annotations, dict) else {}


def _options(spec: dict[str, Any]) -> dict[str, str]:
    return {
        str(o.get("name")): str(o.get("value", ""))
        for o in spec.get("options") or []
        if isinstance(o, dict) and "name" in o
    }


def _check_options(options: dict[str, str]) -> list[Problem]:
    mode = options.get("policy-mode")
    if mode is not None and mode not in ("monitor", "enforce"):
        return [
            error(
                "tetragon.policy-mode",
                "spec.options",
                f"policy-mode must be monitor or enforce, not {mode!r}",
            )
        ]
    return []


def _hook_class(section: str, hook: dict[str, Any]) -> str:
    """``syscall``, ``security`` (a security_* kernel function), ``kernel``, ``lsm`` or ``other``."""
    if section == "lsmhooks":
        return "lsm"
    if section != "kprobes":
        return "other"
    call = str(hook.get("call", ""))
    if hook.get("syscall", True):
        return "syscall"
    if call.startswith("security_"):
        return "security"
    return "kernel"


def _check_kprobe_call(hook: dict[str, Any], path: str, seen: dict[str, str]) -> list[Problem]:
    problems = []
    call = str(hook.get("call", ""))
    syscall = hook.get("syscall", True)
    if call in seen:
        problems.append(
            error(
                "tetragon.duplicate-symbol",
                path,
                f"{call} is hooked twice in one policy ({seen[call]}): kprobe_multi refuses it",
            )
        )
    seen.setdefault(call, path)
    bare = call.split("list:", 1)[-1]
    looks_syscall = call.startswith(("sys_", "list:")) or ("_sys_" in call and not call.startswith("__sys_"))
    if syscall and not looks_syscall:
        problems.append(
            error("tetragon.syscall-flag", f"{path}.syscall", f"{call} is a kernel function: set syscall: false")
        )
    if not syscall and call.startswith("sys_"):
        problems.append(error("tetragon.syscall-flag", f"{path}.syscall", f"{call} is a syscall: set syscall: true"))
    if syscall and bare.startswith(("__x64_sys_", "__arm64_sys_", "__ia32_sys_")):
        problems.append(
            warning(
                "tetragon.syscall-name",
                f"{path}.call",
                f"use the generic name sys_{bare.split('_sys_', 1)[1]}",
            )
        )
    return problems


def _check_selector_limits(selector: dict[str, Any], where: str) -> list[Problem]:
    problems = []
    count = len(selector.get("matchArgs") or []) + len(selector.get("matchData") or [])
    if count > MAX_MATCH_ARGS:
        problems.append(
            error("tetragon.match-args", where, f"{count} matchArgs + matchData (at most {MAX_MATCH_ARGS})")
        )
    if len(selector.get("matchBinaries") or []) > 1:
        problems.append(error("tetragon.match-binaries", where, "at most one matchBinaries per selector"))
    for k, pids in enumerate(selector.get("matchPIDs") or []):
        if isinstance(pids, dict) and len(pids.get("values") or []) > MAX_PIDS:
            problems.append(error("tetragon.match-pids", f"{where}.matchPIDs[{k}]", f"at most {MAX_PIDS} PIDs"))
    for k, namespaces in enumerate(selector.get("matchNamespaces") or []):
        if isinstance(namespaces, dict) and len(namespaces.get("values") or []) > MAX_NAMESPACE_VALUES:
            problems.append(error("tetragon.match-namespaces", f"{where}.matchNamespaces[{k}]", "at most 4 values"))
    return problems


def _check_actions(
    selector: dict[str, Any],
    where: str,
    hook: dict[str, Any],
    hook_class: str,
    options: dict[str, str],
    override_helper: bool,
) -> list[Problem]:
    problems = []
    call = str(hook.get("call") or hook.get("hook") or "")
    for k, action in enumerate(selector.get("matchActions") or []):
        if not isinstance(action, dict):
            continue
        at = f"{where}.matchActions[{k}]"
        if action.get("action") != "Override":
            continue
        if hook_class in ("kernel", "other"):
            problems.append(
                error(
                    "tetragon.override-hook",
                    at,
                    f"Override is refused on {call or 'this hook'}: "
                    "only syscalls, security_* functions and LSM hooks; use Sigkill",
                )
            )
        if hook_class == "syscall" and not override_helper:
            problems.append(
                error(
                    "tetragon.override-helper",
                    at,
                    f"Override on the syscall {call} needs the bpf_override_return helper, which many kernels "
                    "lack (Debian's 6.1 and 6.12): Tetragon then refuses the whole policy. Use Sigkill, Override "
                    "a security_* hook, or declare the helper (channel kernel.override_helper: true, annotation "
                    f'{KERNEL_OVERRIDE_HELPER}: "true")',
                )
            )
        if hook_class == "security" and options.get("disable-kprobe-multi") not in ("1", "true", "enabled"):
            problems.append(
                error(
                    "tetragon.override-kprobe-multi",
                    at,
                    f"Override on {call} runs as fmod_ret and needs "
                    'options: [{name: disable-kprobe-multi, value: "1"}]',
                )
            )
        if hook_class == "lsm":
            problems.append(
                warning(
                    "tetragon.bpf-lsm",
                    at,
                    "Override in lsmhooks needs CONFIG_BPF_LSM and 'bpf' in the LSM list",
                )
            )
        if "argError" not in action:
            problems.append(warning("tetragon.override-error", at, "Override without argError returns 0 (success)"))
    return problems


def _check_match_arg(
    match: dict[str, Any],
    at: str,
    arg_type: str | None,
    hook: dict[str, Any],
    hook_class: str,
    enforcing: bool,
) -> list[Problem]:
    problems = []
    operator = match.get("operator")
    values = match.get("values") or []
    if "index" in match and arg_type is None:
        problems.append(error("tetragon.arg-index", at, f"no argument with index {match.get('index')} in args"))
        return problems
    allowed = _OPERATORS.get(arg_type or "")
    if allowed is not None and operator not in allowed:
        hint = " (connect()'s destination is matched with SAddr/SPort on sockaddr)" if arg_type == "sockaddr" else ""
        problems.append(error("tetragon.operator", at, f"{operator} is not supported on a {arg_type} argument{hint}"))
    if arg_type in _INT_TYPES and operator in _INLINE_INT_OPS and len(values) > MAX_INLINE_VALUES:
        problems.append(
            error(
                "tetragon.values",
                at,
                f"{len(values)} values for {operator} (at most {MAX_INLINE_VALUES}; use InMap)",
            )
        )
    if operator in _STRING_OPS:
        problems.extend(_check_strings(match, at, absolute=arg_type == "linux_binprm"))
    if enforcing and hook_class == "syscall":
        call = str(hook.get("call", ""))
        if arg_type in _USER_MEMORY_TYPES or call in _EXEC_SYSCALLS:
            problems.append(
                error(
                    "tetragon.toctou",
                    at,
                    f"enforcing on {call} {arg_type} arguments races with user memory (TOCTOU): "
                    "use a security_*/LSM hook (security_bprm_check for exec)",
                )
            )
    return problems


def _check_strings(match: dict[str, Any], at: str, *, absolute: bool = False) -> list[Problem]:
    problems = []
    operator = match.get("operator")
    for value in match.get("values") or []:
        if not isinstance(value, str):
            continue
        if operator in ("Prefix", "NotPrefix") and len(value) > MAX_PREFIX_CHARS:
            problems.append(error("tetragon.prefix-length", at, f"prefix longer than {MAX_PREFIX_CHARS} characters"))
        if operator in ("Postfix", "NotPostfix") and len(value) > MAX_POSTFIX_CHARS:
            problems.append(error("tetragon.postfix-length", at, f"postfix longer than {MAX_POSTFIX_CHARS} characters"))
        if operator in ("Prefix", "NotPrefix") and value.rstrip("/") in KNOWN_DIRECTORIES and not value.endswith("/"):
            problems.append(
                error(
                    "tetragon.directory-prefix",
                    at,
                    f"{value!r} is a directory: end it with '/' ({value}/), or it also matches "
                    f"{value}foo; match the directory itself with Equal",
                )
            )
        if absolute and operator in ("Equal", "NotEqual", "Prefix", "NotPrefix") and not value.startswith("/"):
            problems.append(error("tetragon.relative-path", at, f"{value!r}: binary paths must be absolute"))
        if absolute and operator in ("Postfix", "NotPostfix") and not value.startswith("/"):
            problems.append(
                warning("tetragon.postfix-boundary", at, f"{value!r} also matches longer names: start it with '/'")
            )
    return problems


def _check_addresses(match: dict[str, Any], at: str, guard: BlockGuard | None, *, blocked: bool) -> list[Problem]:
    values = [v for v in match.get("values") or []]
    problems, canonical = check_cidrs(values, lambda _: at, guard, blocked=blocked)
    listed = {v for v in values if isinstance(v, str)}
    for value, fast in zip(values, canonical, strict=True):
        if isinstance(value, str) and ":" not in value and (fast or _parses_as_v4(value)):
            twin = mapped_twin_text(value)
            if twin not in listed:
                problems.append(
                    error(
                        "tetragon.ipv4-mapped",
                        at,
                        f"{value} has no IPv4-mapped twin {twin}: "
                        "dual-stack sockets would bypass it (cilium/tetragon#4618)",
                    )
                )
    return problems


def _parses_as_v4(value: str) -> bool:
    prefix, reason = parse_explicit(value)
    return prefix is not None and reason is None and prefix.version == 4


def _check_scope(obj: dict[str, Any], spec: dict[str, Any]) -> list[Problem]:
    problems = []
    if obj.get("kind") == "TracingPolicy" and all(
        spec.get(k) is None for k in ("podSelector", "containerSelector", "hostSelector")
    ):
        problems.append(
            error(
                "tetragon.unscoped-enforcement",
                "spec",
                "an enforcing policy with no podSelector, containerSelector or hostSelector "
                "also kills host processes: "
                "add podSelector: {} (all pods, no host)",
            )
        )
    if spec.get("hostSelector") is not None:
        problems.append(
            warning("tetragon.host-enforcement", "spec.hostSelector", "enforces on host processes: intended?")
        )
    options = _options(spec)
    for i, hook in enumerate(spec.get("kprobes") or []):
        if isinstance(hook, dict) and hook.get("call") in _RUNTIME_HOOKS and options.get("policy-mode") != "monitor":
            if any(
                ENFORCING & {a.get("action") for a in s.get("matchActions") or [] if isinstance(a, dict)}
                for s in hook.get("selectors") or []
                if isinstance(s, dict)
            ):
                problems.append(
                    warning(
                        "tetragon.runtime-hook",
                        f"spec.kprobes[{i}]",
                        f"container runtimes and CNI plugins call {hook.get('call')}: "
                        "roll out with policy-mode monitor first",
                    )
                )
    return problems

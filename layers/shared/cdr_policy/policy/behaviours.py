"""Behaviour policies: one TracingPolicy per CDR behaviour rule (``cdr_policy.rules.RULES``).

Primitives, following docs/ENFORCEMENT.md:

- **Exec blocking** on the kernel function ``security_bprm_check`` (``syscall: false``) with its
  ``linux_binprm`` argument, which is the resolved path of the file being executed: tools are
  matched with ``Postfix /<name>``, directories with ``Prefix``. Never on ``sys_execve`` arguments
  (user memory, TOCTOU, cilium/tetragon#3448). ``matchBinaries`` restricts the *caller* (webshell:
  web servers spawning shells). Paths resolve symlinks, so tools reached through a multi-call binary
  (``busybox wget``, ``insmod`` -> ``kmod``) are matched by that binary's name, as listed.
- **Connections** on the channel's connect hook (``tcp_connect`` + ``DAddr``/``DPort`` or
  ``security_socket_connect`` + ``SAddr``/``SPort``): the instance metadata service for network
  utilities only (``matchBinaries``), mining-pool, reverse-shell, backdoor and file-transfer ports.
  UDP (TFTP on 69) is out of scope for ``tcp_connect``.
- **Syscalls** with integer arguments (no user memory): ``sys_unshare`` with a ``Mask`` on the
  namespace flags, ``sys_setns``, ``sys_setuid``/``sys_setreuid``/``sys_setresuid`` to uid 0,
  ``sys_ptrace`` attach/poke requests, ``sys_process_vm_writev``, ``sys_init_module``/``sys_finit_module``.
- **LSM functions**: ``security_socket_create`` (raw and packet sockets; the kernel has stripped
  ``SOCK_NONBLOCK``/``SOCK_CLOEXEC`` there, so ``Equal 3`` is exact), ``security_file_permission``
  (reads of credential files by shell tools, writes to cron/systemd units and ``/etc/ld.so.preload``),
  ``security_path_truncate``/``security_path_unlink`` (log files), and for files that arrive in a
  watched directory without being written there, ``security_path_rename`` (``mv`` of a prepared
  file into ``/etc/cron.d`` or over a log file), ``security_path_link`` (hard links) and, for
  persistence, ``security_path_symlink`` (``systemctl enable``-style unit links). All the
  ``security_path_*`` functions need ``CONFIG_SECURITY_PATH`` (on in the distribution kernels that
  ship AppArmor or TOMOYO).
- **Paths mean what they say.** A directory given to ``Prefix`` ends with ``/`` (``/var/log/``, not
  ``/var/log``, which would also match ``/var/logfoo``). The ``security_path_*`` hooks see the
  *parent directory* of the entry (``struct path``, no trailing ``/``), so a watched directory is
  matched by two selectors: ``Equal /var/log`` (directly inside) and ``Prefix /var/log/`` (below
  it). A watched *file* arriving by rename or link is matched on its parent (``Equal /etc``) and
  the new entry's name (``dentry``, ``Postfix /crontab``); ``dentry`` paths are relative to their
  mount, which the ``Postfix`` on the name does not depend on.

Safety decisions:

- ``container_escape`` starts in ``policy-mode: monitor`` whatever the channel's action (runc init
  and CNI plugins call ``setns``/``unshare``); list it in the channel's ``promoted_rules`` once its
  events look right. Cluster-scoped it also spares ``kube-system``, where the CNI pods run.
- ``discovery`` is audit-only (``Post``, rate-limited) on every channel: the tools are everyday ones.
- ``curl`` and ``wget`` are not in any exec block (liveness probes and entrypoints use them); their
  abuse against the metadata service is what ``cloud_credentials`` blocks, and ``ingress_tool_transfer``
  blocks running what they downloaded (``/tmp``, ``/var/tmp``, ``/dev/shm``).
- **Evidence.** For tool rules the process names CDR observed join the blocked names, and for
  ``cloud_credentials`` the restricted callers, where ``policy.scoping`` places them: in the rule's
  own policy only when the name is corroborated by several workloads and is none of the names a
  cluster runs (``policy.binaries``: shells, runtimes and utilities are never blocked on evidence;
  servers, proxies, databases, agents and kernel threads never cluster-wide); otherwise in one
  policy per workload where it was seen (:func:`evidence_hooks`), or in an audit-only policy.
  Evidence can never turn a rule into "kill every bash" or "kill every nginx".
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.tetragon import (
    KERNEL,
    SECURITY,
    SYSCALL,
    ConnectMatch,
    Enforcement,
    connect_kprobe,
    kprobe,
    match,
    selector,
)
from cdr_policy.rules import RULES

SHELLS = ("ash", "bash", "csh", "dash", "fish", "ksh", "mksh", "sh", "tcsh", "zsh")
IMDS = ("169.254.169.254/32", "fd00:ec2::254/128")
NETWORK_UTILITIES = ("busybox", "curl", "nc", "ncat", "netcat", "socat", "telnet", "wget")
SHELL_TOOLS = (
    "base64",
    "busybox",
    "cat",
    "cp",
    "egrep",
    "fgrep",
    "grep",
    "head",
    "hexdump",
    "less",
    "more",
    "nano",
    "od",
    "strings",
    "tail",
    "vi",
    "vim",
    "xxd",
)
WEB_SERVERS = (
    "apache2",
    "httpd",
    "lighttpd",
    "nginx",
    "php-cgi",
    "php-fpm",
    "php-fpm7.4",
    "php-fpm8.0",
    "php-fpm8.1",
    "php-fpm8.2",
    "php-fpm8.3",
)
MAY_READ, MAY_WRITE = 4, 2
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
SOCK_RAW, AF_PACKET = 3, 17
PTRACE_POKETEXT, PTRACE_POKEDATA, PTRACE_ATTACH, PTRACE_SEIZE = 4, 5, 16, 0x4206


@dataclass(frozen=True)
class Context:
    """What one rule's hooks are built from."""

    rule: str
    channel: ChannelSettings
    enforcement: Enforcement
    evidence: tuple[str, ...]

    @property
    def message(self) -> str:
        technique, summary = RULES[self.rule]
        return f"cdr-policy {self.rule} ({technique}): {summary}"

    @property
    def tags(self) -> list[str]:
        return ["cdr-policy", self.rule, RULES[self.rule][0]]

    def actions(self, hook_class: str) -> list[dict[str, Any]]:
        return self.enforcement.actions(hook_class)


def exec_block(
    ctx: Context,
    names: Sequence[str] = (),
    *,
    prefixes: Sequence[str] = (),
    callers: Sequence[str] = (),
) -> dict[str, Any]:
    """``security_bprm_check``: running ``names`` (``Postfix /<name>``) or anything under
    ``prefixes`` is refused (for ``callers`` only, when given)."""
    selectors = []
    if names:
        values = sorted({f"/{n}" for n in names})
        selectors.append(selector(ctx.actions(SECURITY), [match(0, "Postfix", values)], callers))
    if prefixes:
        selectors.append(selector(ctx.actions(SECURITY), [match(0, "Prefix", sorted(prefixes))], callers))
    return kprobe("security_bprm_check", SECURITY, [(0, "linux_binprm")], selectors, message=ctx.message, tags=ctx.tags)


def _targets(ctx: Context, names: Sequence[str]) -> list[str]:
    return sorted(set(names) | set(ctx.evidence))


def connect(ctx: Context, *matches: ConnectMatch) -> dict[str, Any]:
    return connect_kprobe(ctx.channel, ctx.enforcement, matches, message=ctx.message, tags=ctx.tags)


def syscall(ctx: Context, call: str, args: Sequence[tuple[int, str]], *selectors: dict[str, Any]) -> dict[str, Any]:
    return kprobe(call, SYSCALL, args, list(selectors), message=ctx.message, tags=ctx.tags)


def lsm_function(
    ctx: Context, call: str, args: Sequence[tuple[int, str]], *selectors: dict[str, Any]
) -> dict[str, Any]:
    return kprobe(call, SECURITY, args, list(selectors), message=ctx.message, tags=ctx.tags)


def _file_access(
    ctx: Context,
    mask: int,
    *,
    prefixes: Sequence[str] = (),
    postfixes: Sequence[str] = (),
    callers: Sequence[str] = (),
) -> dict[str, Any]:
    selectors = []
    for operator, values in (("Prefix", prefixes), ("Postfix", postfixes)):
        if values:
            selectors.append(
                selector(
                    ctx.actions(SECURITY),
                    [match(0, operator, sorted(values)), match(1, "Equal", [mask])],
                    callers,
                )
            )
    return lsm_function(ctx, "security_file_permission", [(0, "file"), (1, "int")], *selectors)


def _in_directories(ctx: Context, index: int, directories: Sequence[str]) -> list[dict[str, Any]]:
    """Selectors for a parent-directory ``path`` argument at ``index`` that is one of
    ``directories`` (each ending with ``/``) or below one (none without directories)."""
    if not all(d.endswith("/") for d in directories):
        raise ValueError(f"directories must end with '/': {sorted(directories)}")
    if not directories:
        return []
    return [
        selector(ctx.actions(SECURITY), [match(index, "Equal", sorted(d.rstrip("/") for d in directories))]),
        selector(ctx.actions(SECURITY), [match(index, "Prefix", sorted(directories))]),
    ]


def _entry_named(ctx: Context, dir_index: int, name_index: int, files: Sequence[str]) -> list[dict[str, Any]]:
    """Selectors for watched ``files`` (absolute paths) arriving as a new entry: the parent
    directory (``path`` at ``dir_index``) is theirs and the entry (``dentry`` at ``name_index``)
    has their name. One selector per parent directory."""
    by_parent: dict[str, set[str]] = {}
    for f in files:
        parent, name = f.rsplit("/", 1)
        by_parent.setdefault(parent or "/", set()).add(f"/{name}")
    return [
        selector(
            ctx.actions(SECURITY), [match(dir_index, "Equal", [parent]), match(name_index, "Postfix", sorted(names))]
        )
        for parent, names in sorted(by_parent.items())
    ]


def _arrivals(
    ctx: Context, directories: Sequence[str], files: Sequence[str] = (), *, symlinks: bool
) -> list[dict[str, Any]]:
    """Hooks for entries that appear in ``directories`` (or as ``files``) without a write there:
    renamed in (``security_path_rename``: ``new_dir`` is arg 2, ``new_dentry`` arg 3), hard-linked
    in (``security_path_link``: arg 1, arg 2) and, with ``symlinks``, symlinked in
    (``security_path_symlink``: arg 0, arg 1)."""
    hooks = [
        lsm_function(
            ctx,
            "security_path_rename",
            [(0, "path"), (1, "dentry"), (2, "path"), (3, "dentry")],
            *_in_directories(ctx, 2, directories),
            *_entry_named(ctx, 2, 3, files),
        ),
        lsm_function(
            ctx,
            "security_path_link",
            [(0, "dentry"), (1, "path"), (2, "dentry")],
            *_in_directories(ctx, 1, directories),
            *_entry_named(ctx, 1, 2, files),
        ),
    ]
    if symlinks:
        hooks.append(
            lsm_function(
                ctx,
                "security_path_symlink",
                [(0, "path"), (1, "dentry")],
                *_in_directories(ctx, 0, directories),
                *_entry_named(ctx, 0, 1, files),
            )
        )
    return hooks


def _tools(*names: str) -> Callable[[Context], list[dict[str, Any]]]:
    def build(ctx: Context) -> list[dict[str, Any]]:
        return [exec_block(ctx, _targets(ctx, names))]

    return build


def _metadata_service(ctx: Context, callers: Sequence[str]) -> dict[str, Any]:
    return connect(ctx, ConnectMatch(prefixes=IMDS, callers=tuple(sorted(set(callers)))))


def _cloud_credentials(ctx: Context) -> list[dict[str, Any]]:
    return [_metadata_service(ctx, (*NETWORK_UTILITIES, *ctx.evidence))]


def _network_scanning(ctx: Context) -> list[dict[str, Any]]:
    scanners = (
        "arp-scan",
        "hping3",
        "masscan",
        "naabu",
        "netdiscover",
        "nmap",
        "nping",
        "rustscan",
        "unicornscan",
        "zgrab",
        "zgrab2",
        "zmap",
    )
    return [exec_block(ctx, _targets(ctx, scanners)), _raw_sockets(ctx, packet=False)]


def _raw_sockets(ctx: Context, *, packet: bool) -> dict[str, Any]:
    user = match(3, "Equal", [0])  # kern == 0: sockets the process asked for, not the kernel's own
    selectors = [selector(ctx.actions(SECURITY), [match(1, "Equal", [SOCK_RAW]), user])]
    if packet:
        selectors.append(selector(ctx.actions(SECURITY), [match(0, "Equal", [AF_PACKET]), user]))
    return lsm_function(ctx, "security_socket_create", [(0, "int"), (1, "int"), (2, "int"), (3, "int")], *selectors)


def _container_escape(ctx: Context) -> list[dict[str, Any]]:
    flags = [hex(CLONE_NEWUSER), hex(CLONE_NEWNET), hex(CLONE_NEWNS)]
    no_sys_admin = {
        "matchCapabilities": [
            {
                "type": "Effective",
                "operator": "NotIn",
                "isNamespaceCapability": False,
                "values": ["CAP_SYS_ADMIN"],
            }
        ]
    }
    return [
        syscall(ctx, "sys_unshare", [(0, "int")], selector(ctx.actions(SYSCALL), [match(0, "Mask", flags)])),
        syscall(ctx, "sys_setns", [(0, "int"), (1, "int")], selector(ctx.actions(SYSCALL))),
        kprobe(
            "create_user_ns",
            KERNEL,
            [(0, "nop")],
            [selector(ctx.actions(KERNEL), extra=no_sys_admin)],
            message=ctx.message,
            tags=ctx.tags,
        ),
    ]


def _crypto_mining(ctx: Context) -> list[dict[str, Any]]:
    miners = (
        "bfgminer",
        "ccminer",
        "cgminer",
        "cpuminer",
        "cpuminer-multi",
        "ethminer",
        "gminer",
        "kdevtmpfsi",
        "kinsing",
        "lolminer",
        "minerd",
        "nanominer",
        "nbminer",
        "phoenixminer",
        "srbminer-multi",
        "t-rex",
        "teamredminer",
        "xmr-stak",
        "xmr-stak-rx",
        "xmrig",
    )
    pool_ports = (3333, 5555, 7777, 14433, 14444, 45560, 45700)
    return [exec_block(ctx, _targets(ctx, miners)), connect(ctx, ConnectMatch(ports=pool_ports))]


def _reverse_shell(ctx: Context) -> list[dict[str, Any]]:
    tools = ("nc", "nc.openbsd", "nc.traditional", "ncat", "netcat", "pwncat", "socat")
    return [
        exec_block(ctx, _targets(ctx, tools)),
        connect(ctx, ConnectMatch(ports=(1337, 4444, 4445)), ConnectMatch(callers=SHELLS)),
    ]


def _privilege_escalation(ctx: Context) -> list[dict[str, Any]]:
    def to_root(index: int) -> dict[str, Any]:
        return selector(ctx.actions(SYSCALL), [match(index, "Equal", [0])])

    return [
        syscall(ctx, "sys_setuid", [(0, "int")], to_root(0)),
        syscall(ctx, "sys_setreuid", [(0, "int"), (1, "int")], to_root(1)),
        syscall(ctx, "sys_setresuid", [(0, "int"), (1, "int"), (2, "int")], to_root(1)),
        exec_block(ctx, _targets(ctx, ("pkexec",))),
    ]


def _kernel_module(ctx: Context) -> list[dict[str, Any]]:
    return [
        syscall(ctx, "sys_init_module", [], selector(ctx.actions(SYSCALL))),
        syscall(ctx, "sys_finit_module", [(0, "int")], selector(ctx.actions(SYSCALL))),
        exec_block(ctx, _targets(ctx, ("depmod", "insmod", "kmod", "modprobe", "rmmod"))),
    ]


LOG_DIRECTORIES = ("/var/log/",)
HISTORIES = ("/.ash_history", "/.bash_history", "/.zsh_history")


def _log_tampering(ctx: Context) -> list[dict[str, Any]]:
    truncate = lsm_function(
        ctx,
        "security_path_truncate",
        [(0, "path")],
        selector(ctx.actions(SECURITY), [match(0, "Prefix", LOG_DIRECTORIES)]),
        selector(ctx.actions(SECURITY), [match(0, "Postfix", HISTORIES)]),
    )
    # security_path_unlink(dir, dentry): the parent directory and the removed entry
    unlink = lsm_function(
        ctx,
        "security_path_unlink",
        [(0, "path"), (1, "dentry")],
        *_in_directories(ctx, 0, LOG_DIRECTORIES),
        selector(ctx.actions(SECURITY), [match(1, "Postfix", HISTORIES)]),
    )
    # security_path_rename(old_dir, old_dentry, new_dir, new_dentry, flags): a log moved away
    # (old_dir) or a prepared file moved over a log (new_dir) or over a shell history (new_dentry)
    rename = lsm_function(
        ctx,
        "security_path_rename",
        [(0, "path"), (1, "dentry"), (2, "path"), (3, "dentry")],
        *_in_directories(ctx, 0, LOG_DIRECTORIES),
        *_in_directories(ctx, 2, LOG_DIRECTORIES),
        selector(ctx.actions(SECURITY), [match(3, "Postfix", HISTORIES)]),
    )
    # security_path_link(old_dentry, new_dir, new_dentry): a file hard-linked into the log directories
    link = lsm_function(
        ctx,
        "security_path_link",
        [(0, "dentry"), (1, "path"), (2, "dentry")],
        *_in_directories(ctx, 1, LOG_DIRECTORIES),
    )
    return [truncate, unlink, rename, link]


def _credential_access(ctx: Context) -> list[dict[str, Any]]:
    secrets = ("/etc/gshadow", "/etc/shadow", "/etc/sudoers", "/root/.ssh/")
    keys = (
        "/.aws/credentials",
        "/.docker/config.json",
        "/.git-credentials",
        "/.kube/config",
        "/.netrc",
        "/.pgpass",
        "/.ssh/id_dsa",
        "/.ssh/id_ecdsa",
        "/.ssh/id_ed25519",
        "/.ssh/id_rsa",
    )
    return [_file_access(ctx, MAY_READ, prefixes=secrets, postfixes=keys, callers=SHELL_TOOLS)]


PERSISTENCE_DIRECTORIES = (
    "/etc/cron.d/",
    "/etc/cron.daily/",
    "/etc/cron.hourly/",
    "/etc/cron.monthly/",
    "/etc/cron.weekly/",
    "/etc/init.d/",
    "/etc/systemd/system/",
    "/lib/systemd/system/",
    "/usr/lib/systemd/system/",
    "/var/spool/cron/",
)
PERSISTENCE_FILES = ("/etc/crontab", "/etc/rc.local")


def _persistence_cron(ctx: Context) -> list[dict[str, Any]]:
    writes = _file_access(ctx, MAY_WRITE, prefixes=(*PERSISTENCE_DIRECTORIES, *PERSISTENCE_FILES))
    return [
        writes,
        *_arrivals(ctx, PERSISTENCE_DIRECTORIES, PERSISTENCE_FILES, symlinks=True),
        exec_block(ctx, _targets(ctx, ("crontab",))),
    ]


def _process_injection(ctx: Context) -> list[dict[str, Any]]:
    requests = [PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_POKETEXT, PTRACE_POKEDATA]
    return [
        syscall(ctx, "sys_ptrace", [(0, "int")], selector(ctx.actions(SYSCALL), [match(0, "Equal", requests)])),
        syscall(ctx, "sys_process_vm_writev", [(0, "int")], selector(ctx.actions(SYSCALL))),
        exec_block(ctx, _targets(ctx, ("gdb", "gdbserver", "lldb", "ltrace", "strace"))),
    ]


def _network_sniffing(ctx: Context) -> list[dict[str, Any]]:
    sniffers = (
        "arpspoof",
        "bettercap",
        "dsniff",
        "dumpcap",
        "ettercap",
        "ngrep",
        "tcpdump",
        "tcpflow",
        "termshark",
        "tshark",
    )
    return [exec_block(ctx, _targets(ctx, sniffers)), _raw_sockets(ctx, packet=True)]


def _exfiltration(ctx: Context) -> list[dict[str, Any]]:
    tools = ("7z", "7za", "croc", "mega-cmd", "mega-put", "rar", "rclone")
    # FTP data/control, rsync daemon, FTPS. TFTP (UDP 69) is not visible to tcp_connect.
    return [exec_block(ctx, _targets(ctx, tools)), connect(ctx, ConnectMatch(ports=(20, 21, 873, 989, 990)))]


def _ingress_tool_transfer(ctx: Context) -> list[dict[str, Any]]:
    tools = ("aria2c", "axel", "ftp", "lftp", "ncftpget", "tftp")
    downloads = ("/dev/shm/", "/tmp/", "/var/tmp/")
    return [exec_block(ctx, _targets(ctx, tools), prefixes=downloads)]


def _webshell(ctx: Context) -> list[dict[str, Any]]:
    spawned = (*SHELLS, "busybox", "perl", "python", "python3", "ruby")
    return [exec_block(ctx, spawned, callers=WEB_SERVERS)]


def _defense_evasion(ctx: Context) -> list[dict[str, Any]]:
    tools = ("aa-complain", "aa-disable", "aa-teardown", "auditctl", "chattr", "setenforce")
    preload = "/etc/ld.so.preload"
    writes = _file_access(ctx, MAY_WRITE, prefixes=(preload,))
    # a preload list prepared elsewhere and moved or linked into place is not a write to it
    return [exec_block(ctx, _targets(ctx, tools)), writes, *_arrivals(ctx, (), (preload,), symlinks=False)]


def _fileless_execution(ctx: Context) -> list[dict[str, Any]]:
    # memfd files resolve to "/memfd:<name> (deleted)"; /dev/shm is the usual staging tmpfs.
    return [exec_block(ctx, prefixes=("/dev/shm/", "/memfd:"))]


def _suspicious_communication(ctx: Context) -> list[dict[str, Any]]:
    # ingreslock, IRC C2, NetBus, SubSeven, Back Orifice
    return [connect(ctx, ConnectMatch(ports=(1524, 6667, 12345, 12346, 20034, 27374, 31337)))]


@dataclass(frozen=True)
class RuleSpec:
    build: Callable[[Context], list[dict[str, Any]]]
    # "targets": observed names join the blocked tools; "callers": they join the restricted callers.
    evidence: str | None = "targets"
    start_in_monitor: bool = False
    audit_only: bool = False
    spare_namespaces: tuple[str, ...] = ()


CATALOGUE: dict[str, RuleSpec] = {
    "cloud_credentials": RuleSpec(_cloud_credentials, evidence="callers"),
    "network_scanning": RuleSpec(_network_scanning),
    "container_escape": RuleSpec(
        _container_escape, evidence=None, start_in_monitor=True, spare_namespaces=("kube-system",)
    ),
    "crypto_mining": RuleSpec(_crypto_mining),
    "reverse_shell": RuleSpec(_reverse_shell),
    "privilege_escalation": RuleSpec(_privilege_escalation),
    "kernel_module": RuleSpec(_kernel_module),
    "log_tampering": RuleSpec(_log_tampering, evidence=None),
    "credential_access": RuleSpec(_credential_access, evidence=None),
    "persistence_cron": RuleSpec(_persistence_cron, evidence=None),
    "lateral_movement": RuleSpec(_tools("dbclient", "rcp", "rlogin", "rsh", "rsync", "scp", "sftp", "ssh", "sshpass")),
    "ingress_tool_transfer": RuleSpec(_ingress_tool_transfer),
    "exfiltration": RuleSpec(_exfiltration),
    "webshell": RuleSpec(_webshell, evidence=None),
    "account_manipulation": RuleSpec(
        _tools("chage", "chfn", "chpasswd", "chsh", "gpasswd", "groupmod", "passwd", "usermod", "vigr", "vipw")
    ),
    "account_creation": RuleSpec(_tools("addgroup", "adduser", "groupadd", "newusers", "useradd")),
    "container_admin": RuleSpec(
        _tools("crictl", "ctr", "docker", "helm", "kubeadm", "kubectl", "nerdctl", "oc", "podman")
    ),
    "process_injection": RuleSpec(_process_injection),
    "network_sniffing": RuleSpec(_network_sniffing),
    "package_management": RuleSpec(
        _tools("apk", "apt", "apt-get", "aptitude", "dnf", "dpkg", "microdnf", "pacman", "rpm", "yum", "zypper")
    ),
    "defense_evasion": RuleSpec(_defense_evasion),
    "proxy_tunneling": RuleSpec(
        _tools(
            "3proxy",
            "chisel",
            "dns2tcp",
            "frpc",
            "frps",
            "gost",
            "iodine",
            "iodined",
            "microsocks",
            "ngrok",
            "ptunnel",
            "ptunnel-ng",
            "revsocks",
            "sshuttle",
            "tor",
        )
    ),
    "fileless_execution": RuleSpec(_fileless_execution, evidence=None),
    "data_destruction": RuleSpec(_tools("sdmem", "sfill", "shred", "srm", "sswap", "wipe")),
    "inhibit_recovery": RuleSpec(
        _tools(
            "blkdiscard",
            "lvremove",
            "mke2fs",
            "mkfs",
            "mkfs.btrfs",
            "mkfs.ext2",
            "mkfs.ext3",
            "mkfs.ext4",
            "mkfs.vfat",
            "mkfs.xfs",
            "pvremove",
            "sgdisk",
            "vgremove",
            "wipefs",
        )
    ),
    "discovery": RuleSpec(_tools("capsh", "getcap", "getent", "groups", "id", "lastlog", "whoami"), audit_only=True),
    "suspicious_communication": RuleSpec(_suspicious_communication, evidence=None),
}


def compile_behaviour(
    rule: str, channel: ChannelSettings, cluster_wide: Sequence[str]
) -> tuple[list[dict[str, Any]], Enforcement, RuleSpec]:
    """The hooks of one rule with the evidence names placed in its own policy (``cluster_wide``,
    see ``policy.scoping``), how they act and the rule's spec."""
    spec = CATALOGUE[rule]
    enforcement = rule_enforcement(rule, channel)
    ctx = Context(rule=rule, channel=channel, enforcement=enforcement, evidence=tuple(cluster_wide))
    return spec.build(ctx), enforcement, spec


def rule_enforcement(rule: str, channel: ChannelSettings) -> Enforcement:
    """How a rule's selectors act on ``channel``."""
    spec = CATALOGUE[rule]
    return Enforcement.for_channel(
        channel,
        start_in_monitor=spec.start_in_monitor and rule not in channel.promoted_rules,
        audit_only=spec.audit_only,
    )


def evidence_hooks(
    rule: str, channel: ChannelSettings, enforcement: Enforcement, names: Sequence[str]
) -> list[dict[str, Any]]:
    """The hooks that enforce only evidence ``names`` for ``rule`` (a workload's policy, or the
    audit policy): running them, or, for ``cloud_credentials``, reaching the metadata service."""
    ctx = Context(rule=rule, channel=channel, enforcement=enforcement, evidence=())
    if CATALOGUE[rule].evidence == "callers":
        return [_metadata_service(ctx, names)]
    return [exec_block(ctx, sorted(set(names)))]


@functools.cache
def covered_names(rule: str) -> frozenset[str]:
    """The names ``rule`` blocks by itself (no evidence): its exec targets, or for
    ``cloud_credentials`` its restricted callers."""
    channel = ChannelSettings(name="covered")
    hooks, _, spec = compile_behaviour(rule, channel, ())
    values: set[str] = set()
    for hook in hooks:
        for sel in hook["selectors"]:
            if spec.evidence == "callers":
                values.update(v for m in sel.get("matchBinaries", []) for v in m["values"])
            elif hook["call"] == "security_bprm_check":
                values.update(v for m in sel.get("matchArgs", []) if m["operator"] == "Postfix" for v in m["values"])
    return frozenset(v.removeprefix("/") for v in values)

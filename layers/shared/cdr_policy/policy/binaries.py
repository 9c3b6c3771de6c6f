"""The binary names that are never enforced against cluster-wide: shells, interpreters, init systems,
supervisors, container runtimes, node agents and everyday utilities. A behaviour rule may name a
binary CDR observed (``policy.behaviours``), and the admission of every bundle (``admission``)
judges what a kill rule does: neither lets a name from this list become "kill it in every pod".
"""

from __future__ import annotations

import re

INTERPRETER = re.compile(r"^(python|perl|ruby|php|node|nodejs|java|lua|luajit|pypy|deno|bun|dotnet)[\d.]*$")
SPARED = frozenset(
    {
        # shells
        "sh",
        "bash",
        "dash",
        "zsh",
        "ksh",
        "mksh",
        "ash",
        "csh",
        "tcsh",
        "fish",
        "busybox",
        "toybox",
        # init systems, supervisors, runtimes, node agents
        "init",
        "systemd",
        "tini",
        "dumb-init",
        "catatonit",
        "s6-svscan",
        "s6-supervise",
        "supervisord",
        "runit",
        "runc",
        "crun",
        "containerd",
        "containerd-shim",
        "containerd-shim-runc-v2",
        "conmon",
        "pause",
        "kubelet",
        "dockerd",
        "docker-init",
        "cilium-agent",
        "tetragon",
        "kube-proxy",
        "coredns",
        # everyday utilities
        "env",
        "cat",
        "ls",
        "cp",
        "mv",
        "rm",
        "ln",
        "mkdir",
        "chmod",
        "chown",
        "tar",
        "gzip",
        "gunzip",
        "ps",
        "kill",
        "sleep",
        "timeout",
        "sed",
        "awk",
        "gawk",
        "grep",
        "find",
        "xargs",
        "head",
        "tail",
        "tee",
        "date",
        "curl",
        "wget",
        "sudo",
        "su",
        "su-exec",
        "gosu",
        "setpriv",
        "nice",
        "ionice",
        "true",
        "false",
        "test",
        "echo",
        "printf",
        "sort",
        "uniq",
        "wc",
        "cut",
        "tr",
        "stat",
        "touch",
        "basename",
        "dirname",
    }
)


def refuse_cluster_wide(name: str) -> str | None:
    """Why ``name`` may never be killed in every pod (None: it may)."""
    if name in SPARED or INTERPRETER.match(name):
        return "shell, interpreter, runtime or everyday utility: never blocked on evidence"
    return None

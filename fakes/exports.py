"""Tetragon and Hubble export lines, written the way the engines write them (``events/exports/README.md``
cites the formats): protojson with proto field names, one event per line. The demo and the
benchmarks write them for the objects of a real bundle; the static fixtures are in ``events/exports``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_KPROBE_ACTION = {
    "Post": "KPROBE_ACTION_POST",
    "Sigkill": "KPROBE_ACTION_SIGKILL",
    "Override": "KPROBE_ACTION_OVERRIDE",
}


@dataclass(frozen=True)
class Workload:
    namespace: str
    name: str
    pod: str
    binary: str = "/usr/bin/curl"
    kind: str = "Deployment"


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond:06d}000Z"


def _process(w: Workload, pid: int, at: datetime) -> dict[str, Any]:
    return {
        "exec_id": f"bm9kZTo{pid}",
        "pid": pid,
        "uid": 1000,
        "cwd": "/app",
        "binary": w.binary,
        "arguments": "-s https://example.invalid/",
        "flags": "execve clone",
        "start_time": _time(at),
        "auid": 4294967295,
        "pod": {
            "namespace": w.namespace,
            "name": w.pod,
            "container": {"id": f"containerd://{pid:064x}", "name": w.name, "pid": 42},
            "pod_labels": {"app": w.name},
            "workload": w.name,
            "workload_kind": w.kind,
        },
        "docker": f"{pid:015x}",
        "parent_exec_id": "bm9kZToxMjM0",
        "tid": pid,
    }


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def tetragon_connect(
    *, policy: str, action: str, daddr: str, dport: int, w: Workload, node: str, at: datetime, pid: int = 4242
) -> bytes:
    """A ``tcp_connect`` kprobe event (``sock_arg``) of ``policy`` with a channel's action name."""
    family = "AF_INET6" if ":" in daddr else "AF_INET"
    sock = {
        "family": family,
        "type": "SOCK_STREAM",
        "protocol": "IPPROTO_TCP",
        "saddr": "10.244.1.17" if family == "AF_INET" else "fd00:10:244:1::17",
        "daddr": daddr,
        "sport": 40000 + pid % 20000,
        "dport": dport,
        "cookie": str(18446615442862350000 + pid),
        "state": "TCP_SYN_SENT",
    }
    kprobe = {
        "process": _process(w, pid, at),
        "function_name": "tcp_connect",
        "args": [{"sock_arg": sock}],
        "action": _KPROBE_ACTION[action],
        "policy_name": policy,
        "return_action": "KPROBE_ACTION_POST",
        "message": "cdr-policy: connection to a blocked address",
        "tags": ["cdr-policy", "network"],
    }
    return _line({"process_kprobe": kprobe, "node_name": node, "time": _time(at)})


def tetragon_exec(
    *, policy: str, action: str, path: str, w: Workload, node: str, at: datetime, pid: int = 4343
) -> bytes:
    """A ``security_bprm_check`` kprobe event (``linux_binprm_arg``) of a behaviour policy."""
    kprobe = {
        "process": _process(w, pid, at),
        "function_name": "security_bprm_check",
        "args": [{"linux_binprm_arg": {"path": path, "permission": "-rwxr-xr-x"}}],
        "action": _KPROBE_ACTION[action],
        "policy_name": policy,
        "message": "cdr-policy: behaviour rule",
        "tags": ["cdr-policy", "behaviour"],
    }
    return _line({"process_kprobe": kprobe, "node_name": node, "time": _time(at)})


def hubble_flow(
    *,
    verdict: str,
    destination: str,
    dport: int,
    denied_by: tuple[str, ...],
    w: Workload,
    node: str,
    at: datetime,
    direction: str = "EGRESS",
) -> bytes:
    """A flow of Hubble's exporter: ``{"flow": ..., "node_name", "time"}``."""
    flow: dict[str, Any] = {
        "time": _time(at),
        "uuid": hashlib.sha256(f"{destination}:{dport}:{at.isoformat()}".encode()).hexdigest()[:32],
        "verdict": verdict,
    }
    if verdict in ("DROPPED", "AUDIT"):
        flow["drop_reason"] = 181
        flow["drop_reason_desc"] = "POLICY_DENY"
    flow["IP"] = {
        "source": "10.244.1.17",
        "destination": destination,
        "ipVersion": "IPv6" if ":" in destination else "IPv4",
    }
    flow["l4"] = {"TCP": {"source_port": 40312, "destination_port": dport, "flags": {"SYN": True}}}
    flow["source"] = {
        "ID": 1932,
        "identity": 31245,
        "namespace": w.namespace,
        "labels": [f"k8s:app={w.name}", f"k8s:io.kubernetes.pod.namespace={w.namespace}"],
        "pod_name": w.pod,
        "workloads": [{"name": w.name, "kind": w.kind}],
    }
    flow["destination"] = {"identity": 16777219, "labels": ["reserved:world"]}
    flow["Type"] = "L3_L4"
    flow["node_name"] = node
    flow["traffic_direction"] = direction
    flow["is_reply"] = False
    flow["Summary"] = "TCP Flags: SYN"
    if denied_by:
        flow["egress_denied_by"] = [
            {"name": name, "labels": [f"k8s:io.cilium.k8s.policy.name={name}"], "revision": "7"} for name in denied_by
        ]
    return _line({"flow": flow, "node_name": node, "time": _time(at)})

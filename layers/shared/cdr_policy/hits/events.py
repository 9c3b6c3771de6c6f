"""One line of an engine's JSON export -> the few fields attribution needs, and nothing else.

Both engines export protojson with proto field names, one event per line:

- **Tetragon** (``exportFilename``, ``tetragon.GetEventsResponse``): ``process_kprobe`` with
  ``policy_name``, ``function_name``, ``action`` (``KPROBE_ACTION_*``; absent means
  ``KPROBE_ACTION_UNKNOWN``, protojson leaves out zero values), ``args[]`` (``sock_arg`` of
  ``tcp_connect``: ``daddr``, ``dport``, ``protocol``; ``sockaddr_arg`` of
  ``security_socket_connect``: ``addr``, ``port``), ``process.pod`` (``namespace``, ``name``,
  ``workload``), beside ``node_name`` and ``time``.
- **Hubble** (Cilium's ``hubble-export-file-path``, ``observer.ExportEvent``): ``{"flow": {...},
  "node_name", "time"}`` with ``verdict``, ``drop_reason_desc``, ``traffic_direction``,
  ``IP.destination``, ``l4`` (``TCP``/``UDP``/``SCTP`` ``destination_port``), ``source``
  (``namespace``, ``pod_name``, ``workloads[].name``) and ``egress_denied_by[]`` (``name``,
  ``namespace``: the policies that denied it).

Hostile input is bounded: a line is at most ``MAX_LINE_BYTES`` (a longer one is malformed and
skipped without being held whole, ``hits.files``), JSON nesting beyond the parser's recursion
limit, bytes that are not UTF-8 and values of the wrong type make the line malformed. What is
kept of a line is its destination (an address, a port), the policy names, the action or verdict,
and the namespace, workload and pod names, each only when it is a valid Kubernetes name; nothing
else of an event's text is kept or echoed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from cdr_policy.netprefix import BITS, Prefix, folded
from cdr_policy.policy.naming import is_dns_label, is_dns_subdomain

TETRAGON, CILIUM = "tetragon", "cilium"
ENGINES = (TETRAGON, CILIUM)
MAX_LINE_BYTES = 1 << 20
# The names an event's action or verdict may take (anything else counts as OTHER).
TETRAGON_ACTIONS = frozenset(
    {
        "UNKNOWN",
        "POST",
        "FOLLOWFD",
        "SIGKILL",
        "UNFOLLOWFD",
        "OVERRIDE",
        "COPYFD",
        "GETURL",
        "DNSLOOKUP",
        "NOPOST",
        "SIGNAL",
        "TRACKSOCK",
        "UNTRACKSOCK",
        "NOTIFYENFORCER",
        "CLEANUPENFORCERNOTIFICATION",
    }
)
CILIUM_VERDICTS = frozenset(
    {"VERDICT_UNKNOWN", "FORWARDED", "DROPPED", "ERROR", "AUDIT", "REDIRECTED", "TRACED", "TRANSLATED"}
)
# Verdicts of a flow a deny policy stopped (DROPPED) or would have stopped in audit mode (AUDIT).
DENIED_VERDICTS = frozenset({"DROPPED", "AUDIT"})
# Actions and verdicts that report what an audit (would-block) saw rather than what was stopped.
AUDIT_ACTIONS = frozenset({"POST", "AUDIT"})
OTHER = "OTHER"
_HOUR = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}):\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]00:00)$")
_PROTOCOLS = {"IPPROTO_TCP": "tcp", "IPPROTO_UDP": "udp"}


class Malformed(ValueError):
    """A line that is not an event of the engine's export format."""


@dataclass(frozen=True)
class Event:
    """What attribution reads of one event. ``policies``: the Tetragon policy that produced it, or
    the Cilium policies that denied it; ``hour``: the hour it was observed (``2026-01-10T03:00:00Z``)
    or None when the line says none."""

    engine: str
    policies: tuple[str, ...]
    action: str
    address: Prefix | None
    port: str | None
    namespace: str | None
    workload: str | None
    pod: str | None
    hour: str | None


def parse_line(engine: str, line: bytes) -> Event | None:
    """The event on ``line`` (None: an event of another kind, which no policy of ours produces);
    Malformed when the line is not one of the export's events."""
    if len(line) > MAX_LINE_BYTES:
        raise Malformed("line too long")
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Malformed("not JSON") from exc
    if not isinstance(doc, dict):
        raise Malformed("not a JSON object")
    return _tetragon(doc) if engine == TETRAGON else _hubble(doc)


def _tetragon(doc: dict[str, Any]) -> Event | None:
    kprobe = doc.get("process_kprobe")
    if kprobe is None:
        return None
    _need(kprobe, dict)
    policy = _need(kprobe.get("policy_name", ""), str)
    action = _need(kprobe.get("action", "KPROBE_ACTION_UNKNOWN"), str).removeprefix("KPROBE_ACTION_")
    address = port = None
    protocol = "tcp"
    for arg in _need(kprobe.get("args", []), list):
        _need(arg, dict)
        if "sock_arg" in arg:
            sock = _need(arg["sock_arg"], dict)
            protocol = _PROTOCOLS.get(str(sock.get("protocol")), protocol)
            address = address or _address(sock.get("daddr"))
            port = port or _port(sock.get("dport"))
        elif "sockaddr_arg" in arg:
            sockaddr = _need(arg["sockaddr_arg"], dict)
            address = _address(sockaddr.get("addr")) or address
            port = _port(sockaddr.get("port")) or port
    pod = _need(_need(kprobe.get("process", {}), dict).get("pod", {}), dict)
    return Event(
        engine=TETRAGON,
        policies=(policy,) if policy else (),
        action=action if action in TETRAGON_ACTIONS else OTHER,
        address=address,
        port=f"{protocol}/{port}" if port else None,
        namespace=_label(pod.get("namespace")),
        workload=_subdomain(pod.get("workload")),
        pod=_subdomain(pod.get("name")),
        hour=_hour(doc.get("time")),
    )


def _hubble(doc: dict[str, Any]) -> Event | None:
    flow = doc.get("flow")
    if flow is None:
        return None
    _need(flow, dict)
    verdict = _need(flow.get("verdict", "VERDICT_UNKNOWN"), str)
    denied_by = []
    for policy in _need(flow.get("egress_denied_by", []), list):
        name = _need(policy, dict).get("name")
        if isinstance(name, str) and is_dns_subdomain(name):
            denied_by.append(name)
    if _need(flow.get("traffic_direction", "EGRESS"), str) != "EGRESS":
        denied_by = []  # our policies deny egress only
    ip = _need(flow.get("IP", {}), dict)
    l4 = _need(flow.get("l4", {}), dict)
    port = None
    for protocol in ("TCP", "UDP", "SCTP"):
        if protocol in l4:
            number = _port(_need(l4[protocol], dict).get("destination_port"))
            port = f"{protocol.lower()}/{number}" if number else None
    source = _need(flow.get("source", {}), dict)
    workloads = _need(source.get("workloads", []), list)
    workload = _need(workloads[0], dict).get("name") if workloads else None
    return Event(
        engine=CILIUM,
        policies=tuple(denied_by),
        action=verdict if verdict in CILIUM_VERDICTS else OTHER,
        address=_address(ip.get("destination")),
        port=port,
        namespace=_label(source.get("namespace")),
        workload=_subdomain(workload),
        pod=_subdomain(source.get("pod_name")),
        hour=_hour(doc.get("time", flow.get("time"))),
    )


def _need(value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        raise Malformed(f"a field is not a {kind.__name__}")
    return value


def _address(value: Any) -> Prefix | None:
    """A full-length address (IPv4-mapped IPv6 folded to IPv4), or None."""
    if not isinstance(value, str) or "/" in value:
        return None
    prefix = folded(value)
    return prefix if prefix is not None and prefix.length == BITS[prefix.version] else None


def _port(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    text = str(value)
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def _label(value: Any) -> str | None:
    return value if is_dns_label(value) else None


def _subdomain(value: Any) -> str | None:
    return value if is_dns_subdomain(value) else None


def _hour(value: Any) -> str | None:
    match = _HOUR.match(value) if isinstance(value, str) else None
    return f"{match.group(1)}:00:00Z" if match else None

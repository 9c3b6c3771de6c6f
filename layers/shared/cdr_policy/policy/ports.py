"""Port indicators (``tcp/4444``) and the ports no blocklist may ever deny.

A port block applies to every destination, so a few ports are refused outright even when a
channel sets ``deny_ports_to_world``: DNS, HTTP(S), NTP and the ports the cluster itself runs on.
"""

from __future__ import annotations

from collections.abc import Collection

NEVER_BLOCK_PORTS: dict[tuple[str, int], str] = {
    ("tcp", 53): "DNS",
    ("udp", 53): "DNS",
    ("tcp", 80): "HTTP",
    ("tcp", 443): "HTTPS",
    ("udp", 443): "HTTP/3",
    ("udp", 123): "NTP",
    ("tcp", 853): "DNS over TLS",
    ("tcp", 2379): "etcd",
    ("tcp", 2380): "etcd peers",
    ("tcp", 4240): "Cilium health",
    ("tcp", 6443): "Kubernetes API server",
    ("udp", 6081): "Geneve overlay",
    ("udp", 8472): "VXLAN overlay",
    ("tcp", 10250): "kubelet",
}


def parse_port(value: str) -> tuple[str, int]:
    """``("tcp", 4444)`` from ``tcp/4444``; ValueError when malformed."""
    protocol, slash, number = value.partition("/")
    if not slash or protocol not in ("tcp", "udp") or not number.isdigit() or not 1 <= int(number) <= 65535:
        raise ValueError(f"{value!r} is not a port indicator like tcp/4444")
    return protocol, int(number)


def port_refusal(port: tuple[str, int], protected: Collection[tuple[str, int]] = ()) -> str | None:
    """Why ``port`` may never be denied: a never-block port, or one of the ``protected`` ports
    (a channel's ``protected_ports``, a cluster's ``--protected-ports``). None: it may."""
    reason = NEVER_BLOCK_PORTS.get(port)
    if reason:
        return f"never-block port: {reason}"
    return "a port this channel or cluster protects" if port in protected else None

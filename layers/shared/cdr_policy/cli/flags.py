"""The types of the command line's flags: every value is bounded when it is parsed, so that a bad
one is a usage error (``cdr-policy: error: argument --x: ...``, exit 2) before anything runs."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from cdr_policy import layout
from cdr_policy.timeutil import format_duration, parse_duration

# A digest may be given by any unique prefix this long or longer (48 bits: a collision among a
# channel's bundles is not a practical concern, and an ambiguous one is reported).
MIN_DIGEST_PREFIX = 12
_HEX = re.compile(r"[0-9a-f]+")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _shown(text: str) -> str:
    return repr(text[:40]) + ("..." if len(text) > 40 else "")


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """A whole number in ``low..high``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low}..{high}")
        return value

    return parse


def duration(low: float, high: float, why: str = "") -> Callable[[str], float]:
    """A duration (``30s``, ``5m``, ``1h``, ``2d``) in ``low..high`` seconds."""

    def parse(text: str) -> float:
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        if not low <= seconds <= high:
            span = f"{format_duration(low)}..{format_duration(high)}"
            raise argparse.ArgumentTypeError(f"{_shown(text)} is out of range: use {span}{f' ({why})' if why else ''}")
        return seconds

    return parse


def port(text: str) -> int:
    """A TCP port, 0 (off) to 65535."""
    return bounded_int(0, 65535)(text)


def digest_prefix(text: str) -> str:
    """A bundle digest, or a prefix of one of at least ``MIN_DIGEST_PREFIX`` hex digits (resolved
    against the store by ``cli.digests.resolve``)."""
    value = text.strip().lower()
    if not _HEX.fullmatch(value) or not MIN_DIGEST_PREFIX <= len(value) <= 64:
        raise argparse.ArgumentTypeError(
            f"{_shown(text)} is not a bundle digest: give the 64 hex digits or a unique prefix of "
            f"at least {MIN_DIGEST_PREFIX}"
        )
    return value


def channel_name(text: str) -> str:
    """A channel's name (a DNS label of at most 32 characters: a key segment and a label value)."""
    if not layout.is_channel_name(text):
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a channel name (1-32 lower-case letters, digits, '-')")
    return text


def dns_label(text: str) -> str:
    """A Kubernetes namespace name (an RFC 1123 label)."""
    if not _DNS_LABEL.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a namespace name (RFC 1123 label: a-z, 0-9, '-')")
    return text


def text(max_chars: int) -> Callable[[str], str]:
    """Free text on one line, at most ``max_chars`` characters (kept in documents and shown in lists)."""

    def parse(value: str) -> str:
        if len(value) > max_chars:
            raise argparse.ArgumentTypeError(f"{len(value)} characters: at most {max_chars}")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise argparse.ArgumentTypeError("control characters (line breaks, escapes) are not allowed")
        return value

    return parse


def add_metrics_arguments(parser: argparse.ArgumentParser, *, port_default: int, host_default: str, when: str) -> None:
    """``--metrics-port`` and ``--metrics-host``: where a long-running mode serves ``/metrics``
    (Prometheus), ``/healthz`` and ``/readyz``; ``when`` says in which mode."""
    parser.add_argument(
        "--metrics-port",
        type=port,
        default=port_default,
        metavar="PORT",
        help=f"{when}: serve /metrics (Prometheus), /healthz and /readyz on this port (0: off; default "
        f"{port_default or 'off'})",
    )
    parser.add_argument("--metrics-host", default=host_default, metavar="ADDRESS", help="address to serve them on")

"""The command line's argument parser: argparse with the project's one error line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from cdr_policy.errors import print_error

if TYPE_CHECKING:
    from cdr_policy.admission import Protection


class Parser(argparse.ArgumentParser):
    """argparse with the project's one error line (``cdr-policy: error: …``, exit 2), without the usage block."""

    def error(self, message: str) -> NoReturn:
        print_error(f"{message} (see {self.prog} --help)")
        raise SystemExit(2)


def invoked_as() -> str:
    """The command as the user typed it (``.venv/bin/cdr-policy``), for the commands a message
    tells them to run next; ``cdr-policy`` when it was started another way."""
    first = sys.argv[0] if sys.argv else ""
    return first if Path(first).name == "cdr-policy" else "cdr-policy"


def _listed(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _cidrs(text: str) -> tuple[str, ...]:
    from cdr_policy.admission import protection

    cidrs = _listed(text)
    try:
        protection(cidrs, where="the command line")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return cidrs


def _ports(text: str) -> tuple[str, ...]:
    from cdr_policy.admission import protection

    ports = _listed(text)
    try:
        protection(ports=ports, where="the command line")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return ports


def add_protection_arguments(parser: argparse.ArgumentParser, whose: str) -> None:
    """``--protected-cidrs`` and ``--protected-ports``: what no admitted bundle may block."""
    parser.add_argument(
        "--protected-cidrs",
        type=_cidrs,
        default=(),
        metavar="CIDR[,CIDR...]",
        help=f"{whose} own pod, service and node ranges: a bundle blocking any of them is refused",
    )
    parser.add_argument(
        "--protected-ports",
        type=_ports,
        default=(),
        metavar="PROTO/PORT[,...]",
        help=f"ports ({whose} own, like tcp/8443) no deny of a bundle may name, beyond DNS, HTTP(S) and the "
        "cluster's own ports",
    )


def protection_of(args: argparse.Namespace, where: str) -> Protection:
    """The ``Protection`` of ``add_protection_arguments``' flags."""
    from cdr_policy.admission import protection

    return protection(args.protected_cidrs, args.protected_ports, where=where)

"""Running ``cdr-policy`` in-process the way a user runs it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cdr_policy.cli import main


def run(argv: Sequence[str], env: Mapping[str, str], capsys: Any) -> tuple[int, str, str]:
    """``cdr-policy ARGV`` with ``env``: exit code, standard output, standard error."""
    code = main(list(argv), dict(env))
    out, err = capsys.readouterr()
    return code, out, err


def agent_args(channel: Path, keys: Path, work: Path, *extra: str) -> list[str]:
    """``cdr-policy agent`` for the local channel in folder ``channel``, trusting ``keys``' public key."""
    return [
        "agent",
        f"--bucket={channel}",
        "--channel=local",
        "--cluster-id=laptop",
        f"--public-key={keys / 'bundle-signing.pub'}",
        f"--output-dir={work / 'applied'}",
        f"--state-dir={work / 'agent-state'}",
        *extra,
    ]


def objects(folder: Path) -> dict[str, dict[str, Any]]:
    """The objects of a policy folder, by file name."""
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))}

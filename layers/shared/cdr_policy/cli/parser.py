"""The command line's argument parser: argparse with the project's one error line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from cdr_policy.errors import print_error


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

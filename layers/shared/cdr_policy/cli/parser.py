"""The command line's argument parser: argparse with the project's one error line."""

from __future__ import annotations

import argparse
from typing import NoReturn

from cdr_policy.errors import print_error


class Parser(argparse.ArgumentParser):
    """argparse with the project's one error line (``cdr-policy: error: …``, exit 2), without the usage block."""

    def error(self, message: str) -> NoReturn:
        print_error(f"{message} (see {self.prog} --help)")
        raise SystemExit(2)

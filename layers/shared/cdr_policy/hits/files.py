"""Reading an export file whole, line by line: plain or gzip (a rotated and compressed one, told
by its first bytes, not its name), each line at most ``events.MAX_LINE_BYTES`` (a longer one is
skipped in pieces and reported as ``TOO_LONG``, never held whole)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cdr_policy.errors import CdrPolicyError
from cdr_policy.hits.events import MAX_LINE_BYTES

GZIP_MAGIC = b"\x1f\x8b"
TOO_LONG = b""  # stands for a line over MAX_LINE_BYTES (an empty line is never yielded)


class ExportError(CdrPolicyError):
    """An export file that cannot be read (missing, unreadable, a broken gzip stream)."""


def open_export(path: Path) -> BinaryIO:
    """The file's bytes, decompressed when it is gzip."""
    raw = path.open("rb")
    if raw.read(2) == GZIP_MAGIC:
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    raw.seek(0)
    return raw


def read_line(stream: BinaryIO) -> bytes | None:
    """The next line (with its newline when it has one), ``TOO_LONG`` for a line over the limit
    (read past in pieces), None at the end."""
    line = stream.readline(MAX_LINE_BYTES + 1)
    if not line:
        return None
    if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
        while line and not line.endswith(b"\n"):
            line = stream.readline(MAX_LINE_BYTES + 1)
        return TOO_LONG
    return line


def lines(path: Path) -> Iterator[bytes]:
    """Every non-blank line of ``path`` (see ``read_line``); ExportError when it cannot be read."""
    try:
        with open_export(path) as stream:
            while (line := read_line(stream)) is not None:
                if line == TOO_LONG or line.strip():
                    yield line
    except FileNotFoundError as exc:
        raise ExportError(f"cannot read {path}: no such file") from exc
    except OSError as exc:  # gzip.BadGzipFile is an OSError
        raise ExportError(f"cannot read {path} ({exc.strerror or type(exc).__name__})") from exc
    except (EOFError, zlib.error) as exc:
        raise ExportError(f"cannot read {path} (a truncated or corrupt gzip stream)") from exc

"""Following one export file as an engine writes and rotates it, from where the last run stopped.

Tetragon and Hubble write their exports with lumberjack: when the file is full it is renamed
(``tetragon-2026-01-10T03-00-00.000.log``, gzipped later when compression is on) and a new one is
started under the same name. A ``Tail`` keeps a ``Position``: the file's identity (the SHA-256 of
its first line, ``fingerprint``; a renamed or compressed file keeps it, a new one has another) and
the offset of the first byte not yet counted. So:

- while running, when the name holds a new file, the old one (still open) is read to its end first;
  a file truncated in place (copytruncate) is read again from the start;
- after a restart, the position's file is found by its fingerprint, under the name or among the
  rotated files beside it (plain or gzip), and read from the offset before the current file; when
  it is gone, that is a *gap* (counted; what it held after the offset is lost);
- only complete lines are returned: a line still being written is left for the next read; a line
  longer than ``events.MAX_LINE_BYTES`` is skipped in pieces and returned as ``files.TOO_LONG``.

Memory is bounded by the line limit and the batch size, whatever the file's size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cdr_policy.hits.events import MAX_LINE_BYTES
from cdr_policy.hits.files import TOO_LONG, open_export

FINGERPRINT_BYTES = 4096
# Rotated files looked at for a lost position (the newest first).
MAX_ROTATED = 64


@dataclass(frozen=True)
class Position:
    fingerprint: str | None  # None: the file had no complete first line yet (nothing counted)
    offset: int

    def to_dict(self) -> dict[str, object]:
        return {"fingerprint": self.fingerprint, "offset": self.offset}


def fingerprint(stream: BinaryIO) -> str | None:
    """The identity of a file: the SHA-256 of its first line (or first ``FINGERPRINT_BYTES``);
    None while the first line is incomplete. Leaves the stream at its start."""
    stream.seek(0)
    head = stream.readline(FINGERPRINT_BYTES)
    stream.seek(0)
    if not head or (not head.endswith(b"\n") and len(head) < FINGERPRINT_BYTES):
        return None
    return hashlib.sha256(head).hexdigest()


class Tail:
    def __init__(self, path: Path, position: Position | None = None) -> None:
        self.path = path
        self.position = position or Position(None, 0)
        self.gaps = 0
        self.rotations = 0
        self._stream: BinaryIO | None = None
        self._inode: int | None = None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def lines(self, limit: int) -> Iterator[bytes]:
        """Up to ``limit`` complete lines; ``position`` moves past each one as it is returned."""
        given = 0
        while given < limit:
            if self._stream is None and not self._open():
                return
            stream = self._stream
            assert stream is not None
            start = stream.tell()
            line: bytes | None = stream.readline(MAX_LINE_BYTES + 1)
            assert line is not None
            complete = line.endswith(b"\n")
            if not complete and len(line) > MAX_LINE_BYTES:
                line, complete = self._skip_long(), True
                if line is None:  # the rest of the long line is not written yet
                    stream.seek(start)
                    return
            if not complete:
                if self._finished():  # the open file will not grow: its last line is torn, if any
                    if line:
                        self._advance(stream.tell())
                        given += 1
                        yield line
                    self._switch()
                    continue
                stream.seek(start)
                if not self._truncated():
                    return
                continue
            self._advance(stream.tell())
            given += 1
            if line == TOO_LONG or line.strip():
                yield line

    def _skip_long(self) -> bytes | None:
        assert self._stream is not None
        while True:
            piece = self._stream.readline(MAX_LINE_BYTES + 1)
            if not piece:
                return None
            if piece.endswith(b"\n"):
                return TOO_LONG

    def _advance(self, offset: int) -> None:
        assert self._stream is not None
        fp = self.position.fingerprint
        if fp is None:
            fp = fingerprint(self._stream)
            self._stream.seek(offset)
        self.position = Position(fp, offset)

    # -- which file to read --------------------------------------------------------------------

    def _open(self) -> bool:
        """Open where the position is: the named file, or first the rotated file it points into."""
        try:
            stream = self.path.open("rb")
        except FileNotFoundError:
            return False
        current = fingerprint(stream)
        wanted = self.position.fingerprint
        if wanted is not None and current != wanted:
            stream.close()
            rotated = self._find(wanted)
            if rotated is None:
                self.gaps += 1
                self.position = Position(None, 0)
                return self._open()
            return self._open_rotated(rotated)
        size = os.fstat(stream.fileno()).st_size
        offset = self.position.offset if wanted is not None and self.position.offset <= size else 0
        stream.seek(offset)
        self.position = Position(current if offset else wanted or current, offset)
        self._stream, self._inode = stream, os.fstat(stream.fileno()).st_ino
        return True

    def _open_rotated(self, path: Path) -> bool:
        try:
            stream = open_export(path)
            stream.seek(self.position.offset)
        except (OSError, EOFError):
            self.gaps += 1
            self.position = Position(None, 0)
            return self._open()
        self._stream, self._inode = stream, None
        return True

    def _finished(self) -> bool:
        """The open file is a rotated one, or the name now holds another file (lumberjack renames
        a full file before it starts the next: nothing more is written to it)."""
        if self._inode is None:
            return True
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return False  # renamed, the next one not created yet: look again later

    def _truncated(self) -> bool:
        """The named file was cut short in place (copytruncate): start it over."""
        assert self._stream is not None
        if os.fstat(self._stream.fileno()).st_size >= self._stream.tell():
            return False
        self._stream.seek(0)
        self.position = Position(None, 0)
        return True

    def _switch(self) -> None:
        self.rotations += self._inode is not None
        self.close()
        self.position = Position(None, 0)

    def _find(self, wanted: str) -> Path | None:
        """The rotated file beside the named one whose first line is ``wanted``'s."""
        stem = self.path.name.split(".")[0]
        candidates = []
        for entry in self.path.parent.iterdir():
            if entry.name != self.path.name and entry.name.startswith(stem) and entry.is_file():
                candidates.append(entry)
        candidates.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for candidate in candidates[:MAX_ROTATED]:
            try:
                with open_export(candidate) as stream:
                    if fingerprint(stream) == wanted:
                        return candidate
            except (OSError, EOFError):
                continue
        return None

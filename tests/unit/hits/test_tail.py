"""Following an export file the way the engines write it: appended line by line, renamed when full
(lumberjack), gzipped later, truncated in place by other rotators; and resuming after a restart
from the position kept, with every complete line returned exactly once."""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import pytest

from cdr_policy.hits import tail as tail_module
from cdr_policy.hits.files import TOO_LONG
from cdr_policy.hits.tail import Tail


def _line(i: int) -> bytes:
    return b'{"n":%d}\n' % i


def _append(path: Path, *lines: bytes) -> None:
    with path.open("ab") as f:
        for line in lines:
            f.write(line)


def _read(t: Tail, limit: int = 10_000) -> list[bytes]:
    return list(t.lines(limit))


def test_lines_are_returned_once_and_a_line_being_written_waits(tmp_path: Path) -> None:
    path = tmp_path / "tetragon.log"
    _append(path, _line(1), _line(2), b'{"n":3')
    t = Tail(path)
    assert _read(t) == [_line(1), _line(2)]
    assert _read(t) == []
    _append(path, b"}\n")
    assert _read(t) == [b'{"n":3}\n']
    assert t.position.offset == path.stat().st_size


def test_a_rotation_while_running_finishes_the_old_file_first(tmp_path: Path) -> None:
    path = tmp_path / "tetragon.log"
    _append(path, _line(1))
    t = Tail(path)
    assert _read(t) == [_line(1)]
    _append(path, _line(2))  # written after our last read, before the rename
    path.rename(tmp_path / "tetragon-2026-01-10T03-00-00.000.log")
    _append(path, _line(3))
    assert _read(t) == [_line(2), _line(3)]
    assert t.rotations == 1 and t.gaps == 0


def test_a_restart_resumes_in_the_rotated_and_compressed_file_it_stopped_in(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    _append(path, _line(1), _line(2), _line(3))
    t = Tail(path)
    assert _read(t, 2) == [_line(1), _line(2)]
    saved = dataclasses.replace(t.position)
    t.close()
    # down: the file fills, is renamed and compressed, a new one is started
    _append(path, _line(4))
    old = path.read_bytes()
    path.unlink()
    with gzip.open(tmp_path / "events-2026-01-10T03-00-00.000.log.gz", "wb") as gz:
        gz.write(old)
    _append(path, _line(5))
    again = Tail(path, saved)
    assert _read(again) == [_line(3), _line(4), _line(5)]
    assert again.gaps == 0


def test_a_rotated_file_gone_before_the_restart_is_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    _append(path, _line(1), _line(2))
    t = Tail(path)
    assert _read(t, 1) == [_line(1)]
    saved = t.position
    path.unlink()
    _append(path, _line(7))
    again = Tail(path, saved)
    assert _read(again) == [_line(7)]
    assert again.gaps == 1


def test_a_file_truncated_in_place_is_read_again_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    _append(path, _line(1), _line(2))
    t = Tail(path)
    assert _read(t) == [_line(1), _line(2)]
    os.truncate(path, 0)
    _append(path, _line(9))
    assert _read(t) == [_line(9)]


def test_a_huge_line_is_skipped_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tail_module, "MAX_LINE_BYTES", 64)
    monkeypatch.setattr("cdr_policy.hits.files.MAX_LINE_BYTES", 64)
    path = tmp_path / "events.log"
    _append(path, b"x" * 1000)
    t = Tail(path)
    assert _read(t) == []  # not finished yet
    _append(path, b"\n", _line(1))
    assert _read(t) == [TOO_LONG, _line(1)]


def test_a_missing_file_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    t = Tail(path)
    assert _read(t) == []
    _append(path, _line(1))
    assert _read(t) == [_line(1)]

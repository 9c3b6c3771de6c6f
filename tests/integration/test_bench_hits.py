"""``make bench`` (h) on a few megabytes: the node reader's process reads the generated exports
against a bundle of 250,000 prefixes, its report counts exactly the lines written, and a restart
on the same files counts nothing twice (the gigabyte run is ``make bench BENCH_ARGS="--only h"``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks.__main__ as bench

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_reader_part_counts_what_was_written_and_nothing_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--only", "h", "--hits-bytes", "3000000", "--workdir", str(tmp_path / "w"), "--results", str(tmp_path)]
    code = bench.main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads((tmp_path / "latest.json").read_text())["hits"]
    assert result["counts_match"] and result["prefixes"] == 250_000
    whole, restart = result["whole"], result["restart"]
    assert whole["bytes"] >= 3_000_000 and whole["totals"]["ours"] > 0 and whole["totals"]["malformed"] > 0
    assert restart["totals"] == whole["totals"]  # the restart found nothing new to count
    assert 0 < whole["maxrss_kib"] and whole["rows"] > 0
    assert "| (h) |" in (tmp_path / "latest.md").read_text()

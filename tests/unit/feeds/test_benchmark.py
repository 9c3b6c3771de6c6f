"""The benchmark machinery on a small input (the million-line run is ``python -m benchmarks``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import benchmarks.__main__ as bench
from benchmarks.generate import JUNK, POISON, generate, generate_netset
from benchmarks.runners import read_prefixes, run_collapse, run_ours


def test_generated_input_is_deterministic_and_in_the_real_formats(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", 3_000, seed=3)
    b = generate(tmp_path / "b", 3_000, seed=3)
    assert a.full.read_bytes() == b.full.read_bytes() and a.lines == 3_000
    text = a.full.read_bytes()
    assert b"# END " in text and b"# DstIP" in text and b"\r\n" in text and b" ; SBL" in text
    assert a.ipv6_lines > 0 and a.junk_lines == len(JUNK) * 4
    ipv4_only = a.ipv4_only.read_text()
    assert ":" not in ipv4_only and "010.0.0.1" not in ipv4_only.split()
    assert not set(POISON) & set(ipv4_only.split())
    assert generate(tmp_path / "c", 3_000, seed=4).full.read_bytes() != text


def test_generated_netset_is_deterministic_public_and_mostly_cidrs(tmp_path: Path) -> None:
    a = generate_netset(tmp_path / "a.netset", 2_000, seed=3).read_bytes()
    assert a == generate_netset(tmp_path / "b.netset", 2_000, seed=3).read_bytes()
    lines = a.decode().splitlines()
    assert len(lines) == 2_000 and lines[0].startswith("#")
    entries = [line for line in lines if not line.startswith("#")]
    assert sum("/" in line for line in entries) > len(entries) // 2
    ours = run_ours(tmp_path / "a.netset", tmp_path / "ours.bin")
    assert ours["rejected_parse"] == 0 and ours["rejected_guard"] == 0 and ours["entries"] == len(entries)


def test_ours_equals_collapse_addresses_on_the_generated_input(tmp_path: Path) -> None:
    gen = generate(tmp_path, 5_000, seed=1)
    ours = run_ours(gen.full, tmp_path / "ours.bin")
    ref = run_collapse(gen.full, tmp_path / "ref.bin")
    assert read_prefixes(tmp_path / "ours.bin") == read_prefixes(tmp_path / "ref.bin")
    assert ours["prefixes"] == ref["prefixes"]
    assert ours["rejected_parse"] == len(JUNK) * 4  # every junk line is refused by the parser
    assert isinstance(ours["rejected_guard"], int) and ours["rejected_guard"] >= len(POISON)


def test_benchmark_run_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench.main(
        [
            *("--only", "a", "--lines", "2000", "--repeat", "1"),
            *("--workdir", str(tmp_path / "w"), "--results", str(tmp_path / "r")),
        ]
    )
    assert code == 0
    table = (tmp_path / "r" / "latest.md").read_text()
    assert "| ours (`cdr_policy.feeds`) |" in table and "ours == collapse_addresses: **yes**" in table
    assert "| ours, netset |" in table
    if shutil.which("iprange"):
        assert "ours without the filter == iprange on the IPv4 input: **yes**" in table
        assert "ours == iprange: **yes**" in table  # the netset
    assert (tmp_path / "r" / "latest.json").exists() and table in capsys.readouterr().out


def test_missing_iprange_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "iprange" else real_which(name))
    code = bench.main(
        [
            *("--only", "a", "--lines", "1000", "--repeat", "1"),
            *("--workdir", str(tmp_path / "w"), "--results", str(tmp_path)),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "apt-get install -y iprange" in out
    assert "| FireHOL `iprange` - | parse + aggregate, IPv4 lines only, no filter | not installed |" in out
    assert (
        bench.main(
            [
                "--lines",
                "1000",
                "--repeat",
                "1",
                "--strict",
                *("--only", "a"),  # part (a) alone: the target needs iprange
                "--workdir",
                str(tmp_path / "w2"),
                "--results",
                str(tmp_path),
            ]
        )
        == 1
    )

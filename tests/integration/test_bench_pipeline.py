"""``make bench``'s whole-path parts (b)-(e) on a small feed: every contender runs, the handlers
publish a bundle on moto, the agent's unchanged poll is one bodiless request, and the table
carries the targets (the million-address run is ``make bench``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks.__main__ as bench

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_whole_path_parts_run_and_report_their_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "--only",
        "bcde",
        "--repeat",
        "1",
        "--addresses",
        "2000",
    ]  # (f): test_fleet_simulation; (h): test_bench_hits
    code = bench.main([*args, "--workdir", str(tmp_path / "w"), "--results", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads((tmp_path / "r" / "latest.json").read_text())["pipeline"]
    big = result["cli"]["big"]
    assert big["feed_entries"] > 1_800 and big["within_budget"] and big["left_out"] == 0
    for name in ("cdr_fetch", "feed_sync", "render", "publish"):
        assert result["handlers"][name]["maxrss_kib"] > 0
        assert result["handlers"][name]["first_call_modules"] > 0
    assert result["handlers"]["cdr_fetch"]["result"]["fetched"] > 0
    assert result["handlers"]["render"]["result"]["failed"] == 0
    agent = result["agent"]
    assert (agent["first"], agent["second"]) == ("applied", "unchanged")
    assert (agent["poll_requests"], agent["poll_body_bytes"], agent["requests"]) == (1, 0, 1)
    # the channel of the largest budgets was rendered, published and applied too
    assert agent["largest"]["first"] == "applied" and agent["largest"]["bundle_bytes"] > agent["bundle_bytes"]
    assert result["handlers"]["publish"]["result"]["messages"] == 2
    # (d) ran in the built layer, with and without its bytecode, and replayed every module (c) recorded
    assert set(result["imports"]) == {"bytecode", "source_only"}
    handlers = ("cdr_fetch", "feed_sync", "render", "publish")
    for imports in result["imports"].values():
        assert set(imports) == {"bare", *handlers, *(f"floor-{name}" for name in handlers)}
        assert not imports["cdr_fetch"]["numpy"] and not imports["publish"]["numpy"] and imports["render"]["numpy"]
        assert imports["floor-render"]["numpy"] and not imports["floor-publish"]["numpy"]
        assert all(not i["not_in_layer"] for i in imports.values())
    # each floor is the handler's dependencies: what it and its first call imported, less the library
    for name in handlers:
        floor = json.loads((tmp_path / "w" / "pipeline" / f"floor-{name}.json").read_text())
        assert {"aws_lambda_powertools", "boto3", "yaml"} <= set(floor)
        assert not any(m.startswith("cdr_policy") for m in floor)
    table = (tmp_path / "r" / "latest.md").read_text()
    for part in ("(b)", "(c)", "(d)", "(e)"):
        assert f"| {part} |" in table
    assert table.count("its dependencies alone") == 4
    assert "<= 2x" in table and "< 512 MiB" in table and "<= 1.5x" in table and "1 / 0" in table

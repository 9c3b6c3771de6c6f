"""Feed-ingest benchmark: ``python -m benchmarks [--lines N] [--seed S] [--repeat K] [--strict]``.

1. Generates ``--lines`` lines in the feeds' real formats (``benchmarks/generate.py``, fixed seed)
   into a temporary directory (``--workdir`` to choose one, ``--keep`` to keep it).
2. Runs, each in its own process and measured from the outside (wall time with
   ``time.perf_counter`` around the process, peak memory from ``os.wait4``'s ``ru_maxrss``):
   - **ours**: ``cdr_policy.feeds`` parse + never-block filter + aggregate (``benchmarks/runners.py``);
   - **iprange**: FireHOL ``iprange`` (Debian package ``iprange``) on the IPv4 part of the same
     input (it reads IPv4 only and would resolve hostnames through DNS);
   - **collapse_addresses**: ``ipaddress.ip_network`` + the same guard + ``collapse_addresses``.
   ``ours`` and ``iprange`` also run on a FireHOL-style netset of as many lines (CIDRs;
   ``generate_netset``). Each runs once untimed on each input (a warm-up: files in the page cache),
   then ``--repeat`` rounds of all of them, interleaved (the median is reported);
   ``collapse_addresses`` once (it takes tens of seconds at a million lines).
3. Checks that our prefixes equal ``collapse_addresses``' and that ours without the filter equal
   ``iprange``'s on the IPv4 input, prints a Markdown table and writes it to
   ``benchmarks/results/latest.md`` (and ``latest.json``; ``--results`` to change the folder).

Then the whole path (b)-(e) (``benchmarks/pipeline.py``, ``--addresses``), the fleet simulation
(f) (``benchmarks/fleet.py``, ``--fleet``), the time to protect of both deployment profiles (g)
(``benchmarks/protect.py``, ``--protect-agents``), the hits reader on a gigabyte of exports (h)
(``benchmarks/hits.py``, ``--hits-bytes``) and promotion at scale (i) (``benchmarks/promotion.py``,
``--promotion-addresses``). ``--only`` runs some of them (``--only h``; with
``make bench``: ``BENCH_ARGS="--only h"``).

The target is our wall time at most iprange's, on both inputs. ``--strict`` makes a miss (or any
mismatch) exit non-zero; a mismatch always does.
"""

from __future__ import annotations

import argparse
import compileall
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import fleet, hits, pipeline, promotion, protect
from benchmarks.generate import generate, generate_netset
from benchmarks.measure import Run, measure, python_env
from benchmarks.runners import read_iprange_output, read_prefixes

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
TARGET_RATIO = 1.0
IPRANGE_HELP = "iprange not found: install it with `sudo apt-get install -y iprange` (Debian/Ubuntu package iprange)"


def run(args: argparse.Namespace) -> int:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cdr-bench-"))
    try:
        return _run(args, work)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path) -> int:
    # Our processes import the library with its bytecode, as an installed package or the built
    # layer has it (an environment with PYTHONDONTWRITEBYTECODE would compile it in every run).
    compileall.compile_dir(REPO / "layers" / "shared" / "cdr_policy", quiet=1)
    compileall.compile_dir(REPO / "benchmarks", quiet=1)
    iprange = shutil.which("iprange")
    result: dict[str, Any] = {}
    tables: list[str] = []
    mismatch = False
    if "a" in args.only:
        result, mismatch = _feed_ingest(args, work, iprange)
        tables.append(render_markdown(result))
    if args.only & set("bcde") and args.addresses:
        result["pipeline"] = pipeline.run(work / "pipeline", args.addresses, args.seed, iprange, args.repeat)
        tables.append(pipeline.render_markdown(result["pipeline"]))
    if "f" in args.only and args.fleet:
        config = fleet.FleetConfig(
            agents=args.fleet,
            interval_s=args.fleet_interval,
            update_interval_s=args.fleet_update_interval,
            processes=min(4, max(2, math.ceil(args.fleet / 250))),
            seed=args.seed,
        )
        result["fleet"] = fleet.run(work / "fleet", config)
        tables.append(fleet.render_markdown(result["fleet"]))
    if "g" in args.only and args.protect_agents:
        protect_config = protect.ProtectConfig(
            agents=args.protect_agents,
            trials=args.protect_trials,
            processes=min(4, max(2, math.ceil(args.protect_agents / 250))),
            seed=args.seed,
            profiles=args.protect_profiles,
        )
        result["protect"] = protect.run(work / "protect", protect_config)
        tables.append(protect.render_markdown(result["protect"]))
    if "h" in args.only and args.hits_bytes:
        result["hits"] = hits.run(work / "hits", args.hits_bytes, args.seed)
        tables.append(hits.render_markdown(result["hits"]))
        mismatch |= not result["hits"]["counts_match"]
    if "i" in args.only and args.promotion_addresses:
        result["promotion"] = promotion.run(work / "promotion", args.promotion_addresses, args.seed)
        tables.append(promotion.render_markdown(result["promotion"]))
    table = "\n".join(tables)
    if len(tables) > 1 or not args.only <= {"a"}:
        table += (
            "\nOne run on a shared machine (2 cores, other work running): absolute times are noisy, the "
            "ratios compare contenders measured minutes apart in the same run.\n"
        )
    print()
    print(table)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "latest.md").write_text(table)
    (results / "latest.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"written to {results / 'latest.md'}")
    if mismatch:
        print("MISMATCH: the results differ from what they are checked against (see above)", file=sys.stderr)
        return 1
    if args.strict and "a" in args.only:
        ratio, netset_ratio = result["ratio_to_iprange"], result["netset"]["ratio_to_iprange"]
        if ratio is None or ratio > TARGET_RATIO or netset_ratio is None or netset_ratio > TARGET_RATIO:
            print(f"target missed: ours/iprange = {ratio} (target <= {TARGET_RATIO})", file=sys.stderr)
            return 1
    return 0


def _feed_ingest(args: argparse.Namespace, work: Path, iprange: str | None) -> tuple[dict[str, Any], bool]:
    """Part (a): ours, iprange and collapse_addresses on the generated feed and netset; the result
    and whether an aggregate differed."""
    print(f"generating {args.lines:,} lines (seed {args.seed}) in {work} ...", flush=True)
    gen = generate(work, args.lines, args.seed)
    env = python_env()
    py = [sys.executable, "-m", "benchmarks.runners"]
    iprange_version = "-"
    if iprange is None:
        print(IPRANGE_HELP, flush=True)
    else:
        probe = subprocess.run([iprange, "--version"], capture_output=True, text=True, check=False)
        iprange_version = (probe.stdout or probe.stderr).split("\n", 1)[0].removeprefix("iprange ").strip() or "?"
    ours_runs: list[Run] = []
    ipr_runs: list[Run] = []
    count_runs: list[Run] = []
    netset = generate_netset(work / f"netset-{args.lines}.txt", args.lines, args.seed)
    print("warm-up (not timed): ours and iprange once on each input", flush=True)
    for source in (gen.full, netset):
        measure([*py, "ours", str(source), str(work / "warm-up.bin")], work / "warm-up.json", env)
    if iprange:
        for source in (gen.ipv4_only, netset):
            measure([iprange, str(source)], work / "warm-up.txt")
    netset_runs: list[Run] = []
    netset_ipr_runs: list[Run] = []
    for i in range(args.repeat):  # interleaved, so that a busy minute weighs on every contender alike
        print(
            f"round {i + 1}/{args.repeat}: ours"
            + (", iprange, iprange -C" if iprange else "")
            + "; the same on the netset",
            flush=True,
        )
        ours_runs.append(measure([*py, "ours", str(gen.full), str(work / "ours.bin")], work / "ours.json", env))
        if iprange:
            ipr_runs.append(measure([iprange, str(gen.ipv4_only)], work / "iprange.txt"))
            count_runs.append(measure([iprange, "-C", str(gen.ipv4_only)], work / "iprange-counts.txt"))
        netset_runs.append(
            measure([*py, "ours", str(netset), str(work / "ours-netset.bin")], work / "ours-netset.json", env)
        )
        if iprange:
            netset_ipr_runs.append(measure([iprange, str(netset)], work / "iprange-netset.txt"))
    print("collapse_addresses (slow) ...", flush=True)
    col = measure([*py, "collapse", str(gen.full), str(work / "collapse.bin")], work / "collapse.json", env)

    ours_summary = json.loads(ours_runs[-1].stdout)
    col_summary = json.loads(col.stdout)
    ours_set = read_prefixes(work / "ours.bin")
    same_as_collapse = ours_set == read_prefixes(work / "collapse.bin")
    same_as_iprange = None
    ipr_prefixes = None
    if iprange:
        ipr_set = read_iprange_output(work / "iprange.txt")
        ipr_prefixes = len(ipr_set)
        same_as_iprange = ipr_set == _ours_unfiltered_ipv4(gen.ipv4_only)

    netset_same = (
        read_prefixes(work / "ours-netset.bin") == read_iprange_output(work / "iprange-netset.txt") if iprange else None
    )
    netset_summary = json.loads(netset_runs[-1].stdout)
    netset_wall = statistics.median(r.wall_s for r in netset_runs)
    netset_ipr_wall = statistics.median(r.wall_s for r in netset_ipr_runs) if netset_ipr_runs else None

    ours_wall = statistics.median(r.wall_s for r in ours_runs)
    ipr_wall = statistics.median(r.wall_s for r in ipr_runs) if ipr_runs else None
    count_wall = statistics.median(r.wall_s for r in count_runs) if count_runs else None
    ratio = ours_wall / ipr_wall if ipr_wall else None
    result = {
        "lines": gen.lines,
        "ipv6_lines": gen.ipv6_lines,
        "junk_lines": gen.junk_lines,
        "seed": args.seed,
        "repeat": args.repeat,
        "machine": f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPU",
        "ours": {
            "wall_s": ours_wall,
            "maxrss_kib": max(r.maxrss_kib for r in ours_runs),
            "prefixes": ours_summary["prefixes"],
            "in_process_s": ours_summary["seconds_in_process"],
            "rejected_parse": ours_summary["rejected_parse"],
            "rejected_guard": ours_summary["rejected_guard"],
        },
        "iprange": None
        if not ipr_runs
        else {"wall_s": ipr_wall, "maxrss_kib": max(r.maxrss_kib for r in ipr_runs), "prefixes": ipr_prefixes},
        "iprange_count_only": None
        if not count_runs
        else {"wall_s": count_wall, "maxrss_kib": max(r.maxrss_kib for r in count_runs), "prefixes": None},
        "collapse_addresses": {
            "wall_s": col.wall_s,
            "maxrss_kib": col.maxrss_kib,
            "prefixes": col_summary["prefixes"],
            "in_process_s": col_summary["seconds_in_process"],
        },
        "netset": {
            "ours": {
                "wall_s": netset_wall,
                "maxrss_kib": max(r.maxrss_kib for r in netset_runs),
                "prefixes": netset_summary["prefixes"],
            },
            "iprange": None
            if not netset_ipr_runs
            else {
                "wall_s": netset_ipr_wall,
                "maxrss_kib": max(r.maxrss_kib for r in netset_ipr_runs),
                "prefixes": netset_summary["prefixes"]["4"] if netset_same else None,
            },
            "ratio_to_iprange": netset_wall / netset_ipr_wall if netset_ipr_wall else None,
            "ours_equals_iprange": netset_same,
        },
        "ours_equals_collapse_addresses": same_as_collapse,
        "ours_unfiltered_equals_iprange": same_as_iprange,
        "ratio_to_iprange": ratio,
        "target_ratio": TARGET_RATIO,
        "ratio_to_iprange_count_only": ours_wall / count_wall if count_wall else None,
        "iprange_version": iprange_version,
        "rss_exact": all(r.rss_exact for r in (*ours_runs, *ipr_runs, *count_runs, col)),
    }
    mismatch = not same_as_collapse or same_as_iprange is False or netset_same is False
    return result, mismatch


def _ours_unfiltered_ipv4(path: Path) -> set[tuple[int, int, int]]:
    """Our parse + collapse without the never-block filter, for the comparison with iprange."""
    from cdr_policy.feeds.parse import parse_feed
    from cdr_policy.netprefix.aggregate import collapse

    parsed = parse_feed(path.read_bytes(), "plain")
    return {(4, n, plen) for n, plen in collapse(4, parsed.singles[4], parsed.networks[4].pairs())}


def render_markdown(r: dict[str, Any]) -> str:
    """``r``: the results document (JSON)."""

    def prefixes(p: dict[str, int] | int | None) -> str:
        if p is None:
            return "-"
        if isinstance(p, int):
            return f"{p:,} (IPv4)"
        return f"{p['4'] + p['6']:,} ({p['4']:,} IPv4 + {p['6']:,} IPv6)"

    def row(name: str, what: str, d: dict[str, Any] | None) -> str:
        if d is None:
            return f"| {name} | {what} | not installed | - | - |"
        return f"| {name} | {what} | {d['wall_s']:.3f} | {d['maxrss_kib'] / 1024:.1f} | {prefixes(d['prefixes'])} |"

    count_ratio = r["ratio_to_iprange_count_only"]

    ratio = r["ratio_to_iprange"]
    lines = [
        f"# Feed ingest benchmark: {r['lines']:,} lines",
        "",
        f"Input: generated, seed {r['seed']}, feeds' real formats ({r['ipv6_lines']:,} IPv6 lines, "
        f"{r['junk_lines']} junk lines). Machine: {r['machine']}.",
        "Wall time is the whole process (interpreter start-up included), after one untimed warm-up, "
        f"median of {r['repeat']} interleaved "
        "runs for ours and iprange, one run for collapse_addresses. Peak memory is the process's max RSS"
        + (" (GNU time)." if r["rss_exact"] else " (os.wait4; approximate: includes the launcher's size)."),
        "",
        "| Tool | Work | Wall time (s) | Peak RSS (MiB) | Output prefixes |",
        "|---|---|---:|---:|---|",
        row("ours (`cdr_policy.feeds`)", "strict parse + never-block filter + aggregate", r["ours"]),
        row(f"FireHOL `iprange` {r['iprange_version']}", "parse + aggregate, IPv4 lines only, no filter", r["iprange"]),
        row("FireHOL `iprange -C`", "the same, printing two counts instead of the CIDRs", r["iprange_count_only"]),
        row(
            "`ipaddress.collapse_addresses`",
            "`ip_network` parse + same filter + collapse",
            r["collapse_addresses"],
        ),
        row("ours, netset", "the same, on a FireHOL-style netset of as many lines (CIDRs)", r["netset"]["ours"]),
        row(f"FireHOL `iprange` {r['iprange_version']}, netset", "parse + aggregate", r["netset"]["iprange"]),
        "",
        f"- ours / iprange: **{ratio:.2f}x** (target <= {r['target_ratio']:g}x); against `iprange -C`, which "
        f"skips formatting its output, {count_ratio:.2f}x. Ours writes its prefixes in binary."
        if ratio and count_ratio
        else "- ours / iprange: iprange not installed (`sudo apt-get install -y iprange`)",
        f"- netset, ours / iprange: **{r['netset']['ratio_to_iprange']:.2f}x** (target <= {r['target_ratio']:g}x); "
        "ours == iprange: "
        + {True: "**yes**", False: "**NO**", None: "not checked"}[r["netset"]["ours_equals_iprange"]]
        if r["netset"]["ratio_to_iprange"]
        else "- netset: iprange not installed",
        f"- ours == collapse_addresses: **{'yes' if r['ours_equals_collapse_addresses'] else 'NO'}**",
        "- ours without the filter == iprange on the IPv4 input: "
        + {True: "**yes**", False: "**NO**", None: "not checked"}[r["ours_unfiltered_equals_iprange"]],
        f"- ours refused {r['ours']['rejected_parse']} ambiguous/junk lines and "
        f"{r['ours']['rejected_guard']} never-block entries; in-process time {r['ours']['in_process_s']:.3f} s",
        "",
        "Command: `.venv/bin/python -m benchmarks` (or `make bench`).",
        "",
    ]
    return "\n".join(lines)


PARTS = "abcdefghi"


def _parts(text: str) -> set[str]:
    chosen = {p for p in text.replace(",", "").strip().lower()}
    if not chosen or not chosen <= set(PARTS):
        raise argparse.ArgumentTypeError(f"{text!r}: give letters among {', '.join(PARTS)}")
    return chosen


def _profiles(text: str) -> tuple[str, ...]:
    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    if not chosen or not set(chosen) <= set(protect.PROFILES):
        raise argparse.ArgumentTypeError(f"{text!r}: give profiles among {', '.join(protect.PROFILES)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000, help="input size (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of ours and iprange (default 3)")
    ap.add_argument("--workdir", help="where to write the inputs and outputs (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument(
        "--results", default=str(RESULTS), help="where latest.md/latest.json go (default benchmarks/results)"
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 when ours is over 1x iprange's wall time")
    ap.add_argument(
        "--addresses",
        type=int,
        default=1_000_000,
        help="feed size for the whole-path parts (b)-(e) (default 1,000,000; 0 skips them)",
    )
    ap.add_argument(
        "--fleet",
        type=int,
        default=1_000,
        help="agents in the fleet simulation (f) (default 1,000; 0 skips it), in 2 to 4 worker processes",
    )
    ap.add_argument(
        "--promotion-addresses",
        type=int,
        default=promotion.DEFAULT_ADDRESSES,
        help=f"feed size of the promotion part (i) (default {promotion.DEFAULT_ADDRESSES:,}; 0 skips it)",
    )
    ap.add_argument(
        "--protect-agents",
        type=int,
        default=protect.ProtectConfig.agents,
        help=f"agents in the time-to-protect part (g) (default {protect.ProtectConfig.agents:,}; 0 skips it)",
    )
    ap.add_argument(
        "--protect-trials",
        type=int,
        default=protect.ProtectConfig.trials,
        help=f"detections per profile in part (g) (default {protect.ProtectConfig.trials})",
    )
    ap.add_argument(
        "--protect-profiles",
        type=_profiles,
        default=protect.PROFILES,
        metavar="NAMES",
        help=f"the profiles part (g) deploys, in order (default {','.join(protect.PROFILES)})",
    )
    ap.add_argument(
        "--hits-bytes",
        type=int,
        default=hits.DEFAULT_BYTES,
        help=f"size of the export the node reader follows in part (h) (default {hits.DEFAULT_BYTES:,}; 0 skips it)",
    )
    ap.add_argument(
        "--only",
        type=_parts,
        default=set(PARTS),
        metavar="PARTS",
        help="run only these parts, e.g. h or a,f (a: feed ingest, b-e: the whole path, f: the fleet, "
        "g: time to protect, h: the hits reader, i: promotion; default all)",
    )
    ap.add_argument(
        "--fleet-interval",
        type=float,
        default=fleet.FleetConfig.interval_s,
        metavar="SECONDS",
        help=f"(f)'s steady-state poll interval, compressed (default {fleet.FleetConfig.interval_s:g})",
    )
    ap.add_argument(
        "--fleet-update-interval",
        type=float,
        default=fleet.FleetConfig.update_interval_s,
        metavar="SECONDS",
        help=f"(f)'s poll interval while a new bundle goes out (default {fleet.FleetConfig.update_interval_s:g}, "
        "the real one)",
    )
    args = ap.parse_args(argv)
    # Below 1,000 lines the generated junk (an HTML doctype among it) falls in the first 4 KiB, where
    # a feed is sniffed for an HTML error page: the whole input would rightly be refused as one.
    small = [
        flag
        for flag, n in (("--addresses", args.addresses), ("--promotion-addresses", args.promotion_addresses))
        if 0 < n < 1000 or n < 0
    ]
    if args.lines < 1000 or args.repeat < 1 or small:
        ap.error(
            "--lines must be at least 1000, --repeat at least 1, --addresses and --promotion-addresses 0 or at "
            "least 1000"
        )
    if args.fleet < 0 or args.fleet_interval <= 0 or args.fleet_update_interval <= 0:
        ap.error("--fleet must be 0 or more, the fleet intervals above 0")
    if args.protect_agents < 0 or args.protect_trials < 1:
        ap.error("--protect-agents must be 0 or more, --protect-trials at least 1")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())

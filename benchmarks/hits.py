"""(h) The node reader on a gigabyte of exports: its memory stays bounded whatever a file holds.

1. A bundle of the largest budgets a channel may have: 250,000 threat-intel prefixes held by both
   engines (63 Tetragon parts and one Cilium policy), their provenance index built from arrays,
   signed with a local key and published into a folder (``fakes.published``).
2. Exports written as Tetragon and Hubble write them (``fakes.exports``): ``size`` bytes in
   all (two thirds Tetragon), in which most lines are events of the bundle's objects to addresses
   across the prefixes, from a thousand workloads of fifty namespaces (so that the node's table
   fills, folds and drops), and the rest are other policies' events, forwarded flows and a
   malformed line every thousand.
3. ``cdr-policy hits-reader --once`` (the DaemonSet's program) in its own process
   (``benchmarks.measure``): wall time and peak RSS on a tenth of the exports, then on all of them
   from a fresh state, then once more on the same files (a restart: nothing to read); the counts
   of each report are checked against those written.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import Run, measure, python_env
from benchmarks.pipeline import Row, table
from cdr_policy.bundle.provenance import Blocklist, Holder, ObjectRef, Provenance, ProvenanceIndex
from cdr_policy.bundle.signing import LocalSigner, generate_local_key
from cdr_policy.hits.aggregate import HitsSection
from cdr_policy.hits.reports import read_report
from cdr_policy.hits.tally import Totals
from cdr_policy.netprefix.vector import V4, V6
from cdr_policy.policy.tetragon import PREFIXES_PER_POLICY
from cdr_policy.storage import LocalStore
from cdr_policy.timeutil import utcnow
from fakes.exports import Workload, hubble_flow, tetragon_connect
from fakes.published import publish_index

DEFAULT_BYTES = 1 << 30
PREFIXES = 250_000
# The reader's pod limit (deploy/hits/daemonset.yaml): the target for its peak memory.
LIMIT_MIB = 384
FEEDS = ("feodo-c2", "tor-exit", "blocklist-de", "cinsscore")


@dataclass
class Written:
    """What the exports hold: the lines as the reader must count them, and their bytes."""

    totals: Totals = field(default_factory=Totals)
    size: int = 0


def _index(seed: int) -> ProvenanceIndex:
    rng = np.random.default_rng(seed)
    networks = np.unique(rng.integers(45 << 24, 46 << 24, size=PREFIXES * 2, dtype=np.uint64))[:PREFIXES]
    v4 = V4(networks.astype(np.uint32), np.full(len(networks), 32, dtype=np.uint8))
    classes = tuple(Provenance((feed,), (), ("c2",), "c2", "feed") for feed in FEEDS)
    parts = range(0, PREFIXES, PREFIXES_PER_POLICY)
    holders = [
        Holder(
            ObjectRef("tetragon", f"tp-threat-intel-blocklist-{i // PREFIXES_PER_POLICY + 1}-{i:08x}"),
            i,
            min(PREFIXES_PER_POLICY, PREFIXES - i),
        )
        for i in parts
    ]
    holders.append(Holder(ObjectRef("cilium", "ccnp-threat-intel-blocklist-0c36df2c"), 0, PREFIXES))
    klass = rng.integers(0, len(FEEDS), size=PREFIXES).astype(np.uint32)
    return ProvenanceIndex(
        "prod", "workload", classes, (Blocklist("threat-intel", v4, V6([], b""), klass, tuple(holders)),)
    )


def _exports(folder: Path, index: ProvenanceIndex, size: int, seed: int) -> Written:
    """Write about ``size`` bytes of exports into ``folder`` (tetragon.log, hubble.log)."""
    rng = random.Random(seed)
    (blocklist,) = index.blocklists
    tetragon_parts = [h for h in blocklist.holders if h.ref.engine == "tetragon"]
    ccnp = next(h for h in blocklist.holders if h.ref.engine == "cilium")
    networks = blocklist.ipv4.networks
    workloads = [Workload(f"ns-{i % 50}", f"app-{i}", f"app-{i}-7c9d8f6b5-x2k4q") for i in range(1000)]
    start = utcnow() - timedelta(hours=6)
    written = Written()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "tetragon.log").open("wb") as tetragon, (folder / "hubble.log").open("wb") as hubble:
        while written.size < size:
            n = written.totals.read
            at = start + timedelta(seconds=n * 0.02)
            w = workloads[rng.randrange(len(workloads))]
            i = rng.randrange(PREFIXES)
            address = ".".join(str(int(networks[i]) >> s & 255) for s in (24, 16, 8, 0))
            kind = n % 10
            common: dict[str, Any] = {"dport": 443, "w": w, "node": "bench", "at": at}
            if n % 1000 == 999:
                line, out = b'{"process_kprobe":{"policy_name":' + b"x" * 300 + b"\n", tetragon
                written.totals.malformed += 1
            elif kind < 6:
                policy = tetragon_parts[i // PREFIXES_PER_POLICY].ref.name
                line, out = tetragon_connect(policy=policy, action="Sigkill", daddr=address, pid=n, **common), tetragon
                written.totals.ours += 1
            elif kind < 8:
                line, out = (
                    hubble_flow(verdict="DROPPED", destination=address, denied_by=(ccnp.ref.name,), **common),
                    hubble,
                )
                written.totals.ours += 1
            elif kind == 8:
                line, out = (
                    tetragon_connect(policy="observe-egress", action="Post", daddr=address, pid=n, **common),
                    tetragon,
                )
                written.totals.unattributed += 1
            else:
                line, out = hubble_flow(verdict="FORWARDED", destination="151.101.1.69", denied_by=(), **common), hubble
                written.totals.unattributed += 1
            out.write(line)
            written.totals.read += 1
            written.size += len(line)
    return written


def _read(work: Path, dist: Path, key: Path, exports: Path, state: Path) -> tuple[Run, HitsSection]:
    work.mkdir(parents=True, exist_ok=True)
    reports = work / "reports"
    cmd = [
        sys.executable, "-m", "cdr_policy.cli", "hits-reader", "--once", "--bucket", str(dist), "--channel", "prod",
        "--cluster-id", "bench", "--public-key", str(key), "--node-name", "bench", "--tetragon-export",
        str(exports / "tetragon.log"), "--hubble-export", str(exports / "hubble.log"), "--state-dir", str(state),
        "--reports-dir", str(reports),
    ]  # fmt: skip
    run = measure(cmd, work / "reader.txt", python_env())
    return run, read_report((reports / "bench.json").read_bytes(), "bench").hits


def run(work: Path, size: int, seed: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    print(f"(h) the hits reader: a bundle of {PREFIXES:,} prefixes, {size:,} bytes of exports ...", flush=True)
    signer_pem = work / "signing.pem"
    public = work / "signing.pub"
    public.write_text(generate_local_key(signer_pem))
    index = _index(seed)
    publish_index(LocalStore(work / "dist"), LocalSigner.from_file(signer_pem), index, now=utcnow())
    small = _exports(work / "small", index, size // 10, seed)
    big = _exports(work / "big", index, size, seed + 1)
    results: dict[str, Any] = {"prefixes": PREFIXES, "limit_mib": LIMIT_MIB, "counts_match": True}
    for name, written, state in (
        ("tenth", small, "state-small"),
        ("whole", big, "state-big"),
        ("restart", big, "state-big"),
    ):
        print(f"    reading the {name} ({written.size:,} bytes) ...", flush=True)
        reader, section = _read(
            work / name, work / "dist", public, work / ("small" if name == "tenth" else "big"), work / state
        )
        results["counts_match"] &= section.totals == written.totals
        results[name] = {
            "bytes": written.size,
            "lines": written.totals.read,
            "wall_s": reader.wall_s,
            "maxrss_kib": reader.maxrss_kib,
            "rss_exact": reader.rss_exact,
            "totals": section.totals.to_dict(),
            "rows": len(section.rows),
            "dropped_events": section.dropped_events,
        }
    return results


def rows(r: dict[str, Any]) -> list[Row]:
    mib = {k: r[k]["maxrss_kib"] / 1024 for k in ("tenth", "whole", "restart")}
    tenth, whole, restart = r["tenth"], r["whole"], r["restart"]
    rate = whole["bytes"] / whole["wall_s"] / (1 << 20)
    limit = f"<= {LIMIT_MIB} MiB"
    return [
        ("(h)", f"reader peak RSS, {tenth['bytes'] / (1 << 20):,.0f} MiB of exports", f"{mib['tenth']:.0f} MiB", "-",
         limit, mib["tenth"] <= LIMIT_MIB),
        ("(h)", f"reader peak RSS, {whole['bytes'] / (1 << 30):.2f} GiB of exports", f"{mib['whole']:.0f} MiB",
         f"{mib['tenth']:.0f} MiB (a tenth)", limit, mib["whole"] <= LIMIT_MIB),
        ("(h)", "reader after a restart on the same files (nothing new)",
         f"{restart['wall_s']:.1f} s, {mib['restart']:.0f} MiB", "-", "no line counted twice",
         restart["totals"] == whole["totals"]),
        ("(h)", f"reader throughput ({whole['lines']:,} lines, {whole['totals']['ours']:,} ours)",
         f"{rate:.1f} MiB/s, {whole['wall_s']:.0f} s", "-", "-", None),
        ("(h)", "node report", f"{whole['rows']:,} rows, {whole['dropped_events']:,} events dropped past the bound",
         "-", "counts = lines written", r["counts_match"]),
    ]  # fmt: skip


def render_markdown(r: dict[str, Any]) -> str:
    return "\n".join(
        [f"# The hits reader on {r['whole']['bytes'] / (1 << 30):.2f} GiB of exports", "", *table(rows(r)), ""]
    )

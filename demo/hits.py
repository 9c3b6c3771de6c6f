"""``make demo``, the last step: what the published indicators blocked, back from the clusters.

Export lines in Tetragon's and Hubble's formats (``fakes/exports.py``) are written on the demo
clusters' nodes for objects of the bundles their channels ship (kills, drops, an audit verdict,
a behaviour rule, and lines that are not ours: another policy, a forwarded flow, a broken line);
the node readers follow them and report to their agents, the agents put the sums in their status,
HitsRollup checks the fleet's statuses and writes what fired for Render, and ``fleet hits`` shows
the per-feed and per-finding hits, which agree with the per-cluster counts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdr_policy.bundle.provenance import ProvenanceIndex
from cdr_policy.bundle.signing import KmsSigner, Verifier
from cdr_policy.hits.collect import HitsCollector
from cdr_policy.hits.fleet import fleet_report, read_fleet
from cdr_policy.hits.reader import IndexFollower, Reader
from cdr_policy.hits.reports import DirectoryReports
from cdr_policy.storage import LocalStore, S3Store
from cdr_policy.summaries import HitsRollupSummary
from cdr_policy.timeutil import utcnow
from fakes.exports import Workload, hubble_flow, tetragon_connect, tetragon_exec

if TYPE_CHECKING:
    from demo.runner import PipelineResult

NODES = {"prod": ("demo-node-1", "demo-node-2"), "staging": ("demo-node-3",)}
SHOP = Workload("shop", "web", "web-7c9d8f6b5-x2k4q")
BATCH = Workload("batch", "nightly", "nightly-28441720-5mq2t", binary="/opt/job/run", kind="CronJob")


def run_hits(result: PipelineResult, agents: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    """Every step above; returns the fleet report, HitsRollup's summary and the agents' hits. The readers
    read with their cluster's ReaderRole, the agents write with their cluster's role, HitsRollup runs on
    its schedule rule under its own role."""
    from demo.runner import DemoFailure

    now = utcnow()
    stack, output = result.stack, result.output
    verifier = Verifier.from_public_pem(KmsSigner(stack.client("kms"), stack.signing_key_arn).public_key_pem())
    rule = result.lambdas.schedule_of("HitsRollupFunction")
    say("")
    say(f"[7/7] Hits (Tetragon and Hubble export lines through the node readers; HitsRollup, EventBridge rule {rule})")
    statuses = {}
    for channel, nodes in NODES.items():
        cluster = result.clusters[channel]
        dist = S3Store(stack.server.client("s3", **cluster.reader_session), stack.dist_bucket)
        reports = DirectoryReports(output / "hit-reports" / channel)
        for i, node in enumerate(nodes):
            state = output / ".reader-state" / node
            follower = IndexFollower(dist, channel, verifier, LocalStore(state))
            exports = {
                "tetragon": output / "nodes" / node / "tetragon.log",
                "cilium": output / "nodes" / node / "hubble.log",
            }
            reader = Reader(follower, exports, state_dir=state, reports=reports, node=node)
            reader.poll_bundle()
            assert follower.index is not None, f"channel {channel} ships no provenance index"
            _write_exports(exports, follower.index, channel, node, now - timedelta(minutes=30 - i))
            reader.drain()
            t = reader.table.totals
            say(
                f"      {channel:<8} {node}: {t.read} lines read, {t.ours} ours, {t.unattributed} unattributed, "
                f"{t.malformed} malformed (bundle {(follower.digest or '-')[:12]})"
            )
        agent = agents[channel]
        agent.hits = HitsCollector(reports, channel, interval_s=0)
        status = statuses[channel] = agent.sync_once()
        hits = status.hits
        say(
            f"      agent {cluster.cluster_id}: status/{cluster.cluster_id}.json carries the hits of "
            + (f"{hits.nodes} node(s): {hits.totals.ours} ours, {len(hits.rows)} row(s)" if hits else "no node")
        )
    (invocation,) = result.lambdas.fire(rule)
    if not invocation.ok:
        raise DemoFailure("[7/7] Hits", f"{invocation.function}: {invocation.error}")
    rollup = HitsRollupSummary.from_json(invocation.response)
    say(
        f"      HitsRollup: {rollup.hits} hit(s) from {rollup.clusters} cluster(s), {rollup.refused} row(s) "
        f"refused, {rollup.addresses} address(es) and {rollup.rules} rule(s) fired -> hits/fleet.json "
        "(Render ranks with it)"
    )
    # the operator's view (cdr-policy fleet hits)
    report = fleet_report(
        read_fleet(S3Store(stack.client("s3"), stack.dist_bucket), now=utcnow(), window=timedelta(days=7))
    )
    say("      fleet hits, per feed (hits per thousand prefixes held):")
    for f in report.feeds:
        rate = "-" if f.hits_per_thousand_prefixes is None else f"{f.hits_per_thousand_prefixes:g}"
        say(f"        {f.feed:<28} {f.hits:>4} hit(s), {f.prefixes_held:>5} held, {rate:>8} per 1000")
    say("      fleet hits, per finding:")
    for finding in report.findings:
        say(f"        {finding.finding:<40} {finding.hits:>4} hit(s)")
    per_cluster = {c.cluster_id: c.hits for c in report.clusters}
    agree = sum(per_cluster.values()) == report.hits
    say(
        "      per cluster: "
        + ", ".join(f"{k} {v}" for k, v in per_cluster.items())
        + f"; fleet total {report.hits}: {'agrees' if agree else 'DOES NOT AGREE'} with the per-cluster counts"
    )
    return {"report": report, "rollup": rollup, "statuses": statuses, "agree": agree}


def _inside(prefix: str) -> str:
    """An address inside ``prefix`` (its first host, or the address itself)."""
    net = ipaddress.ip_network(prefix)
    return str(net.network_address + (1 if net.num_addresses > 1 else 0))


def _write_exports(exports: dict[str, Path], index: ProvenanceIndex, channel: str, node: str, at: datetime) -> None:
    """What a node's engines wrote: for each blocklist, kills or audits by Tetragon and drops (or, on
    the audit channel, audit verdicts) by Cilium, to an address of a CDR prefix and of feed prefixes;
    a behaviour rule firing; and lines that are not ours."""
    audit = channel == "staging"
    tetragon, hubble = [], []
    for blocklist in index.blocklists:
        picked = _picks(index, blocklist)
        for h in blocklist.holders:
            for n, i in enumerate(picked):
                if not h.first <= i < h.first + h.count:
                    continue
                address = _inside(blocklist.prefix(i))
                w = SHOP if n % 2 == 0 else BATCH
                if h.ref.engine == "tetragon":
                    tetragon += [
                        tetragon_connect(
                            policy=h.ref.name,
                            action="Post" if audit else "Sigkill",
                            daddr=address,
                            dport=443,
                            w=w,
                            node=node,
                            at=at + timedelta(seconds=k),
                        )
                        for k in range(2 if n == 0 else 1)
                    ]
                else:
                    hubble.append(
                        hubble_flow(
                            verdict="AUDIT" if audit else "DROPPED",
                            destination=address,
                            dport=443,
                            denied_by=(h.ref.name,),
                            w=w,
                            node=node,
                            at=at,
                        )
                    )
    for rule in index.rules[:1]:
        tetragon.append(
            tetragon_exec(
                policy=rule.objects[0].name,
                action="Post" if audit else "Sigkill",
                path="/tmp/xmrig",
                w=SHOP,
                node=node,
                at=at,
            )
        )
    tetragon.append(
        tetragon_connect(
            policy="observe-egress", action="Post", daddr="151.101.1.69", dport=443, w=SHOP, node=node, at=at
        )
    )
    hubble.append(
        hubble_flow(verdict="FORWARDED", destination="151.101.1.69", dport=443, denied_by=(), w=SHOP, node=node, at=at)
    )
    tetragon.append(b'{"process_kprobe":{"policy_name":"tp-truncated\n')
    for engine, lines in (("tetragon", tetragon), ("cilium", hubble)):
        exports[engine].parent.mkdir(parents=True, exist_ok=True)
        exports[engine].write_bytes(b"".join(lines))


def _picks(index: ProvenanceIndex, blocklist: Any) -> list[int]:
    """Prefixes to hit: the first with finding ids (a CDR detection), and the first of each feed."""
    picked: list[int] = []
    feeds: set[str] = set()
    for i in range(len(blocklist)):
        p = index.classes[int(blocklist.classes[i])]
        if (p.findings and not any(index.classes[int(blocklist.classes[j])].findings for j in picked)) or (
            p.feeds and p.feeds[0] not in feeds and not p.findings
        ):
            picked.append(i)
            feeds.update(p.feeds[:1])
        if len(picked) >= 4:
            break
    return picked

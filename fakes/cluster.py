"""One cluster of a channel, on one machine, as the fleet runs it: the sync agent applying its
channel's signed bundles into a folder and writing ``status/<cluster-id>.json``, and one node whose
Tetragon and Hubble exports the caller writes, in the upstream formats (``fakes/exports``),
followed by the node reader, whose report the agent sums into its status. What a cluster's events
say reaches the pipeline exactly as it would: through the reader's attribution and the status."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from pathlib import Path

from cdr_policy.agent.directory import DirectoryApplier
from cdr_policy.agent.status import AgentStatus
from cdr_policy.agent.sync import Agent
from cdr_policy.bundle.provenance import ProvenanceIndex
from cdr_policy.bundle.signing import Verifier
from cdr_policy.hits.collect import HitsCollector
from cdr_policy.hits.reader import IndexFollower, Reader
from cdr_policy.hits.reports import DirectoryReports
from cdr_policy.netprefix import parse_canonical
from cdr_policy.storage import LocalStore, Store
from cdr_policy.timeutil import utcnow
from fakes.exports import Workload, hubble_flow, tetragon_connect, tetragon_exec


class Cluster:
    def __init__(self, dist: Store, verifier: Verifier, *, channel: str, cluster_id: str, root: Path) -> None:
        self.channel, self.cluster_id = channel, cluster_id
        folder = root / cluster_id
        self.node = f"{cluster_id}-node-1"
        self.exports = {"tetragon": folder / "tetragon.log", "cilium": folder / "hubble.log"}
        reports = DirectoryReports(folder / "reports")
        self.follower = IndexFollower(dist, channel, verifier, LocalStore(folder / "reader"))
        self.reader = Reader(self.follower, self.exports, state_dir=folder / "reader", reports=reports, node=self.node)
        self.agent = Agent(
            dist,
            channel=channel,
            cluster_id=cluster_id,
            verifier=verifier,
            applier=DirectoryApplier(folder / "applied"),
            state_dir=folder / "agent",
            status_heartbeat_s=0,
            hits=HitsCollector(reports, channel, interval_s=0),
        )
        self.applied = folder / "applied"

    def sync(self) -> AgentStatus:
        """One poll of the agent: apply what its channel ships, write its status (with its hits)."""
        return self.agent.sync_once()

    @property
    def index(self) -> ProvenanceIndex:
        self.reader.poll_bundle()
        assert self.follower.index is not None, f"channel {self.channel} ships no provenance index"
        return self.follower.index

    def record(self, lines: list[bytes]) -> AgentStatus:
        """The node's engines write ``lines``; its reader counts them, the agent reports them."""
        for engine in self.exports:
            self.exports[engine].parent.mkdir(parents=True, exist_ok=True)
        with self.exports["tetragon"].open("ab") as tetragon, self.exports["cilium"].open("ab") as hubble:
            for line in lines:
                (hubble if line.startswith(b'{"flow"') else tetragon).write(line)
        self.reader.drain()
        return self.sync()

    def connect(self, prefix: str, w: Workload, *, action: str, at: datetime | None = None) -> list[bytes]:
        """A connection to the first address of ``prefix``, as each engine holding it reports it:
        Tetragon's kprobe with ``action`` (Post on an audit channel), and Hubble's flow (AUDIT, or
        DROPPED when the channel enforces)."""
        p = parse_canonical(prefix)
        host = p.network + (1 if p.last > p.network else 0)
        address = str(ipaddress.ip_address(host))
        at = at or utcnow()
        lines = []
        for blocklist in self.index.blocklists:
            found = blocklist.find(p.version, host)
            for h in blocklist.holders:
                if found is None or not h.first <= found < h.first + h.count:
                    continue
                if h.ref.engine == "tetragon":
                    lines.append(
                        tetragon_connect(
                            policy=h.ref.name, action=action, daddr=address, dport=443, w=w, node=self.node, at=at
                        )
                    )
                else:
                    verdict = "AUDIT" if action == "Post" else "DROPPED"
                    lines.append(
                        hubble_flow(
                            verdict=verdict,
                            destination=address,
                            dport=443,
                            denied_by=(h.ref.name,),
                            w=w,
                            node=self.node,
                            at=at,
                        )
                    )
        assert lines, f"channel {self.channel} blocks no address of {prefix}"
        return lines

    def holder(self, prefix: str) -> str:
        """The name of the Tetragon object that blocks ``prefix`` in the bundle the cluster follows."""
        p = parse_canonical(prefix)
        for blocklist in self.index.blocklists:
            found = blocklist.find(p.version, p.network)
            for h in blocklist.holders:
                if found is not None and h.first <= found < h.first + h.count and h.ref.engine == "tetragon":
                    return h.ref.name
        raise AssertionError(f"channel {self.channel} blocks no address of {prefix}")

    def execs(self, rule: str, path: str, w: Workload, *, action: str, at: datetime | None = None) -> list[bytes]:
        """A program start a behaviour rule's first object reports (``action`` as the channel's)."""
        found = next(r for r in self.index.rules if r.rule == rule)
        return [
            tetragon_exec(
                policy=found.objects[0].name, action=action, path=path, w=w, node=self.node, at=at or utcnow()
            )
        ]

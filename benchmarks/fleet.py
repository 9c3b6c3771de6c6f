"""(f) A fleet of sync agents polling one distribution bucket: what it costs and how fast it converges.

1. A moto server on loopback behind ``make costs``' request counter (``demo.costs``), with a bucket
   and a KMS signing key like the stack's. Two channels (``demo.runner.CHANNELS``) rendered by
   the Render stage from a threat-intel feed (a file of public addresses synced by the FeedSync
   stage into a local state folder) and published to the bucket by the Publish stage, signed with
   that key, checked against the upstream CRDs when ``../shared/crds`` is there.
2. ``agents`` sync agents (``cdr_policy.agent.sync.Agent``, each applying into its own folder, with
   the checks of the agent's directory mode), alternating between the channels, each in its own
   thread running ``Agent.run`` (its own loop with the agent's own jitter), spread over ``processes``
   worker processes that share one S3 client each. They start spread over one interval.
3. The steady state runs compressed: the agents poll every ``interval_s`` instead of the real
   ``DEFAULT_INTERVAL_S`` (60 s) and their status heartbeat and drift check come faster by the same
   factor. Requests are counted at the server over one heartbeat period, by operation, with body
   bytes and statuses; the agents count their polls. A real fleet's per-minute figures are the
   measured ones divided by the factor (both are reported).
4. Then every agent's loop restarts at ``update_interval_s`` (by default the real 60 s: applying a
   bundle costs a thousand agents more CPU than two shared cores give in a compressed interval),
   its first poll at a random point of the interval; a new bundle is published to both channels and
   each agent's own status (``Agent.run``'s observer) says when it applied it: 50%, 99% and 100% of
   the fleet, counted from the publish call of its channel.
5. The agents stop and ``fleet status`` (``cdr_policy.cli.fleet.fleet_status``) reads every status
   object they wrote, which also checks that each cluster reports its channel's new bundle.
6. From the steady-state counts, the monthly request cost at list S3 prices (``demo.costs``) of
   100, 1,000 and 10,000 clusters polling every minute.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import yaml

from benchmarks.generate import generate_addresses
from benchmarks.pipeline import CRDS, Row, table
from cdr_policy.admission import Admission, protection
from cdr_policy.agent.cli import admission_for
from cdr_policy.agent.directory import DirectoryApplier
from cdr_policy.agent.status import AgentStatus
from cdr_policy.agent.sync import (
    DEFAULT_DRIFT_INTERVAL_S,
    DEFAULT_INTERVAL_S,
    DEFAULT_STATUS_HEARTBEAT_S,
    Agent,
)
from cdr_policy.bundle.signing import KmsSigner, Signer, Verifier
from cdr_policy.cli.fleet import fleet_status
from cdr_policy.feeds.config import load_feeds
from cdr_policy.guards import NeverBlock
from cdr_policy.observability import logger
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.stages.feed_sync import run_feed_sync
from cdr_policy.stages.publish import publish_bundle
from cdr_policy.stages.render import run_render
from cdr_policy.storage import LocalStore, S3Store, Store
from cdr_policy.timeutil import utcnow
from demo.costs import S3_PRICE_PER_1000, counting_moto_server, s3_price_class
from demo.runner import CHANNELS
from fakes.aws import REGION

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess
    from multiprocessing.queues import Queue
    from multiprocessing.sharedctypes import Synchronized
    from multiprocessing.synchronize import Event

FEED = "fleet"
FLEET_BUCKET = "cdr-policy-fleet-dist"
FEED_ADDRESSES = 200  # the first bundle's feed; the update adds UPDATE_ADDRESSES more
UPDATE_ADDRESSES = 10
CLUSTERS = (100, 1_000, 10_000)
DAYS_PER_MONTH = 30  # as the cost guide (docs/costs.md) counts
CHANGE_BUDGET_PERCENT = 50  # the stack's default (template.yaml: ChangeBudgetPercent)
POOL = 16  # HTTP connections per worker process (its agents' polls are spread over the interval)
TARGETS = {"per_poll": 1, "body_bytes": 0, "p99_intervals": 2.0, "fleet_status_s": DEFAULT_INTERVAL_S}
# An event from a worker: (cluster id, applied digest, last poll's result, time.time()); a cluster id
# "" marks a worker that has built its agents ("ready") or restarted their loops ("switched").
AgentEvent = tuple[str, str | None, str, float]
_READY, _SWITCHED = "ready", "switched"


@dataclass(frozen=True)
class FleetConfig:
    agents: int = 1_000
    interval_s: float = 10.0  # the steady state's poll interval (compressed)
    update_interval_s: float = DEFAULT_INTERVAL_S  # the poll interval while a new bundle goes out
    processes: int = 4
    seed: int = 1
    timeout_intervals: float = 6.0  # how long start-up and convergence may take before it is a failure

    @property
    def compression(self) -> float:
        """How much faster than a real fleet the steady state runs."""
        return DEFAULT_INTERVAL_S / self.interval_s


@dataclass(frozen=True)
class WorkerSpec:
    endpoint: str
    region: str
    bucket: str
    public_pem: str
    crds: str | None
    agents: tuple[tuple[str, str, float], ...]  # (cluster id, channel, delay before its first poll)
    root: str
    interval_s: float
    update_interval_s: float
    compression: float
    seed: int
    niceness: int = 0  # how much lower than the benchmark's the worker's CPU priority is


@dataclass(frozen=True)
class WorkerLink:
    """What connects a worker to the benchmark."""

    switch: Event  # restart the loops at the update interval
    stop: Event
    events: Queue[AgentEvent]
    polls: Synchronized[int]


# -- the agents' side: one worker process, one thread per agent -------------------------------------


def worker(spec: WorkerSpec, link: WorkerLink) -> None:
    """Run ``spec.agents`` at the steady interval until ``switch``, then at the update interval until
    ``stop``; report what each applies to ``events``."""
    import boto3
    from botocore.config import Config

    logger.setLevel("WARNING")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    threading.stack_size(512 * 1024)
    os.nice(spec.niceness)
    # The agent's own client settings (cdr_policy.agent.cli), with a pool for the agents sharing it.
    config = Config(
        connect_timeout=5,
        read_timeout=20,
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=POOL,
    )
    dist = S3Store(boto3.client("s3", endpoint_url=spec.endpoint, region_name=spec.region, config=config), spec.bucket)
    verifier = Verifier.from_public_pem(spec.public_pem)
    root = Path(spec.root)
    admission = admission_for(
        DirectoryApplier(root), Path(spec.crds) if spec.crds else None, protection(where="this cluster")
    )
    agents = []
    for cluster_id, channel, delay in spec.agents:
        agent = Agent(
            dist,
            channel=channel,
            cluster_id=cluster_id,
            verifier=verifier,
            applier=DirectoryApplier(root / cluster_id / "objects"),
            state_dir=root / cluster_id / "state",
            admission=admission,
            drift_interval_s=DEFAULT_DRIFT_INTERVAL_S / spec.compression,
            status_heartbeat_s=DEFAULT_STATUS_HEARTBEAT_S / spec.compression,
        )
        agents.append((agent, delay, random.Random(f"{spec.seed}/{cluster_id}")))
    link.events.put(("", None, _READY, time.time()))
    halt = threading.Event()
    loops = [_start(agent, spec.interval_s, delay, rng, halt, link) for agent, delay, rng in agents]
    link.switch.wait()
    halt.set()
    for loop in loops:
        loop.join()
    if link.stop.is_set():
        return
    halt = threading.Event()
    interval = spec.update_interval_s
    loops = [_start(agent, interval, rng.uniform(0, interval), rng, halt, link) for agent, _, rng in agents]
    link.events.put(("", None, _SWITCHED, time.time()))
    link.stop.wait()
    halt.set()
    for loop in loops:
        loop.join()


def _start(
    agent: Agent, interval_s: float, delay: float, rng: random.Random, halt: threading.Event, link: WorkerLink
) -> threading.Thread:
    """One agent's loop in its own thread: its first poll after ``delay``, then ``Agent.run``."""

    def loop() -> None:
        if halt.wait(delay):
            return
        last: tuple[str | None, str] | None = None

        def observe(status: AgentStatus) -> None:
            nonlocal last
            with link.polls.get_lock():
                link.polls.value += 1
            seen = (status.applied_digest, status.last_poll.result)
            if seen != last:
                last = seen
                link.events.put((agent.cluster_id, *seen, time.time()))

        try:
            agent.run(interval_s, halt, observe, rng=rng)
        except Exception as exc:  # noqa: BLE001 -- reported: the agent then counts as not converged
            link.events.put((agent.cluster_id, None, f"crashed: {type(exc).__name__}", time.time()))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


# -- the operator's side: publish, watch, measure ---------------------------------------------------


class Watch:
    """What the agents reported (from the workers' events)."""

    def __init__(self, events: Queue[AgentEvent], processes: list[SpawnProcess], clusters: dict[str, str]) -> None:
        self.events = events
        self.processes = processes
        self.clusters = clusters  # cluster id -> channel
        self.markers: Counter[str] = Counter()  # worker processes ready, switched
        self.latest: dict[str, tuple[str | None, str]] = {}
        self.first_at: dict[tuple[str, str | None], float] = {}
        self.results: Counter[str] = Counter()

    def until(self, done: Callable[[], bool], seconds: float) -> bool:
        """Take events until ``done()`` or ``seconds`` have passed; whether it got done."""
        deadline = time.monotonic() + seconds
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                cluster, digest, result, at = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                dead = [p.exitcode for p in self.processes if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"fleet worker(s) exited early (exit codes {dead})") from None
                continue
            if not cluster:
                self.markers[result] += 1
                continue
            self.latest[cluster] = (digest, result)
            self.first_at.setdefault((cluster, digest), at)
            self.results[result] += 1
        return True

    def all_report(self, digests: dict[str, str], result: str | None = None) -> bool:
        """Every agent's latest status has its channel's ``digests`` (and ``result``, when given)."""
        return len(self.latest) == len(self.clusters) and all(
            digest == digests[self.clusters[c]] and result in (None, got) for c, (digest, got) in self.latest.items()
        )


def _ship(
    state: Store, dist: Store, signer: Signer, feed: Path, schemas: SchemaSet | None
) -> dict[str, tuple[str, float]]:
    """FeedSync of ``feed``, Render of both channels, Publish of each: {channel: (digest, publish call time)}."""
    now = utcnow()
    entry = {"name": FEED, "url": feed.as_uri(), "category": "attacker"}
    feeds = load_feeds(yaml.safe_dump({"feeds": [entry]}), origin="fleet benchmark", allow_file=True)
    synced = run_feed_sync(state, feeds, now=now, guard=NeverBlock())
    if synced.outcomes[FEED].status != "ok":
        raise RuntimeError(f"feed sync: {synced.outcomes[FEED]}")
    # the demo's channels, each shipping what it renders: how the fleet polls does not depend on how
    # prod's changes were promoted (its promotion needs the demo's staging clusters and soak)
    channels = [ChannelSettings.from_dict({k: v for k, v in c.items() if k != "promote"}) for c in CHANNELS]
    shipped = {}
    for summary in run_render(state, channels=channels, now=now, guard=NeverBlock(), crds=schemas, publish=None):
        started = time.time()
        result = publish_bundle(
            state,
            dist,
            channel=summary.channel,
            digest=summary.digest,
            signer=signer,
            now=now,
            change_budget_percent=CHANGE_BUDGET_PERCENT,
            admission=Admission(protection(where=f"channel {summary.channel}"), schemas),
        )
        if not result.shipped:
            raise RuntimeError(f"publish {summary.channel}: {result.status}: {result.reason}")
        shipped[summary.channel] = (summary.digest, started)
    return shipped


@contextmanager
def quiet() -> Iterator[None]:
    """The stages' INFO lines (one per publish) and the moto server's access log are not the
    benchmark's output."""
    access = logging.getLogger("werkzeug")
    levels = logger.log_level, access.level
    logger.setLevel("WARNING")
    access.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(levels[0])
        access.setLevel(levels[1])


def run(work: Path, config: FleetConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole simulation; the result is JSON (``rows`` makes the table of it)."""
    work.mkdir(parents=True, exist_ok=True)
    crds = CRDS if CRDS.is_dir() else None
    schemas = SchemaSet.from_dir(crds) if crds else None
    result: dict[str, Any] = {
        "agents": config.agents,
        "channels": len(CHANNELS),
        "processes": config.processes,
        "interval_s": config.interval_s,
        "update_interval_s": config.update_interval_s,
        "real_interval_s": DEFAULT_INTERVAL_S,
        "compression": config.compression,
        "crds": crds is not None,
    }
    with quiet(), counting_moto_server() as (url, counter):
        # Only the agents are measured: a bucket and a signing key of the stack's kinds (template.yaml's
        # DistributionBucket and SigningKey), not the stack, whose bucket policy lets only cluster roles
        # write status/ (every simulated agent here writes as the one identity of this process).
        s3 = boto3.client("s3", endpoint_url=url, region_name=REGION)
        s3.create_bucket(Bucket=FLEET_BUCKET)
        kms = boto3.client("kms", endpoint_url=url, region_name=REGION)
        key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
        dist = S3Store(s3, FLEET_BUCKET)
        state = LocalStore(work / "state")
        signer = KmsSigner(kms, key)
        feed = generate_addresses(work / "feed.txt", FEED_ADDRESSES, config.seed)
        first = {channel: digest for channel, (digest, _) in _ship(state, dist, signer, feed, schemas).items()}

        rng = random.Random(config.seed)
        names = [str(c["name"]) for c in CHANNELS]
        clusters = {f"fleet-{i:05d}": names[i % len(names)] for i in range(config.agents)}
        assigned = [(c, channel, rng.uniform(0, config.interval_s)) for c, channel in clusters.items()]
        ctx = multiprocessing.get_context("spawn")
        link = WorkerLink(switch=ctx.Event(), stop=ctx.Event(), events=ctx.Queue(), polls=ctx.Value("q", 0))
        specs = [
            WorkerSpec(
                endpoint=url,
                region=REGION,
                bucket=FLEET_BUCKET,
                public_pem=signer.public_key_pem(),
                crds=str(crds) if crds else None,
                agents=tuple(assigned[n :: config.processes]),
                root=str(work / "agents"),
                interval_s=config.interval_s,
                update_interval_s=config.update_interval_s,
                compression=config.compression,
                seed=config.seed,
            )
            for n in range(config.processes)
        ]
        processes = [ctx.Process(target=worker, args=(spec, link), daemon=True) for spec in specs]
        say(
            f"(f) fleet: {config.agents:,} agents on {len(names)} channels in {config.processes} processes, "
            f"polling every {config.interval_s:g} s ({config.compression:g}x the real {DEFAULT_INTERVAL_S:g} s) ..."
        )
        for process in processes:
            process.start()
        try:
            watch = Watch(link.events, processes, clusters)
            if not watch.until(lambda: watch.markers[_READY] == len(processes), 300):
                raise RuntimeError("the fleet's worker processes did not start within 5 minutes")

            # Start-up: every agent applies the first bundle, then confirms it (its status says "unchanged").
            counter.enter("start")
            started = time.monotonic()
            timeout = config.timeout_intervals * config.interval_s
            if not watch.until(lambda: watch.all_report(first, "unchanged"), config.interval_s + timeout):
                raise RuntimeError(f"start-up: not every agent applied the first bundle: {dict(watch.results)}")
            result["startup_s"] = time.monotonic() - started

            # Steady state over one status-heartbeat period: nothing changes in the bucket.
            window = DEFAULT_STATUS_HEARTBEAT_S / config.compression
            say(f"(f) steady state for {window:g} s (one status heartbeat period) ...")
            before = Counter(watch.results)
            polls_before = link.polls.value
            counter.enter("steady")
            started = time.monotonic()
            watch.until(lambda: False, window)
            counter.enter("switch")
            window = time.monotonic() - started
            polled = link.polls.value - polls_before
            steady_results = dict(Counter(watch.results) - before)

            # A new bundle on both channels, the agents polling at the update interval.
            say(f"(f) new bundle on both channels, agents polling every {config.update_interval_s:g} s ...")
            link.switch.set()
            if not watch.until(lambda: watch.markers[_SWITCHED] == len(processes), 60):
                raise RuntimeError("the agents' loops did not restart within a minute")
            # (read once the requests in flight at the end of the window have been answered)
            result["steady"] = {
                **_steady(counter.snapshot("steady"), polled, window, config),
                "results": steady_results,
            }
            counter.enter("update")
            extra = generate_addresses(work / "extra.txt", UPDATE_ADDRESSES, config.seed + 1)
            feed.write_text(feed.read_text() + extra.read_text())
            shipped = _ship(state, dist, signer, feed, schemas)
            second = {channel: digest for channel, (digest, _) in shipped.items()}
            timeout = config.timeout_intervals * config.update_interval_s
            watch.until(lambda: all((c, second[ch]) in watch.first_at for c, ch in clusters.items()), timeout)
            latencies = sorted(
                watch.first_at[(c, second[ch])] - shipped[ch][1]
                for c, ch in clusters.items()
                if (c, second[ch]) in watch.first_at
            )
            result["convergence"] = _convergence(latencies, config, timeout)
            result["update"] = counter.snapshot("update")
            result["results"] = dict(watch.results)
        finally:
            link.stop.set()
            link.switch.set()
            for process in processes:
                process.join(60)
                if process.is_alive():
                    process.terminate()

        # The fleet view, with the agents stopped: every status object read once.
        counter.enter("fleet-status")
        started = time.monotonic()
        rows = fleet_status(dist, now=utcnow())
        seconds = time.monotonic() - started
        counter.enter("done")
        result["fleet_status"] = {
            "seconds": seconds,
            "rows": len(rows),
            "behind": sum(1 for r in rows if r.behind),
            "reporting_new": sum(1 for r in rows if r.applied_digest == second.get(r.channel)),
            "operations": counter.snapshot("fleet-status"),
        }
    result["cost"] = _cost(result["steady"], config)
    return result


def _steady(ops: dict[str, dict[str, int]], polled: int, window: float, config: FleetConfig) -> dict[str, Any]:
    """What the fleet asked the bucket in ``window`` seconds of ``polled`` polls with nothing changing."""
    requests = sum(d["requests"] for d in ops.values())
    gets = ops.get("s3:GetObject", {}).get("requests", 0)
    puts = ops.get("s3:PutObject", {}).get("requests", 0)
    per_minute = 60 / window
    measured = {
        "requests": requests * per_minute,
        "response_bytes": sum(d["response_bytes"] for d in ops.values()) * per_minute,
        "request_bytes": sum(d["request_bytes"] for d in ops.values()) * per_minute,
    }
    return {
        "window_s": window,
        "polls": polled,
        "operations": ops,
        "requests": requests,
        "get_per_poll": gets / polled if polled else None,
        # the heartbeat period is the window: about one status PUT per agent (the agent's 10 minutes)
        "put_per_agent": puts / config.agents,
        "per_minute_measured": measured,
        "per_minute_real": {k: v / config.compression for k, v in measured.items()},
    }


def _percentile(latencies: list[float], share: float, agents: int) -> float | None:
    """Nearest rank: the time by which ``share`` of ``agents`` reported (None: they did not)."""
    rank = math.ceil(share * agents)
    return latencies[rank - 1] if len(latencies) >= rank else None


def _convergence(latencies: list[float], config: FleetConfig, timeout: float) -> dict[str, Any]:
    return {
        "source": "each agent's own status (Agent.run's observer), from the publish call of its channel",
        "converged": len(latencies),
        "timeout_s": timeout,
        **{f"p{p}_s": _percentile(latencies, p / 100, config.agents) for p in (50, 99, 100)},
    }


def _cost(steady: dict[str, Any], config: FleetConfig) -> dict[str, Any]:
    """The steady state's requests, per cluster-month at the real interval, priced (``demo.costs``)."""
    real_seconds = steady["window_s"] * config.compression * config.agents
    month = DAYS_PER_MONTH * 86_400
    per_cluster_month: Counter[str] = Counter()
    for op, d in steady["operations"].items():
        price_class = s3_price_class(op)
        if price_class is not None:
            per_cluster_month[price_class] += d["requests"] / real_seconds * month
    usd = sum(n * S3_PRICE_PER_1000[c] / 1000 for c, n in per_cluster_month.items())
    return {
        "requests_per_cluster_month": dict(per_cluster_month),
        "usd_per_cluster_month": usd,
        "usd_per_month": {str(k): usd * k for k in CLUSTERS},
    }


# -- the table -------------------------------------------------------------------------------------


def rows(r: dict[str, Any]) -> list[Row]:
    n, interval = r["agents"], r["interval_s"]
    steady, conv, view, cost = r["steady"], r["convergence"], r["fleet_status"], r["cost"]
    ops = steady["operations"]
    get = ops.get("s3:GetObject", {})
    get_bytes = get.get("response_bytes", 0)
    per_poll = steady["get_per_poll"]
    only_polls = set(ops) <= {"s3:GetObject", "s3:PutObject"} and get.get("status_304") == get.get("requests")
    real = steady["per_minute_real"]
    out: list[Row] = [
        (
            "(f)",
            f"fleet of {n:,} agents, nothing changing: GETs per poll / their body bytes",
            f"{per_poll:.3f} / {get_bytes}",
            f"{steady['polls']:,} polls, {get.get('status_304', 0):,} answered 304; "
            f"{steady['put_per_agent']:.2f} status PUT per agent per heartbeat (10 min)",
            f"{TARGETS['per_poll']} / {TARGETS['body_bytes']}",
            # the agents count their polls, the server its requests: a poll in flight at either end of
            # the window is counted by one of them only
            only_polls and abs(per_poll - TARGETS["per_poll"]) <= 0.02 and get_bytes == TARGETS["body_bytes"],
        ),
        (
            "(f)",
            f"the fleet's requests per minute, nothing changing (real interval {r['real_interval_s']:g} s)",
            f"{real['requests']:,.0f} requests, {real['response_bytes'] / 1024:,.1f} KiB down, "
            f"{real['request_bytes'] / 1024:,.1f} KiB up",
            f"measured {steady['per_minute_measured']['requests']:,.0f}/min at {interval:g} s "
            f"({r['compression']:g}x faster)",
            f"{n * 1.1:,.0f} ({n:,} GET + {n // 10:,} heartbeat PUT)",
            None,
        ),
    ]
    pcts = [conv[f"p{p}_s"] for p in (50, 99, 100)]

    def secs(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    update = r["update_interval_s"]

    def intervals(v: float | None) -> str:
        return "-" if v is None else f"{v / update:.2f}"

    p99 = pcts[1]
    out.append(
        (
            "(f)",
            f"publish to 50% / 99% / 100% of the agents reporting the new bundle (polling every {update:g} s)",
            f"{' / '.join(secs(v) for v in pcts)} s",
            f"{' / '.join(intervals(v) for v in pcts)} poll intervals ({conv['converged']:,} of {n:,} converged)",
            f"99% <= {TARGETS['p99_intervals']:g} intervals",
            p99 is not None and p99 / update <= TARGETS["p99_intervals"],
        )
    )
    requests = sum(d["requests"] for d in view["operations"].values())
    out.append(
        (
            "(f)",
            f"`fleet status` reading the {n:,} status objects",
            f"{view['seconds']:.2f} s",
            f"{view['rows']:,} rows, {view['reporting_new']:,} on the new bundle, {view['behind']} behind; "
            f"{requests:,} requests",
            f"< {TARGETS['fleet_status_s']:g} s, all rows",
            view["seconds"] < TARGETS["fleet_status_s"] and view["rows"] == n == view["reporting_new"],
        )
    )
    monthly = cost["requests_per_cluster_month"]
    out.append(
        (
            "(f)",
            "request cost of " + " / ".join(f"{k:,}" for k in CLUSTERS) + " clusters polling every minute",
            " / ".join(f"{v:,.2f}" for v in cost["usd_per_month"].values()) + " USD a month",
            f"per cluster-month {monthly.get('GET', 0):,.0f} GET + {monthly.get('PUT', 0):,.0f} PUT at list "
            f"prices = {cost['usd_per_cluster_month']:.4f} USD",
            "-",
            None,
        )
    )
    return out


def render_markdown(r: dict[str, Any]) -> str:
    head = (
        f"{r['agents']:,} sync agents ({r['channels']} channels, {r['processes']} processes, one moto server), "
        f"each in its own loop with the agent's jitter. Steady state: every {r['interval_s']:g} s, "
        f"{r['compression']:g}x faster than the real {r['real_interval_s']:g} s (the status heartbeat and the "
        "drift check alike), over one heartbeat period; per-minute figures are the measured ones divided by "
        f"that factor. Convergence: polling every {r['update_interval_s']:g} s, read from each agent's own "
        "status; `fleet status` then reads the status objects they wrote."
    )
    return "\n".join([f"# (f) A fleet of {r['agents']:,} agents", "", head, "", *table(rows(r)), ""])

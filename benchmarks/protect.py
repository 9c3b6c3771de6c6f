"""(g) Time to protect: from a detection at Qualys to the whole fleet enforcing it, per profile.

For each deployment profile (template.yaml ``Profile``: ``default``, ``fast``):

1. template.yaml deployed on a moto server as ``sam deploy`` does (``fakes/stack.py``) with
   ``Profile`` set, the demo's configuration (its channels, feeds and the upstream CRDs) uploaded,
   the fake Qualys gateway (HTTPS, the demo's findings) and the demo's feeds on loopback. The real
   handlers run under their deployed roles (``fakes/lambda_runtime.py``) from the stack's own
   triggers, on a clock: CdrFetch on its deployed schedule rule (every period of its
   ``ScheduleExpression``), Render and Publish when a message is on their queue, once the batching
   window of their deployed event source mapping has passed since the first one arrived (as
   Lambda's SQS poller does). Handlers run one at a time. FeedSync, the re-render and HitsRollup
   schedules do not fire.
2. ``agents`` sync agents (the fleet of part (f): ``benchmarks/fleet.py``'s workers, each agent
   ``Agent.run`` in its own thread, with the agent's checks and jitter) poll the stack's distribution
   bucket every ``POLL_INTERVALS_S[profile]`` (the agent's ``--profile``), alternating between the
   channels, started spread over one interval, their processes at a lower CPU priority than the
   moto server's and the handlers' (``AGENT_NICENESS``).
3. Each trial: a new network finding (a reverse shell to a fresh public address) appears at the
   gateway at t0 (:meth:`FakeQualysGateway.publish`), at a random point of the fetch schedule. The
   stages are read from the runs: the wait for the next CdrFetch run, that run (its summary counts
   the finding as new), Render (its batching window included), Publish (its window included), then
   each agent's own status (``Agent.run``'s observer) naming the channel's new bundle, which is
   checked to block the address. Time to protect of an agent = t0 to that report.
4. A schedule slower than ``REAL_TICK_S`` runs faster in the bench by the factor that brings it to
   ``REAL_TICK_S`` (the default profile's 15 minutes: 15x); its measured wait is multiplied back by
   that factor, and the figure says so. Every other stage runs at its real speed.
5. Per trial, the time by which 50 %, 99 % and 100 % of the agents are protected; over the trials, p50,
   p99 and max of each (nearest rank), and the same per stage (distribution: to the 99 % agent).
   Also the findings requests the gateway received per hour of (real-speed) schedule, against the
   stack's ``QualysRequestsPerHour``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.fleet import Watch, WorkerLink, WorkerSpec, quiet, worker
from benchmarks.pipeline import CRDS, Row, table
from cdr_policy import layout
from cdr_policy.agent.sync import POLL_INTERVALS_S
from cdr_policy.bundle.signing import KmsSigner
from cdr_policy.storage import S3Store
from demo.runner import CHANNELS, FINDINGS, create_qualys_secret, onboard_cluster, upload_config
from fakes.aws import REGION, MotoServer, moto_server
from fakes.feeds import DEMO_FEEDS_DIR, FeedServer
from fakes.lambda_runtime import Invocation, LambdaService, queue_url
from fakes.qualys import FakeQualysGateway, reverse_shell_finding
from fakes.stack import TEMPLATE, Stack, deploy, load_template

PROFILES = ("default", "fast")
REAL_TICK_S = 60.0  # a fetch schedule slower than this runs at this period in the bench (said beside the figure)
TARGET_P99_S = {"fast": 90.0}  # the issue's: 99 % of the fleet protected within 90 s of the finding
SHARES = (50, 99, 100)
STAGES = ("wait", "fetch", "render", "publish", "distribution")
STARTUP_S = 60.0
# The simulated clusters' processes yield the CPU to the simulated AWS (the moto server and the
# handlers): a real fleet's CPUs are not S3's or Lambda's, and on equal terms a thousand agents' polls
# held back every request of Publish in the moto server's queue.
AGENT_NICENESS = 10
STEP_S = 0.2  # how often the clock looks at the schedule and the queues
# The new finding of each trial: a reverse shell (category reverse_shell blocks its destination), to an
# address of a public range outside every never-block list (events/findings/README.md: 45.0.0.0/8), each
# trial's in a /24 of its own: adjacent addresses would be aggregated into one prefix (a /31).
NEW_ADDRESS = "45.153.{}.77"


@dataclass(frozen=True)
class ProtectConfig:
    agents: int = 1_000
    trials: int = 4
    processes: int = 4
    seed: int = 1
    profiles: tuple[str, ...] = PROFILES
    tick_s: float = REAL_TICK_S  # a fetch schedule slower than this runs at this period
    startup_s: float = STARTUP_S  # the agents' first polls spread over at least this (not measured)


def rate_seconds(expression: str) -> float:
    """Seconds between two runs of an EventBridge ``rate(...)`` expression."""
    match = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", expression.strip())
    if not match:
        raise ValueError(f"not a rate expression: {expression!r}")
    unit = {"minute": 60, "hour": 3600, "day": 86_400}[match.group(2).rstrip("s")]
    return int(match.group(1)) * unit


@dataclass
class Run:
    """One run of a function started by the clock: which, when (``time.time()``), what it returned."""

    function: str
    started: float
    ended: float
    invocations: list[Invocation]


@dataclass
class StackClock:
    """The stack's own triggers, on this machine's clock: the CdrFetch schedule rule every ``tick`` s
    (its deployed period divided by ``compression``), and Lambda's SQS pollers for Render and Publish,
    each delivering its queue a batching window (deployed) after the first message became visible."""

    lambdas: LambdaService
    compression: float = 1.0
    runs: list[Run] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rule = self.lambdas.schedule_of("CdrFetchFunction")
        self.period_s = rate_seconds(self.lambdas.rules[self.rule][0]["ScheduleExpression"])
        self.tick_s = self.period_s / self.compression
        self.next_fire = time.time() + self.tick_s
        self.sqs = self.lambdas.stack.client("sqs")
        self.queues = {
            logical: (queue_url(m["EventSourceArn"]), float(m.get("MaximumBatchingWindowInSeconds") or 0))
            for logical in ("RenderFunction", "PublishFunction")
            for m in self.lambdas.mappings[logical]
        }
        self.first_seen: dict[str, float | None] = dict.fromkeys(self.queues)

    def window_s(self, logical: str) -> float:
        return self.queues[logical][1]

    def step(self) -> None:
        """Whatever is due now: the schedule's run, a queue's delivery."""
        now = time.time()
        if now >= self.next_fire:
            self._run("CdrFetchFunction", lambda: self.lambdas.fire(self.rule))
            while self.next_fire <= time.time():  # EventBridge does not queue the ticks a long run missed
                self.next_fire += self.tick_s
        for logical, (url, window) in self.queues.items():
            seen = self.first_seen[logical]
            if seen is None:
                attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
                if int(attributes["Attributes"]["ApproximateNumberOfMessages"]):
                    self.first_seen[logical] = time.time()
            elif time.time() >= seen + window:
                self.first_seen[logical] = None

                def deliver(logical: str = logical) -> list[Invocation]:
                    return self.lambdas.poll(logical).invocations

                self._run(logical, deliver)

    def _run(self, logical: str, call: Callable[[], list[Invocation]]) -> None:
        """One run; a failed one is kept in ``failed`` (as Lambda would retry it or the next schedule
        resume), not counted as a run: a trial waiting for it waits for the next."""
        started = time.time()
        invocations = call()
        errors = [f"{i.function}: {i.error}" for i in invocations if not i.ok]
        if errors:
            self.failed.extend(errors)
            return
        self.runs.append(Run(logical, started, time.time(), invocations))

    def first_run(self, logical: str, after: float) -> Run | None:
        return next((r for r in self.runs if r.function == logical and r.started >= after), None)


def percentile(values: list[float], share: float) -> float:
    """Nearest rank: the smallest value at least ``share`` of ``values`` are at or under."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(share * len(ordered))) - 1]


@contextmanager
def _agents(
    stack: Stack, work: Path, config: ProtectConfig, interval_s: float
) -> Iterator[tuple[Watch, dict[str, str]]]:
    """``config.agents`` agents polling the stack's distribution bucket every ``interval_s``, in worker
    processes (part (f)'s), each process the agents of one channel with the session of a cluster
    onboarded on that channel (deploy/cluster-access: the bucket policy takes status writes only from
    cluster roles)."""
    names = [str(c["name"]) for c in CHANNELS]
    clusters = {f"bench-{i:05d}": names[i % len(names)] for i in range(config.agents)}
    rng = random.Random(config.seed)
    # start-up (not measured) spread over a minute at least: a thousand first polls (each reads the whole
    # bundle) within 10 s would measure the moto server, not the agents
    delays = {c: rng.uniform(0, max(interval_s, config.startup_s)) for c in clusters}
    ctx = multiprocessing.get_context("spawn")
    link = WorkerLink(switch=ctx.Event(), stop=ctx.Event(), events=ctx.Queue(), polls=ctx.Value("q", 0))
    public_pem = KmsSigner(stack.client("kms"), stack.signing_key_arn).public_key_pem()
    per_channel = max(1, config.processes // len(names))
    processes = []
    saved = dict(os.environ)
    try:
        for channel in names:
            session = onboard_cluster(stack, f"ttp-{channel}", channel).session
            # what the spawned workers' clients read: the endpoint, its certificate, the cluster's session
            os.environ.update(stack.server.env)
            os.environ.update({k.upper(): v for k, v in session.items()})
            ours = [(c, channel, delays[c]) for c, ch in clusters.items() if ch == channel]
            for n in range(per_channel):
                spec = WorkerSpec(
                    endpoint=stack.server.url,
                    region=REGION,
                    bucket=stack.dist_bucket,
                    public_pem=public_pem,
                    crds=str(CRDS) if CRDS.is_dir() else None,
                    agents=tuple(ours[n::per_channel]),
                    root=str(work / "agents"),
                    interval_s=interval_s,
                    update_interval_s=interval_s,
                    compression=1.0,
                    seed=config.seed,
                    niceness=AGENT_NICENESS,
                )
                processes.append(ctx.Process(target=worker, args=(spec, link), daemon=True))
                processes[-1].start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        yield Watch(link.events, processes, clusters), clusters
    finally:
        link.stop.set()
        link.switch.set()
        for process in processes:
            process.join(60)
            if process.is_alive():
                process.terminate()


def _manifests(stack: Stack) -> dict[str, dict[str, Any]]:
    dist = S3Store(stack.client("s3"), stack.dist_bucket)
    return {str(c["name"]): json.loads(dist.get(layout.channel_manifest_key(str(c["name"]))).data) for c in CHANNELS}


def _blocks(work: Path, cluster: str, address: str) -> bool:
    """Whether what the agent of ``cluster`` applied names ``address`` (as its own /32)."""
    return any(f"{address}/32" in p.read_text() for p in (work / "agents" / cluster / "objects").glob("*.yaml"))


def _wait(clock: StackClock, watch: Watch, done: Callable[[], Any], seconds: float, what: str) -> Any:
    """Run the clock and take the agents' reports until ``done()`` is truthy; its value."""
    deadline = time.time() + seconds
    while True:
        clock.step()
        got = done()
        if got:
            return got
        if time.time() > deadline:
            failed = f"; failed runs meanwhile: {'; '.join(clock.failed[-3:])}" if clock.failed else ""
            raise RuntimeError(f"{what}: not within {seconds:g} s{failed}")
        watch.until(lambda: False, STEP_S)


def run_profile(
    server: MotoServer, work: Path, profile: str, config: ProtectConfig, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """The trials of one profile on a stack deployed with it (see the module's docstring)."""
    interval = POLL_INTERVALS_S[profile]
    shutil.rmtree(work, ignore_errors=True)  # the agents' state folders of an earlier run
    with (
        FakeQualysGateway(FINDINGS, rebase_to=datetime.now(UTC), tls=server.tls.server_context()) as gateway,
        FeedServer(root=DEMO_FEEDS_DIR) as feeds,
    ):
        template_secret = str(load_template(TEMPLATE)["Parameters"]["QualysSecretName"]["Default"])
        create_qualys_secret(server, template_secret)
        parameters = {"Environment": f"ttp-{profile}", "QualysGatewayUrl": gateway.url, "Profile": profile}
        stack = deploy(server, name=f"cdr-policy-ttp-{profile}", parameters=parameters)
        # without prod's promotion: a promoting channel takes a change only after its audit channel's
        # soak (24 h by default) by design; what is measured is the way of a change that ships at once
        unpromoted = [{k: v for k, v in c.items() if k != "promote"} for c in CHANNELS]
        upload_config(stack, feeds, CRDS if CRDS.is_dir() else None, unpromoted)
        lambdas = LambdaService(stack, work / "lambda.log")
        # the first bundles: the stack's first CdrFetch and FeedSync runs, then Render and Publish
        for logical in ("CdrFetchFunction", "FeedSyncFunction", "RenderFunction", "PublishFunction"):
            for invocation in lambdas.trigger(logical):
                if not invocation.ok:
                    raise RuntimeError(f"{invocation.function}: {invocation.error}")
        rule = lambdas.schedule_of("CdrFetchFunction")
        period = rate_seconds(lambdas.rules[rule][0]["ScheduleExpression"])
        clock = StackClock(lambdas, compression=max(1.0, period / config.tick_s))
        say(
            f"(g) {profile}: CdrFetch every {period:g} s"
            + (f" (run every {clock.tick_s:g} s: {clock.compression:g}x faster)" if clock.compression > 1 else "")
            + f", Render window {clock.window_s('RenderFunction'):g} s, Publish window "
            f"{clock.window_s('PublishFunction'):g} s, {config.agents:,} agents polling every {interval:g} s ..."
        )
        with _agents(stack, work, config, interval) as (watch, clusters):
            first = {ch: m["digest"] for ch, m in _manifests(stack).items()}
            _wait(clock, watch, lambda: watch.all_report(first), 900, "the fleet's first bundle")
            rng = random.Random(f"{config.seed}/{profile}")
            requests_from = len(gateway.requests)
            started = time.time()
            trials = []
            for n in range(config.trials):
                trials.append(_trial(clock, watch, gateway, stack, work, clusters, NEW_ADDRESS.format(170 + n), rng))
                t = trials[-1]
                stages = ", ".join(f"{k} {v:.1f}" for k, v in t["stages"].items())
                say(
                    f"(g) {profile} trial {n + 1}/{config.trials}: 99% of the agents protected after "
                    f"{t['protected_s']['99']:.1f} s ({stages})"
                )
            elapsed = time.time() - started
        findings = [r for r in gateway.requests[requests_from:] if r.path.endswith("/findings")]
    per_hour_bench = len(findings) / elapsed * 3600
    return {
        "profile": profile,
        "agents": config.agents,
        "poll_interval_s": interval,
        "schedule_s": period,
        "compression": clock.compression,
        "render_window_s": clock.window_s("RenderFunction"),
        "publish_window_s": clock.window_s("PublishFunction"),
        "trials": trials,
        "failed_runs": clock.failed,
        "qualys": {
            "findings_requests": len(findings),
            "bench_seconds": elapsed,
            # a schedule run faster makes its requests faster by the same factor
            "per_hour": per_hour_bench / clock.compression,
            "limit_per_hour": int(stack.parameters.get("QualysRequestsPerHour", "120")),
        },
        "summary": summarise(trials),
    }


def _trial(
    clock: StackClock,
    watch: Watch,
    gateway: FakeQualysGateway,
    stack: Stack,
    work: Path,
    clusters: dict[str, str],
    address: str,
    rng: random.Random,
) -> dict[str, Any]:
    """One detection, from the gateway to every agent (see the module's docstring, step 3)."""
    before = {ch: m["digest"] for ch, m in _manifests(stack).items()}
    appear = time.time() + rng.uniform(0, clock.tick_s)  # a random point of the schedule
    _wait(clock, watch, lambda: time.time() >= appear, clock.tick_s + 5, "the detection's moment")
    t0 = gateway.publish([reverse_shell_finding(address, datetime.now(UTC))])
    limit = clock.tick_s + 180
    fetch = _wait(clock, watch, lambda: clock.first_run("CdrFetchFunction", t0), limit, "CdrFetch after t0")
    if fetch.invocations[-1].response["new"] < 1:
        raise RuntimeError(f"the CdrFetch run after t0 did not see the new finding: {fetch.invocations[-1].response}")
    window = clock.window_s("RenderFunction") + 180
    render = _wait(clock, watch, lambda: clock.first_run("RenderFunction", fetch.ended), window, "Render")

    def published() -> tuple[Run, dict[str, str]] | None:
        """The Publish run after which every channel names a new bundle (a channel's request may come
        in a later batch than the other's), and those bundles."""
        runs = [r for r in clock.runs if r.function == "PublishFunction" and r.started >= render.ended]
        if not runs:
            return None
        now = {ch: m["digest"] for ch, m in _manifests(stack).items()}
        return (runs[-1], now) if all(now[ch] != before[ch] for ch in now) else None

    publish, new = _wait(clock, watch, published, clock.window_s("PublishFunction") + 180, "Publish")
    _wait(
        clock,
        watch,
        lambda: all((c, new[ch]) in watch.first_at for c, ch in clusters.items()),
        6 * POLL_INTERVALS_S["default"],
        "every agent on the new bundle",
    )
    for channel in new:
        cluster = next(c for c, ch in clusters.items() if ch == channel)
        if not _blocks(work, cluster, address):
            raise RuntimeError(f"channel {channel}'s new bundle does not name {address}")
    reached = sorted(watch.first_at[(c, new[ch])] for c, ch in clusters.items())
    waited = (fetch.started - t0) * clock.compression  # the real schedule's wait
    protected = [waited + (at - fetch.started) for at in reached]
    return {
        "address": address,
        "protected_s": {str(s): percentile(protected, s / 100) for s in SHARES},
        "stages": {
            "wait": waited,
            "fetch": fetch.ended - fetch.started,
            "render": render.ended - fetch.ended,
            "publish": publish.ended - render.ended,
            "distribution": percentile([at - publish.ended for at in reached], 0.99),
        },
    }


def summarise(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the trials: p50 / p99 / max of the time to protect 50, 99 and 100 % of the agents, and of each stage."""

    def spread(values: list[float]) -> dict[str, float]:
        return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99), "max": max(values)}

    return {
        "protected_s": {str(s): spread([t["protected_s"][str(s)] for t in trials]) for s in SHARES},
        "stages": {stage: spread([t["stages"][stage] for t in trials]) for stage in STAGES},
    }


def run(work: Path, config: ProtectConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every profile of ``config``, one moto server each; the result is JSON (``rows`` makes the table)."""
    out: dict[str, Any] = {"agents": config.agents, "trials": config.trials, "profiles": {}}
    with quiet():
        for profile in config.profiles:
            with moto_server(tls_terminated=True) as checked:
                # In its own process (the agents' polls do not share the handlers' interpreter), over HTTP
                # taken as TLS (a handshake per request of a thousand agents would be this machine's CPU),
                # without IAM checks: a thousand agents would each need a cluster role (deploy/cluster-access
                # grants a role its own status object only); tests/integration/test_roles.py tests the grants.
                checked.enforce_iam(False)
                server = dataclasses.replace(checked, enforcing=False)
                out["profiles"][profile] = run_profile(server, work / profile, profile, config, say)
    return out


# -- the table -------------------------------------------------------------------------------------


def rows(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for profile, p in r["profiles"].items():
        s = p["summary"]
        ninety_nine = s["protected_s"]["99"]
        shares = "; ".join(
            f"{share} %: p50 {v['p50']:.1f} / p99 {v['p99']:.1f} / max {v['max']:.1f} s"
            for share, v in s["protected_s"].items()
        )
        stages = ", ".join(f"{k} {s['stages'][k]['p50']:.1f} ({s['stages'][k]['p99']:.1f})" for k in STAGES)
        faster = (
            f"; the {p['schedule_s'] / 60:g}-minute schedule ran {p['compression']:g}x faster, its wait is the "
            "measured one times that"
            if p["compression"] > 1
            else ""
        )
        target = TARGET_P99_S.get(profile)
        out.append(
            (
                "(g)",
                f"time to protect, `{profile}` profile: 99 % of {p['agents']:,} agents (detection at the gateway to "
                "the agent reporting the bundle that blocks it)",
                f"p50 {ninety_nine['p50']:.1f} s / p99 {ninety_nine['p99']:.1f} s",
                f"{len(p['trials'])} trials (p99 and max by nearest rank); {shares}. Stages p50 (p99) in s: {stages}. "
                f"CdrFetch every {p['schedule_s']:g} s, Render window {p['render_window_s']:g} s, Publish window "
                f"{p['publish_window_s']:g} s, polls every {p['poll_interval_s']:g} s{faster}"
                + (f"; {len(p['failed_runs'])} failed run(s), taken again" if p["failed_runs"] else ""),
                f"p99 <= {target:g} s" if target else "-",
                ninety_nine["p99"] <= target if target else None,
            )
        )
        q = p["qualys"]
        out.append(
            (
                "(g)",
                f"Qualys findings requests per hour, `{profile}` profile",
                f"{q['per_hour']:.0f}",
                f"{q['findings_requests']} requests in {q['bench_seconds']:.0f} s of the bench"
                + (f" (schedule {p['compression']:g}x faster: divided by that)" if p["compression"] > 1 else ""),
                f"<= {q['limit_per_hour']} (QualysRequestsPerHour)",
                q["per_hour"] <= q["limit_per_hour"],
            )
        )
    return out


def render_markdown(r: dict[str, Any]) -> str:
    head = (
        f"template.yaml deployed on moto per profile; the real handlers run from the stack's own schedule rule and "
        f"queues (batching windows as deployed), {r['agents']:,} sync agents poll its distribution bucket at the "
        f"profile's interval; {r['trials']} detections per profile, each at a random point of the fetch schedule."
    )
    return "\n".join([f"# (g) Time to protect, {r['agents']:,} agents", "", head, "", *table(rows(r)), ""])

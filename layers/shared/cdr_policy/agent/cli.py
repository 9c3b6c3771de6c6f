"""``cdr-policy agent``: follow a channel and apply it to this cluster (or write it to a directory).

Mounted by the main CLI with ``add_arguments(subparser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from cdr_policy.agent.applier import Applier
from cdr_policy.agent.directory import DirectoryApplier
from cdr_policy.agent.kube import KubeApplier
from cdr_policy.agent.observe import AgentMetrics, ObservabilityServer
from cdr_policy.agent.sync import Agent
from cdr_policy.bundle.signing import Verifier
from cdr_policy.errors import CdrPolicyError, exit_code, print_error
from cdr_policy.observability import logger
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.policy.checker.files import BundleCheck, bundle_checker
from cdr_policy.storage import open_store
from cdr_policy.timeutil import parse_duration

# Results after which a one-shot run exits 0: the cluster carries the channel's current bundle.
_OK_RESULTS = frozenset({"applied", "unchanged"})


def _interval(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"interval {text!r} is shorter than one second")
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bucket",
        required=True,
        metavar="s3://BUCKET | DIR",
        help="the distribution store: an S3 bucket or a local directory",
    )
    parser.add_argument("--channel", required=True, help="the channel to follow (e.g. staging, prod)")
    parser.add_argument("--cluster-id", required=True, help="this cluster's name in status/<cluster-id>.json")
    parser.add_argument(
        "--public-key",
        required=True,
        type=Path,
        metavar="PEM",
        help="public key(s) that bundles must be signed with (PEM; several blocks for a rotation)",
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=_interval("60s"),
        metavar="DURATION",
        help="time between polls, like 30s, 5m or 1h (default 60s)",
    )
    parser.add_argument("--once", action="store_true", help="sync once and exit (non-zero unless applied or unchanged)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--kubernetes",
        action="store_true",
        help="server-side apply to the cluster (in-cluster service account, else kubeconfig)",
    )
    target.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="write the objects as YAML files to DIR instead (dry run / GitOps)",
    )
    parser.add_argument(
        "--crds",
        type=Path,
        metavar="DIR",
        help="with --output-dir: CRD files to check bundles against (with --kubernetes the cluster's CRDs are used)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where the last applied manifest is kept (default ~/.cache/cdr-policy/agent/<channel>)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        metavar="PORT",
        help="serve /metrics (Prometheus), /healthz and /readyz on this port (0: off; not with --once)",
    )
    parser.add_argument("--metrics-host", default="0.0.0.0", metavar="ADDRESS", help="address to serve them on")


def policy_check(applier: Applier, crds: Path | None) -> BundleCheck:
    """The policy checker the agent runs on every bundle before applying it: against the CRDs
    installed in the cluster it applies to (so it checks the versions it will really meet), or in
    directory mode against ``--crds DIR`` when given; the safety checklist always."""
    if isinstance(applier, KubeApplier):
        return bundle_checker(SchemaSet.from_crds(applier.crds(), source="cluster"))
    return bundle_checker(SchemaSet.from_dir(crds) if crds else None)


def run(args: argparse.Namespace) -> int:
    """Run the agent. Returns the process exit code."""
    try:
        verifier = Verifier.from_file(args.public_key)
        applier: Applier = KubeApplier.from_environment() if args.kubernetes else DirectoryApplier(args.output_dir)
        state_dir = args.state_dir or Path.home() / ".cache" / "cdr-policy" / "agent" / args.channel
        agent = Agent(
            open_store(args.bucket),
            channel=args.channel,
            cluster_id=args.cluster_id,
            verifier=verifier,
            applier=applier,
            state_dir=state_dir,
            check=policy_check(applier, args.crds),
        )
    except CdrPolicyError as exc:
        print_error(exc)
        return exit_code(exc)
    try:
        if args.once:
            status = agent.sync_once()
            print(f"{status['last_poll']['result']}: {status['last_poll']['detail']}")
            return 0 if status["last_poll"]["result"] in _OK_RESULTS else 1
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        logger.info(
            "agent started",
            extra={"channel": args.channel, "interval_s": args.interval, "applier": applier.describe()},
        )
        metrics = AgentMetrics(channel=args.channel, interval_s=args.interval)
        server = None
        if args.metrics_port:
            server = ObservabilityServer(metrics, host=args.metrics_host, port=args.metrics_port).start()
        try:
            agent.run(args.interval, stop, observe=metrics.observe)
        finally:
            if server is not None:
                server.stop()
        logger.info("agent stopped", extra={"channel": args.channel})
        return 0
    finally:
        if isinstance(applier, KubeApplier):
            applier.close()

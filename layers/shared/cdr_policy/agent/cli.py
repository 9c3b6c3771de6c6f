"""``cdr-policy agent``: follow a channel and apply it to this cluster (or write it to a directory).

Mounted by the main CLI with ``add_arguments(subparser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdr_policy.admission import Admission, Protection
from cdr_policy.agent import kubeconfig
from cdr_policy.agent.applier import Applier
from cdr_policy.agent.directory import DirectoryApplier
from cdr_policy.agent.kube import KubeApplier
from cdr_policy.agent.observe import AgentMetrics, ObservabilityServer
from cdr_policy.agent.state import RECORD_NAME, ClusterRecord
from cdr_policy.agent.sync import (
    DEFAULT_DRIFT_INTERVAL_S,
    DEFAULT_INTERVAL_S,
    DEFAULT_MAX_CLOCK_SKEW_S,
    DEFAULT_MAX_SHRINK_PERCENT,
    DEFAULT_POLL_JITTER,
    DEFAULT_SYNC_DEADLINE_S,
    Agent,
)
from cdr_policy.bundle.signing import Verifier
from cdr_policy.cli.parser import add_protection_arguments, protection_of
from cdr_policy.errors import CdrPolicyError, ConfigError, exit_code, print_error
from cdr_policy.hits.collect import HitsCollector
from cdr_policy.hits.reports import ConfigMapReports, DirectoryReports
from cdr_policy.observability import logger
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.storage import open_store
from cdr_policy.timeutil import parse_duration

# Results after which a one-shot run exits 0: the cluster carries the channel's current bundle.
_OK_RESULTS = frozenset({"applied", "unchanged"})


def duration(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        if not low <= seconds <= high:
            raise argparse.ArgumentTypeError(f"{text!r} must be between {low:g}s and {high:g}s")
        return seconds

    return parse


def _percent(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number from 1 to 100")
    return int(text)


_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")


def role_arn(text: str) -> str | None:
    if not text:
        return None  # the pod's credentials are the cluster's role already (Roles Anywhere)
    if not _ROLE_ARN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not an IAM role ARN: {text[:80]!r} (stack output ClusterRoleArn)")
    return text


def s3_client(assume_role: str | None, cluster_id: str) -> Any:
    """An S3 client whose every call is bounded (a slow bucket must not hold a sync for minutes:
    botocore's defaults allow 60 s per read and several retries). With ``assume_role``, the pod's own
    credentials (IRSA, Pod Identity) are exchanged for the cluster's role of
    ``deploy/cluster-access/template.yaml``, with the cluster id as session name (its trust policy
    requires it), and renewed by botocore before they expire."""
    import boto3
    import botocore.session
    from botocore.config import Config
    from botocore.credentials import (
        AssumeRoleCredentialFetcher,
        CredentialProvider,
        CredentialResolver,
        Credentials,
        DeferredRefreshableCredentials,
    )

    config = Config(connect_timeout=5, read_timeout=20, retries={"mode": "standard", "max_attempts": 3})
    session = botocore.session.get_session()
    if assume_role:
        if len(cluster_id) < 2:
            raise ConfigError(
                f"--assume-role: the cluster id {cluster_id!r} is the session name, which AWS wants 2 to 64 "
                "characters long"
            )
        source = session.get_credentials()
        if source is None:
            raise ConfigError(
                f"--assume-role {assume_role}: this pod has no AWS credentials to assume it with "
                "(IRSA annotation, EKS Pod Identity association or AWS_* environment)"
            )
        fetcher = AssumeRoleCredentialFetcher(
            client_creator=lambda service, **kwargs: session.create_client(service, config=config, **kwargs),
            source_credentials=source,
            role_arn=assume_role,
            extra_args={"RoleSessionName": cluster_id},
        )

        class ClusterRole(CredentialProvider):
            METHOD = "assume-role"

            def load(self) -> Credentials:
                return DeferredRefreshableCredentials(fetcher.fetch_credentials, self.METHOD)

        session = botocore.session.get_session()
        session.register_component("credential_provider", CredentialResolver([ClusterRole()]))
    return boto3.Session(botocore_session=session).client("s3", config=config)


def _default_namespace() -> str:
    """The pod's namespace when in a cluster (the service account's), else cdr-policy-system."""
    try:
        return (kubeconfig.SERVICE_ACCOUNT_DIR / "namespace").read_text(encoding="utf-8").strip()
    except OSError:
        return "cdr-policy-system"


_interval = duration(1, 86400)


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
        "--assume-role",
        type=role_arn,
        metavar="ARN",
        help="read and write the bucket as this role (the cluster's ClusterRoleArn, deploy/cluster-access), "
        "assumed with the pod's own credentials; empty or absent: use those credentials as they are",
    )
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
        default=DEFAULT_INTERVAL_S,
        metavar="DURATION",
        help=f"time between polls, like 30s, 5m or 1h (1s..24h, default {DEFAULT_INTERVAL_S:g}s; each wait "
        f"varies by up to {DEFAULT_POLL_JITTER * 100:g}%% so that a fleet does not poll in step)",
    )
    parser.add_argument(
        "--drift-interval",
        type=duration(5, 86400),
        default=DEFAULT_DRIFT_INTERVAL_S,
        metavar="DURATION",
        help=f"how often an unchanged poll compares the owned objects with the applied bundle and repairs "
        f"drift (5s..24h, default {DEFAULT_DRIFT_INTERVAL_S:g}s)",
    )
    parser.add_argument(
        "--sync-deadline",
        type=duration(5, 3600),
        default=DEFAULT_SYNC_DEADLINE_S,
        metavar="DURATION",
        help=f"overall time one sync may spend on the API server; the status is written either way "
        f"(5s..1h, default {DEFAULT_SYNC_DEADLINE_S:g}s)",
    )
    parser.add_argument(
        "--max-clock-skew",
        type=duration(0, 3600),
        default=DEFAULT_MAX_CLOCK_SKEW_S,
        metavar="DURATION",
        help=f"refuse manifests created further ahead of this clock (0..1h, default {DEFAULT_MAX_CLOCK_SKEW_S:g}s)",
    )
    parser.add_argument(
        "--max-shrink-percent",
        type=_percent,
        default=DEFAULT_MAX_SHRINK_PERCENT,
        metavar="N",
        help="refuse, without a signed approval, a bundle removing more than N%% of the enforced objects or "
        f"prefixes (1..100, default {DEFAULT_MAX_SHRINK_PERCENT})",
    )
    add_protection_arguments(parser, "this cluster's")
    parser.add_argument(
        "--state-namespace",
        metavar="NAMESPACE",
        help=f"with --kubernetes: the namespace of the ConfigMap {RECORD_NAME} that records the applied "
        "generation (default: the pod's namespace, else cdr-policy-system)",
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
    hits = parser.add_mutually_exclusive_group()
    hits.add_argument(
        "--hits-namespace",
        metavar="NAMESPACE",
        help="with --kubernetes: sum the node readers' hit reports (ConfigMaps of this namespace, deploy/hits) "
        "into the status; absent or empty: no hits reported",
    )
    hits.add_argument("--hits-dir", type=Path, metavar="DIR", help="sum the node readers' hit reports in this folder")


def admission_for(applier: Applier, crds: Path | None, protected: Protection) -> Admission:
    """The admission the agent runs on every bundle before applying it: the closed grammar and the
    objects' effect against the never-block list plus this cluster's ``protected`` ranges and
    ports; then the CRDs installed in the cluster it applies to (so it checks the versions it will
    really meet), or in directory mode ``--crds DIR`` when given."""
    if isinstance(applier, KubeApplier):
        return Admission(protected, SchemaSet.from_crds(applier.crds(), source="cluster"))
    return Admission(protected, SchemaSet.from_dir(crds) if crds else None)


def _hits(args: argparse.Namespace, applier: Applier) -> HitsCollector | None:
    """The collector of the node readers' reports (``--hits-namespace`` or ``--hits-dir``), if any."""
    if args.hits_dir is not None:
        return HitsCollector(DirectoryReports(args.hits_dir), args.channel)
    if not args.hits_namespace:
        return None
    if not isinstance(applier, KubeApplier):
        raise ConfigError("--hits-namespace needs --kubernetes (in directory mode use --hits-dir)")
    return HitsCollector(ConfigMapReports(applier, args.hits_namespace), args.channel)


def run(args: argparse.Namespace) -> int:
    """Run the agent. Returns the process exit code."""
    try:
        verifier = Verifier.from_file(args.public_key)
        applier: Applier = KubeApplier.from_environment() if args.kubernetes else DirectoryApplier(args.output_dir)
        state_dir = args.state_dir or Path.home() / ".cache" / "cdr-policy" / "agent" / args.channel
        agent = Agent(
            open_store(
                args.bucket,
                s3_client(args.assume_role, args.cluster_id) if args.bucket.startswith("s3://") else None,
            ),
            channel=args.channel,
            cluster_id=args.cluster_id,
            verifier=verifier,
            applier=applier,
            state_dir=state_dir,
            admission=admission_for(applier, args.crds, protection_of(args, "this cluster")),
            record=(
                ClusterRecord(applier, args.state_namespace or _default_namespace())
                if isinstance(applier, KubeApplier)
                else None
            ),
            max_clock_skew_s=args.max_clock_skew,
            max_shrink_percent=args.max_shrink_percent,
            drift_interval_s=args.drift_interval,
            sync_deadline_s=args.sync_deadline,
            hits=_hits(args, applier),
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

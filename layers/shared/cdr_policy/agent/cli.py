"""``cdr-policy agent``: follow a channel and apply it to this cluster (or write it to a directory).

Mounted by the main CLI with ``add_arguments(subparser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdr_policy.admission import Admission, Protection
from cdr_policy.admission.refusal import Refusals
from cdr_policy.agent import kubeconfig
from cdr_policy.agent.applier import Applier, ApplyError
from cdr_policy.agent.directory import DirectoryApplier
from cdr_policy.agent.kube import KubeApplier
from cdr_policy.agent.observe import AgentMetrics, ObservabilityServer
from cdr_policy.agent.state import RECORD_NAME, ClusterRecord
from cdr_policy.agent.status import AgentStatus
from cdr_policy.agent.sync import (
    DEFAULT_DRIFT_INTERVAL_S,
    DEFAULT_INTERVAL_S,
    DEFAULT_MAX_CLOCK_SKEW_S,
    DEFAULT_MAX_SHRINK_PERCENT,
    DEFAULT_POLL_JITTER,
    DEFAULT_SYNC_DEADLINE_S,
    POLL_INTERVALS_S,
    Agent,
)
from cdr_policy.bundle.loader import Bundle
from cdr_policy.bundle.manifest import VerificationError
from cdr_policy.bundle.signing import Verifier
from cdr_policy.cli.flags import add_metrics_arguments, bounded_int, dns_label, duration
from cdr_policy.cli.parser import add_protection_arguments, invoked_as, protection_of
from cdr_policy.errors import CdrPolicyError, ConfigError, exit_code, print_error
from cdr_policy.hits.collect import HitsCollector
from cdr_policy.hits.reports import ConfigMapReports, DirectoryReports
from cdr_policy.observability import logger
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.storage import open_store, writable_dir
from cdr_policy.timeutil import iso, utcnow

# Results after which a one-shot run exits 0: the cluster carries the channel's current bundle.
_OK_RESULTS = frozenset({"applied", "unchanged"})


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
        help="the distribution store: an S3 bucket or a local directory (which must exist)",
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
        "--profile",
        choices=sorted(POLL_INTERVALS_S),
        default="default",
        help="the stack's Profile (template.yaml): how often to poll, "
        + ", ".join(f"{name} every {seconds:g}s" for name, seconds in sorted(POLL_INTERVALS_S.items()))
        + " (default: default; --interval overrides it)",
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        metavar="DURATION",
        help=f"time between polls, like 30s, 5m or 1h (1s..24h, default the --profile's, {DEFAULT_INTERVAL_S:g}s "
        f"for default; each wait varies by up to {DEFAULT_POLL_JITTER * 100:g}%% so that a fleet does not poll "
        "in step)",
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
        type=bounded_int(1, 100),
        default=DEFAULT_MAX_SHRINK_PERCENT,
        metavar="N",
        help="refuse, without a signed approval, a bundle removing more than N%% of the enforced objects or "
        f"prefixes (1..100, default {DEFAULT_MAX_SHRINK_PERCENT})",
    )
    add_protection_arguments(parser, "this cluster's")
    parser.add_argument(
        "--state-namespace",
        type=dns_label,
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
        help="where the last applied manifest and status.json are kept (default ~/.cache/cdr-policy/agent/<channel>)",
    )
    add_metrics_arguments(parser, port_default=9090, host_default="0.0.0.0", when="in loop mode (not with --once)")
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
    really meet; read when the first bundle is checked, so that an API server away at start does
    not stop the agent), or in directory mode ``--crds DIR`` when given."""
    if isinstance(applier, KubeApplier):
        return _ClusterAdmission(protected, applier=applier)
    return Admission(protected, SchemaSet.from_dir(crds) if crds else None)


@dataclass(frozen=True)
class _ClusterAdmission(Admission):
    """``Admission`` against the cluster's CRDs, read once, when the first bundle is checked. Until
    they can be read, a bundle is refused with that reason (``check_failed``: tried again next poll)."""

    applier: KubeApplier | None = None
    _read: dict[str, SchemaSet] = field(default_factory=dict, compare=False, repr=False)

    def crd_problems(self, bundle: Bundle, applied: Callable[[dict[str, Any]], bool] | None = None) -> Refusals:
        if "crds" not in self._read:
            assert self.applier is not None, "admission_for gives the applier"
            try:
                self._read["crds"] = SchemaSet.from_crds(self.applier.crds(), source="cluster")
            except ApplyError as exc:
                raise VerificationError(
                    "check_failed", f"cannot read the cluster's CRDs to check the bundle against ({exc})"
                ) from exc
        return Admission(self.protection, self._read["crds"]).crd_problems(bundle, applied)


def _hits(args: argparse.Namespace, applier: Applier) -> HitsCollector | None:
    """The collector of the node readers' reports (``--hits-namespace`` or ``--hits-dir``), if any."""
    if args.hits_dir is not None:
        return HitsCollector(DirectoryReports(args.hits_dir), args.channel)
    if not args.hits_namespace:
        return None
    if not isinstance(applier, KubeApplier):
        raise ConfigError("--hits-namespace needs --kubernetes (in directory mode use --hits-dir)")
    return HitsCollector(ConfigMapReports(applier, args.hits_namespace), args.channel)


def poll_interval(args: argparse.Namespace) -> float:
    """Seconds between two polls: ``--interval``, else the ``--profile``'s."""
    return float(args.interval) if args.interval is not None else POLL_INTERVALS_S[args.profile]


def run(args: argparse.Namespace) -> int:
    """Run the agent. Returns the process exit code."""
    interval = poll_interval(args)
    try:
        verifier = Verifier.from_file(args.public_key)
        dist = open_store(
            args.bucket,
            s3_client(args.assume_role, args.cluster_id) if args.bucket.startswith("s3://") else None,
            flag="--bucket",
        )
        state_dir = writable_dir(
            args.state_dir or Path.home() / ".cache" / "cdr-policy" / "agent" / args.channel, "--state-dir"
        )
        applier: Applier = KubeApplier.from_environment() if args.kubernetes else DirectoryApplier(args.output_dir)
        agent = Agent(
            dist,
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
            print(status.last_poll.line(), flush=True)
            if status.last_poll.result == "refused":
                q = shlex.quote
                print(
                    f"  next: the channel's generations signed by this key: {invoked_as()} channel history "
                    f"{args.channel} --dist {q(args.bucket)} --public-key {q(str(args.public_key))}"
                )
            if agent.local_error:
                print_error(agent.local_error)
                return 1
            return 0 if status.last_poll.result in _OK_RESULTS else 1
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        logger.info(
            "agent started",
            extra={"channel": args.channel, "interval_s": interval, "applier": applier.describe()},
        )
        metrics = AgentMetrics(channel=args.channel, interval_s=interval)
        server = None
        if args.metrics_port:
            server = ObservabilityServer(metrics, host=args.metrics_host, port=args.metrics_port).start()

        def observe(status: AgentStatus) -> None:
            metrics.observe(status)
            print(f"{iso(utcnow())} {status.last_poll.line()}", flush=True)
            if agent.local_error:
                print_error(agent.local_error)

        print(
            f"agent: following channel {args.channel} in {dist.describe()} every {interval:g}s, applying to "
            f"{applier.describe()}; status in {state_dir}/status.json"
            + (f", metrics on {args.metrics_host}:{server.port}" if server else ""),
            flush=True,
        )
        try:
            agent.run(interval, stop, observe=observe)
        finally:
            if server is not None:
                server.stop()
        logger.info("agent stopped", extra={"channel": args.channel})
        return 0
    finally:
        if isinstance(applier, KubeApplier):
            applier.close()

"""The hits commands.

``cdr-policy hits --policies DIR [--tetragon-export FILE]... [--hubble-export FILE]... [--json]``:
what our objects blocked (or, on an audit channel, would have), per object and destination, with
the feeds, CDR finding ids and categories of the indicator each event hit.

``DIR`` is a ``--output`` folder of ``cdr-policy --once`` or a published bundle folder
(``channels/<channel>/bundles/<digest>/``): its ``provenance.json`` names the objects and where
each of their prefixes, ports and rules came from. Export files are Tetragon's JSON export and
Hubble's flow export, plain or gzip (rotated ones included), one event per line.

``cdr-policy hits-reader``: the node reader (``hits.reader``), run by the DaemonSet of
``deploy/hits``: it follows this node's exports and reports the node's hits to the agent.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from cdr_policy.agent.cli import role_arn, s3_client
from cdr_policy.agent.kube import KubeApplier
from cdr_policy.agent.observe import ObservabilityServer
from cdr_policy.bundle import provenance
from cdr_policy.bundle.manifest import VerificationError
from cdr_policy.bundle.provenance import ProvenanceIndex, read_index
from cdr_policy.bundle.signing import Verifier
from cdr_policy.cli.flags import duration
from cdr_policy.cli.parser import Parser
from cdr_policy.errors import ConfigError
from cdr_policy.hits.aggregate import RETENTION_HOURS
from cdr_policy.hits.events import CILIUM, TETRAGON
from cdr_policy.hits.files import lines
from cdr_policy.hits.fleet import FleetHitsReport, fleet_report, read_fleet
from cdr_policy.hits.metrics import ReaderMetrics
from cdr_policy.hits.reader import DEFAULT_BUNDLE_INTERVAL_S, DEFAULT_INTERVAL_S, IndexFollower, Reader
from cdr_policy.hits.reports import ConfigMapReports, DirectoryReports, ReportStore
from cdr_policy.hits.tally import HitsReport, Tally
from cdr_policy.policy.naming import is_dns_subdomain
from cdr_policy.storage import LocalStore, Store, open_store
from cdr_policy.timeutil import utcnow

# Where the engines write their exports on a node (Tetragon's and Cilium's Helm charts' examples),
# and where the reader keeps its positions and counts (a hostPath in deploy/hits).
TETRAGON_EXPORT = Path("/var/run/cilium/tetragon/tetragon.log")
HUBBLE_EXPORT = Path("/var/run/cilium/hubble/events.log")
STATE_DIR = Path("/var/lib/cdr-policy/hits")


def load_policies(folder: Path) -> ProvenanceIndex:
    """The provenance index of a folder of our policies (ConfigError saying what to give instead)."""
    path = folder / provenance.PATH
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"--policies {folder}: no {provenance.PATH} there: give a --output folder of cdr-policy --once "
            "or a published bundle folder (channels/<channel>/bundles/<digest>)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"--policies {folder}: cannot read {provenance.PATH} ({exc.strerror})") from exc
    try:
        return read_index(data, str(path))
    except VerificationError as exc:
        raise ConfigError(str(exc)) from exc


def hits_main(argv: list[str]) -> int:
    parser = Parser(
        prog="cdr-policy hits",
        description="Attribute Tetragon and Hubble export events to our objects and to the feeds and findings "
        "behind them.",
    )
    parser.add_argument("--policies", required=True, metavar="DIR", help="a --output folder or a bundle folder")
    parser.add_argument(
        "--tetragon-export", action="append", default=[], metavar="FILE", help="Tetragon JSON export (plain or gzip)"
    )
    parser.add_argument(
        "--hubble-export", action="append", default=[], metavar="FILE", help="Hubble flow export (plain or gzip)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if not args.tetragon_export and not args.hubble_export:
        parser.error("give at least one --tetragon-export or --hubble-export")
    index = load_policies(Path(args.policies))
    tally = Tally()
    for engine, paths in ((TETRAGON, args.tetragon_export), (CILIUM, args.hubble_export)):
        for path in paths:
            for line in lines(Path(path)):
                tally.line(engine, line, index)
    report = tally.report(index)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        for text in report_lines(report):
            print(text)
    return 0


def report_lines(report: HitsReport) -> list[str]:
    out = [f"{'ENGINE':<9} {'ACTION':<9} {'COUNT':>7}  {'OBJECT':<40} {'HIT':<34} PROVENANCE"]
    for r in report.hits:
        what = f"{r.address} in {r.prefix}" if r.prefix else f"port {r.port}" if r.port else f"rule {r.rule}"
        source = "; ".join(
            part
            for part in (
                "feeds " + ",".join(r.feeds) if r.feeds else "",
                "findings " + ",".join(r.findings) if r.findings else "",
                "categories " + ",".join(r.categories) if r.categories else "",
            )
            if part
        )
        out.append(f"{r.engine:<9} {r.action:<9} {r.count:>7}  {r.object:<40} {what:<34} {source}")
    e = report.events
    out.append(f"events: {e.read} read, {e.ours} ours, {e.unattributed} unattributed, {e.malformed} malformed")
    return out


def reader_parser(env: Mapping[str, str]) -> Parser:
    """The reader's command line (``deploy/hits/daemonset.yaml`` runs it)."""
    parser = Parser(
        prog="cdr-policy hits-reader",
        description="Follow this node's Tetragon and Hubble exports and report what our objects blocked.",
    )
    parser.add_argument("--bucket", required=True, metavar="s3://BUCKET | DIR", help="the distribution store")
    parser.add_argument("--channel", required=True, help="the channel this cluster follows")
    parser.add_argument("--cluster-id", required=True, help="this cluster's id (the session name of --assume-role)")
    parser.add_argument(
        "--assume-role",
        type=role_arn,
        metavar="ARN",
        help="read the bucket as this role (the cluster's ReaderRoleArn, deploy/cluster-access: read only)",
    )
    parser.add_argument("--public-key", required=True, type=Path, metavar="PEM", help="the channel's signing key(s)")
    parser.add_argument("--node-name", default=env.get("NODE_NAME"), help="this node (default: $NODE_NAME)")
    parser.add_argument("--tetragon-export", type=Path, default=TETRAGON_EXPORT, metavar="FILE")
    parser.add_argument("--hubble-export", type=Path, default=HUBBLE_EXPORT, metavar="FILE")
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR, metavar="DIR", help="positions and counts")
    reports = parser.add_mutually_exclusive_group(required=True)
    reports.add_argument("--reports-namespace", metavar="NAMESPACE", help="report in ConfigMaps of this namespace")
    reports.add_argument("--reports-dir", type=Path, metavar="DIR", help="report as files in this folder")
    parser.add_argument(
        "--interval",
        type=duration(1, 3600),
        default=DEFAULT_INTERVAL_S,
        metavar="DURATION",
        help=f"how often to report (1s..1h, default {DEFAULT_INTERVAL_S:g}s)",
    )
    parser.add_argument(
        "--bundle-interval",
        type=duration(1, 86400),
        default=DEFAULT_BUNDLE_INTERVAL_S,
        metavar="DURATION",
        help="how often to look for a new bundle (1s..24h, default "
        f"{DEFAULT_BUNDLE_INTERVAL_S:g}s; sooner when an event names an object the reader does not know)",
    )
    parser.add_argument("--once", action="store_true", help="count what the exports hold, report, and exit")
    parser.add_argument("--metrics-port", type=int, default=9091, metavar="PORT", help="/metrics, /healthz, /readyz")
    parser.add_argument("--metrics-host", default="0.0.0.0", metavar="ADDRESS")
    return parser


def reader_main(argv: list[str], env: Mapping[str, str]) -> int:
    parser = reader_parser(env)
    args = parser.parse_args(argv)
    if not args.node_name or not is_dns_subdomain(args.node_name):
        parser.error("--node-name (or $NODE_NAME) must be the node's name")
    reporter: ReportStore
    if args.reports_dir is not None:
        reporter = DirectoryReports(args.reports_dir)
    else:
        reporter = ConfigMapReports(KubeApplier.from_environment(env), args.reports_namespace)
    client = s3_client(args.assume_role, args.cluster_id) if args.bucket.startswith("s3://") else None
    state_dir = args.state_dir / args.channel
    follower = IndexFollower(
        open_store(args.bucket, client), args.channel, Verifier.from_file(args.public_key), LocalStore(state_dir)
    )
    exports = {TETRAGON: args.tetragon_export, CILIUM: args.hubble_export}
    reader = Reader(follower, exports, state_dir=state_dir, reports=reporter, node=args.node_name)
    if args.once:
        reader.drain()
        totals = reader.table.totals
        print(
            f"bundle {(reader.follower.digest or '-')[:12]}: {totals.read} lines read, {totals.ours} ours, "
            f"{totals.unattributed} unattributed, {totals.malformed} malformed; report in {reporter.describe()}"
        )
        return 0 if reader.follower.digest else 1
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    metrics = ReaderMetrics(channel=args.channel, interval_s=args.interval)
    server = (
        ObservabilityServer(metrics, host=args.metrics_host, port=args.metrics_port).start()
        if args.metrics_port
        else None
    )
    try:
        reader.run(args.interval, stop, observe=metrics.observe, bundle_interval_s=args.bundle_interval)
    finally:
        if server is not None:
            server.stop()
    return 0


# -- cdr-policy fleet hits ---------------------------------------------------------------------------


def add_since(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        type=duration(3600, RETENTION_HOURS * 3600),
        default=RETENTION_HOURS * 3600.0,
        metavar="DURATION",
        help="the window, like 24h or 7d (1h..7d, default 7d: what the clusters keep)",
    )


def fleet_hits(dist: Store, since_s: float) -> FleetHitsReport:
    return fleet_report(read_fleet(dist, now=utcnow(), window=timedelta(seconds=since_s)))


def fleet_hits_lines(report: FleetHitsReport) -> list[str]:
    refused = sum(sum(c.refused.values()) for c in report.clusters)
    out = [
        f"Hits from {report.since} to {report.until}: {report.hits} in {len(report.clusters)} cluster(s)"
        + (f"; {refused} status row(s) refused" if refused else "")
        + (f"; {report.unreadable_statuses} unreadable status document(s)" if report.unreadable_statuses else "")
    ]
    out.append("")
    out.append(f"{'FEED':<28} {'HITS':>8} {'HELD':>8} {'PER 1000 HELD':>14}")
    for f in report.feeds:
        rate = "-" if f.hits_per_thousand_prefixes is None else f"{f.hits_per_thousand_prefixes:g}"
        out.append(f"{f.feed:<28} {f.hits:>8} {f.prefixes_held:>8} {rate:>14}")
    out.append("")
    out.append(f"{'FINDING':<40} {'HITS':>8}")
    out += [f"{f.finding:<40} {f.hits:>8}" for f in report.findings]
    out.append("")
    out.append(f"{'CATEGORY':<40} {'HITS':>8}")
    out += [f"{c.category:<40} {c.hits:>8}" for c in report.categories]
    out.append("")
    out.append(f"{'CLUSTER':<24} {'CHANNEL':<12} {'NODES':>5} {'HITS':>8}  ACTIONS / REFUSED")
    for c in report.clusters:
        actions = ", ".join(f"{a} {n}" for a, n in c.actions.items())
        refused_rows = "; refused: " + ", ".join(f"{r} {n}" for r, n in c.refused.items()) if c.refused else ""
        out.append(f"{c.cluster_id:<24} {c.channel:<12} {c.nodes:>5} {c.hits:>8}  {actions}{refused_rows}")
    out.append("")
    out.append("Top indicators:")
    out += [f"  {t.hits:>8}  {t.channel:<12} {t.kind:<6} {t.indicator}" for t in report.top_indicators]
    out.append("Top workloads:")
    out += [f"  {t.hits:>8}  {t.cluster_id:<24} {t.namespace}/{t.workload or '*'}" for t in report.top_workloads]
    never = report.never_fired
    by_feed = ", ".join(f"{k} {v}" for k, v in never.by_feed.items())
    out.append(
        f"Never fired: {never.prefixes} prefix(es)"
        + (f" ({by_feed})" if by_feed else "")
        + f"; rules: {', '.join(never.rules) or 'none'}; {never.findings} finding(s)"
    )
    return out

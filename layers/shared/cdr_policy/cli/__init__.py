"""``cdr-policy``: the local command line.

Without a sub-command it keeps the original operator's interface (``--once --hours --action
--output --apply --interval --threat-intel --reputation-threshold --platform --gateway``) and runs
the same library stages as the Lambda functions, against a local state directory instead of S3
(``--once``: one run; otherwise controller mode, ``cli.controller``).

Sub-commands: ``validate`` (check policy files against the CRDs and the safety checklist),
``hits`` (attribute Tetragon and Hubble export events to our objects and their provenance),
``hits-reader`` (the node reader) and ``agent`` (the in-cluster sync agent); ``keygen``,
``publish``, ``channel``, ``fleet`` and ``state`` for channels and fleets.

Every failure is one line, ``cdr-policy: error: <what> (<cause>)``, on standard error, with the
exit code docs/operations.md documents (1 a failed run, 2 usage or configuration, 130 Ctrl-C); the
traceback only with ``--debug`` (accepted anywhere on the command line).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

from cdr_policy import __version__, layout
from cdr_policy.cli.flags import add_metrics_arguments, bounded_int, duration
from cdr_policy.cli.parser import Parser
from cdr_policy.errors import CdrPolicyError, aws_cause, exit_code, is_aws_error, os_cause, print_error
from cdr_policy.observability import log_to_stderr
from cdr_policy.timeutil import parse_duration

# The CDR API is asked for at most this look-back (as LOOKBACK_HOURS in the cloud: 30 days).
MAX_HOURS = 24 * 30
DEBUG_FLAG = "--debug"


def default_state_root(env: Mapping[str, str]) -> Path:
    """Where the per-tenant state folders live: ``$XDG_CACHE_HOME/cdr-policy/state`` (``~/.cache``)."""
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "cdr-policy" / "state"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = Parser(
        prog="cdr-policy",
        description="Generate Tetragon TracingPolicies and Cilium network policies from Qualys CDR "
        "detections and threat-intel feeds.",
        epilog="Sub-commands: validate, keygen, publish, channel, fleet, state, hits, agent, hits-reader "
        "('cdr-policy <sub-command> --help'). The local state folder of this gateway and user: "
        "'cdr-policy state path'.",
    )
    p.add_argument(
        "--platform",
        default=env.get("QUALYS_PLATFORM"),
        help="Qualys platform (US1..US4, EU1..EU3, GOV1, IN1, CA1, AE1, UK1, AU1, KSA1); env QUALYS_PLATFORM",
    )
    p.add_argument(
        "--gateway",
        default=env.get("QUALYS_GATEWAY_URL"),
        help="gateway host or URL (overrides --platform); env QUALYS_GATEWAY_URL",
    )
    p.add_argument(
        "--hours",
        type=bounded_int(1, MAX_HOURS),
        default=24,
        help=f"look-back period for CDR events in hours (1..{MAX_HOURS}, default 24)",
    )
    p.add_argument(
        "--action",
        choices=("Post", "Sigkill", "Override"),
        default=None,
        help="Post = audit (Tetragon monitor mode), Sigkill/Override = enforce (default: the --channel file's "
        "action, else Post)",
    )
    p.add_argument("--output", default="./policies", help="output directory (default ./policies)")
    p.add_argument(
        "--apply",
        action="store_true",
        help="apply the policies to the current Kubernetes cluster (server-side apply, prune owned)",
    )
    p.add_argument("--once", action="store_true", help="run once and exit (CronJob mode)")
    p.add_argument(
        "--interval",
        type=duration(5, 7 * 86400, "each run queries Qualys"),
        default=parse_duration("1h"),
        help="update interval in controller mode, e.g. 30m, 1h (5s..7d, default 1h); after three failed runs in "
        "a row the wait doubles, up to 5m or the interval",
    )
    add_metrics_arguments(p, port_default=0, host_default="127.0.0.1", when="controller mode")
    p.add_argument(
        "--threat-intel",
        action="store_true",
        default=None,
        help="add the threat-intel feeds (default: the --channel file's threat_intel, else off)",
    )
    p.add_argument(
        "--reputation-threshold",
        type=bounded_int(0, 100),
        default=None,
        help="with threat intel: block CDR IPs whose AbuseIPDB score is >= this (0..100, default 50); needs "
        "ABUSEIPDB_API_KEY",
    )
    p.add_argument(
        "--feeds",
        metavar="FILE",
        help="YAML feed list (feeds: [{name, url, category}]) replacing the built-in one",
    )
    p.add_argument(
        "--categories",
        metavar="FILE",
        help="YAML category mapping replacing the shipped one (see data/categories.yaml)",
    )
    p.add_argument(
        "--channel",
        metavar="FILE",
        help="YAML/JSON settings of one channel (a mapping, or channels: [one]): scoping, budgets, Cilium "
        "version, action; defaults otherwise",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help=f"where checkpoints, caches and last-good feed copies live (default: one folder per gateway and "
        f"user under {default_state_root(env)}, so tenants never share state; 'cdr-policy state path' prints it)",
    )
    p.add_argument(
        "--crds",
        metavar="PATH",
        default=env.get("CDR_POLICY_CRDS"),
        help="CRD file or folder to validate the output against before writing it; env CDR_POLICY_CRDS",
    )
    p.add_argument(
        "--log-level",
        default=env.get("CDR_POLICY_LOG_LEVEL", "WARNING"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="level of the structured (JSON) logs on standard error (default WARNING)",
    )
    p.add_argument("--version", action="version", version=f"cdr-policy {__version__}")
    add_debug(p)
    return p


def add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` in a parser's help (``main`` takes it from anywhere on the command line)."""
    parser.add_argument(DEBUG_FLAG, action="store_true", help="print the traceback of an error, and debug logs")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ if env is None else env)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:end]
    argv = [a for i, a in enumerate(argv) if not (i < end and a == DEBUG_FLAG)]
    # The day-2 commands say everything in their own lines: structured logs only when asked for.
    quiet = argv[:1] not in ([], ["agent"], ["hits-reader"]) and not argv[0].startswith("-")
    log_to_stderr("DEBUG" if debug else env.get("CDR_POLICY_LOG_LEVEL", "CRITICAL" if quiet else "WARNING"))
    try:
        return _dispatch(argv, env, debug)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of standard output went away (``| head``)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 -- the one place that turns any failure into one line
        if debug:
            traceback.print_exc()
        print_error(_describe(exc))
        return exit_code(exc) if isinstance(exc, CdrPolicyError) else 1


def _describe(exc: Exception) -> str:
    """The error line's text for any exception (our own say what and why already)."""
    if isinstance(exc, CdrPolicyError):
        return str(exc)
    if is_aws_error(exc):
        return f"an AWS request failed ({aws_cause(exc)})"
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot use{where} ({os_cause(exc)})"
    return f"unexpected {type(exc).__name__} ({exc}); run again with {DEBUG_FLAG} for the traceback and report it"


def _dispatch(argv: list[str], env: dict[str, str], debug: bool) -> int:
    command = argv[0] if argv else ""
    if command == "validate":
        from cdr_policy.cli.validate import validate_main

        return validate_main(argv[1:], env)
    if command == "keygen":
        from cdr_policy.cli.channels import keygen_main

        return keygen_main(argv[1:])
    if command == "publish":
        from cdr_policy.cli.channels import publish_main

        return publish_main(argv[1:], env, default_state_root(env))
    if command == "state":
        from cdr_policy.cli.channels import state_main

        return state_main(argv[1:], env, default_state_root(env))
    if command in ("hits", "hits-reader"):
        from cdr_policy.cli import hits

        return hits.hits_main(argv[1:]) if command == "hits" else hits.reader_main(argv[1:], env)
    if command in ("channel", "fleet"):
        from cdr_policy.cli import fleet

        return fleet.channel_main(argv[1:]) if command == "channel" else fleet.fleet_main(argv[1:])
    if command == "agent":
        from cdr_policy.agent import cli as agent_cli

        parser = Parser(prog="cdr-policy agent", description="Sync a channel into a cluster.")
        agent_cli.add_arguments(parser)
        add_debug(parser)
        return agent_cli.run(parser.parse_args(argv[1:]))
    args = build_parser(env).parse_args(argv)
    log_to_stderr("DEBUG" if debug else args.log_level)
    return _run(args, env, debug)


def _run(args: argparse.Namespace, env: Mapping[str, str], debug: bool) -> int:
    from cdr_policy.cli.controller import Controller
    from cdr_policy.cli.run import LocalRun

    run = LocalRun.from_args(args, env, state_root=default_state_root(env))
    if args.once:
        return run.once()
    controller = Controller(run, args.interval, state=run.ports.state, debug=debug)
    server = None
    if args.metrics_port:
        from cdr_policy.agent.observe import ObservabilityServer

        server = ObservabilityServer(controller.health, host=args.metrics_host, port=args.metrics_port).start()
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    served = f"; /metrics and /healthz on {args.metrics_host}:{server.port}" if server else ""
    run.say(
        f"Controller mode: running every {args.interval:g}s (Ctrl-C to stop); "
        f"status in {run.ports.state.describe()}/{layout.CONTROLLER_STATUS}{served}"
    )
    try:
        return controller.loop(stop)
    finally:
        if server is not None:
            server.stop()

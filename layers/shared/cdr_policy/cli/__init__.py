"""``cdr-policy``: the local command line.

Without a sub-command it keeps the original operator's interface (``--once --hours --action
--output --apply --interval --threat-intel --reputation-threshold --platform --gateway``) and runs
the same library stages as the Lambda functions, against a local state directory instead of S3.

Sub-commands: ``validate`` (check policy files against the CRDs and the safety checklist),
``hits`` (attribute Tetragon and Hubble export events to our objects and their provenance) and
``agent`` (the in-cluster sync agent); ``keygen``, ``publish``, ``channel`` and ``fleet`` for
channels and fleets.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cdr_policy import __version__
from cdr_policy.cli.parser import Parser
from cdr_policy.errors import CdrPolicyError, exit_code, print_error
from cdr_policy.observability import log_to_stderr
from cdr_policy.timeutil import parse_duration

SUBCOMMANDS = ("validate", "agent")
# The CDR API is asked for at most this look-back (as LOOKBACK_HOURS in the cloud: 30 days).
MAX_HOURS = 24 * 30


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text[:40]} is out of range: use {low}..{high}")
        return value

    return parse


def _interval(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not 5 <= seconds <= 7 * 86400:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is out of range: use 5s..7d (each run queries Qualys)")
    return seconds


def _default_state_root(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cdr-policy" / "state"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = Parser(
        prog="cdr-policy",
        description="Generate Tetragon TracingPolicies and Cilium network policies from Qualys CDR "
        "detections and threat-intel feeds.",
        epilog="Sub-commands: validate, keygen, publish, channel, fleet, hits, agent, hits-reader "
        "('cdr-policy <sub-command> --help').",
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
        type=_bounded_int(1, MAX_HOURS),
        default=24,
        help=f"look-back period for CDR events in hours (1..{MAX_HOURS}, default 24)",
    )
    p.add_argument(
        "--action",
        choices=("Post", "Sigkill", "Override"),
        default="Post",
        help="Post = audit (Tetragon monitor mode), Sigkill/Override = enforce (default Post)",
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
        type=_interval,
        default=parse_duration("1h"),
        help="update interval in controller mode, e.g. 30m, 1h (5s..7d, default 1h)",
    )
    p.add_argument("--threat-intel", action="store_true", help="add the threat-intel feeds")
    p.add_argument(
        "--reputation-threshold",
        type=_bounded_int(0, 100),
        default=50,
        help="block CDR IPs whose AbuseIPDB score is >= this (default 50); needs ABUSEIPDB_API_KEY",
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
        help="YAML/JSON channel settings (scoping, budgets, Cilium version); defaults otherwise",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help="where checkpoints, caches and last-good feed copies live (default: one folder per gateway and "
        "user under ~/.cache/cdr-policy/state, so tenants never share state)",
    )
    p.add_argument(
        "--crds",
        metavar="DIR",
        default=env.get("CDR_POLICY_CRDS"),
        help="CRD directory to validate the output against before writing it; env CDR_POLICY_CRDS",
    )
    p.add_argument(
        "--log-level",
        default=env.get("CDR_POLICY_LOG_LEVEL", "WARNING"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="level of the structured (JSON) logs on standard error (default WARNING)",
    )
    p.add_argument("--version", action="version", version=f"cdr-policy {__version__}")
    return p


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ if env is None else env)
    log_to_stderr(env.get("CDR_POLICY_LOG_LEVEL", "WARNING"))
    try:
        if argv and argv[0] == "validate":
            from cdr_policy.cli.validate import validate_main

            return validate_main(argv[1:], env)
        if argv and argv[0] == "keygen":
            from cdr_policy.cli.channels import keygen_main

            return keygen_main(argv[1:])
        if argv and argv[0] == "publish":
            from cdr_policy.cli.channels import publish_main

            return publish_main(argv[1:], env, _default_state_root(env))
        if argv and argv[0] in ("hits", "hits-reader"):
            from cdr_policy.cli import hits

            return hits.hits_main(argv[1:]) if argv[0] == "hits" else hits.reader_main(argv[1:], env)
        if argv and argv[0] in ("channel", "fleet"):
            from cdr_policy.cli import fleet

            return fleet.channel_main(argv[1:]) if argv[0] == "channel" else fleet.fleet_main(argv[1:])
        if argv and argv[0] == "agent":
            from cdr_policy.agent import cli as agent_cli

            parser = Parser(prog="cdr-policy agent", description="Sync a channel into a cluster.")
            agent_cli.add_arguments(parser)
            return agent_cli.run(parser.parse_args(argv[1:]))
        args = build_parser(env).parse_args(argv)
        log_to_stderr(args.log_level)
        return _run(args, env)
    except CdrPolicyError as exc:
        print_error(exc)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from cdr_policy.cli.run import LocalRun

    run = LocalRun.from_args(args, env, state_root=_default_state_root(env))
    if args.once:
        return run.once()
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    print(f"Controller mode: running every {args.interval:g}s (Ctrl-C to stop)")
    worst = 0
    while not stop:
        worst = max(worst, run.once())
        deadline = time.monotonic() + args.interval
        while not stop and time.monotonic() < deadline:
            time.sleep(min(1.0, deadline - time.monotonic()))
    return worst

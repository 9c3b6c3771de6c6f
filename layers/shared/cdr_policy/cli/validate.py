"""``cdr-policy validate PATH... [--crds DIR]``: check policy files against the CRDs and the
safety checklist (``policy.checker``), and print what is wrong with each object."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path

from cdr_policy.agent.kube import KubeApplier
from cdr_policy.cli.parser import Parser
from cdr_policy.errors import CdrPolicyError, ConfigError, PolicyCheckError, print_error
from cdr_policy.guards import NeverBlock, parse_protected
from cdr_policy.policy.checker import SchemaSet, check_files
from cdr_policy.policy.checker.files import ValidateReport

CRDS_ENV = "CDR_POLICY_CRDS"


def default_crds_dir(env: dict[str, str] | None = None, cwd: Path | None = None) -> Path:
    """``$CDR_POLICY_CRDS``, else ``../shared/crds`` from the working directory when it exists."""
    env = dict(os.environ) if env is None else env
    if env.get(CRDS_ENV):
        return Path(env[CRDS_ENV])
    candidate = (cwd or Path.cwd()) / ".." / "shared" / "crds"
    if candidate.is_dir():
        return candidate.resolve()
    raise PolicyCheckError(
        f"no CRD directory: pass --crds DIR or set {CRDS_ENV} "
        "(a folder of CustomResourceDefinition YAML files, "
        "e.g. the Tetragon and Cilium CRDs of your target versions)"
    )


def _crds(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, SchemaSet]:
    """Where the CRDs come from (for the summary line) and their schemas."""
    if args.kubernetes:
        cluster = KubeApplier.from_environment(env)
        try:
            return cluster.describe(), SchemaSet.from_crds(cluster.crds(), source="cluster")
        finally:
            cluster.close()
    crds = Path(args.crds) if args.crds else default_crds_dir(dict(env))
    return str(crds), SchemaSet.from_dir(crds)


def validate_main(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    """``cdr-policy validate PATH... [--crds DIR] [--protected CIDR]... [--json]``.
    Exit status: 0 clean (warnings allowed), 1 when any object has an error, 2 on usage errors."""
    parser = Parser(
        prog="cdr-policy validate",
        description="Check Tetragon and Cilium policy files against the CRD schemas (strict) and the safety checklist.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="YAML/JSON files or directories")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--crds", metavar="DIR", help=f"CRD directory (default: ${CRDS_ENV} or ../shared/crds)")
    source.add_argument(
        "--kubernetes",
        action="store_true",
        help="check against the CRDs the current cluster serves (kubeconfig or the pod's service account)",
    )
    parser.add_argument(
        "--protected",
        metavar="CIDR",
        action="append",
        default=[],
        help="also treat this range as never-block (your pod, service and node CIDRs); repeatable",
    )
    parser.add_argument("--no-never-block", action="store_true", help="skip the never-block overlap check")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    try:
        crds, schemas = _crds(args, os.environ if env is None else env)
        guard = (
            None
            if args.no_never_block
            else NeverBlock(extra=parse_protected(args.protected, "protected (--protected)"))
        )
        report = check_files(args.paths, schemas, guard=guard)
    except (PolicyCheckError, ConfigError, ValueError) as exc:
        print_error(f"validate: {exc}")
        return 2
    except CdrPolicyError as exc:  # the cluster could not be read
        print_error(f"validate: {exc}")
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        _print_report(report, crds)
    return 1 if report.errors else 0


def _print_report(report: ValidateReport, crds: str) -> None:
    for file in report.files:
        for problem in file.problems:
            print(f"{file.path}: {problem.line()}")
        for obj in file.objects:
            label = f"{obj.kind or '?'}/{obj.name or '?'}"
            for problem in obj.problems:
                print(f"{file.path}: {label}: {problem.line()}")
    print(
        f"{report.objects} object(s) in {len(report.files)} file(s) checked against {crds}: "
        f"{report.errors} error(s), {report.warnings} warning(s)"
    )
    for rule in report.skipped_rules:
        print(f"note: CEL rule not evaluated: {rule}")

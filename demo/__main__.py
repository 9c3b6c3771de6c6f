"""``make demo``: deploy template.yaml on a local moto server, run the whole serverless pipeline through
the stack's own event sources and roles, and say what it did.

    python -m demo [--output DIR] [--crds DIR] [--template FILE]

The moto server runs in a process of its own and checks every request against IAM: each function
works with its deployed role's permissions only. ``--crds`` (default: ``$CDR_POLICY_CRDS`` or
``../shared/crds`` when present) is uploaded to the state bucket so Render and Publish check every
object against the CRD schemas too, and the agents' output is validated against them at the end.
``--template``: deploy another template (a changed copy of template.yaml, e.g. without a permission).
A function that fails ends the run with one error line and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from cdr_policy.hits.fleet import FleetHitsReport
from cdr_policy.policy.checker import SchemaSet, check_files
from demo.promotion import SOAK
from demo.runner import CHANNELS, DemoFailure, run_pipeline
from fakes.aws import MotoServerError, moto_server
from fakes.lambda_runtime import REPO
from fakes.stack import TEMPLATE, StackError


def _default_crds() -> str | None:
    if os.environ.get("CDR_POLICY_CRDS"):
        return os.environ["CDR_POLICY_CRDS"]
    candidate = REPO.parent / "shared" / "crds"
    return str(candidate) if candidate.is_dir() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", default="demo-output", help="where the agents write each channel (default demo-output)"
    )
    parser.add_argument("--crds", default=_default_crds(), help="CRD directory for schema checks")
    parser.add_argument("--template", default=str(TEMPLATE), help="the stack's template (default template.yaml)")
    args = parser.parse_args(argv)
    output = Path(args.output).resolve()
    shutil.rmtree(output, ignore_errors=True)
    crds = Path(args.crds) if args.crds else None
    print("=== CDR Policy Operator: local run of the serverless pipeline ===")
    try:
        with moto_server() as server:
            result = run_pipeline(
                server, output, crds_dir=crds, template=Path(args.template).resolve(), time_to_protect=True
            )
    except (DemoFailure, StackError, MotoServerError) as exc:
        print(f"demo: error: {exc} (function logs: {output / 'lambda.log'})", file=sys.stderr)
        return 1
    print("")
    print("Result:")
    failed = 0
    for c in CHANNELS:
        folder = result.channel_dir(c["name"])
        files = sorted(p.name for p in folder.glob("*.yaml"))
        print(f"  {c['name']} ({c['action']}): {len(files)} objects in {folder}")
        for name in files:
            print(f"    {name}")
        if result.agents[c["name"]].last_poll.result != "applied":
            failed += 1
    repair = result.drift
    assert repair is not None, "run_pipeline shows a drift repair"
    print(
        f"  drift repair: {', '.join(repair.drift.missing if repair.drift else ())} deleted by hand, put back "
        f"({repair.last_poll.result})"
    )
    failed += repair.last_poll.result != "repaired"
    print(
        f"  time to protect: {result.protect['total']:.1f} s from a new detection at the gateway to staging's "
        "cluster enforcing it (triggers run at once; make bench (g) measures a deployment's schedules)"
    )
    fleet: FleetHitsReport = result.hits["report"]
    print(
        f"  hits: {fleet.hits} in {len(fleet.clusters)} cluster(s) "
        f"({', '.join(f'{f.feed} {f.hits}' for f in fleet.feeds if f.hits)}); "
        f"fleet total {'agrees' if result.hits['agree'] else 'DOES NOT AGREE'} with the per-cluster counts"
    )
    failed += not result.hits["agree"] or not fleet.hits
    soaked, approved, held = (result.promotion[k] for k in ("soaked", "approved", "held"))
    print(
        f"  promotion: prod took {soaked.counts.promote} change(s) after their {SOAK} soak on staging "
        f"(the demo's; 24h by default), held {', '.join(held)} (staging's audit hits came from the protected "
        "namespace payments), then promoted it on an approver's grant"
    )
    failed += not soaked.counts.promote or len(held) != 1
    failed += [(c.decision, c.how) for c in approved.changes] != [("promote", "approved")]
    if crds is not None:
        checked = check_files([result.channel_dir(c["name"]) for c in CHANNELS], SchemaSet.from_dir(crds))
        print(
            f"  Validated {checked.objects} objects against the CRDs in {crds} and the safety checklist: "
            f"{checked.errors} errors, {checked.warnings} warnings"
        )
        failed += checked.errors > 0
    print("")
    print("Try: .venv/bin/cdr-policy validate demo-output/prod" + (f" --crds {crds}" if crds else " --crds DIR"))
    print("     .venv/bin/cdr-policy fleet status --dist demo-output/dist")
    print("     .venv/bin/cdr-policy fleet hits --dist demo-output/dist")
    print("     .venv/bin/cdr-policy channel evidence prod --dist demo-output/dist")
    prod = result.hits["statuses"]["prod"].applied_digest
    node = "demo-output/nodes/demo-node-1"
    print(
        f"     .venv/bin/cdr-policy hits --policies demo-output/dist/channels/prod/bundles/{prod} "
        f"--tetragon-export {node}/tetragon.log --hubble-export {node}/hubble.log"
    )
    print("     .venv/bin/cdr-policy channel list --dist demo-output/dist")
    print("     .venv/bin/cdr-policy channel diff prod --dist demo-output/dist --state demo-output/state")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

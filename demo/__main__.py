"""``make demo``: run the whole serverless pipeline locally and say what it did.

    python -m demo [--endpoint-url URL] [--output DIR] [--crds DIR]

Without ``--endpoint-url`` an in-process moto server is started on loopback. ``--crds`` (default:
``$CDR_POLICY_CRDS`` or ``../shared/crds`` when present) is uploaded to the state bucket so Render
and Publish check every object against the CRD schemas too, and the agents' output is validated
against them at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from cdr_policy.policy.checker import SchemaSet, check_files
from demo.promotion import SOAK
from demo.runner import CHANNELS, run_pipeline
from tests.fakes.aws import moto_endpoint
from tests.fakes.lambda_runtime import REPO


def _default_crds() -> str | None:
    if os.environ.get("CDR_POLICY_CRDS"):
        return os.environ["CDR_POLICY_CRDS"]
    candidate = REPO.parent / "shared" / "crds"
    return str(candidate) if candidate.is_dir() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-url", help="an S3/SQS/KMS endpoint to use instead of an in-process moto server")
    parser.add_argument(
        "--output", default="demo-output", help="where the agents write each channel (default demo-output)"
    )
    parser.add_argument("--crds", default=_default_crds(), help="CRD directory for schema checks")
    args = parser.parse_args(argv)
    output = Path(args.output).resolve()
    shutil.rmtree(output, ignore_errors=True)
    crds = Path(args.crds) if args.crds else None
    print("=== CDR Policy Operator: local run of the serverless pipeline ===")
    with moto_endpoint(args.endpoint_url) as endpoint:
        result = run_pipeline(endpoint, output, crds_dir=crds)
    print("")
    print("Result:")
    failed = 0
    for c in CHANNELS:
        folder = result.channel_dir(c["name"])
        files = sorted(p.name for p in folder.glob("*.yaml"))
        print(f"  {c['name']} ({c['action']}): {len(files)} objects in {folder}")
        for name in files:
            print(f"    {name}")
        if result.agents[c["name"]]["last_poll"]["result"] != "applied":
            failed += 1
    repaired = result.drift["drift"]
    print(
        f"  drift repair: {', '.join(repaired['missing'])} deleted by hand, put back "
        f"({result.drift['last_poll']['result']})"
    )
    failed += result.drift["last_poll"]["result"] != "repaired"
    report = result.hits["report"]
    print(
        f"  hits: {report['hits']} in {len(report['clusters'])} cluster(s) "
        f"({', '.join(f['feed'] + ' ' + str(f['hits']) for f in report['feeds'] if f['hits'])}); "
        f"fleet total {'agrees' if result.hits['agree'] else 'DOES NOT AGREE'} with the per-cluster counts"
    )
    failed += not result.hits["agree"] or not report["hits"]
    soaked, approved, held = (result.promotion[k] for k in ("soaked", "approved", "held"))
    print(
        f"  promotion: prod took {soaked['counts']['promote']} change(s) after their {SOAK} soak on staging "
        f"(the demo's; 24h by default), held {', '.join(held)} (staging's audit hits came from the protected "
        "namespace payments), then promoted it on an approver's grant"
    )
    failed += not soaked["counts"]["promote"] or len(held) != 1
    failed += [(c["decision"], c["how"]) for c in approved["changes"]] != [("promote", "approved")]
    if crds is not None:
        report = check_files([result.channel_dir(c["name"]) for c in CHANNELS], SchemaSet.from_dir(crds))
        print(
            f"  Validated {report['objects']} objects against the CRDs in {crds} and the safety checklist: "
            f"{report['errors']} errors, {report['warnings']} warnings"
        )
        failed += report["errors"] > 0
    print("")
    print("Try: .venv/bin/cdr-policy validate demo-output/prod" + (f" --crds {crds}" if crds else " --crds DIR"))
    print("     .venv/bin/cdr-policy fleet status --dist demo-output/dist")
    print("     .venv/bin/cdr-policy fleet hits --dist demo-output/dist")
    print("     .venv/bin/cdr-policy channel evidence prod --dist demo-output/dist")
    prod = result.hits["statuses"]["prod"]["applied_digest"]
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

"""``make demo``, promotion on evidence: ``prod`` (Sigkill) takes a change only after ``staging``
(Post) has shipped it for the soak, with fresh hits from a staging cluster, and while what staging
says it would have blocked stays inside ``prod``'s limits.

A staging cluster's node (``fakes.cluster``: the sync agent, the node reader, exports in the
upstream formats) sees would-block events (Tetragon ``KPROBE_ACTION_POST``, Hubble ``AUDIT``): one
to a CDR address from the ``payments`` namespace, which prod protects, others from ``shop``. Once
the soak has passed (shortened to ``SOAK`` here; 24 h by default) Render composes prod from what it
ships plus what qualifies and Publish verifies and signs it: everything is promoted but the change
hit in ``payments``, which is held. An approver (the stack's approver KMS key) approves it with
``cdr-policy channel approve --change``, and the next render promotes it. ``channel evidence``
explains both decisions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cdr_policy import layout
from cdr_policy.bundle.manifest import Manifest
from cdr_policy.bundle.signing import KmsSigner, Verifier
from cdr_policy.cli.promotion import approve_changes, evidence, evidence_lines
from cdr_policy.promotion.decisions import Decisions
from cdr_policy.storage import S3Store
from cdr_policy.timeutil import parse_iso, utcnow
from fakes.cluster import Cluster
from fakes.exports import Workload

if TYPE_CHECKING:
    from demo.runner import PipelineResult

SOAK = "20s"
SOAK_SECONDS = 20
PROMOTE = {
    "from": "staging",
    "soak": SOAK,
    "max_workloads_hit": 3,
    "protected_namespaces": ["kube-system", "payments"],
    "min_clusters_reporting": 1,
}
CHECKOUT = Workload("payments", "checkout", "checkout-5d8f7c6b4-p9q2r")
WEB = Workload("shop", "web", "web-7c9d8f6b5-x2k4q")
STEP = "[6/7] Promotion"


def run_promotion(result: PipelineResult, say: Callable[[str], None]) -> dict[str, Any]:
    """The step above; returns prod's evidence after the soak and after the approval. The staging
    cluster reads and reports with its cluster role, Render and Publish run on the stack's re-render
    schedule under their roles, the approver signs with the ApproverRole's session."""
    from demo.runner import onboard_cluster, render_again

    stack, server = result.stack, result.stack.server
    dist = S3Store(stack.client("s3"), stack.dist_bucket)  # the operator's view
    verifier = Verifier.from_public_pem(KmsSigner(stack.client("kms"), stack.signing_key_arn).public_key_pem())
    say("")
    say(f"{STEP} (prod takes a change after staging watched it for {SOAK}; 24h by default, shortened here)")
    first = evidence(dist, "prod")
    say(
        f"      prod's first bundle took none of its {first.counts.wait} changes: {_reasons(first)} "
        "(both channels were rendered before either was published)"
    )
    onboarded = onboard_cluster(stack, f"{stack.parameters['Environment']}-staging-2", "staging")
    cluster = Cluster(
        S3Store(server.client("s3", **onboarded.session), stack.dist_bucket),
        verifier,
        channel="staging",
        cluster_id=onboarded.cluster_id,
        root=result.output / "clusters",
    )
    cluster.sync()
    blocklists = {b.group: b for b in cluster.index.blocklists}
    protected = blocklists["cdr"].prefix(0)
    feed = blocklists["threat-intel"].prefix(0)
    status = cluster.record(
        cluster.connect(protected, CHECKOUT, action="Post") + cluster.connect(feed, WEB, action="Post")
    )
    rows = len(status.hits.rows) if status.hits else 0
    say(
        f"      staging cluster {onboarded.cluster_id}: would-block events (Tetragon POST, Hubble AUDIT) to "
        f"{protected} from payments/checkout and to {feed} from shop/web; {rows} hit row(s) in its status"
    )
    shipped = Manifest.parse(dist.get(layout.channel_manifest_key("staging")).data, "staging")
    wait = parse_iso(shipped.created_at) + timedelta(seconds=SOAK_SECONDS + 1) - utcnow()
    say(f"      waiting {max(wait.total_seconds(), 0):.0f}s for the soak ({SOAK}: the demo's, 24h by default)")
    time.sleep(max(wait.total_seconds(), 0))
    render_again(result, STEP)
    soaked = evidence(dist, "prod")
    counts, publish = soaked.counts, soaked.publish
    assert publish is not None, "Publish's copy of the decisions says what it did"
    say(
        f"      Render composed prod, Publish verified it: {publish.status} generation {publish.generation}: "
        f"{counts.promote} promoted, {counts.wait} waiting, {counts.hold} held"
    )
    say("      $ cdr-policy channel evidence prod --dist demo-output/dist")
    for line in evidence_lines(soaked)[:14]:
        say(f"        {line}")
    held = [c.change for c in soaked.changes if c.decision == "hold"]
    say(f"      $ cdr-policy channel approve prod --change {' --change '.join(held)} --kms-key-id <ApproverKeyArn>")
    s3, kms = server.client("s3", **result.approver), server.client("kms", **result.approver)
    for line in approve_changes(
        S3Store(s3, stack.state_bucket),
        S3Store(s3, stack.dist_bucket),
        "prod",
        held,
        approver=KmsSigner(kms, stack.outputs["ApproverKeyArn"]),
        reason="the payments team reviewed the hit",
        valid_for=timedelta(days=1),
    ):
        say(f"        {line}")
    render_again(result, STEP)
    approved = evidence(dist, "prod")
    for change in approved.changes:
        say(f"      {change.change}: {change.decision} ({change.how}): {change.reasons[0]}")
    record = Manifest.parse(dist.get(layout.channel_manifest_key("prod")).data, "prod").promotion
    assert record is not None and approved.publish is not None
    say(
        f"      prod's signed manifest (generation {approved.publish.generation}) records it: "
        f"{record.promoted.count} change(s) promoted by {len(record.approved)} approver grant(s)"
    )
    return {"soaked": soaked, "approved": approved, "held": held}


def _reasons(decided: Decisions) -> str:
    reasons = sorted({r for c in decided.changes for r in c.reasons})
    return "; ".join(reasons) or "-"

"""(i) Promotion at scale, part (i) of ``make bench``: an enforcing channel that promotes from an audit
channel, with one feed of ``--promotion-addresses`` addresses (default 200,000) that the audit channel
ships and its cluster watched, promoted in one render and one publish.

template.yaml is deployed on a moto server (``fakes.stack``, as ``make demo``, without IAM checks);
CdrFetch and FeedSync run on the stack's schedules, Render and Publish once through their queues (the
enforcing channel takes nothing: the audit channel had shipped nothing); the audit channel's cluster
(``deploy/cluster-access``, ``fakes.cluster``: its agent and a node reader) applies the bundle and
reports; after the soak (1 s here), the stack's re-render schedule puts its event on RenderQueue and
**Render** (both channels; the enforcing one composed through the promotion gate: the audit channel's
signed history, the fleet's statuses, every pending change judged) and then **Publish** (the decisions
verified again, the manifest signed with its promotion record) each run in a process of their own with
the layer as Lambda sees it and the function's deployed environment: wall time and peak RSS, against
the function's Timeout and MemorySize in template.yaml. Checked: the enforcing channel published, and
promoted as many prefixes as one publish may (``promotion.gate.MAX_PROMOTED``) or all that were
pending, holding none.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.generate import generate_addresses
from benchmarks.pipeline import LOGICAL, Row, build_layer, handler_step, table

DEFAULT_ADDRESSES = 200_000
SOAK_S = 1
AUDIT = {"name": "audit", "action": "Post", "cilium_version": "1.18"}
ENFORCING = {
    "name": "enforcing",
    "action": "Sigkill",
    "cilium_version": "1.18",
    "promote": {"from": "audit", "soak": f"{SOAK_S}s", "min_clusters_reporting": 1},
}


def run(work: Path, addresses: int, seed: int) -> dict[str, Any]:
    from cdr_policy import layout
    from cdr_policy.bundle.manifest import Manifest
    from cdr_policy.bundle.signing import KmsSigner, Verifier
    from cdr_policy.promotion.decisions import read_decisions
    from cdr_policy.promotion.gate import MAX_PROMOTED
    from cdr_policy.storage import S3Store
    from cdr_policy.timeutil import utcnow
    from demo.runner import FINDINGS, create_qualys_secret, onboard_cluster, quiet_logs
    from fakes.aws import moto_server
    from fakes.cluster import Cluster
    from fakes.feeds import FeedServer
    from fakes.lambda_runtime import LambdaService
    from fakes.qualys import FakeQualysGateway
    from fakes.stack import TEMPLATE, deploy, load_template

    work.mkdir(parents=True, exist_ok=True)
    print(f"(i) promotion: a feed of {addresses:,} addresses on an audit channel, promoted ...", flush=True)
    feed = generate_addresses(work / f"promotion-{addresses}.txt", addresses, seed)
    layer = build_layer(work)
    template = load_template(TEMPLATE)
    defaults = template["Globals"]["Function"]
    limits = {}
    for name in ("render", "publish"):
        properties = template["Resources"][LOGICAL[name]]["Properties"]
        limits[name] = {
            "timeout_s": properties.get("Timeout", defaults["Timeout"]),
            "memory_mib": properties.get("MemorySize", defaults["MemorySize"]),
        }
    with (
        moto_server(enforce_iam=False) as server,
        FeedServer(root=work) as feeds,
        FakeQualysGateway(FINDINGS, rebase_to=utcnow(), tls=server.tls.server_context()) as gateway,
    ):
        create_qualys_secret(server, "cdr-policy/qualys")
        stack = deploy(
            server, name="cdr-policy-promo", parameters={"Environment": "promo", "QualysGatewayUrl": gateway.url}
        )
        lambdas = LambdaService(stack, work / "lambda.log")
        s3 = stack.client("s3")
        s3.put_object(
            Bucket=stack.state_bucket, Key=layout.CHANNELS_CONFIG, Body=yaml.safe_dump({"channels": [AUDIT, ENFORCING]})
        )
        listed = {"feeds": [{"name": "big", "url": feeds.url(f"/{feed.name}"), "category": "attacker"}]}
        s3.put_object(Bucket=stack.state_bucket, Key=layout.FEEDS_CONFIG, Body=yaml.safe_dump(listed))
        for logical in ("CdrFetchFunction", "FeedSyncFunction"):
            _ok(lambdas.fire(lambdas.schedule_of(logical)))
        for logical in ("RenderFunction", "PublishFunction"):
            _ok(lambdas.poll(logical).invocations)
        dist = S3Store(s3, stack.dist_bucket)
        verifier = Verifier.from_public_pem(KmsSigner(stack.client("kms"), stack.signing_key_arn).public_key_pem())
        onboarded = onboard_cluster(stack, "promo-audit-1", "audit")
        cluster_dist = S3Store(server.client("s3", **onboarded.session), stack.dist_bucket)
        cluster = Cluster(
            cluster_dist, verifier, channel="audit", cluster_id=onboarded.cluster_id, root=work / "clusters"
        )
        with quiet_logs(work / "cluster.log"):
            cluster.sync()
            cluster.record([])
        time.sleep(SOAK_S + 1)
        lambdas.fire("RenderRefreshRule")  # its event on RenderQueue, which the measured Render drains
        results: dict[str, Any] = {"addresses": addresses, "max_promoted": MAX_PROMOTED, "limits": limits}
        for name in ("render", "publish"):
            print(f"    {name} handler, the enforcing channel promoting ...", flush=True)
            results[name] = handler_step(work, layer, lambdas, name)
        report, _ = read_decisions(dist, layout.promotion_report_key("enforcing"))
        shipped = Manifest.parse(dist.get(layout.channel_manifest_key("enforcing")).data, "enforcing")
        audit = Manifest.parse(dist.get(layout.channel_manifest_key("audit")).data, "audit")
    results["publish_status"] = report.publish.status if report.publish else None
    results["counts"] = dataclasses.asdict(report.counts)
    promoted = shipped.promotion.promoted if shipped.promotion else None
    prefixes = promoted.count - len(promoted.ports) - len(promoted.rules) if promoted else 0
    results["promoted_prefixes"] = prefixes
    results["audit_objects"] = audit.objects_count()
    # every change soaked and without hits: the prefixes wait only past the cap of one publish
    waiting, held = report.counts.wait, report.counts.hold
    results["promoted_as_many_as_allowed"] = prefixes == min(prefixes + waiting, MAX_PROMOTED) > 0 and not held
    return results


def _ok(invocations: list[Any]) -> None:
    failed = [i.error for i in invocations if not i.ok]
    if not invocations or failed:
        raise RuntimeError(f"a step before the measured ones failed: {failed or 'nothing ran'}")


def rows(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for name in ("render", "publish"):
        step, limit = r[name], r["limits"][name]
        mib = step["maxrss_kib"] / 1024
        what = {"render": "Render, both channels, the enforcing one composed", "publish": "Publish, both channels"}
        out.append(
            ("(i)", f"{what[name]}: wall, peak RSS", f"{step['wall_s']:.1f} s, {mib:.0f} MiB", "-",
             f"< {limit['timeout_s']} s, < {limit['memory_mib']} MiB (template)",
             step["wall_s"] < limit["timeout_s"] and mib < limit["memory_mib"])
        )  # fmt: skip
    c = r["counts"]
    met = r["promoted_as_many_as_allowed"] and r["publish_status"] == "published"
    out.append(
        ("(i)", f"changes decided ({r['addresses']:,} addresses on the audit channel)",
         f"{c['promote']:,} promote ({r['promoted_prefixes']:,} prefixes), {c['wait']:,} wait, {c['hold']:,} hold; "
         f"{r['publish_status']}", "-", f"prefixes: min(pending, {r['max_promoted']:,}), none held", met)
    )  # fmt: skip
    return out


def render_markdown(r: dict[str, Any]) -> str:
    return "\n".join([f"# Promotion of a {r['addresses']:,}-address feed", "", *table(rows(r)), ""])

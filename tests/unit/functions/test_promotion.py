"""Enforcement promoted on evidence (issue 24), through the public interfaces: Render and Publish
through their handlers on a moto server, clusters whose node readers count Tetragon and Hubble
export lines in the upstream formats and whose agents report them in their statuses, and the
operator's commands. Promote, wait, hold, approve; the watch after enforcing holds the channel and
takes back what hurt; a hostile cluster's status counts for itself and nothing more."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cdr_policy import jsonio, layout
from cdr_policy.agent.status import AgentStatus
from cdr_policy.bundle.loader import latest_render
from cdr_policy.bundle.provenance import load_published
from cdr_policy.bundle.signing import generate_local_key
from cdr_policy.lambda_events import PublishRequest
from cdr_policy.promotion.decisions import TripChange, WorkloadHits, read_decisions
from cdr_policy.settings import get_settings
from cdr_policy.stages.publish import PublishResult
from cdr_policy.storage import S3Store
from cdr_policy.timeutil import parse_iso, utcnow
from cdr_policy.wiring import cloud
from fakes.cluster import Cluster
from fakes.exports import Workload
from tests.unit.functions.conftest import HandlerStack
from tests.unit.functions.promotion_pipeline import CHECKOUT, WEB, Pipeline, workloads

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")

STAGING = {"name": "staging"}
C2, PAY, FEED, NEW, LATER = "45.33.32.156/32", "91.219.236.0/24", "185.220.101.0/25", "193.42.33.0/24", "5.188.10.0/24"


def prod(**promote: object) -> dict[str, object]:
    base = {"from": "staging", "soak": "0s", "min_clusters_reporting": 1, "protected_namespaces": ["payments"]}
    return {"name": "prod", "action": "Sigkill", "promote": {**base, **promote}}


def blocked(p: Pipeline, channel: str) -> set[str]:
    """The prefixes the channel's shipped bundle blocks (its signed provenance index)."""
    index = load_published(p.dist, p.shipped(channel))
    assert index is not None
    return {b.prefix(i) for b in index.blocklists for i in range(len(b))}


def rule_objects(p: Pipeline, channel: str) -> dict[str, list[str]]:
    """Per behaviour rule, the names of the objects the channel's shipped bundle enforces it with."""
    index = load_published(p.dist, p.shipped(channel))
    assert index is not None
    return {r.rule: sorted(o.name.rsplit("-", 1)[1] for o in r.objects) for r in index.rules}


@pytest.fixture
def p(stack: HandlerStack, tmp_path: Path) -> Pipeline:
    return Pipeline(stack, tmp_path)


def watched_on_staging(p: Pipeline, cdr: list[str]) -> Cluster:
    """prod promoting from staging: ``cdr`` rendered and published to both, staging's one cluster
    (stg-1) reporting with it applied and no hits, rendered again; the cluster."""
    p.configure(STAGING, prod())
    p.indicators(cdr)
    p.render()
    staging = p.cluster("staging", "stg-1")
    staging.sync()
    staging.record([])
    p.render()
    return staging


def test_a_change_reaches_the_enforcing_channel_only_after_its_soak_on_the_audit_channel(p: Pipeline) -> None:
    p.configure(STAGING, prod(soak="15s"))  # long enough for a loaded machine to render within it
    p.indicators([C2], feed=[FEED])
    staging = p.cluster("staging", "stg-1")

    assert p.render()["prod"].status == "published"
    # staging ships it; prod nothing yet: staging had not shipped it when prod was composed
    assert blocked(p, "staging") == {C2, FEED} and blocked(p, "prod") == set()
    assert p.decision("prod", f"prefix:{C2}").reasons == ("not shipped on staging now",)

    staging.sync()
    staging.record([])  # its node reader reports: no hit
    p.render()
    waiting = p.decision("prod", f"prefix:{C2}")
    assert waiting.decision == "wait" and waiting.reasons[0].endswith("of the 15s soak")
    assert waiting.evidence.clusters == 1

    shipped = parse_iso(p.shipped("staging").created_at)
    time.sleep(max((shipped + timedelta(seconds=16) - utcnow()).total_seconds(), 0))
    assert p.render()["prod"].status == "published"
    promoted = p.decision("prod", f"prefix:{C2}")
    assert (promoted.decision, promoted.how, promoted.reasons) == ("promote", "soaked", ())
    assert blocked(p, "prod") == {C2, FEED}
    record = p.promotion("prod")
    assert record.source == "staging" and record.promoted.count == 2
    assert {e.change: e.clusters for e in record.evidence} == {f"prefix:{C2}": 1, f"prefix:{FEED}": 1}
    # the prod cluster applies the signed manifest with its promotion record
    assert p.cluster("prod", "prod-1").sync().last_poll.result == "applied"
    code, out = p.run("channel", "evidence", "prod", "--dist", "{dist}")
    assert code == 0 and f"PROMOTE prefix:{C2} (soaked)" in out and "changes: 2 promote, 0 wait, 0 hold" in out


def test_a_change_whose_audit_hits_touch_a_protected_namespace_is_held_until_an_approver_approves_it(
    p: Pipeline, stack: HandlerStack, tmp_path: Path
) -> None:
    p.configure(STAGING, prod())
    p.indicators([C2, PAY], feed=[FEED])
    p.render()
    staging = p.cluster("staging", "stg-1")
    staging.sync()
    staging.record(staging.connect(PAY, CHECKOUT, action="Post") + staging.connect(FEED, WEB, action="Post"))

    p.render()

    held = p.decision("prod", f"prefix:{PAY}")
    assert held.decision == "hold"
    assert held.reasons == ("would have blocked 2 event(s) in protected namespace(s) payments on staging",)
    assert held.evidence.workloads == (WorkloadHits("stg-1", "payments", "checkout", 2),)
    assert p.decision("prod", f"prefix:{FEED}").decision == "promote"  # one workload in shop: within limits
    assert blocked(p, "prod") == {C2, FEED}
    assert p.promotion("prod").pending == {"wait": 0, "hold": 1}
    code, out = p.run("channel", "evidence", "prod", "--dist", "{dist}")
    assert f"HOLD    prefix:{PAY}" in out and "stg-1/payments/checkout: 2 hit(s)" in out
    assert f"approve: cdr-policy channel approve prod --change prefix:{PAY}" in out

    # only a pending change can be approved, and only with the approvers' key: a grant the ApproverRole
    # writes signed with another key approves nothing
    code, out = p.run("channel", "approve", "prod", "--change", "prefix:1.2.3.0/24", "--state", "{state}",
                      "--dist", "{dist}", "--kms-key-id", stack.approver_key_id, approver=True)  # fmt: skip
    assert code != 0 and "is not a pending change of channel prod" in out
    approve = ("channel", "approve", "prod", "--change", f"prefix:{PAY}", "--state", "{state}", "--dist", "{dist}")
    other = tmp_path / "not-the-approvers.pem"
    generate_local_key(other)
    code, out = p.run(*approve, "--key", str(other), "--reason", "signed by another key", approver=True)
    assert code == 0, out
    p.render()
    assert p.decision("prod", f"prefix:{PAY}").decision == "hold"
    # nor can the pipeline's administrator write a grant: only the ApproverRole may (the bucket policy)
    code, out = p.run(*approve, "--kms-key-id", stack.approver_key_id, "--reason", "as the administrator")
    assert code != 0 and "AccessDenied" in out

    code, out = p.run(
        *approve, "--kms-key-id", stack.approver_key_id, "--reason", "the payments team accepts it", approver=True
    )
    assert code == 0 and f"prefix:{PAY} (was hold: would have blocked 2 event(s)" in out
    assert p.render()["prod"].status == "published"

    approved = p.decision("prod", f"prefix:{PAY}")
    assert (approved.decision, approved.how) == ("promote", "approved")
    assert approved.reasons[1] == f"approved over: {held.reasons[0]}"
    assert blocked(p, "prod") == {C2, PAY, FEED}
    record = p.promotion("prod")
    (used,) = record.approved
    assert used.approver.endswith(stack.approver_key_id) and used.changes == 1
    assert p.state.list("approvals/prod/") == []  # used once


def test_each_new_entry_is_promoted_on_its_own_soak_while_later_ones_wait(p: Pipeline) -> None:
    p.configure(STAGING, prod(soak="3s"))
    p.indicators([C2])
    p.render()
    staging = p.cluster("staging", "stg-1")
    staging.sync()
    staging.record([])
    time.sleep(3)
    p.indicators([C2, NEW])  # a feed keeps adding entries: each soaks from when staging shipped it
    p.render()
    staging.sync()

    assert blocked(p, "prod") == {C2}
    assert p.decision("prod", f"prefix:{NEW}").reasons == ("not shipped on staging now",)
    time.sleep(3)
    p.indicators([C2, NEW, LATER])
    p.render()

    assert blocked(p, "prod") == {C2, NEW}
    assert p.decision("prod", f"prefix:{LATER}").decision == "wait"
    assert p.promotion("prod").pending == {"wait": 1, "hold": 0}


def test_removals_and_expiries_are_never_held(p: Pipeline) -> None:
    entries = ["45.33.32.156/32", "45.33.32.157/32", "45.33.32.200/31", "45.33.32.202/31", "45.33.32.204/30"]
    watched_on_staging(p, entries)
    assert blocked(p, "prod") == {"45.33.32.156/31", "45.33.32.200/29"}
    p.configure(STAGING, prod(soak="1h"))

    p.indicators(entries[1:] + [NEW])  # one entry gone from the feed, one new one soaking

    assert p.render()["prod"].status == "published"
    assert blocked(p, "prod") == {"45.33.32.157/32", "45.33.32.200/29"}
    assert p.decision("prod", f"prefix:{NEW}").decision == "wait"


def test_too_many_workloads_hit_on_the_audit_channel_hold_a_change(p: Pipeline) -> None:
    p.configure(STAGING, prod(max_workloads_hit=3))
    p.indicators([C2], feed=[FEED])
    p.render()
    staging = p.cluster("staging", "stg-1")
    staging.sync()
    staging.record([line for w in workloads(4) for line in staging.connect(FEED, w, action="Post")])

    p.render()

    assert p.decision("prod", f"prefix:{FEED}").reasons == (
        "would have blocked 4 distinct workloads on staging (at most 3)",
    )
    assert blocked(p, "prod") == {C2}


def test_a_changed_behaviour_rule_waits_and_the_channel_keeps_the_version_it_ships(p: Pipeline) -> None:
    p.configure(STAGING, prod(soak="3s"))
    p.indicators([C2], behaviours={"crypto_mining": ["xmrig"]})
    p.render()
    staging = p.cluster("staging", "stg-1")
    staging.sync()
    staging.record([])
    time.sleep(3)
    p.render()
    (rule,) = p.promotion("prod").promoted.rules
    assert rule[0] == "crypto_mining"

    objects = rule_objects(p, "prod")

    p.indicators([C2], behaviours={"crypto_mining": ["xmrig", "cpuminer-opt"]})  # a new name seen
    p.render()

    changed = next(c for c in p.report("prod").changes if c.kind == "rule")
    assert changed.decision == "wait" and changed.change != f"rule:crypto_mining@{rule[1][:16]}"
    assert rule_objects(p, "prod") == objects  # the version it ships, object for object
    assert rule_objects(p, "staging") != objects
    staging.record([])  # its cluster applies the new version and reports
    time.sleep(3)
    p.render()
    assert p.promotion("prod").promoted.rules[0][1] == changed.fingerprint
    assert rule_objects(p, "prod") != objects


def test_enforcing_changes_that_hurt_holds_the_channel_and_takes_them_back_until_approved(
    p: Pipeline, stack: HandlerStack, capsys: pytest.CaptureFixture[str], log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    p.configure(STAGING, prod(watch={"for": "1h", "max_workloads_hit": 2, "rollback": True}))
    p.indicators([C2], feed=[FEED])
    p.render()
    staging, enforcing = p.cluster("staging", "stg-1"), p.cluster("prod", "prod-1")
    staging.sync()
    staging.record([])
    p.render()
    p.indicators([C2], feed=[FEED, NEW])
    p.render()
    staging.sync()
    staging.record([])
    p.render()
    promoted_at = p.shipped("prod").generation
    assert blocked(p, "prod") == {C2, FEED, NEW}
    enforcing.sync()
    capsys.readouterr()

    # three workloads are killed connecting to the new entry: the watch trips and takes it back
    enforcing.record([line for w in workloads(3) for line in enforcing.connect(NEW, w, action="Sigkill")])
    p.indicators([C2, LATER], feed=[FEED, NEW])  # and a new change arrives meanwhile
    p.render()

    assert blocked(p, "prod") == {C2, FEED}
    record = p.promotion("prod")
    assert record.rolled_back is not None and record.rolled_back.generation == promoted_at
    assert record.held_back is not None and record.held_back.count == 1
    back = p.decision("prod", f"prefix:{NEW}")
    assert back.decision == "hold" and back.reasons[0].startswith(
        f"being taken back: the changes generation {promoted_at} promoted stopped 6 event(s) in 3 distinct workloads"
    )
    assert p.decision("prod", f"prefix:{LATER}").reasons[0].startswith("the channel is held: ")
    (trip,) = p.report("prod").watch
    assert (trip.generation, trip.workloads_total) == (promoted_at, 3)
    assert trip.changes == (TripChange(f"prefix:{NEW}", 6),) and trip.changes_total == 1
    # the alarm's metric names the channel and generation, its record and the log line the change
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    (alarm,) = [e for e in emitted if "EnforcementHurting" in e and "generation" in e]
    assert (alarm["channel"], alarm["generation"], alarm["changes"]) == ("prod", str(promoted_at), [f"prefix:{NEW}"])
    (logged,) = [e for e in log_lines() if e["message"].startswith("enforcing promoted changes hurt")]
    assert logged["changes"] == [dataclasses.asdict(c) for c in trip.changes]
    # the agent applies the signed take-back: it shrinks what is enforced, by Publish's decision
    assert enforcing.sync().last_poll.result == "applied"
    code, out = p.run("channel", "evidence", "prod", "--dist", "{dist}")
    assert f"watch tripped: generation {promoted_at}" in out and "prod-1/shop/app0: 2 hit(s)" in out
    assert f"caused by prefix:{NEW}: 6 event(s)" in out
    code, out = p.run("fleet", "status", "--dist", "{dist}")
    assert f"took back generation {promoted_at}'s changes" in out
    # the signed history: the generation that promoted it, and the one that took it back
    code, out = p.run("channel", "history", "prod", "--dist", "{dist}", "--kms-key-id", stack.signing_key_id)
    assert code == 0 and f"took back generation {promoted_at}'s changes" in out
    assert "promoted 1 change(s) from staging (0 approved)" in out

    # held until an approver approves it again
    p.render()
    assert p.decision("prod", f"prefix:{NEW}").reasons[0].startswith("taken back after enforcing it hurt")
    assert p.run("channel", "approve", "prod", "--change", f"prefix:{NEW}", "--state", "{state}", "--dist", "{dist}",
                 "--kms-key-id", stack.approver_key_id, approver=True)[0] == 0  # fmt: skip
    p.render()
    assert NEW in blocked(p, "prod") and p.promotion("prod").held_back is None


def test_without_rollback_a_tripped_watch_holds_new_changes_and_keeps_what_it_ships(p: Pipeline) -> None:
    watch = {"for": "1h", "max_workloads_hit": 10, "min_events": 5, "max_rate_increase": 2}
    p.configure(STAGING, prod(watch=watch))
    p.indicators([C2])
    p.render()
    staging, enforcing = p.cluster("staging", "stg-1"), p.cluster("prod", "prod-1")
    staging.sync()
    staging.record([])
    p.render()
    enforcing.sync()

    # one workload, 6 kills a minute where the channel stopped nothing before: the rate trips it
    enforcing.record([line for _ in range(3) for line in enforcing.connect(C2, WEB, action="Sigkill")])
    p.indicators([C2, NEW])
    p.render()

    assert blocked(p, "prod") == {C2}
    reason = p.decision("prod", f"prefix:{NEW}").reasons[0]
    assert reason.startswith("the channel is held: the changes generation ") and "events a minute" in reason


def _forged_status(
    honest: AgentStatus, cluster_id: str, rows: list[dict[str, Any]], bundles: list[str]
) -> dict[str, Any]:
    """A status document a hostile cluster writes: an honest one's shape, its own rows."""
    status = honest.to_json()
    status["cluster_id"] = cluster_id
    status["hits"]["rows"], status["hits"]["bundles"] = rows, bundles
    return status


def _row(indicator: str, address: str, w: Workload, **extra: object) -> dict[str, Any]:
    hour = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime())
    row = {"hour": hour, "engine": "tetragon", "object": "", "kind": "prefix", "indicator": indicator,
           "address": address, "action": "POST", "namespace": w.namespace, "workload": w.name, "pod": None,
           "bundle": 0, "count": 1}  # fmt: skip
    return {**row, **extra}


def test_a_hostile_cluster_cannot_force_a_promotion_beyond_its_own_counts(p: Pipeline) -> None:
    p.configure(STAGING, prod(min_clusters_reporting=3))
    p.indicators([C2])
    p.render()
    honest = p.cluster("staging", "stg-1")
    honest.sync()
    status = honest.record([])
    staging_digest = status.applied_digest
    assert staging_digest is not None
    # a hostile cluster of staging: its own status, fresh, claiming it reports too
    evil = p.session_client(p.onboard("staging", "evil"), "s3")
    own = S3Store(evil, p.stack.dist_bucket)
    own.put(layout.status_key("evil"), jsonio.dumps(_forged_status(status, "evil", [], [staging_digest])))
    # its role may write only its own key (tests/infra/test_cluster_access.py, where IAM is enforced); copies
    # under other clusters' keys, as a role with a broader grant would plant them, are no cluster's word
    for key in ("stg-2", "stg-3", "stg-4"):
        own.put(layout.status_key(key), jsonio.dumps(_forged_status(status, "evil", [], [staging_digest])))

    p.render()

    waiting = p.decision("prod", f"prefix:{C2}")
    assert waiting.evidence.clusters == 2  # stg-1 and evil itself, nothing planted
    assert waiting.reasons == ("2 of the 3 staging cluster(s) needed report fresh hits with it applied",)
    # what it writes under its own key naming another cluster is no cluster's word: not even its own
    own.put(layout.status_key("evil"), jsonio.dumps(_forged_status(status, "stg-9", [], [staging_digest])))
    p.render()
    assert p.decision("prod", f"prefix:{C2}").evidence.clusters == 1
    assert blocked(p, "prod") == set()

    # its hits count for what its channel ships, as its own: none for an address staging never sent
    rows = [_row("1.1.1.0/24", "1.1.1.1", w, object=honest.holder(C2)) for w in workloads(5, "payments")]
    own.put(layout.status_key("evil"), jsonio.dumps(_forged_status(status, "evil", rows, [staging_digest])))
    code, out = p.run("fleet", "hits", "--dist", "{dist}", "--json")
    evil_row = next(c for c in jsonio.loads(out)["clusters"] if c["cluster_id"] == "evil")
    assert evil_row["hits"] == 0 and evil_row["refused"] == {"not an indicator of the bundle's object": 5}
    p.render()
    assert p.decision("prod", f"prefix:{C2}").evidence.hits == 0


def test_a_hostile_cluster_cannot_force_a_rollback_beyond_its_own_counts(p: Pipeline) -> None:
    p.configure(STAGING, prod(watch={"for": "1h", "max_workloads_hit": 2, "rollback": True}))
    p.indicators([C2])
    p.render()
    staging, enforcing = p.cluster("staging", "stg-1"), p.cluster("prod", "prod-1")
    staging.sync()
    staging_status = staging.record([])
    p.render()
    p.indicators([C2, NEW])
    p.render()
    staging.sync()
    staging.record([])
    p.render()
    assert blocked(p, "prod") == {C2, NEW}
    status = enforcing.record([])
    prod_digest = status.applied_digest
    assert prod_digest is not None and staging_status.applied_digest is not None
    kill = {"action": "SIGKILL", "object": enforcing.holder(NEW)}
    rows = (
        # kills of the new entry, attributed with a bundle prod never shipped (staging's)
        [_row(NEW, "193.42.33.1", w, bundle=1, **kill) for w in workloads(3)]
        # of an address prod does not block
        + [_row("8.8.8.0/24", "8.8.8.8", w, **kill) for w in workloads(3, "apps")]
        # of what prod enforced before the new entry: not that entry's doing
        + [_row(C2, "45.33.32.156", w, **kill) for w in workloads(4, "db")]
        # in an hour to come
        + [_row(NEW, "193.42.33.1", w, hour="2099-01-01T00:00:00Z", **kill) for w in workloads(3, "web")]
    )
    bundles = [prod_digest, staging_status.applied_digest]
    own = S3Store(p.session_client(p.onboard("prod", "evil"), "s3"), p.stack.dist_bucket)
    own.put(layout.status_key("evil"), jsonio.dumps(_forged_status(status, "evil", rows, bundles)))

    p.render()

    assert blocked(p, "prod") == {C2, NEW} and p.report("prod").watch == ()
    # its own kills of the new entry, in three workloads: those count, as its own
    kills = [_row(NEW, "193.42.33.1", w, **kill) for w in workloads(3, "web")]
    own.put(layout.status_key("evil"), jsonio.dumps(_forged_status(status, "evil", kills, [prod_digest])))
    p.render()
    (trip,) = p.report("prod").watch
    assert {w.cluster for w in trip.workloads} == {"evil"} and trip.events == 3
    assert blocked(p, "prod") == {C2}


def test_publish_holds_a_bundle_its_decisions_do_not_account_for(p: Pipeline) -> None:
    staging = watched_on_staging(p, [C2])
    p.indicators([C2, NEW])
    p.render()
    staging.sync()
    p.render(publish=False)  # prod's render promotes NEW; Publish has not run yet
    digest = latest_render(p.state, "prod")
    assert digest is not None
    key = layout.promotion_decisions_key(digest)
    decided, _ = read_decisions(p.state, key)
    assert decided.promoted.prefixes == (NEW,)
    doc = decided.to_json()  # what someone who can write the state bucket rewrites
    generation = p.shipped("prod").generation

    def publish_with(forged: dict[str, Any] | None) -> PublishResult:
        """Publish's stage, as the handler calls it, after someone who can write the state bucket
        (but cannot sign) replaced the decisions beside the bundle."""
        if forged is None:
            p.state.delete(key)
        else:
            p.state.put(key, jsonio.dumps_pretty(forged))
        return PublishResult.from_json(cloud.publish(get_settings(), PublishRequest("prod", digest)))

    # the bundle adds what the decisions do not promote
    result = publish_with({**doc, "promoted": {**doc["promoted"], "prefixes": []}})
    assert result.status == "held" and f"it adds what was not promoted: prefix:{NEW}" in result.reason
    # an entry staging never shipped claimed promoted: judged again, it is not
    result = publish_with({**doc, "promoted": {**doc["promoted"], "prefixes": [NEW, LATER]}})
    assert result.status == "held"
    assert f"among them prefix:{LATER}: not shipped on staging now" in result.reason
    # decisions made over another bundle than the channel ships
    result = publish_with({**doc, "over": "0" * 64})
    assert result.status == "held" and "composed over bundle 000000000000" in result.reason
    # none at all
    result = publish_with(None)
    assert result.status == "held" and "has no promotion decisions beside it" in result.reason
    assert blocked(p, "prod") == {C2} and p.shipped("prod").generation == generation
    # Render's own decisions ship
    assert publish_with(doc).status == "published" and blocked(p, "prod") == {C2, NEW}


def test_the_same_inputs_compose_the_same_bundle(p: Pipeline) -> None:
    p.configure(STAGING, prod(soak="1h"))
    p.indicators([C2], feed=[FEED])
    p.render()
    staging = p.cluster("staging", "stg-1")
    staging.sync()
    staging.record([])
    first = latest_render(p.state, "prod")
    p.render()
    p.render()
    assert latest_render(p.state, "prod") == first


def test_a_shipped_bundle_that_cannot_be_read_holds_the_channel_and_stops_no_render(p: Pipeline) -> None:
    watched_on_staging(p, [C2])
    shipped = p.shipped("prod")
    p.dist.delete(layout.published_file_key("prod", shipped.digest, layout.PROVENANCE_FILE))  # gone from the bucket
    p.indicators([C2, NEW])

    outcome = p.render()["prod"]

    assert outcome.status == "held" and "cannot compare with the current bundle" in outcome.reason
    assert p.shipped("prod").digest == shipped.digest
    assert blocked(p, "staging") == {C2, NEW}  # every other channel rendered and published

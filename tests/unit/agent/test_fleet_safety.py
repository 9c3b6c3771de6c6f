"""The sync agent against an attacker who can write the distribution bucket but cannot sign, and an
unlucky operator (restarts, a slow API server, edits out of band): every case runs the real agent
against the loopback fake of the Kubernetes API server."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cdr_policy import jsonio, layout
from cdr_policy.agent.directory import DirectoryApplier
from cdr_policy.agent.kinds import GENERATION_ANNOTATION
from cdr_policy.agent.kube import KubeApplier
from cdr_policy.agent.state import RECORD_NAME, ClusterRecord
from cdr_policy.agent.sync import Agent
from cdr_policy.bundle.manifest import Settings as BundleSettings
from cdr_policy.bundle.signing import LocalSigner, Verifier
from cdr_policy.errors import StorageError
from cdr_policy.stages.publish import publish_bundle, rollback
from cdr_policy.storage import LocalStore, Store, StoredObject
from fakes.kube import FakeKubeAPI
from fakes.stores import RecordingStore
from tests.unit.bundle.factory import (
    SETTINGS,
    T0,
    approve,
    ips,
    network_bundle,
    render,
    sign_document,
    unsigned_document,
)

MINUTE = timedelta(minutes=1)
NS = "cdr-policy-system"
A = network_bundle(ips(0, 10), tag="a")
B = network_bundle(ips(5, 10), tag="b")
A_NAMES = ["ccg-blocklist-a", "ccnp-blocklist-a", "tp-blocklist-a"]
B_NAMES = ["ccg-blocklist-b", "ccnp-blocklist-b", "tp-blocklist-b"]


@pytest.fixture
def bucket(dist: LocalStore) -> RecordingStore:
    return RecordingStore(dist)


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api


@pytest.fixture
def make_agent(bucket: RecordingStore, verifier: Verifier, tmp_path: Path, kube: FakeKubeAPI) -> Callable[..., Agent]:
    def make(state_dir: str = "agent-state", **kwargs: Any) -> Agent:
        applier = KubeApplier(kube.url, kube.token)
        return Agent(
            bucket,
            channel="prod",
            cluster_id="eks-prod-1",
            verifier=verifier,
            applier=applier,
            state_dir=tmp_path / state_dir,
            record=ClusterRecord(applier, NS),
            **kwargs,
        )

    return make


@pytest.fixture
def ship(
    state: LocalStore, bucket: RecordingStore, signer: LocalSigner, approver: LocalSigner, approvers: Verifier
) -> Callable[..., str]:
    """Render and publish ``files`` (operator-approved, so the budget never holds it); returns the digest."""

    def ship(
        files: dict[str, bytes],
        when: datetime = T0,
        *,
        ttl: timedelta = timedelta(hours=72),
        settings: BundleSettings = SETTINGS,
    ) -> str:
        digest = render(state, files, created=when, ttl=ttl, settings=settings)
        approve(state, bucket, approver, digest, channel="prod", now=when)  # not about the change budget
        result = publish_bundle(
            state,
            bucket,
            channel="prod",
            digest=digest,
            signer=signer,
            now=when,
            change_budget_percent=100,
            approvers=approvers,
        )
        assert result.shipped
        return digest

    return ship


def names(kube: FakeKubeAPI) -> list[str]:
    return sorted(o["metadata"]["name"] for o in kube.objects())


def manifest_bytes(bucket: RecordingStore) -> bytes:
    return bucket.inner.get(layout.channel_manifest_key("prod")).data


def serve(bucket: RecordingStore, data: bytes) -> None:
    bucket.inner.put(layout.channel_manifest_key("prod"), data)


def record(kube: FakeKubeAPI) -> dict[str, Any]:
    stored = kube.configmap(NS, RECORD_NAME)
    assert stored is not None
    doc: dict[str, Any] = jsonio.loads(stored["data"]["prod"].encode())
    return doc


# -- 1. replay protection survives a restart ------------------------------------------------------


def test_restart_with_an_empty_state_dir_refuses_generation_1_and_applies_a_signed_rollback(
    kube: FakeKubeAPI,
    ship: Callable[..., str],
    make_agent: Callable[..., Agent],
    bucket: RecordingStore,
    signer: LocalSigner,
) -> None:
    digest_a = ship(A)
    generation_1 = manifest_bytes(bucket)
    make_agent().sync_once(T0 + MINUTE).to_json()
    digest_b = ship(B, T0 + 10 * MINUTE)
    applied = make_agent().sync_once(T0 + 11 * MINUTE).to_json()
    assert (applied["applied_generation"], applied["applied_digest"]) == (2, digest_b)
    assert record(kube)["generation"] == 2 and record(kube)["digest"] == digest_b

    # the pod is rescheduled: a new, empty state dir; someone who can write the bucket serves generation 1
    serve(bucket, generation_1)
    restarted = make_agent(state_dir="fresh-state")
    status = restarted.sync_once(T0 + 12 * MINUTE).to_json()

    assert status["last_poll"]["result"] == "refused"
    assert status["verification"]["code"] == "replay"
    assert "generation 1; this cluster has applied generation 2" in status["verification"]["reason"]
    assert f"ConfigMap {NS}/{RECORD_NAME}" in status["verification"]["reason"]
    assert (status["applied_digest"], status["applied_generation"]) == (digest_b, 2)  # from the record
    assert names(kube) == B_NAMES

    # an operator rolls back to generation 1's bundle: a new, higher, signed generation
    rolled = rollback(bucket, channel="prod", to_generation=1, signer=signer, now=T0 + 13 * MINUTE)
    assert rolled.generation == 3
    status = restarted.sync_once(T0 + 14 * MINUTE).to_json()

    assert status["last_poll"]["result"] == "applied"
    assert (status["applied_digest"], status["applied_generation"]) == (digest_a, 3)
    assert names(kube) == A_NAMES
    assert record(kube)["generation"] == 3


def test_a_corrupt_state_dir_does_not_lower_the_bar(
    kube: FakeKubeAPI,
    ship: Callable[..., str],
    make_agent: Callable[..., Agent],
    bucket: RecordingStore,
    tmp_path: Path,
) -> None:
    ship(A)
    generation_1 = manifest_bytes(bucket)
    make_agent().sync_once(T0 + MINUTE).to_json()
    ship(B, T0 + 10 * MINUTE)
    make_agent().sync_once(T0 + 11 * MINUTE).to_json()
    (tmp_path / "agent-state" / "applied.json").write_bytes(b"{ corrupt")
    serve(bucket, generation_1)

    status = make_agent().sync_once(T0 + 12 * MINUTE).to_json()

    assert status["verification"]["code"] == "replay" and names(kube) == B_NAMES


def test_a_lost_record_falls_back_to_the_generation_on_the_live_objects(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore
) -> None:
    """Rule: with no record in the cluster, the floor is the highest cdr-policy.io/generation annotation
    on the owned live objects (the agent stamps each object it applies)."""
    ship(A)
    generation_1 = manifest_bytes(bucket)
    make_agent().sync_once(T0 + MINUTE).to_json()
    ship(B, T0 + 10 * MINUTE)
    make_agent().sync_once(T0 + 11 * MINUTE).to_json()
    assert {o["metadata"]["annotations"][GENERATION_ANNOTATION] for o in kube.objects()} == {"2"}
    kube.set_config_map(NS, RECORD_NAME, None)
    serve(bucket, generation_1)

    status = make_agent(state_dir="fresh").sync_once(T0 + 12 * MINUTE).to_json()

    assert status["verification"]["code"] == "replay"
    assert "owned objects' generation annotations" in status["verification"]["reason"]
    assert names(kube) == B_NAMES


def test_a_corrupt_record_stops_the_sync_instead_of_lowering_the_floor(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    ship(A)
    make_agent().sync_once(T0 + MINUTE).to_json()
    stored = kube.configmap(NS, RECORD_NAME)
    assert stored is not None
    stored["data"]["prod"] = '{"generation": 0}'
    kube.set_config_map(NS, RECORD_NAME, None)
    applier = KubeApplier(kube.url, kube.token)
    applier.write_configmap(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": RECORD_NAME, "namespace": NS},
            "data": stored["data"],
        }
    )
    ship(B, T0 + 10 * MINUTE)

    status = make_agent(state_dir="fresh").sync_once(T0 + 11 * MINUTE).to_json()

    assert status["last_poll"]["result"] == "unreachable"
    assert "is corrupt (no positive integer 'generation'): fix or delete it" in status["last_poll"]["detail"]
    assert names(kube) == A_NAMES


def test_an_unreadable_record_stops_the_sync(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    ship(A)
    kube.fail("configmap", 403, name=RECORD_NAME)

    status = make_agent().sync_once(T0 + MINUTE).to_json()

    assert status["last_poll"]["result"] == "unreachable"
    assert "cannot read the applied generation" in status["last_poll"]["detail"]
    assert kube.objects() == []


def test_two_agents_never_lower_the_record(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore
) -> None:
    ship(A)
    old = make_agent(state_dir="old")
    old_manifest = manifest_bytes(bucket)
    ship(B, T0 + 10 * MINUTE)
    make_agent(state_dir="new").sync_once(T0 + 11 * MINUTE).to_json()
    applier = KubeApplier(kube.url, kube.token)
    # an agent that applied generation 1 late (a slow old replica) tries to record it
    from cdr_policy.agent.state import Record

    ClusterRecord(applier, NS).save("prod", Record(1, "a" * 64, "2026-01-13T16:00:00Z", "2026-01-10T16:01:00Z"))
    assert record(kube)["generation"] == 2
    serve(bucket, old_manifest)
    assert old.sync_once(T0 + 12 * MINUTE).to_json()["verification"]["code"] == "replay"


# -- 2. a future-dated manifest does not lock the agent ------------------------------------------


def test_a_future_dated_manifest_is_refused_and_normal_ones_still_apply(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    agent = make_agent()
    ship(A, T0 + timedelta(days=365))  # a signed manifest stamped a year ahead (a publisher's bad clock)

    status = agent.sync_once(T0 + MINUTE).to_json()

    assert (status["last_poll"]["result"], status["verification"]["code"]) == ("refused", "future")
    assert "more than 300s ahead" in status["verification"]["reason"] and kube.objects() == []
    digest_b = ship(B, T0 + 2 * MINUTE)
    assert agent.sync_once(T0 + 3 * MINUTE).to_json()["applied_digest"] == digest_b


def test_a_small_clock_skew_is_tolerated(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    ship(A, T0 + 4 * MINUTE)
    assert make_agent().sync_once(T0).to_json()["last_poll"]["result"] == "applied"


# -- 3. the agent refuses to shrink enforcement without a matching approval ------------------------


def sign_as_publish(bucket: RecordingStore, signer: LocalSigner, manifest: dict[str, Any], **fields: Any) -> None:
    """A signed manifest as a publisher that skipped its change budget would write it (no approval,
    no steps: nothing says how the channel got there)."""
    body = {k: v for k, v in unsigned_document(manifest).items() if k not in ("approval", "steps")} | fields
    serve(bucket, jsonio.dumps(sign_document(body, signer)))


@pytest.mark.parametrize(
    "approval",
    [None, {"previous_digest": "e" * 64, "approved_at": "2026-01-10T16:20:00Z"}],
    ids=["no approval", "approval of another bundle"],
)
def test_an_empty_bundle_over_a_small_channel_is_refused_without_a_matching_approval(
    approval: dict[str, str] | None,
    kube: FakeKubeAPI,
    ship: Callable[..., str],
    make_agent: Callable[..., Agent],
    bucket: RecordingStore,
    signer: LocalSigner,
    state: LocalStore,
) -> None:
    ship(A)
    agent = make_agent()
    agent.sync_once(T0 + MINUTE).to_json()
    ship({}, T0 + 10 * MINUTE)
    fields = {"generation": 2} | ({"approval": approval} if approval else {})
    sign_as_publish(bucket, signer, jsonio.loads(manifest_bytes(bucket)), **fields)

    status = agent.sync_once(T0 + 11 * MINUTE).to_json()

    assert (status["last_poll"]["result"], status["verification"]["code"]) == ("refused", "shrink")
    assert "removes every object (3 now enforced)" in status["verification"]["reason"]
    assert names(kube) == A_NAMES


def test_an_approved_empty_bundle_for_the_applied_digest_is_applied(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore
) -> None:
    digest_a = ship(A)
    agent = make_agent()
    agent.sync_once(T0 + MINUTE).to_json()
    ship({}, T0 + 10 * MINUTE)  # approved by the operator: approval.previous_digest == digest_a
    assert jsonio.loads(manifest_bytes(bucket))["approval"]["previous_digest"] == digest_a

    status = agent.sync_once(T0 + 11 * MINUTE).to_json()

    assert status["last_poll"]["result"] == "applied" and kube.objects() == []


# -- 4. drift is repaired ------------------------------------------------------------------------


def test_drift_a_deleted_or_edited_object_comes_back_after_one_drift_interval(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    ship(A)
    agent = make_agent(drift_interval_s=0.2)
    agent.sync_once(T0 + MINUTE).to_json()
    kube.delete_object("TracingPolicy", "tp-blocklist-a")
    edited = kube.get_object("CiliumCIDRGroup", "ccg-blocklist-a")
    assert edited is not None
    edited["spec"]["externalCIDRs"] = []
    kube.add_object(edited)

    assert agent.sync_once(T0 + 2 * MINUTE).to_json()["last_poll"]["result"] == "unchanged"  # interval not over yet
    time.sleep(0.25)
    status = agent.sync_once(T0 + 3 * MINUTE).to_json()

    assert status["last_poll"]["result"] == "repaired"
    assert status["drift"]["missing"] == ["TracingPolicy/tp-blocklist-a"]
    assert status["drift"]["changed"] == ["CiliumCIDRGroup/ccg-blocklist-a"]
    assert status["drift"]["repaired"] is True
    assert names(kube) == A_NAMES
    stored = kube.get_object("CiliumCIDRGroup", "ccg-blocklist-a")
    assert stored is not None
    assert stored["spec"]["externalCIDRs"] == ips(0, 10)

    time.sleep(0.25)
    clean = agent.sync_once(T0 + 4 * MINUTE).to_json()
    assert clean["last_poll"] == {
        "at": "2026-01-10T16:04:00Z",
        "result": "unchanged",
        "detail": "manifest unchanged (ETag)",
    }
    assert clean["drift"]["missing"] == [] and clean["drift"]["repaired"] is False
    assert clean["drift"]["checked_at"] == "2026-01-10T16:04:00Z"


def test_an_object_served_under_a_newer_version_is_not_drift(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    from tests.unit.bundle.factory import ccg, ccnp, files_of

    old_api = {
        "g.yaml": ccg("ccg-old-api", ips(0, 3), api_version="cilium.io/v2alpha1"),
        "p.yaml": ccnp("ccnp-old-api", ["ccg-old-api"]),
    }
    ship(files_of(old_api), settings=dataclasses.replace(SETTINGS, cilium_version="1.17"))
    agent = make_agent(drift_interval_s=0.05)
    agent.sync_once(T0 + MINUTE).to_json()
    time.sleep(0.1)

    status = agent.sync_once(T0 + 2 * MINUTE).to_json()

    assert status["last_poll"]["detail"] == "manifest unchanged (ETag)"
    assert status["drift"]["checked_at"] == "2026-01-10T16:02:00Z" and status["drift"]["changed"] == []
    applied = [op for op in kube.ops("apply") if op[1] == "CiliumCIDRGroup"]
    assert applied == [("apply", "CiliumCIDRGroup", "ccg-old-api")]  # only the first apply


# -- 5. expiry never wipes a newer valid bundle ----------------------------------------------------


def test_expiry_keeps_what_the_newer_partially_applied_bundle_applied(
    ship: Callable[..., str],
    make_agent: Callable[..., Agent],
    bucket: RecordingStore,
    verifier: Verifier,
    tmp_path: Path,
) -> None:
    def reject_b_policy(obj: dict[str, Any]) -> list[str]:
        return ["spec: invalid"] if obj["metadata"]["name"] == "ccnp-blocklist-b" else []

    with FakeKubeAPI(validator=reject_b_policy) as kube:
        applier = KubeApplier(kube.url, kube.token)
        agent = Agent(
            bucket,
            channel="prod",
            cluster_id="eks-prod-1",
            verifier=verifier,
            applier=applier,
            state_dir=tmp_path / "s",
            record=ClusterRecord(applier, NS),
        )
        digest_a = ship(A, ttl=timedelta(hours=1))
        agent.sync_once(T0 + MINUTE).to_json()
        ship(B, T0 + 10 * MINUTE)
        assert agent.sync_once(T0 + 11 * MINUTE).to_json()["last_poll"]["result"] == "apply_failed"

        status = agent.sync_once(T0 + timedelta(hours=2)).to_json()

        assert status["last_poll"]["result"] == "expired"
        assert f"applied bundle {digest_a[:12]} expired" in status["last_poll"]["detail"]
        assert "kept 2 object(s) of a newer verified bundle" in status["last_poll"]["detail"]
        assert names(kube) == ["ccg-blocklist-b", "tp-blocklist-b"]


# -- 6. one deadline per sync against a slow API server ---------------------------------------------


def test_a_slow_api_server_cannot_hold_one_sync_past_its_deadline(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore
) -> None:
    ship(A)
    kube.delay_s = 0.4
    agent = make_agent(sync_deadline_s=1.0)

    started = time.monotonic()
    status = agent.sync_once(T0 + MINUTE).to_json()
    took = time.monotonic() - started

    assert took < 2.0, took
    assert status["last_poll"]["result"] in ("apply_failed", "unreachable")
    assert "deadline" in status["last_poll"]["detail"] or any("deadline" in e["error"] for e in status["apply_errors"])
    assert bucket.puts[-1] == layout.status_key("eks-prod-1")  # the status still reached the bucket
    kube.delay_s = 0
    assert agent.sync_once(T0 + 2 * MINUTE).to_json()["last_poll"]["result"] == "applied"


# -- 7. reads are bounded by the signed sizes ------------------------------------------------------


class CountingStore(RecordingStore):
    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.reads: list[tuple[str, int | None, int]] = []

    def get(self, key: str, *, max_bytes: int | None = None) -> StoredObject:
        try:
            obj = super().get(key, max_bytes=max_bytes)
        except Exception:
            self.reads.append((key, max_bytes, -1))
            raise
        self.reads.append((key, max_bytes, len(obj.data)))
        return obj


def test_a_planted_large_file_is_read_no_further_than_its_signed_size_and_only_once(
    kube: FakeKubeAPI, state: LocalStore, dist: LocalStore, signer: LocalSigner, verifier: Verifier, tmp_path: Path
) -> None:
    bucket = CountingStore(dist)
    digest = render(state, A)
    publish_bundle(state, bucket, channel="prod", digest=digest, signer=signer, now=T0, change_budget_percent=100)
    key = layout.published_file_key("prod", digest, "cdr-dynamic-blocklist.yaml")
    dist.put(key, dist.get(key).data + b"#" * (8 << 20))  # 8 MiB more than signed
    applier = KubeApplier(kube.url, kube.token)
    agent = Agent(
        bucket,
        channel="prod",
        cluster_id="c1",
        verifier=verifier,
        applier=applier,
        state_dir=tmp_path / "s",
        record=ClusterRecord(applier, NS),
    )

    status = agent.sync_once(T0 + MINUTE).to_json()

    assert (status["last_poll"]["result"], status["verification"]["code"]) == ("refused", "too_large")
    assert [r for r in bucket.reads if r[0] == key] == [(key, len(A["cdr-dynamic-blocklist.yaml"]), -1)]
    bucket.reads.clear()
    assert agent.sync_once(T0 + 2 * MINUTE).to_json()["verification"]["code"] == "too_large"
    assert bucket.reads == []  # the same manifest is not fetched again: its files neither
    assert kube.objects() == []


def test_a_huge_manifest_is_refused_after_one_mebibyte(
    kube: FakeKubeAPI, make_agent: Callable[..., Agent], bucket: RecordingStore
) -> None:
    serve(bucket, b"{" + b" " * (4 << 20) + b"}")  # a 4 MiB manifest (300 MB cost 1.3 GB before)
    agent = make_agent()

    status = agent.sync_once(T0).to_json()

    assert (status["last_poll"]["result"], status["verification"]["code"]) == ("refused", "too_large")
    assert "larger than 1048576 bytes" in status["verification"]["reason"]
    assert agent.sync_once(T0 + MINUTE).to_json()["last_poll"]["result"] == "unchanged"


# -- 8. the agent checks against the channel and the cluster, not only the object -------------------


def test_a_signed_audit_manifest_whose_objects_kill_is_refused(
    kube: FakeKubeAPI,
    ship: Callable[..., str],
    make_agent: Callable[..., Agent],
    bucket: RecordingStore,
    signer: LocalSigner,
) -> None:
    ship(A)
    manifest = jsonio.loads(manifest_bytes(bucket))
    killing = {**A, "cdr-dynamic-blocklist.yaml": A["cdr-dynamic-blocklist.yaml"].replace(b"Post", b"Sigkill")}
    from cdr_policy.bundle.manifest import entries_digest, file_entries

    entries = file_entries(killing)
    digest = entries_digest(entries)
    for path, data in killing.items():
        bucket.inner.put(layout.published_file_key("prod", digest, path), data)
    files = [e.to_json() for e in entries]
    sign_as_publish(bucket, signer, manifest | {"files": files, "digest": digest}, generation=2)

    status = make_agent().sync_once(T0 + MINUTE).to_json()

    assert (status["last_poll"]["result"], status["verification"]["code"]) == ("refused", "inadmissible")
    assert "an audit channel's policies never kill or override" in status["verification"]["reason"]
    assert kube.objects() == []


def test_the_clusters_own_ranges_are_refused_by_the_agent(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    from cdr_policy.admission import protection
    from cdr_policy.agent.cli import admission_for

    ship(A)  # 45.0.0.0-9: here, this cluster's pod range
    agent = make_agent()
    agent.admission = admission_for(agent.applier, None, protection(("45.0.0.0/24",), where="this cluster"))

    status = agent.sync_once(T0 + MINUTE).to_json()

    assert (status["last_poll"]["result"], status["verification"]["code"]) == ("refused", "inadmissible")
    assert "protected range of this cluster" in status["verification"]["reason"]
    assert kube.objects() == []


# -- issue 20, points 7, 9, 10 and 15 ----------------------------------------------------------------


def test_an_agent_that_missed_an_approved_step_follows_the_signed_path(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore
) -> None:
    """A applied here; B (empty) approved over A and C published over B while this agent was away: C
    shrinks what A enforced, and its signed steps show the approved path from A."""
    digest_a = ship(A)
    agent = make_agent()
    agent.sync_once(T0 + MINUTE).to_json()
    ship({}, T0 + 10 * MINUTE)  # approved over A (the agent does not poll)
    digest_c = ship(network_bundle(ips(100, 2), tag="c"), T0 + 20 * MINUTE)
    steps = jsonio.loads(manifest_bytes(bucket))["steps"]
    assert [(s["generation"], s["how"]) for s in steps] == [(1, "first"), (2, "approved"), (3, "published")]
    assert steps[1]["previous_digest"] == digest_a

    status = agent.sync_once(T0 + 21 * MINUTE).to_json()

    assert (status["last_poll"]["result"], status["applied_digest"]) == ("applied", digest_c)
    assert names(kube) == ["ccg-blocklist-c", "ccnp-blocklist-c", "tp-blocklist-c"]


def test_expiry_applies_the_newer_bundle_held_back_as_a_shrink_instead_of_dropping_everything(
    kube: FakeKubeAPI,
    ship: Callable[..., str],
    make_agent: Callable[..., Agent],
    bucket: RecordingStore,
    signer: LocalSigner,
) -> None:
    ship(A, ttl=timedelta(hours=1))
    agent = make_agent()
    agent.sync_once(T0 + MINUTE).to_json()
    smaller = network_bundle(ips(100, 2), tag="c")
    ship(smaller, T0 + 10 * MINUTE)
    sign_as_publish(bucket, signer, jsonio.loads(manifest_bytes(bucket)), generation=2)  # no approval, no steps
    assert agent.sync_once(T0 + 11 * MINUTE).to_json()["verification"]["code"] == "shrink"

    status = agent.sync_once(T0 + timedelta(hours=2)).to_json()  # A has expired

    assert status["last_poll"]["result"] == "expired"
    assert "the newer verified bundle held back as a shrink stands in (applied:" in status["last_poll"]["detail"]
    assert names(kube) == ["ccg-blocklist-c", "ccnp-blocklist-c", "tp-blocklist-c"]


def test_a_lowered_record_and_a_lost_state_dir_do_not_reopen_replay(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore
) -> None:
    ship(A)
    generation_1 = manifest_bytes(bucket)
    make_agent().sync_once(T0 + MINUTE).to_json()
    ship(B, T0 + 10 * MINUTE)
    make_agent().sync_once(T0 + 11 * MINUTE).to_json()
    lowered = dict(record(kube), generation=1)
    kube.set_config_map(NS, RECORD_NAME, {"prod": jsonio.dumps(lowered).decode()})
    serve(bucket, generation_1)

    status = make_agent(state_dir="fresh").sync_once(T0 + 12 * MINUTE).to_json()

    assert status["verification"]["code"] == "replay"
    assert "applied generation 2 (the owned objects' generation annotations)" in status["verification"]["reason"]
    assert names(kube) == B_NAMES


def test_in_directory_mode_a_lost_state_dir_does_not_reopen_replay(
    ship: Callable[..., str], bucket: RecordingStore, verifier: Verifier, tmp_path: Path
) -> None:
    def agent(state_dir: str) -> Agent:
        return Agent(
            bucket,
            channel="prod",
            cluster_id="gitops",
            verifier=verifier,
            applier=DirectoryApplier(tmp_path / "out"),
            state_dir=tmp_path / state_dir,
        )

    ship(A)
    generation_1 = manifest_bytes(bucket)
    agent("s").sync_once(T0 + MINUTE).to_json()
    ship(B, T0 + 10 * MINUTE)
    agent("s").sync_once(T0 + 11 * MINUTE).to_json()
    serve(bucket, generation_1)

    status = agent("lost").sync_once(T0 + 12 * MINUTE).to_json()

    assert status["verification"]["code"] == "replay"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ciliumcidrgroup-ccg-blocklist-b.yaml",
        "ciliumclusterwidenetworkpolicy-ccnp-blocklist-b.yaml",
        "tracingpolicy-tp-blocklist-b.yaml",
    ]


def test_expiry_after_a_restart_with_the_bucket_away_keeps_the_newer_bundles_objects(
    ship: Callable[..., str], bucket: RecordingStore, verifier: Verifier, tmp_path: Path
) -> None:
    def reject_b_policy(obj: dict[str, Any]) -> list[str]:
        return ["spec: invalid"] if obj["metadata"]["name"] == "ccnp-blocklist-b" else []

    with FakeKubeAPI(validator=reject_b_policy) as kube:

        def agent() -> Agent:
            applier = KubeApplier(kube.url, kube.token)
            return Agent(
                bucket,
                channel="prod",
                cluster_id="eks-prod-1",
                verifier=verifier,
                applier=applier,
                state_dir=tmp_path / "s",
                record=ClusterRecord(applier, NS),
            )

        ship(A, ttl=timedelta(hours=1))
        agent().sync_once(T0 + MINUTE).to_json()
        ship(B, T0 + 10 * MINUTE)
        assert agent().sync_once(T0 + 11 * MINUTE).to_json()["last_poll"]["result"] == "apply_failed"
        bucket.down = StorageError("s3://dist: EndpointConnectionError: could not connect")

        status = agent().sync_once(T0 + timedelta(hours=2)).to_json()  # a new process: nothing of B in memory

        assert status["last_poll"]["result"] == "expired"
        assert "kept 2 object(s) of a newer verified bundle" in status["last_poll"]["detail"]
        assert names(kube) == ["ccg-blocklist-b", "tp-blocklist-b"]


def test_an_object_with_its_labels_stripped_and_its_spec_downgraded_is_repaired(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    ship(A)
    agent = make_agent(drift_interval_s=0.05)
    agent.sync_once(T0 + MINUTE).to_json()
    stripped = kube.get_object("TracingPolicy", "tp-blocklist-a")
    assert stripped is not None
    stripped["metadata"]["labels"] = {"team": "someone-else"}
    stripped["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["values"] = ["45.9.9.9/32", "::ffff:45.9.9.9/128"]
    kube.add_object(stripped)
    time.sleep(0.1)

    status = agent.sync_once(T0 + 2 * MINUTE).to_json()

    assert status["last_poll"]["result"] == "repaired" and status["drift"]["repaired"] is True
    assert status["drift"]["missing"] == ["TracingPolicy/tp-blocklist-a"]
    repaired = kube.get_object("TracingPolicy", "tp-blocklist-a")
    assert repaired is not None
    assert repaired["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "cdr-policy"
    assert repaired["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["values"][0] == "45.0.0.0/32"


# -- issue 20, points 5 and 12: every read bounded in depth, size, time and file type ----------------

BOMB = b"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: bomb}
spec:
  a: &a ["x","x","x","x","x","x","x","x","x"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def _signed_with(
    bucket: RecordingStore, signer: LocalSigner, files: dict[str, bytes], *, sizes: dict[str, int] | None = None
) -> None:
    """A manifest listing ``files`` (with ``sizes`` claimed instead of the real ones), signed with the
    channel's key: what a compromised signer ships."""
    from cdr_policy.bundle.manifest import FileEntry, entries_digest, file_entries

    entries = [e.to_json() for e in file_entries(files)]
    for entry in entries:
        entry["size"] = (sizes or {}).get(entry["path"], entry["size"])
    digest = entries_digest([FileEntry(e["path"], e["sha256"], e["size"]) for e in entries])
    for path, data in files.items():
        bucket.inner.put(layout.published_file_key("prod", digest, path), data)
    body = {
        "schema_version": 1,
        "channel": "prod",
        "digest": digest,
        "created_at": "2026-01-10T16:00:00Z",
        "expires_at": "2026-01-13T16:00:00Z",
        "source_digest": "ab" * 32,
        "files": entries,
        "counts": {},
        "settings": {"action": "Post", "mode": "monitor"},
        "generation": 1,
    }
    serve(bucket, jsonio.dumps(sign_document(body, signer)))


def test_a_signed_yaml_alias_bomb_is_refused_at_once(
    kube: FakeKubeAPI, make_agent: Callable[..., Agent], bucket: RecordingStore, signer: LocalSigner
) -> None:
    _signed_with(bucket, signer, {"bomb.yaml": BOMB})
    started = time.monotonic()

    status = make_agent().sync_once(T0 + MINUTE).to_json()

    assert time.monotonic() - started < 10
    assert (status["last_poll"]["result"], status["verification"]["code"]) == ("refused", "inadmissible")
    assert "YAML anchors and aliases are not accepted" in status["verification"]["reason"]
    assert kube.objects() == []


def test_a_signed_manifest_listing_a_gibibyte_is_refused_before_any_file_is_read(
    kube: FakeKubeAPI, make_agent: Callable[..., Agent], bucket: RecordingStore, signer: LocalSigner
) -> None:
    _signed_with(bucket, signer, {"huge.yaml": b"x"}, sizes={"huge.yaml": 1 << 30})
    bucket.puts.clear()

    status = make_agent().sync_once(T0 + MINUTE).to_json()

    assert (status["last_poll"]["result"], status["verification"]["code"]) == ("refused", "malformed")
    assert kube.objects() == []


def test_deeply_nested_json_at_the_manifest_key_is_refused_and_the_agent_goes_on(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore
) -> None:
    serve(bucket, b"[" * 100_000 + b"]" * 100_000)
    agent = make_agent()

    status = agent.sync_once(T0 + MINUTE).to_json()

    assert (status["last_poll"]["result"], status["verification"]["code"]) == ("refused", "malformed")
    assert "nested deeper than 32 levels" in status["verification"]["reason"]
    ship(A, T0 + 2 * MINUTE)
    assert agent.sync_once(T0 + 3 * MINUTE).to_json()["last_poll"]["result"] == "applied"


@pytest.mark.parametrize("where", ["manifest", "bundle file"])
def test_a_fifo_planted_in_a_distribution_folder_never_blocks_the_agent(
    where: str, signer: LocalSigner, verifier: Verifier, tmp_path: Path
) -> None:
    import os

    from cdr_policy.storage import LocalStore

    dist = LocalStore(tmp_path / "dist")
    if where == "bundle file":
        digest = ship_to(dist, tmp_path, signer)
        path = tmp_path / "dist" / layout.published_file_key("prod", digest, "cdr-dynamic-blocklist.yaml")
    else:
        path = tmp_path / "dist" / layout.channel_manifest_key("prod")
        path.parent.mkdir(parents=True)
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    agent = Agent(
        dist,
        channel="prod",
        cluster_id="gitops",
        verifier=verifier,
        applier=DirectoryApplier(tmp_path / "out"),
        state_dir=tmp_path / "s",
    )

    status = agent.sync_once(T0 + MINUTE).to_json()  # would block forever reading the FIFO

    assert status["last_poll"]["result"] == "unreachable"
    assert "is not a regular file" in status["last_poll"]["detail"]


def ship_to(dist: LocalStore, tmp_path: Path, signer: LocalSigner) -> str:
    """Render and publish A into a distribution folder (first publish: no budget)."""
    from cdr_policy.storage import LocalStore

    state = LocalStore(tmp_path / "state")
    digest = render(state, A)
    publish_bundle(state, dist, channel="prod", digest=digest, signer=signer, now=T0, change_budget_percent=50)
    return digest

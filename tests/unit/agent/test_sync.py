"""The sync agent end to end: a distribution store with published bundles, and a cluster (the fake API
server over HTTP) or a directory."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cdr_policy import jsonio, layout
from cdr_policy.admission import Admission, protection
from cdr_policy.agent.applier import Applier
from cdr_policy.agent.directory import DirectoryApplier
from cdr_policy.agent.kube import KubeApplier
from cdr_policy.agent.status import AgentStatus
from cdr_policy.agent.sync import Agent
from cdr_policy.bundle.signing import LocalSigner, Verifier, generate_local_key
from cdr_policy.errors import ConfigError, StorageError
from cdr_policy.hits.aggregate import HitsSection, HitTable
from cdr_policy.hits.tally import Totals
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.stages.publish import publish_bundle
from cdr_policy.storage import LocalStore, Store, StoredObject
from cdr_policy.timeutil import iso, utcnow
from fakes.kube import FakeKubeAPI
from fakes.stores import RecordingStore
from tests.unit.bundle.factory import (
    T0,
    approve,
    ccg,
    ips,
    labels,
    network_bundle,
    plant_signed,
    render,
    sign_document,
    tracing_policy,
    unsigned_document,
)

MINUTE = timedelta(minutes=1)


@pytest.fixture
def bucket(dist: LocalStore) -> RecordingStore:
    return RecordingStore(dist)


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api


@pytest.fixture
def make_agent(bucket: RecordingStore, verifier: Verifier, tmp_path: Path) -> Callable[..., Agent]:
    def make(
        applier: Applier, *, admission: Admission | None = None, channel: str = "prod", state_dir: Path | None = None
    ) -> Agent:
        return Agent(
            bucket,
            channel=channel,
            cluster_id="eks-prod-1",
            verifier=verifier,
            applier=applier,
            state_dir=state_dir or tmp_path / "agent-state",
            admission=admission,
        )

    return make


@pytest.fixture
def ship(
    state: LocalStore, bucket: RecordingStore, signer: LocalSigner, approver: LocalSigner, approvers: Verifier
) -> Callable[..., str]:
    """Render and publish ``files`` to a channel at ``when``; returns the digest."""

    def ship(
        files: dict[str, bytes], when: datetime = T0, *, channel: str = "prod", ttl: timedelta = timedelta(hours=72)
    ) -> str:
        digest = render(state, files, channel=channel, created=when, ttl=ttl)
        approve(state, bucket, approver, digest, channel=channel, now=when)  # not about the change budget
        result = publish_bundle(
            state,
            bucket,
            channel=channel,
            digest=digest,
            signer=signer,
            now=when,
            change_budget_percent=100,
            approvers=approvers,
        )
        assert result.shipped
        return digest

    return ship


def names(kube: FakeKubeAPI, kind: str | None = None) -> list[str]:
    return [o["metadata"]["name"] for o in kube.objects(kind)]


def stored_status(bucket: RecordingStore) -> dict[str, Any]:
    return AgentStatus.parse(bucket.inner.get(layout.status_key("eks-prod-1")).data).to_json()


A = network_bundle(ips(0, 10), tag="a")
B = network_bundle(ips(5, 10), tag="b")
A_NAMES = ["ccg-blocklist-a", "ccnp-blocklist-a", "tp-blocklist-a"]
B_NAMES = ["ccg-blocklist-b", "ccnp-blocklist-b", "tp-blocklist-b"]


def test_applies_a_new_bundle_and_reports(
    kube: FakeKubeAPI,
    ship: Callable[..., str],
    make_agent: Callable[..., Agent],
    bucket: RecordingStore,
    tmp_path: Path,
) -> None:
    digest = ship(A)
    agent = make_agent(KubeApplier(kube.url, kube.token))

    status = agent.sync_once(T0 + MINUTE).to_json()

    assert status["last_poll"]["result"] == "applied"
    assert (status["applied_digest"], status["applied_at"]) == (digest, "2026-01-10T16:01:00Z")
    assert status["applied_expires_at"] == "2026-01-13T16:00:00Z"
    assert status["verification"] == {
        "ok": True,
        "code": None,
        "reason": None,
        "digest": digest,
        "at": "2026-01-10T16:01:00Z",
    }
    assert status["objects"] == {"applied": 3, "deleted": 0} and status["apply_errors"] == []
    assert sorted(names(kube)) == A_NAMES
    for obj in kube.objects():
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "cdr-policy"
        assert obj["metadata"]["labels"]["cdr-policy.io/channel"] == "prod"
    assert stored_status(bucket) == status
    assert AgentStatus.parse((tmp_path / "agent-state" / "status.json").read_bytes()).to_json() == status
    saved = jsonio.loads((tmp_path / "agent-state" / "applied.json").read_bytes())
    assert saved["manifest"]["digest"] == digest


def test_an_unchanged_manifest_costs_one_conditional_read(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    ship(A)
    agent = make_agent(KubeApplier(kube.url, kube.token))
    agent.sync_once(T0 + MINUTE).to_json()
    before = len(kube.operations)

    status = agent.sync_once(T0 + 2 * MINUTE).to_json()

    assert status["last_poll"]["result"] == "unchanged"
    assert len(kube.operations) == before
    assert status["objects"] == {"applied": 3, "deleted": 0}


class ReadCounting(RecordingStore):
    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.reads: list[str] = []

    def get(self, key: str, *, max_bytes: int | None = None) -> StoredObject:
        self.reads.append(key)
        return super().get(key, max_bytes=max_bytes)


def test_a_new_bundle_reads_only_the_files_that_changed_and_a_restart_reads_all(
    kube: FakeKubeAPI, state: LocalStore, signer: LocalSigner, verifier: Verifier, dist: LocalStore, tmp_path: Path
) -> None:
    bucket = ReadCounting(dist)
    a = network_bundle(ips(0, 10), tag="a")
    grown = "cilium-cdr-blocklist-cidrs-001.yaml"
    b = {**a, grown: network_bundle(ips(0, 11), tag="a")[grown]}  # one more address: one file changes

    def ship(files: dict[str, bytes], when: datetime) -> str:
        digest = render(state, files, channel="prod", created=when)
        assert publish_bundle(
            state, bucket, channel="prod", digest=digest, signer=signer, now=when, change_budget_percent=100
        ).shipped
        return digest

    def agent() -> Agent:
        return Agent(
            bucket,
            channel="prod",
            cluster_id="eks-prod-1",
            verifier=verifier,
            applier=KubeApplier(kube.url, kube.token),
            state_dir=tmp_path / "agent-state",
        )

    def bundle_reads(digest: str) -> list[str]:
        folder = layout.published_file_key("prod", digest, "")
        return sorted(k.removeprefix(folder) for k in bucket.reads if k.startswith(folder))

    ship(a, T0)
    first = agent()
    first.sync_once(T0 + MINUTE)
    second_digest = ship(b, T0 + 2 * MINUTE)

    status = first.sync_once(T0 + 3 * MINUTE)

    assert status.last_poll.result == "applied" and status.applied_digest == second_digest
    assert bundle_reads(second_digest) == [grown]
    group = next(o for o in kube.objects("CiliumCIDRGroup"))
    assert len(group["spec"]["externalCIDRs"]) == 11
    # a restarted agent holds no files: a new bundle is read whole (and checked whole)
    bucket.reads.clear()
    third_digest = ship(a, T0 + 4 * MINUTE)
    assert agent().sync_once(T0 + 5 * MINUTE).applied_digest == third_digest
    assert bundle_reads(third_digest) == sorted(a)


def test_a_file_held_from_the_last_bundle_is_checked_like_a_read_one(
    state: LocalStore, signer: LocalSigner, dist: LocalStore
) -> None:
    from cdr_policy.bundle.loader import load_bundle
    from cdr_policy.bundle.manifest import Manifest, VerificationError

    digest = render(state, A, channel="prod", created=T0)
    publish_bundle(state, dist, channel="prod", digest=digest, signer=signer, now=T0, change_budget_percent=100)
    manifest = Manifest.parse(dist.get(layout.channel_manifest_key("prod")).data, "manifest")
    entry = manifest.files[0]

    with pytest.raises(VerificationError, match="file mismatch"):
        load_bundle(dist, manifest, published=True, known={entry.sha256: b"not what was signed"})
    held = load_bundle(dist, manifest, published=True, known={entry.sha256: A[entry.path]})
    assert dict(held.files) == A


def test_apply_order_groups_first_new_before_old_policies_before_groups(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    ship(A)
    agent = make_agent(KubeApplier(kube.url, kube.token))
    agent.sync_once(T0 + MINUTE).to_json()
    kube.operations.clear()
    ship(B, T0 + 10 * MINUTE)

    status = agent.sync_once(T0 + 11 * MINUTE).to_json()

    assert status["objects"] == {"applied": 3, "deleted": 3}
    changes = kube.ops("apply", "delete")
    assert changes == [
        ("apply", "CiliumCIDRGroup", "ccg-blocklist-b"),
        ("apply", "CiliumClusterwideNetworkPolicy", "ccnp-blocklist-b"),
        ("apply", "TracingPolicy", "tp-blocklist-b"),
        ("delete", "TracingPolicy", "tp-blocklist-a"),
        ("delete", "CiliumClusterwideNetworkPolicy", "ccnp-blocklist-a"),
        ("delete", "CiliumCIDRGroup", "ccg-blocklist-a"),
    ]
    assert sorted(names(kube)) == B_NAMES


def test_prunes_only_what_it_owns(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    ship(A)
    agent = make_agent(KubeApplier(kube.url, kube.token))
    agent.sync_once(T0 + MINUTE).to_json()
    kube.add_object(tracing_policy("hand-made") | {"metadata": {"name": "hand-made", "labels": {"team": "sec"}}})
    kube.add_object(
        tracing_policy("other-tool")
        | {"metadata": {"name": "other-tool", "labels": {"app.kubernetes.io/managed-by": "helm"}}}
    )
    kube.add_object(ccg("staging-group", [], channel="staging"))
    ship(B, T0 + 10 * MINUTE)

    agent.sync_once(T0 + 11 * MINUTE).to_json()

    assert names(kube, "TracingPolicy") == ["hand-made", "other-tool", "tp-blocklist-b"]
    assert names(kube, "CiliumCIDRGroup") == ["ccg-blocklist-b", "staging-group"]


def test_a_foreign_object_with_the_same_name_is_left_alone(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    ship(A)
    agent = make_agent(KubeApplier(kube.url, kube.token))
    agent.sync_once(T0 + MINUTE).to_json()
    foreign = tracing_policy("tp-blocklist-b") | {"metadata": {"name": "tp-blocklist-b", "labels": {"team": "sec"}}}
    kube.add_object(foreign)
    digest_a = agent.sync_once(T0 + 2 * MINUTE).to_json()["applied_digest"]
    ship(B, T0 + 10 * MINUTE)

    status = agent.sync_once(T0 + 11 * MINUTE).to_json()

    assert status["last_poll"]["result"] == "apply_failed"
    assert status["apply_errors"] == [
        {
            "kind": "TracingPolicy",
            "name": "tp-blocklist-b",
            "namespace": None,
            "action": "apply",
            "error": "exists but is not managed by cdr-policy for channel prod: left untouched",
        }
    ]
    stored = kube.get_object("TracingPolicy", "tp-blocklist-b")
    assert stored is not None
    assert stored["metadata"]["labels"] == {"team": "sec"}
    assert set(A_NAMES) <= set(names(kube))  # nothing pruned while something failed
    assert status["applied_digest"] == digest_a


def test_one_rejected_object_does_not_stop_the_others_and_is_retried(
    ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    reject = {"on": True}

    def validator(obj: dict[str, Any]) -> list[str]:
        bad = reject["on"] and obj["metadata"]["name"] == "ccnp-blocklist-b"
        return ["spec.egressDeny[0].toCIDRSet[0]: invalid"] if bad else []

    with FakeKubeAPI(validator=validator) as kube:
        digest_a = ship(A)
        agent = make_agent(KubeApplier(kube.url, kube.token))
        agent.sync_once(T0 + MINUTE).to_json()
        digest_b = ship(B, T0 + 10 * MINUTE)

        failed = agent.sync_once(T0 + 11 * MINUTE).to_json()

        assert failed["last_poll"]["result"] == "apply_failed"
        assert [(e["name"], e["action"]) for e in failed["apply_errors"]] == [("ccnp-blocklist-b", "apply")]
        assert "rejected by the API server" in failed["apply_errors"][0]["error"]
        assert failed["objects"] == {"applied": 2, "deleted": 0}
        assert failed["applied_digest"] == digest_a
        assert sorted(names(kube)) == sorted(A_NAMES + ["ccg-blocklist-b", "tp-blocklist-b"])

        reject["on"] = False
        retried = agent.sync_once(T0 + 12 * MINUTE).to_json()  # same manifest: fetched again, not skipped by ETag

        assert retried["last_poll"]["result"] == "applied"
        assert (retried["applied_digest"], retried["apply_errors"]) == (digest_b, [])
        assert sorted(names(kube)) == B_NAMES


def tamper_file(bucket: RecordingStore, digest: str) -> None:
    key = layout.published_file_key("prod", digest, "cilium-cdr-blocklist-cidrs-001.yaml")
    bucket.inner.put(key, bucket.inner.get(key).data.replace(b"45.0.0.5/32", b"99.0.0.5/32"))  # same size


def tamper_manifest(bucket: RecordingStore, digest: str) -> None:
    key = layout.channel_manifest_key("prod")
    manifest = jsonio.loads(bucket.inner.get(key).data)
    manifest["settings"]["action"] = "Sigkill"
    bucket.inner.put(key, jsonio.dumps_pretty(manifest))


def resign_with(bucket: RecordingStore, manifest: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "attacker.pem"
    if not path.exists():
        generate_local_key(path)
    bucket.inner.put(
        layout.channel_manifest_key("prod"),
        jsonio.dumps_pretty(sign_document(manifest, LocalSigner.from_file(path))),
    )


def other_key(bucket: RecordingStore, digest: str, tmp_path: Path) -> None:
    resign_with(
        bucket, unsigned_document(jsonio.loads(bucket.inner.get(layout.channel_manifest_key("prod")).data)), tmp_path
    )


def wrong_digest(bucket: RecordingStore, digest: str, signer: LocalSigner) -> None:
    manifest = unsigned_document(jsonio.loads(bucket.inner.get(layout.channel_manifest_key("prod")).data))
    manifest["digest"] = "f" * 64
    bucket.inner.put(layout.channel_manifest_key("prod"), jsonio.dumps_pretty(sign_document(manifest, signer)))


def unsigned_manifest(bucket: RecordingStore, digest: str) -> None:
    manifest = unsigned_document(jsonio.loads(bucket.inner.get(layout.channel_manifest_key("prod")).data))
    bucket.inner.put(layout.channel_manifest_key("prod"), jsonio.dumps_pretty(manifest))


# case -> (tamper(bucket, digest, signer, tmp_path), the refusal's code, its message)
Tamper = Callable[[RecordingStore, str, LocalSigner, Path], None]
TAMPERING: dict[str, tuple[Tamper, str, str]] = {
    "file changed": (
        lambda bucket, digest, signer, tmp: tamper_file(bucket, digest),
        "file_mismatch",
        "cilium-cdr-blocklist-cidrs-001.yaml has sha256",
    ),
    "manifest changed": (
        lambda bucket, digest, signer, tmp: tamper_manifest(bucket, digest),
        "bad_signature",
        "bad signature",
    ),
    "signed by another key": (
        lambda bucket, digest, signer, tmp: other_key(bucket, digest, tmp),
        "bad_signature",
        "does not verify with the trusted key",
    ),
    "digest mismatch": (
        lambda bucket, digest, signer, tmp: wrong_digest(bucket, digest, signer),
        "digest_mismatch",
        "digest mismatch",
    ),
    "unsigned": (
        lambda bucket, digest, signer, tmp: unsigned_manifest(bucket, digest),
        "missing_signature",
        "missing signature",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_a_tampered_bundle_is_refused_and_the_last_good_state_kept(
    case: str,
    kube: FakeKubeAPI,
    ship: Callable[..., str],
    make_agent: Callable[..., Agent],
    bucket: RecordingStore,
    signer: LocalSigner,
    tmp_path: Path,
) -> None:
    tamper, code, message = TAMPERING[case]
    digest_a = ship(A)
    agent = make_agent(KubeApplier(kube.url, kube.token))
    agent.sync_once(T0 + MINUTE).to_json()
    kube.operations.clear()
    digest_b = ship(B, T0 + 10 * MINUTE)
    tamper(bucket, digest_b, signer, tmp_path)

    status = agent.sync_once(T0 + 11 * MINUTE).to_json()

    assert status["last_poll"]["result"] == "refused"
    assert status["verification"]["ok"] is False
    assert status["verification"]["code"] == code
    assert message in status["verification"]["reason"]
    assert "nothing applied" in status["last_poll"]["detail"]
    assert kube.ops("apply", "delete") == []
    assert sorted(names(kube)) == A_NAMES
    assert status["applied_digest"] == digest_a
    assert stored_status(bucket) == status


def test_an_expired_bundle_is_refused(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    digest_a = ship(A)
    agent = make_agent(KubeApplier(kube.url, kube.token))
    agent.sync_once(T0 + MINUTE).to_json()
    ship(B, T0 + 10 * MINUTE, ttl=timedelta(hours=1))

    status = agent.sync_once(T0 + 2 * timedelta(hours=1)).to_json()

    assert (status["last_poll"]["result"], status["verification"]["code"]) == ("refused", "expired")
    assert "expired at 2026-01-10T17:10:00Z" in status["verification"]["reason"]
    assert (status["applied_digest"], sorted(names(kube))) == (digest_a, A_NAMES)


def test_a_tampered_first_bundle_leaves_the_cluster_untouched(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore
) -> None:
    tamper_file(bucket, ship(A))
    agent = make_agent(KubeApplier(kube.url, kube.token))

    status = agent.sync_once(T0 + MINUTE).to_json()

    assert status["last_poll"]["result"] == "refused" and status["applied_digest"] is None
    assert kube.objects() == [] and kube.ops("apply", "delete") == []


def test_another_channels_manifest_is_refused(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore
) -> None:
    ship(network_bundle(ips(0, 10), channel="staging"), channel="staging")
    bucket.inner.put(layout.channel_manifest_key("prod"), bucket.inner.get(layout.channel_manifest_key("staging")).data)
    agent = make_agent(KubeApplier(kube.url, kube.token))

    status = agent.sync_once(T0 + MINUTE).to_json()

    assert status["verification"]["code"] == "wrong_channel" and kube.objects() == []


def test_a_replayed_older_manifest_is_refused(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore
) -> None:
    ship(A)
    old_manifest = bucket.inner.get(layout.channel_manifest_key("prod")).data
    agent = make_agent(KubeApplier(kube.url, kube.token))
    agent.sync_once(T0 + MINUTE).to_json()
    digest_b = ship(B, T0 + 10 * MINUTE)
    agent.sync_once(T0 + 11 * MINUTE).to_json()
    bucket.inner.put(layout.channel_manifest_key("prod"), old_manifest)

    status = agent.sync_once(T0 + 12 * MINUTE).to_json()

    assert status["verification"]["code"] == "replay"
    assert (status["applied_digest"], sorted(names(kube))) == (digest_b, B_NAMES)


def test_unsupported_objects_refuse_the_bundle(
    kube: FakeKubeAPI, bucket: RecordingStore, signer: LocalSigner, make_agent: Callable[..., Agent]
) -> None:
    configmap = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: default\n"
    plant_signed(bucket.inner, {**A, "extra.yaml": configmap}, signer)
    status = make_agent(KubeApplier(kube.url, kube.token)).sync_once(T0 + MINUTE).to_json()
    assert status["verification"]["code"] == "inadmissible"
    assert (
        "extra.yaml, document 1 at kind: not one of the kinds our compiler writes" in status["verification"]["reason"]
    )
    assert kube.objects() == []


def test_unreachable_bucket_keeps_the_last_good_state(
    kube: FakeKubeAPI,
    ship: Callable[..., str],
    make_agent: Callable[..., Agent],
    bucket: RecordingStore,
    tmp_path: Path,
) -> None:
    digest_a = ship(A)
    agent = make_agent(KubeApplier(kube.url, kube.token))
    agent.sync_once(T0 + MINUTE).to_json()
    kube.operations.clear()
    bucket.down = StorageError("s3://dist: EndpointConnectionError: could not connect")

    status = agent.sync_once(T0 + 2 * MINUTE).to_json()

    assert status["last_poll"]["result"] == "unreachable"
    assert "could not connect" in status["last_poll"]["detail"]
    assert status["applied_digest"] == digest_a and status["verification"]["ok"] is True
    assert kube.operations == [] and sorted(names(kube)) == A_NAMES
    assert AgentStatus.parse((tmp_path / "agent-state" / "status.json").read_bytes()).to_json() == status


def test_files_unreachable_after_the_manifest_is_retried(
    kube: FakeKubeAPI,
    ship: Callable[..., str],
    make_agent: Callable[..., Agent],
    bucket: RecordingStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ship(A)
    agent = make_agent(KubeApplier(kube.url, kube.token))
    real_get = bucket.get

    def flaky_get(key: str, **kwargs: Any) -> StoredObject:
        if "/bundles/" in key:
            raise StorageError("s3://dist: SlowDown")
        return real_get(key, **kwargs)

    monkeypatch.setattr(bucket, "get", flaky_get)
    assert agent.sync_once(T0 + MINUTE).to_json()["last_poll"]["result"] == "unreachable"
    monkeypatch.setattr(bucket, "get", real_get)
    assert agent.sync_once(T0 + 2 * MINUTE).to_json()["last_poll"]["result"] == "applied"


def test_an_expired_applied_bundle_is_removed_even_when_the_bucket_is_unreachable(
    kube: FakeKubeAPI,
    ship: Callable[..., str],
    make_agent: Callable[..., Agent],
    bucket: RecordingStore,
    tmp_path: Path,
) -> None:
    digest = ship(A)
    agent = make_agent(KubeApplier(kube.url, kube.token))
    agent.sync_once(T0 + MINUTE).to_json()
    kube.add_object(ccg("hand-made", []) | {"metadata": {"name": "hand-made"}})
    bucket.down = StorageError("s3://dist: unreachable")

    status = agent.sync_once(T0 + timedelta(hours=73)).to_json()

    assert status["last_poll"]["result"] == "expired"
    assert (
        f"applied bundle {digest[:12]} expired at 2026-01-13T16:00:00Z: removed 3 object(s)"
        in (status["last_poll"]["detail"])
    )
    assert status["applied_digest"] is None and status["objects"] == {"applied": 0, "deleted": 3}
    assert names(kube) == ["hand-made"]
    assert not (tmp_path / "agent-state" / "applied.json").exists()
    assert kube.ops("delete") == [
        ("delete", "TracingPolicy", "tp-blocklist-a"),
        ("delete", "CiliumClusterwideNetworkPolicy", "ccnp-blocklist-a"),
        ("delete", "CiliumCIDRGroup", "ccg-blocklist-a"),
    ]

    bucket.down = None
    again = agent.sync_once(T0 + timedelta(hours=74)).to_json()
    assert (again["last_poll"]["result"], again["verification"]["code"]) == ("refused", "expired")
    assert names(kube) == ["hand-made"]


def test_the_last_good_state_survives_a_restart_and_a_tampered_one_does_not(
    kube: FakeKubeAPI,
    ship: Callable[..., str],
    make_agent: Callable[..., Agent],
    bucket: RecordingStore,
    tmp_path: Path,
) -> None:
    digest = ship(A)
    make_agent(KubeApplier(kube.url, kube.token)).sync_once(T0 + MINUTE).to_json()
    bucket.down = StorageError("down")

    restarted = make_agent(KubeApplier(kube.url, kube.token)).sync_once(T0 + 2 * MINUTE).to_json()
    assert (restarted["applied_digest"], restarted["applied_at"]) == (digest, "2026-01-10T16:01:00Z")

    path = tmp_path / "agent-state" / "applied.json"
    path.write_bytes(path.read_bytes().replace(b'"Post"', b'"Sigkill"'))
    tampered = make_agent(KubeApplier(kube.url, kube.token)).sync_once(T0 + 3 * MINUTE).to_json()
    assert tampered["applied_digest"] is None


def test_the_crd_check_runs_before_apply_and_is_retried(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent], crds_dir: Path
) -> None:
    """Objects the cluster's CRDs do not serve are refused (nothing applied) and checked again on
    the next poll, so a cluster whose CRDs are fixed takes the same bundle."""
    digest = ship(A)
    old = SchemaSet.from_dir(crds_dir / "cilium-v1.16.5")  # no cilium.io/v2 CiliumCIDRGroup
    agent = make_agent(KubeApplier(kube.url, kube.token), admission=Admission(protection(where="x"), old))

    refused = agent.sync_once(T0 + MINUTE).to_json()
    assert (refused["last_poll"]["result"], refused["verification"]["code"]) == ("refused", "check_failed")
    assert "the cluster's CRDs refuse it" in refused["verification"]["reason"]
    assert kube.objects() == []

    agent.admission = Admission(protection(where="x"), SchemaSet.from_dir(crds_dir))  # the CRDs upgraded
    applied = agent.sync_once(T0 + 2 * MINUTE).to_json()
    assert (applied["last_poll"]["result"], applied["applied_digest"]) == ("applied", digest)


def test_no_manifest_yet(kube: FakeKubeAPI, make_agent: Callable[..., Agent], bucket: RecordingStore) -> None:
    status = make_agent(KubeApplier(kube.url, kube.token)).sync_once(T0).to_json()
    assert status["last_poll"]["result"] == "no_manifest"
    assert status["verification"]["ok"] is None and status["applied_digest"] is None
    assert stored_status(bucket) == status


def test_an_unreachable_cluster_changes_nothing_and_is_retried(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent]
) -> None:
    ship(A)
    applier = KubeApplier(kube.url, kube.token)
    agent = make_agent(applier)
    kube.fail("list", 503, times=3)

    status = agent.sync_once(T0 + MINUTE).to_json()

    assert status["last_poll"]["result"] == "unreachable"
    assert "cannot read the generation of the objects applied here" in status["last_poll"]["detail"]
    assert kube.objects() == []
    assert agent.sync_once(T0 + 2 * MINUTE).to_json()["last_poll"]["result"] == "applied"


def test_directory_mode_writes_labelled_objects_and_prunes(
    ship: Callable[..., str], make_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    ship({"cdr-dynamic-blocklist.yaml": A["cdr-dynamic-blocklist.yaml"]})
    agent = make_agent(DirectoryApplier(out))
    (out / "hand-written.yaml").parent.mkdir(parents=True, exist_ok=True)
    (out / "hand-written.yaml").write_bytes(
        A["cdr-dynamic-blocklist.yaml"]
        .replace(b"tp-blocklist-a", b"tp-hand")
        .replace(b"app.kubernetes.io/managed-by: cdr-policy", b"team: sec")
    )

    agent.sync_once(T0 + MINUTE).to_json()
    written = (out / "tracingpolicy-tp-blocklist-a.yaml").read_text()
    assert "app.kubernetes.io/managed-by: cdr-policy" in written and "cdr-policy.io/generation" in written

    ship(B, T0 + 10 * MINUTE)
    agent.sync_once(T0 + 11 * MINUTE).to_json()
    assert sorted(p.name for p in out.iterdir()) == [
        "ciliumcidrgroup-ccg-blocklist-b.yaml",
        "ciliumclusterwidenetworkpolicy-ccnp-blocklist-b.yaml",
        "hand-written.yaml",
        "tracingpolicy-tp-blocklist-b.yaml",
    ]


def test_run_polls_until_stopped(
    ship: Callable[..., str], make_agent: Callable[..., Agent], tmp_path: Path, bucket: RecordingStore
) -> None:
    ship(A, utcnow())  # run() polls with the real clock
    agent = make_agent(DirectoryApplier(tmp_path / "out"))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(0.01, stop))
    thread.start()
    try:
        for _ in range(500):
            if bucket.polls >= 3:
                break
            threading.Event().wait(0.01)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert stored_status(bucket)["last_poll"]["result"] == "unchanged"
    assert len(list((tmp_path / "out").iterdir())) == 3


class _Waits(threading.Event):
    """A stop event that records each wait of the loop and stops it after ``polls`` polls."""

    def __init__(self, polls: int) -> None:
        super().__init__()
        self.polls = polls
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        if len(self.waits) >= self.polls:
            self.set()
        return self.is_set()


def test_run_jitters_each_wait_within_its_bound(
    ship: Callable[..., str], make_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    ship(A, utcnow())
    agent = make_agent(DirectoryApplier(tmp_path / "out"))
    waits = {}
    for seed in (1, 2):
        stop = _Waits(polls=40)
        agent.run(10.0, stop, jitter=0.1, rng=random.Random(seed))
        waits[seed] = stop.waits
    for seed_waits in waits.values():
        # each poll takes a few ms of the 9..11 s: the wait is what is left of the jittered interval
        assert all(8.5 < w <= 11.0 for w in seed_waits)
        assert max(seed_waits) - min(seed_waits) > 1.0  # spread over the band, not one fixed value
    assert waits[1] != waits[2]  # two agents started together do not poll in step


def test_run_without_jitter_keeps_the_interval(
    ship: Callable[..., str], make_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    ship(A, utcnow())
    stop = _Waits(polls=5)
    make_agent(DirectoryApplier(tmp_path / "out")).run(10.0, stop, jitter=0.0)
    assert all(9.5 < w <= 10.0 for w in stop.waits)


@pytest.mark.parametrize(("interval", "jitter"), [(0.0, 0.1), (10.0, 1.0), (10.0, -0.1)])
def test_run_refuses_a_jitter_outside_its_bounds(
    interval: float, jitter: float, make_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError):
        make_agent(DirectoryApplier(tmp_path / "out")).run(interval, _Waits(polls=1), jitter=jitter)


@pytest.mark.parametrize("kwargs", [{"channel": "Prod"}, {"channel": "prod", "cluster_id": "../x"}])
def test_invalid_identity_is_refused(
    kwargs: dict[str, str], bucket: RecordingStore, verifier: Verifier, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError):
        Agent(
            bucket,
            cluster_id=kwargs.get("cluster_id", "c1"),
            channel=kwargs["channel"],
            verifier=verifier,
            applier=DirectoryApplier(tmp_path),
            state_dir=tmp_path / "s",
        )


def test_labels_helper_matches_agent_ownership() -> None:
    assert labels("prod") == {"app.kubernetes.io/managed-by": "cdr-policy", "cdr-policy.io/channel": "prod"}


def test_an_in_place_tetragon_update_is_applied_and_warned_about(
    kube: FakeKubeAPI, ship: Callable[..., str], make_agent: Callable[..., Agent], caplog: pytest.LogCaptureFixture
) -> None:
    ship({"t.yaml": A["cdr-dynamic-blocklist.yaml"]})
    agent = make_agent(KubeApplier(kube.url, kube.token))
    agent.sync_once(T0 + MINUTE).to_json()
    # same name, new content
    changed = A["cdr-dynamic-blocklist.yaml"].replace(b"45.0.0.1/", b"45.0.9.1/")  # and its IPv4-mapped twin
    ship({"t.yaml": changed}, T0 + 10 * MINUTE)

    status = agent.sync_once(T0 + 11 * MINUTE).to_json()

    assert status["last_poll"]["result"] == "applied"
    stored = kube.get_object("TracingPolicy", "tp-blocklist-a")
    assert stored is not None
    assert "45.0.9.1/32" in str(stored["spec"])
    assert any("tetragon#4322" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_the_bucket_status_is_written_when_it_says_something_new_or_the_heartbeat_is_due(
    ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore, tmp_path: Path
) -> None:
    ship(A)
    agent = make_agent(DirectoryApplier(tmp_path / "out"))
    status_key = layout.status_key("eks-prod-1")
    agent.sync_once(T0).to_json()  # applied: written
    agent.sync_once(T0 + timedelta(minutes=1)).to_json()  # first unchanged: new result, written
    agent.sync_once(T0 + timedelta(minutes=2)).to_json()  # nothing new: only the local status
    assert bucket.puts.count(status_key) == 2 and bucket.polls == 3
    assert stored_status(bucket)["last_poll"]["at"] == iso(T0 + timedelta(minutes=1))
    agent.status_heartbeat_s = 0  # the heartbeat is due
    agent.sync_once(T0 + timedelta(minutes=3)).to_json()
    assert bucket.puts.count(status_key) == 3
    assert stored_status(bucket)["last_poll"]["at"] == iso(T0 + timedelta(minutes=3))


def test_new_hit_counts_ride_on_the_next_write_but_hits_appearing_are_news(
    ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore, tmp_path: Path
) -> None:
    ship(A)
    agent = make_agent(DirectoryApplier(tmp_path / "out"))
    status_key = layout.status_key("eks-prod-1")
    agent.sync_once(T0).to_json()  # applied: written
    agent.sync_once(T0 + timedelta(minutes=1)).to_json()  # first unchanged: written
    read = iter(range(1, 10))

    def hits(now: datetime) -> HitsSection:
        return HitTable(totals=Totals(read=next(read))).to_section(now)

    agent.hits = hits
    agent.sync_once(T0 + timedelta(minutes=2)).to_json()  # hits appear: written
    assert bucket.puts.count(status_key) == 3 and stored_status(bucket)["hits"]["totals"]["read"] == 1
    agent.sync_once(T0 + timedelta(minutes=3)).to_json()  # new counts alone: not news
    assert bucket.puts.count(status_key) == 3
    agent.status_heartbeat_s = 0  # the heartbeat carries them
    agent.sync_once(T0 + timedelta(minutes=4)).to_json()
    assert bucket.puts.count(status_key) == 4 and stored_status(bucket)["hits"]["totals"]["read"] == 3


def test_a_clean_drift_check_is_not_news_for_the_bucket(
    ship: Callable[..., str], make_agent: Callable[..., Agent], bucket: RecordingStore, tmp_path: Path
) -> None:
    ship(A)
    agent = make_agent(DirectoryApplier(tmp_path / "out"))
    agent.drift_interval_s = 0.0  # every unchanged poll compares the objects
    status_key = layout.status_key("eks-prod-1")
    agent.sync_once(T0).to_json()  # applied: written
    agent.sync_once(T0 + timedelta(minutes=1)).to_json()  # first unchanged, first drift check: written
    for minute in range(2, 7):
        status = agent.sync_once(T0 + timedelta(minutes=minute)).to_json()
        assert status["drift"]["checked_at"] == iso(T0 + timedelta(minutes=minute))
    # one conditional GET per poll; the drift checks found nothing new to say: no status write
    assert bucket.puts.count(status_key) == 2 and bucket.polls == 7
    (tmp_path / "out" / "tracingpolicy-tp-blocklist-a.yaml").unlink()  # drift: news again
    assert agent.sync_once(T0 + timedelta(minutes=7)).to_json()["last_poll"]["result"] == "repaired"
    assert bucket.puts.count(status_key) == 3

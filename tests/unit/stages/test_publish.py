"""Publishing: checks before shipping, files before the manifest, the change budget, idempotency,
refresh and rollback."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdr_policy import jsonio, layout
from cdr_policy.bundle.manifest import Manifest
from cdr_policy.bundle.signing import LocalSigner, Verifier, verify_manifest
from cdr_policy.errors import BundleError, StorageError
from cdr_policy.observability import metrics
from cdr_policy.stages.publish import PublishResult, publish_bundle, rollback
from cdr_policy.storage import LocalStore, NotFound, PreconditionFailed, S3Store, Store
from cdr_policy.timeutil import iso
from fakes.stores import RecordingStore
from tests.unit.bundle.factory import T0, TTL, approve, behaviour_policy, files_of, ips, network_bundle, render

HOUR = timedelta(hours=1)


def publish(
    state: Store,
    dist: Store,
    signer: LocalSigner,
    digest: str,
    *,
    now: datetime = T0,
    budget: int = 50,
    approver: tuple[LocalSigner, Verifier] | None = None,
    **kwargs: Any,
) -> PublishResult:
    """Publish as the stage does; with ``approver`` (the approver's key pair), the approver granted
    this bundle over what the channel ships first."""
    if approver is not None:
        approve(state, dist, approver[0], digest, now=now)
        kwargs["approvers"] = approver[1]
    return publish_bundle(
        state,
        dist,
        channel="prod",
        digest=digest,
        signer=signer,
        now=now,
        change_budget_percent=budget,
        **kwargs,
    )


def current(dist: Store) -> dict[str, Any]:
    doc: dict[str, Any] = jsonio.loads(dist.get(layout.channel_manifest_key("prod")).data)
    return doc


@pytest.fixture
def recorder(dist: LocalStore) -> RecordingStore:
    return RecordingStore(dist)


def test_first_publish_copies_files_then_history_then_manifest(
    state: LocalStore, recorder: RecordingStore, signer: LocalSigner, verifier: Verifier
) -> None:
    files = network_bundle(ips(0, 10))
    digest = render(state, files)

    result = publish(state, recorder, signer, digest)

    assert result.status == "published" and result.shipped
    assert result.previous_digest is None
    file_keys = sorted(layout.published_file_key("prod", digest, p) for p in files)
    history = layout.history_key("prod", iso(T0), digest)
    assert sorted(recorder.puts[:-2]) == file_keys
    assert recorder.puts[-2:] == [layout.channel_manifest_key("prod"), history]  # history only once it is out
    assert (result.manifest_key, result.history_key) == (layout.channel_manifest_key("prod"), history)
    signed = current(recorder)
    verify_manifest(Manifest.from_json(signed), verifier, now=T0)
    assert (signed["digest"], signed["generation"], result.generation) == (digest, 1, 1)
    assert "approval" not in signed and "rollback_of" not in signed
    assert jsonio.loads(recorder.get(history).data) == signed
    assert {p: recorder.get(layout.published_file_key("prod", digest, p)).data for p in files} == files
    assert "BundlesPublished" in metrics.metric_set


def test_publishing_the_current_bundle_again_writes_nothing(
    state: LocalStore, recorder: RecordingStore, signer: LocalSigner
) -> None:
    digest = render(state, network_bundle(ips(0, 10)))
    publish(state, recorder, signer, digest)
    recorder.puts.clear()

    result = publish(state, recorder, signer, digest, now=T0 + timedelta(hours=1))

    assert result.status == "unchanged" and not result.shipped
    assert recorder.puts == []


def test_current_bundle_is_refreshed_after_half_its_lifetime(
    state: LocalStore, recorder: RecordingStore, signer: LocalSigner, verifier: Verifier
) -> None:
    files = network_bundle(ips(0, 10))
    digest = render(state, files)
    publish(state, recorder, signer, digest)
    recorder.puts.clear()
    later = T0 + TTL / 2

    result = publish(state, recorder, signer, digest, now=later)

    assert result.status == "refreshed"
    assert recorder.puts == [layout.channel_manifest_key("prod"), layout.history_key("prod", iso(later), digest)]
    signed = current(recorder)
    assert (signed["created_at"], signed["expires_at"]) == (iso(later), iso(later + TTL))
    assert signed["generation"] == 2
    verify_manifest(Manifest.from_json(signed), verifier, now=T0 + TTL + timedelta(hours=1))


def test_manifest_is_stamped_at_publish_time_with_the_rendered_lifetime(
    state: LocalStore, dist: LocalStore, signer: LocalSigner
) -> None:
    digest = render(state, network_bundle(ips(0, 10)), created=T0 - timedelta(days=5), ttl=timedelta(hours=24))
    publish(state, dist, signer, digest)
    assert (current(dist)["created_at"], current(dist)["expires_at"]) == (
        iso(T0),
        iso(T0 + timedelta(hours=24)),
    )


def test_a_bundle_admission_refuses_is_not_shipped(
    state: LocalStore, recorder: RecordingStore, signer: LocalSigner
) -> None:
    files = network_bundle([*ips(0, 10), "10.0.0.0/8"])
    digest = render(state, files)

    result = publish(state, recorder, signer, digest)

    assert result.status == "refused" and not result.shipped
    assert result.reason == "admission refused the bundle (3 problem(s))"  # the group, DAddr and its twin
    assert all(
        "blocks a protected range: inside never-block range: private range (RFC 1918)" in e for e in result.errors
    )
    assert recorder.puts == []
    assert "BundlesRefused" in metrics.metric_set


def test_a_tampered_rendered_file_is_an_error(state: LocalStore, dist: LocalStore, signer: LocalSigner) -> None:
    digest = render(state, network_bundle(ips(0, 10)))
    state.put(layout.bundle_file_key(digest, "cilium-cdr-blocklist.yaml"), b"kind: Evil\n")
    with pytest.raises(BundleError, match="cilium-cdr-blocklist.yaml"):
        publish(state, dist, signer, digest)
    assert dist.list("") == []


def test_bundle_for_another_channel_or_unknown_digest_is_an_error(
    state: LocalStore, dist: LocalStore, signer: LocalSigner
) -> None:
    digest = render(state, network_bundle(ips(0, 10), channel="staging"), channel="staging")
    with pytest.raises(BundleError, match="rendered for channel staging"):
        publish(state, dist, signer, digest)
    with pytest.raises(NotFound):
        publish(state, dist, signer, "e" * 64)


def test_change_over_budget_is_held_and_alarmed(
    state: LocalStore, recorder: RecordingStore, signer: LocalSigner
) -> None:
    publish(state, recorder, signer, render(state, network_bundle(ips(0, 100), tag="a")))
    recorder.puts.clear()
    digest = render(state, network_bundle(ips(40, 100), tag="b"))  # 40 added, 40 removed: 80%

    result = publish(state, recorder, signer, digest, now=T0 + timedelta(hours=1))

    assert result.status == "held" and not result.shipped
    assert "80.0%, over the change budget of 50%" in result.reason
    assert result.budget is not None and result.budget.to_json() == {
        "budget_percent": 50,
        "min_changes": 20,
        "engines": {
            "tetragon": {"current": 100, "proposed": 100, "added": 40, "removed": 40, "percent": 80.0},
            "cilium": {"current": 100, "proposed": 100, "added": 40, "removed": 40, "percent": 80.0},
            "programs": {"current": 0, "proposed": 0, "added": 0, "removed": 0, "percent": 0.0},
        },
        "shrink": [],
        "vetted": False,
    }
    assert recorder.puts == []
    assert current(recorder)["digest"] != digest
    assert "BundlesHeld" in metrics.metric_set


def test_an_approved_change_is_published_despite_the_budget(
    state: LocalStore, dist: LocalStore, signer: LocalSigner, approver_pair: tuple[LocalSigner, Verifier]
) -> None:
    publish(state, dist, signer, render(state, network_bundle(ips(0, 100), tag="a")))
    digest = render(state, network_bundle(ips(1000, 100), tag="b"))

    result = publish(state, dist, signer, digest, now=T0 + HOUR, approver=approver_pair)

    assert result.status == "published" and current(dist)["digest"] == digest
    approval = current(dist)["approval"]
    assert (approval["previous_digest"], approval["approved_at"]) == (result.previous_digest, iso(T0 + HOUR))
    assert approval["approver"] == approver_pair[0].key_id and len(approval["grant"]) == 64


def test_a_refresh_keeps_the_approval_for_agents_that_missed_it(
    state: LocalStore, dist: LocalStore, signer: LocalSigner, approver_pair: tuple[LocalSigner, Verifier]
) -> None:
    publish(state, dist, signer, render(state, network_bundle(ips(0, 100), tag="a")))
    digest = render(state, network_bundle(ips(1000, 100), tag="b"))
    publish(state, dist, signer, digest, now=T0 + HOUR, approver=approver_pair)
    approval = current(dist)["approval"]

    refreshed = publish(state, dist, signer, digest, now=T0 + HOUR + TTL)

    assert refreshed.status == "refreshed" and current(dist)["generation"] == 3
    assert current(dist)["approval"] == approval


def test_an_approval_is_recorded_only_when_the_budget_needed_it(
    state: LocalStore, dist: LocalStore, signer: LocalSigner, approver_pair: tuple[LocalSigner, Verifier]
) -> None:
    publish(state, dist, signer, render(state, network_bundle(ips(0, 100), tag="a")))
    digest = render(state, network_bundle(ips(10, 100), tag="b"))
    assert publish(state, dist, signer, digest, now=T0 + HOUR, approver=approver_pair).status == "published"
    assert "approval" not in current(dist)


def test_change_within_budget_is_published_with_its_measure(
    state: LocalStore, dist: LocalStore, signer: LocalSigner
) -> None:
    publish(state, dist, signer, render(state, network_bundle(ips(0, 100), tag="a")))
    digest = render(state, network_bundle(ips(10, 100), tag="b"))  # 10 added, 10 removed: 20%

    result = publish(state, dist, signer, digest, now=T0 + timedelta(hours=1))

    assert result.status == "published" and result.budget is not None
    tetragon = result.budget.to_json()["engines"]["tetragon"]
    assert (tetragon["added"], tetragon["removed"], tetragon["percent"]) == (10, 10, 20.0)


def test_first_publish_is_exempt_from_the_budget(state: LocalStore, dist: LocalStore, signer: LocalSigner) -> None:
    result = publish(state, dist, signer, render(state, network_bundle(ips(0, 5000))), budget=1)
    assert result.status == "published" and result.budget is None


def test_unreadable_current_manifest_holds_unless_approved(
    state: LocalStore, dist: LocalStore, signer: LocalSigner, approver_pair: tuple[LocalSigner, Verifier]
) -> None:
    dist.put(layout.channel_manifest_key("prod"), b"{ not json")
    digest = render(state, network_bundle(ips(0, 10)))

    held = publish(state, dist, signer, digest)
    assert held.status == "held" and "unusable" in held.reason

    assert publish(state, dist, signer, digest, approver=approver_pair).status == "published"


def test_current_bundle_files_gone_holds_unless_approved(
    state: LocalStore, dist: LocalStore, signer: LocalSigner
) -> None:
    first = render(state, network_bundle(ips(0, 10), tag="a"))
    publish(state, dist, signer, first)
    dist.delete(layout.published_file_key("prod", first, "cilium-cdr-blocklist.yaml"))
    digest = render(state, network_bundle(ips(0, 11), tag="b"))

    held = publish(state, dist, signer, digest, now=T0 + timedelta(hours=1))
    assert held.status == "held" and "cannot compare" in held.reason


def test_going_back_to_an_earlier_bundle_publishes_it_again(
    state: LocalStore, dist: LocalStore, signer: LocalSigner, verifier: Verifier
) -> None:
    a = render(state, network_bundle(ips(0, 10), tag="a"))
    b = render(state, network_bundle(ips(0, 11), tag="b"), created=T0 + timedelta(minutes=15))
    publish(state, dist, signer, a)
    publish(state, dist, signer, b, now=T0 + timedelta(minutes=20))

    result = publish(state, dist, signer, a, now=T0 + timedelta(minutes=40))

    assert result.status == "published" and result.previous_digest == b
    assert current(dist)["created_at"] == iso(T0 + timedelta(minutes=40))


def test_rollback_ships_an_earlier_generation_as_a_new_one(
    state: LocalStore, recorder: RecordingStore, signer: LocalSigner, verifier: Verifier
) -> None:
    a = render(state, network_bundle(ips(0, 10), tag="a"), ttl=timedelta(hours=24))
    b = render(state, network_bundle(ips(0, 11), tag="b"))
    publish(state, recorder, signer, a)
    publish(state, recorder, signer, b, now=T0 + timedelta(hours=1))
    recorder.puts.clear()
    when = T0 + timedelta(days=3)  # a's original manifest has expired by now

    result = rollback(recorder, channel="prod", to_generation=1, signer=signer, now=when)

    assert result.status == "rolled_back" and result.previous_digest == b
    assert (result.digest, result.generation) == (a, 3)
    assert recorder.puts == [layout.channel_manifest_key("prod"), layout.history_key("prod", iso(when), a)]
    signed = current(recorder)
    verify_manifest(Manifest.from_json(signed), verifier, now=when)
    assert (signed["digest"], signed["created_at"], signed["expires_at"]) == (
        a,
        iso(when),
        iso(when + timedelta(hours=24)),
    )
    assert (signed["generation"], signed["rollback_of"]) == (3, 1)
    assert signed["approval"] == {"previous_digest": b, "approved_at": iso(when)}
    assert len(recorder.list(layout.history_prefix("prod"))) == 3
    assert "ChannelRollbacks" in metrics.metric_set


def test_rollback_by_digest_and_to_the_current_bundle(state: LocalStore, dist: LocalStore, signer: LocalSigner) -> None:
    a = render(state, network_bundle(ips(0, 10), tag="a"))
    b = render(state, network_bundle(ips(0, 11), tag="b"))
    publish(state, dist, signer, a)
    publish(state, dist, signer, b, now=T0 + HOUR)

    assert rollback(dist, channel="prod", to_digest=b, signer=signer, now=T0 + 2 * HOUR).status == "unchanged"
    result = rollback(dist, channel="prod", to_digest=a, signer=signer, now=T0 + 2 * HOUR)

    assert (result.status, result.generation) == ("rolled_back", 3)
    assert (current(dist)["digest"], current(dist)["rollback_of"]) == (a, 1)
    with pytest.raises(ValueError, match="exactly one"):
        rollback(dist, channel="prod", signer=signer, now=T0)


def test_rollback_needs_a_verified_history_entry_and_its_files(
    state: LocalStore, dist: LocalStore, signer: LocalSigner, tmp_path: Path
) -> None:
    a = render(state, network_bundle(ips(0, 10), tag="a"))
    publish(state, dist, signer, a)
    publish(state, dist, signer, render(state, network_bundle(ips(0, 11), tag="b")), now=T0 + timedelta(hours=1))
    with pytest.raises(BundleError, match="no verified history entry for generation 7"):
        rollback(dist, channel="prod", to_generation=7, signer=signer, now=T0)
    # a history entry planted by someone who cannot sign is not a rollback target
    history = dist.list(layout.history_prefix("prod"))[0]
    forged = jsonio.loads(dist.get(history).data) | {"generation": 7}
    dist.put(history.replace(".json", "-x.json"), jsonio.dumps(forged))
    with pytest.raises(BundleError, match="no verified history entry for generation 7"):
        rollback(dist, channel="prod", to_generation=7, signer=signer, now=T0)
    dist.delete(layout.published_file_key("prod", a, "cdr-dynamic-blocklist.yaml"))
    with pytest.raises(BundleError, match="files are not all in"):
        rollback(dist, channel="prod", to_generation=1, signer=signer, now=T0)


def test_generations_increase_with_every_manifest(state: LocalStore, dist: LocalStore, signer: LocalSigner) -> None:
    a = render(state, network_bundle(ips(0, 10), tag="a"))
    b = render(state, network_bundle(ips(0, 11), tag="b"))
    gens = [
        publish(state, dist, signer, a).generation,
        publish(state, dist, signer, b, now=T0 + HOUR).generation,
        publish(state, dist, signer, b, now=T0 + TTL).generation,  # refreshed
        publish(state, dist, signer, a, now=T0 + TTL + HOUR).generation,
    ]
    assert gens == [1, 2, 3, 4] and current(dist)["generation"] == 4


def test_a_forged_manifest_cannot_push_or_reset_the_generation(
    state: LocalStore, dist: LocalStore, signer: LocalSigner, tmp_path: Path
) -> None:
    """Someone who can write the bucket but not sign puts a manifest with a huge generation, or deletes
    the manifest: the next publish continues from the newest verified history entry, and compares with
    it (the change budget still applies: it is not a first publish)."""
    a = render(state, network_bundle(ips(0, 10), tag="a"))
    b = render(state, network_bundle(ips(0, 11), tag="b"))
    publish(state, dist, signer, a)
    forged = current(dist) | {"generation": 9_000_000_000_000_000}
    dist.put(layout.channel_manifest_key("prod"), jsonio.dumps(forged))

    replaced = publish(state, dist, signer, b, now=T0 + HOUR)
    assert (replaced.status, replaced.generation, replaced.previous_digest) == ("published", 2, a)
    assert current(dist)["generation"] == 2  # the forgery is gone

    dist.delete(layout.channel_manifest_key("prod"))
    again = publish(state, dist, signer, a, now=T0 + 2 * HOUR)
    assert (again.generation, again.previous_digest) == (3, b)
    assert again.budget is not None  # compared with the history, not a first publish


def test_a_replayed_older_manifest_is_replaced_by_the_next_publish(
    state: LocalStore, dist: LocalStore, signer: LocalSigner
) -> None:
    """Someone puts generation 1's signed manifest back: Publish does not take it for the channel's
    state ("unchanged"); it publishes the newest bundle again, as a new generation."""
    a = render(state, network_bundle(ips(0, 10), tag="a"))
    b = render(state, network_bundle(ips(0, 11), tag="b"))
    publish(state, dist, signer, a)
    generation_1 = dist.get(layout.channel_manifest_key("prod")).data
    publish(state, dist, signer, b, now=T0 + HOUR)
    dist.put(layout.channel_manifest_key("prod"), generation_1)

    result = publish(state, dist, signer, b, now=T0 + 2 * HOUR)

    assert (result.status, result.previous_digest, result.generation) == ("refreshed", b, 3)
    assert (current(dist)["digest"], current(dist)["generation"]) == (b, 3)


def test_a_manifest_too_large_to_read_is_replaced_from_the_history(
    state: LocalStore, recorder: RecordingStore, signer: LocalSigner
) -> None:
    a = render(state, network_bundle(ips(0, 10), tag="a"))
    publish(state, recorder, signer, a)
    recorder.inner.put(layout.channel_manifest_key("prod"), b" " * (2 << 20))
    b = render(state, network_bundle(ips(0, 11), tag="b"))
    replaced = publish(state, recorder, signer, b, now=T0 + HOUR)
    assert (replaced.status, replaced.previous_digest, replaced.generation) == ("published", a, 2)
    assert current(recorder)["digest"] == b


def test_a_manifest_too_large_to_read_without_history_holds(
    state: LocalStore, dist: LocalStore, signer: LocalSigner
) -> None:
    dist.put(layout.channel_manifest_key("prod"), b" " * (2 << 20))
    held = publish(state, dist, signer, render(state, network_bundle(ips(0, 11), tag="b")))
    assert held.status == "held" and "larger than 1048576 bytes" in held.reason


SHRINKS = {
    "a behaviour policy dropped (2 of 180 prefixes changed)": (
        {"b1.yaml": behaviour_policy("cloud_credentials"), "b2.yaml": behaviour_policy("crypto_mining")},
        {"b1.yaml": behaviour_policy("cloud_credentials")},
        "removes behaviour policy crypto_mining",
    ),
    "an empty bundle over a small channel": (
        {},
        None,
        "removes every object (3 now enforced)",
    ),
}


@pytest.mark.parametrize("case", sorted(SHRINKS))
def test_a_shrinking_bundle_is_held_whatever_the_channel_size(
    case: str, state: LocalStore, dist: LocalStore, signer: LocalSigner, approver_pair: tuple[LocalSigner, Verifier]
) -> None:
    extra_before, extra_after, reason = SHRINKS[case]
    before = {**network_bundle(ips(0, 90), tag="a"), **files_of(extra_before)}
    after = {**network_bundle(ips(1, 90), tag="b"), **files_of(extra_after)} if extra_after is not None else {}
    publish(state, dist, signer, render(state, before))
    digest = render(state, after)

    held = publish(state, dist, signer, digest, now=T0 + HOUR)

    assert held.status == "held" and reason in held.reason
    assert held.budget is not None and reason in held.budget.shrink[0]
    approved = publish(state, dist, signer, digest, now=T0 + HOUR, approver=approver_pair)
    assert approved.status == "published" and current(dist)["approval"]["previous_digest"] == held.previous_digest


def test_a_failed_manifest_write_leaves_no_history_and_a_lost_history_entry_is_rewritten(
    state: LocalStore, recorder: RecordingStore, signer: LocalSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = render(state, network_bundle(ips(0, 10)))
    real_put_if = recorder.put_if

    def failing_put_if(*args: object, **kwargs: object) -> str:
        raise StorageError("s3://dist: SlowDown")

    monkeypatch.setattr(recorder, "put_if", failing_put_if)
    with pytest.raises(StorageError):
        publish(state, recorder, signer, digest)
    assert recorder.list(layout.history_prefix("prod")) == []

    monkeypatch.setattr(recorder, "put_if", real_put_if)
    publish(state, recorder, signer, digest)
    history = recorder.list(layout.history_prefix("prod"))
    recorder.delete(history[0])  # as if Publish had died between the two writes
    assert publish(state, recorder, signer, digest, now=T0 + HOUR).status == "unchanged"
    assert recorder.list(layout.history_prefix("prod")) == history


def test_a_publish_that_lost_the_race_overwrites_nothing(
    state: LocalStore, dist: LocalStore, signer: LocalSigner
) -> None:
    a = render(state, network_bundle(ips(0, 10), tag="a"))
    b = render(state, network_bundle(ips(0, 11), tag="b"))
    publish(state, dist, signer, a)
    stale = dist.get(layout.channel_manifest_key("prod")).etag
    publish(state, dist, signer, b, now=T0 + HOUR)
    with pytest.raises(PreconditionFailed):
        dist.put_if(layout.channel_manifest_key("prod"), b"{}", stale)
    assert current(dist)["digest"] == b


def test_publish_through_s3(signer: LocalSigner, verifier: Verifier) -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        for bucket in ("state-bucket", "dist-bucket"):
            s3.create_bucket(Bucket=bucket)
        state, dist = S3Store(s3, "state-bucket"), S3Store(s3, "dist-bucket")
        digest = render(state, network_bundle(ips(0, 10)))

        assert publish(state, dist, signer, digest).status == "published"
        assert publish(state, dist, signer, digest).status == "unchanged"

        verify_manifest(Manifest.from_json(current(dist)), verifier, now=T0)
        key = layout.published_file_key("prod", digest, "cilium-cdr-blocklist.yaml")
        head = s3.head_object(Bucket="dist-bucket", Key=key)
        assert head["ContentType"] == "application/yaml"


def test_a_changed_lifetime_is_signed_at_once_with_the_same_files(
    state: LocalStore, dist: LocalStore, signer: LocalSigner
) -> None:
    """The channel's bundle_ttl_hours went from 72 to 24: the same objects, re-signed now with the new
    lifetime (never kept at 72 hours until the next content change)."""
    digest = render(state, network_bundle(ips(0, 10)), ttl=TTL)
    publish(state, dist, signer, digest)
    assert render(state, network_bundle(ips(0, 10)), ttl=timedelta(hours=24)) == digest

    result = publish(state, dist, signer, digest, now=T0 + HOUR)

    assert (result.status, result.generation) == ("refreshed", 2)
    assert current(dist)["expires_at"] == iso(T0 + HOUR + timedelta(hours=24))
    assert publish(state, dist, signer, digest, now=T0 + 2 * HOUR).status == "unchanged"

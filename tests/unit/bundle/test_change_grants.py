"""Grants of changes (issue 24): the same approval as a held bundle's, naming a promoting
channel's pending changes instead of a bundle, over the bundle it ships. Signed by an approver,
for exactly that list, once; anything else is skipped (and approves nothing)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from cdr_policy import jsonio
from cdr_policy.bundle.approvals import Grant, GrantError, change_grants, changes_digest, find_grant, grant
from cdr_policy.bundle.signing import LocalSigner, Verifier
from cdr_policy.storage import LocalStore
from tests.unit.bundle.factory import T0

CURRENT = "c" * 64
CHANGES = ["prefix:91.219.236.0/24", "rule:crypto_mining@0123456789abcdef"]


def _put(state: LocalStore, signed: Grant) -> None:
    state.put(signed.key, jsonio.dumps_pretty(signed.to_json()))


def _grant(
    signer: LocalSigner, *, previous: str | None = CURRENT, changes: list[str] = CHANGES, now: datetime = T0
) -> Grant:
    return grant("prod", changes_digest(changes), previous, signer=signer, now=now, changes=changes)


def test_an_approvers_grant_of_changes_over_the_shipped_bundle_is_found(
    state: LocalStore,
    signer: LocalSigner,
    verifier: Verifier,
    approver: LocalSigner,
    approver_pair: tuple[LocalSigner, Verifier],
) -> None:
    _put(state, _grant(approver))
    (found,) = change_grants(state, "prod", CURRENT, approvers=approver_pair[1], pipeline=verifier, now=T0)
    assert found.changes == tuple(sorted(CHANGES)) and found.digest == changes_digest(CHANGES)
    # a grant of changes is no bundle's grant
    with pytest.raises(GrantError, match="grants another change"):
        find_grant(state, "prod", found.digest, CURRENT, approvers=approver_pair[1], pipeline=verifier, now=T0)


def test_grants_that_cannot_be_used_approve_nothing_and_stop_nothing(
    state: LocalStore,
    signer: LocalSigner,
    verifier: Verifier,
    approver: LocalSigner,
    approver_pair: tuple[LocalSigner, Verifier],
) -> None:
    _put(state, _grant(signer, changes=["prefix:45.33.32.156/32"]))  # the pipeline's own key
    _put(state, _grant(approver, previous="d" * 64, changes=["prefix:5.188.10.0/24"]))  # over another bundle
    _put(state, _grant(approver, changes=["port:tcp/4444"], now=T0 - timedelta(days=8)))  # expired
    tampered = _grant(approver, changes=["prefix:193.42.33.0/24"]).to_json()
    tampered["changes"] = ["prefix:0.0.0.0/0"]  # the list no longer matches its digest
    state.put(_grant(approver, changes=["prefix:193.42.33.0/24"]).key, jsonio.dumps(tampered))
    state.put("approvals/prod/" + "e" * 64 + f"/{CURRENT}.json", b"not json")

    assert change_grants(state, "prod", CURRENT, approvers=approver_pair[1], pipeline=verifier, now=T0) == []
    assert change_grants(state, "prod", CURRENT, approvers=None, pipeline=verifier, now=T0) == []


def test_a_grant_names_the_sorted_list_its_digest_covers(approver: LocalSigner) -> None:
    with pytest.raises(ValueError, match="names the digest of their list"):
        grant("prod", "f" * 64, CURRENT, signer=approver, now=T0, changes=CHANGES)
    doc = _grant(approver).to_json()
    doc["changes"] = list(reversed(doc["changes"]))
    with pytest.raises(GrantError, match="not the sorted list its digest names"):
        Grant.from_json(doc)
    doc["changes"] = ["prefix:not-an-address"]
    with pytest.raises(GrantError, match="malformed approval"):
        Grant.from_json(doc)

"""Approvals: the one way past the change budget, by a second principal, for one change, once.

A bundle the change budget holds ships only with a ``Grant``: a document naming the channel, the
bundle approved and the bundle it replaces (the exact pair), when it was granted and until when it
holds, signed with the **approver's** key — a KMS key only the Approver role may sign with in the
cloud (``template.yaml``), a key file of the approver's locally — never with the pipeline's channel
key. Publish reads it from ``approvals/<channel>/<digest>/<previous>.json``, verifies it against
the approver's public key(s), refuses one signed by the channel key, ships the bundle with the grant's
fingerprint in the signed manifest, and deletes the grant: it is used once. A grant naming another
replaced bundle (the channel moved on since) does not apply.

The same grant approves changes a promotion holds (``cdr_policy.promotion``): it then names the
changes (``prefix:203.0.113.0/24``, ``port:tcp/4444``, ``rule:crypto_mining@<fingerprint16>``)
instead of a bundle, over the bundle the channel ships (``digest`` is the digest of the change
list, so it has a key of its own). Render composes the channel's next bundle with them, Publish
verifies the grant again, records it in the signed manifest and deletes it (``change_grants``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from cdr_policy import jsonio, layout
from cdr_policy.bundle.signing import ALGORITHM, Signer, Verifier, statement
from cdr_policy.errors import BundleError
from cdr_policy.observability import logger
from cdr_policy.schemas import schema_errors
from cdr_policy.storage import NotFound, Store, TooLarge
from cdr_policy.timeutil import iso, parse_iso

SCHEMA = "approval.schema.json"
_DOMAIN = b"cdr-policy-approval-v1\n"
MAX_GRANT_BYTES = 16 * 1024
# How long a grant holds when the approver does not say: long enough for the next render, short
# enough that a forgotten grant does not wait for the channel to come back to the same pair.
DEFAULT_VALIDITY = timedelta(days=7)
MAX_VALIDITY = timedelta(days=30)


class GrantError(BundleError):
    """A grant that cannot be used (malformed, unsigned by an approver, expired, for another change)."""


@dataclass(frozen=True)
class Grant:
    channel: str
    digest: str
    previous_digest: str | None
    approved_at: str
    expires_at: str
    reason: str
    signature: str = ""
    key_id: str = ""
    changes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return layout.approval_key(self.channel, self.digest, self.previous_digest)

    def body(self) -> dict[str, Any]:
        """The document without its signature fields (what the signature covers)."""
        body: dict[str, Any] = {
            "schema_version": 1,
            "channel": self.channel,
            "digest": self.digest,
            "previous_digest": self.previous_digest,
            "approved_at": self.approved_at,
            "expires_at": self.expires_at,
            "reason": self.reason,
        }
        if self.changes:
            body["changes"] = list(self.changes)
        return body

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": self.signature, "key_id": self.key_id, "signature_algorithm": ALGORITHM}

    def fingerprint(self) -> str:
        """sha256 of the signed document: how the manifest that used it names it."""
        return hashlib.sha256(jsonio.dumps(self.to_json())).hexdigest()

    @classmethod
    def from_json(cls, doc: Any) -> Grant:
        errors = schema_errors(doc, SCHEMA)
        if errors:
            raise GrantError("malformed approval: " + "; ".join(errors[:5]))
        changes = tuple(doc.get("changes", ()))
        if changes and (list(changes) != sorted(set(changes)) or doc["digest"] != changes_digest(changes)):
            raise GrantError("malformed approval: its changes are not the sorted list its digest names")
        return cls(
            channel=doc["channel"],
            digest=doc["digest"],
            previous_digest=doc["previous_digest"],
            approved_at=doc["approved_at"],
            expires_at=doc["expires_at"],
            reason=doc["reason"],
            signature=doc["signature"],
            key_id=doc["key_id"],
            changes=changes,
        )


def changes_digest(changes: Sequence[str]) -> str:
    """The digest a grant of ``changes`` names: sha256 of their sorted list."""
    return hashlib.sha256(jsonio.dumps(sorted(set(changes)))).hexdigest()


def grant(
    channel: str,
    digest: str,
    previous: str | None,
    *,
    signer: Signer,
    now: datetime,
    reason: str = "",
    validity: timedelta = DEFAULT_VALIDITY,
    changes: Sequence[str] = (),
) -> Grant:
    """A grant of ``digest`` over ``previous`` (or, with ``changes``, of those changes over
    ``previous``; ``digest`` is then ``changes_digest(changes)``), signed with the approver's ``signer``."""
    if not timedelta(0) < validity <= MAX_VALIDITY:
        raise ValueError(f"an approval holds for at most {MAX_VALIDITY.days} days")
    listed = tuple(sorted(set(changes)))
    if listed and digest != changes_digest(listed):
        raise ValueError("a grant of changes names the digest of their list")
    unsigned = Grant(channel, digest, previous, iso(now), iso(now + validity), reason, changes=listed)
    signature, key_id = signer.sign(statement(unsigned.body(), _DOMAIN))
    signed = replace(unsigned, signature=base64.b64encode(signature).decode(), key_id=key_id)
    return Grant.from_json(signed.to_json())


def find_grant(
    state: Store,
    channel: str,
    digest: str,
    previous: str | None,
    *,
    approvers: Verifier | None,
    pipeline: Verifier,
    now: datetime,
) -> Grant | None:
    """The usable grant of ``digest`` over ``previous`` in ``state``, or None when there is none.
    GrantError when one is there but cannot be used: malformed, signed by no approver key
    (``approvers`` None: no approver is configured, so nothing can be approved), signed by the
    pipeline's own key, expired, or not yet valid."""
    key = layout.approval_key(channel, digest, previous)
    try:
        found = _read(state, key)
    except NotFound:
        return None
    if (found.channel, found.digest, found.previous_digest) != (channel, digest, previous) or found.changes:
        raise GrantError(f"the approval at {key} grants another change")
    return _checked(found, key, approvers=approvers, pipeline=pipeline, now=now)


def change_grants(
    state: Store,
    channel: str,
    previous: str | None,
    *,
    approvers: Verifier | None,
    pipeline: Verifier,
    now: datetime,
) -> list[Grant]:
    """The usable grants of changes of ``channel`` over ``previous`` (the bundle it ships), oldest
    key first. One that cannot be used (malformed, unsigned by an approver, for another bundle,
    expired) is skipped and logged: it approves nothing, and it stops nothing either."""
    found = []
    for key in state.list(f"{layout.APPROVALS}{channel}/"):
        if not key.endswith(f"/{previous or 'none'}.json"):
            continue
        try:
            grant = _read(state, key)
            if grant.changes and (grant.channel, grant.previous_digest) == (channel, previous) and grant.key == key:
                found.append(_checked(grant, key, approvers=approvers, pipeline=pipeline, now=now))
        except (GrantError, NotFound) as exc:
            logger.warning("an approval of changes cannot be used", extra={"key": key, "error": str(exc)})
    return found


def _read(state: Store, key: str) -> Grant:
    """The grant at ``key`` (NotFound when there is none), GrantError when it is not one."""
    try:
        data = state.get(key, max_bytes=MAX_GRANT_BYTES).data
    except TooLarge as exc:
        raise GrantError(f"the approval at {key} is larger than {MAX_GRANT_BYTES} bytes") from exc
    try:
        return Grant.from_json(jsonio.loads(data))
    except ValueError as exc:
        raise GrantError(f"the approval at {key} is not JSON") from exc


def _checked(found: Grant, key: str, *, approvers: Verifier | None, pipeline: Verifier, now: datetime) -> Grant:
    """``found`` when an approver signed it and it holds now; GrantError otherwise."""
    try:
        signature = base64.b64decode(found.signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GrantError(f"the approval at {key} has no valid signature") from exc
    message = statement(found.body(), _DOMAIN)
    if pipeline.verify(message, signature):
        raise GrantError(f"the approval at {key} is signed with the pipeline's key: only an approver may approve")
    if approvers is None:
        raise GrantError(f"the approval at {key} cannot be checked: no approver key is configured")
    if not approvers.verify(message, signature):
        raise GrantError(f"the approval at {key} is not signed by an approver key ({', '.join(approvers.key_ids)})")
    if not parse_iso(found.approved_at) <= now < parse_iso(found.expires_at):
        raise GrantError(f"the approval at {key} holds from {found.approved_at} to {found.expires_at}, not now")
    return found

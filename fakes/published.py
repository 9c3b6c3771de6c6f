"""A bundle holding only a provenance index, published into a distribution store and signed as
Publish signs it: what the hits readers follow, for their tests and part (h) of ``make bench``."""

from __future__ import annotations

from datetime import datetime, timedelta

from cdr_policy import layout
from cdr_policy.bundle.manifest import Settings, build_manifest
from cdr_policy.bundle.provenance import PATH, ProvenanceIndex
from cdr_policy.bundle.signing import Signer, sign_manifest
from cdr_policy.storage import Store
from cdr_policy.timeutil import iso


def publish_index(
    dist: Store, signer: Signer, index: ProvenanceIndex, *, now: datetime, ttl_hours: int = 72, generation: int = 1
) -> str:
    """Publish a bundle holding ``index`` into ``dist``, created a minute before ``now``; returns its digest."""
    created = now - timedelta(minutes=1)
    files = {PATH: index.to_bytes()}
    manifest = build_manifest(
        files,
        channel=index.channel,
        settings=Settings(action="Sigkill", mode="enforce", cilium_version="1.17"),
        counts={"files": 1},
        created_at=iso(created),
        expires_at=iso(created + timedelta(hours=ttl_hours)),
        source_digest="ab" * 32,
    )
    signed = sign_manifest(manifest.replace(generation=generation), signer)
    for path, data in files.items():
        dist.put(layout.published_file_key(index.channel, manifest.digest, path), data)
    dist.put(layout.channel_manifest_key(index.channel), signed.to_bytes())
    return manifest.digest

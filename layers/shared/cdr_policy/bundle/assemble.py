"""Turn one channel's compiled policies into a bundle: files, digests and the unsigned manifest.

Bundle file paths are the agent's file names (``bundle.objects.file_name``): object names are
derived from content, so the paths (and the digest) depend only on what is rendered, never on the clock.
Beside the objects, ``provenance.json`` (``bundle.provenance``) says where each prefix, port and
rule they hold came from; it is listed, hashed and signed like them.

Every object carries the label ``cdr-policy.io/bundle``: the first 40 hex digits of the
``source_digest``, the sha256 of the channel's objects before that label was added, so an engineer
can tell from a live object which bundle put it there (the manifest records the full value).
Tetragon's TracingPolicy controller reloads a policy only on spec (generation) changes, so this
metadata-only change does not reload unchanged policies in the kernel.
"""

from __future__ import annotations

import copy
import hashlib
from collections import Counter
from datetime import datetime, timedelta

from cdr_policy import jsonio
from cdr_policy.bundle import provenance
from cdr_policy.bundle.loader import Bundle
from cdr_policy.bundle.manifest import Settings, build_manifest
from cdr_policy.bundle.objects import file_name
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.naming import BUNDLE_KEY
from cdr_policy.policy.output import PolicyFile
from cdr_policy.policy.serialize import dump_yaml
from cdr_policy.timeutil import iso


def assemble(
    policies: list[PolicyFile], channel: ChannelSettings, *, now: datetime, index: provenance.ProvenanceIndex
) -> Bundle:
    """The bundle of a channel's policies and their provenance index (``provenance.json``)."""
    objects = [p.obj for p in policies]
    source_digest = hashlib.sha256(jsonio.dumps(objects)).hexdigest()
    files: dict[str, bytes] = {}
    entries: Counter[str] = Counter()
    for policy in policies:
        obj = copy.deepcopy(policy.obj)
        obj.setdefault("metadata", {}).setdefault("labels", {})[BUNDLE_KEY] = source_digest[:40]
        files[file_name(obj)] = dump_yaml(obj)
        entries[policy.kind] += policy.entries
    files[provenance.PATH] = index.to_bytes()
    counts = dict(Counter(p.kind for p in policies))
    counts.update({f"{kind}.entries": n for kind, n in entries.items()})
    manifest = build_manifest(
        files,
        channel=channel.name,
        settings=Settings(
            action=channel.action,
            mode="enforce" if channel.enforce else "monitor",
            cilium_version=channel.cilium_version,
            tetragon_max_prefixes=channel.tetragon_max_prefixes,
            cilium_max_prefixes=channel.cilium_max_prefixes,
            namespaces=channel.namespaces,
            channel_digest=channel.fingerprint(),
        ),
        counts=counts,
        created_at=iso(now),
        expires_at=iso(now + timedelta(hours=channel.bundle_ttl_hours)),
        source_digest=source_digest,
    )
    return Bundle(manifest, files)

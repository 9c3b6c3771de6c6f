"""The bundle manifest: the list of files with their sha256 and size, the digest over that list,
and what the bundle was rendered from and with. Schema: ``schemas/manifest.schema.json``.

``Manifest`` is the one typed form of the contract between Render, Publish, the sync agent and the
fleet commands: every reader parses a document with ``Manifest.parse`` / ``Manifest.from_json``
(schema, consistency and bounds checked once) and reads typed fields; every writer writes
``to_json()``, which gives back exactly the document it was parsed from, so a signature over it
holds.

The digest covers paths, hashes and sizes only, so the same files always give the same digest
(timestamps and settings live beside it in the manifest and are covered by the signature).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from cdr_policy import jsonio, layout
from cdr_policy.errors import BundleError
from cdr_policy.policy.channel import Action
from cdr_policy.schemas import schema_errors
from cdr_policy.timeutil import parse_iso

SCHEMA_VERSION = 1
SCHEMA = "manifest.schema.json"
# No reader takes more than this of a manifest: ~5,000 file entries, far beyond any real bundle.
MAX_MANIFEST_BYTES = 1 << 20
# Bounds on what a manifest may list, checked before any file is read: the largest real bundle
# (budgets of 250,000 prefixes per engine) is about 21 MB in 128 files, every object under 512 KiB.
MAX_FILES = 2_000
MAX_FILE_BYTES = 16 << 20
MAX_BUNDLE_BYTES = 96 << 20
# The unsigned manifest sits beside the files in the state bucket, so no file may take its name.
RESERVED_PATHS = frozenset({layout.BUNDLE_MANIFEST_FILE})

Mode = Literal["monitor", "enforce"]


class VerificationError(BundleError):
    """A bundle that must not be used, with a stable ``code`` for status documents and metrics:
    ``malformed``, ``missing_signature``, ``unknown_algorithm``, ``bad_signature``, ``digest_mismatch``,
    ``file_mismatch``, ``too_large``, ``expired``, ``future``, ``wrong_channel``, ``replay``, ``bad_object``,
    ``shrink``, ``forbidden``, ``check_failed``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_PATH = 255


def validate_path(path: str) -> str:
    """A bundle file path: relative, ``/``-separated, no ``..``, no hidden or empty segments."""
    if not isinstance(path, str) or not path:
        raise BundleError("invalid bundle path: empty")
    if len(path) > _MAX_PATH:
        raise BundleError(f"invalid bundle path of {len(path)} characters: longer than {_MAX_PATH}")
    if path.startswith("/") or "\\" in path:
        raise BundleError(f"invalid bundle path {path!r}: must be relative and use '/'")
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.match(segment):
            raise BundleError(
                f"invalid bundle path {path!r}: every segment must start with a letter or digit "
                "and contain only letters, digits, '.', '_' or '-'"
            )
    if path in RESERVED_PATHS:
        raise BundleError(f"invalid bundle path {path!r}: reserved for the manifest")
    return path


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


def file_entries(files: Mapping[str, bytes]) -> tuple[FileEntry, ...]:
    """One entry per file, sorted by path; every path validated."""
    return tuple(
        FileEntry(validate_path(path), hashlib.sha256(data).hexdigest(), len(data))
        for path, data in sorted(files.items())
    )


def entries_digest(entries: tuple[FileEntry, ...] | list[FileEntry]) -> str:
    """sha256 hex over the canonical JSON of the sorted ``[path, sha256, size]`` list."""
    rows = sorted([e.path, e.sha256, e.size] for e in entries)
    return hashlib.sha256(jsonio.dumps(rows)).hexdigest()


@dataclass(frozen=True)
class Settings:
    """The channel settings a bundle was rendered with. ``channel_digest`` fingerprints all of them
    (``ChannelSettings.fingerprint``): Publish refuses a bundle rendered with other settings than
    the channel has now."""

    action: Action
    mode: Mode
    cilium_version: str | None = None
    tetragon_max_prefixes: int | None = None
    cilium_max_prefixes: int | None = None
    namespaces: tuple[str, ...] | None = None
    channel_digest: str | None = None

    @property
    def enforcing(self) -> bool:
        return self.mode == "enforce"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "mode": self.mode}
        for name in ("cilium_version", "tetragon_max_prefixes", "cilium_max_prefixes", "channel_digest"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.namespaces is not None:
            out["namespaces"] = list(self.namespaces)
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Settings:
        namespaces = doc.get("namespaces")
        return cls(
            action=doc["action"],
            mode=doc["mode"],
            cilium_version=doc.get("cilium_version"),
            tetragon_max_prefixes=doc.get("tetragon_max_prefixes"),
            cilium_max_prefixes=doc.get("cilium_max_prefixes"),
            namespaces=tuple(namespaces) if namespaces is not None else None,
            channel_digest=doc.get("channel_digest"),
        )


@dataclass(frozen=True)
class Approval:
    """This bundle was shipped past the change budget as a replacement for ``previous_digest``
    (None: the channel had no usable manifest): by an approver's ``grant`` (its fingerprint, and
    the ``approver`` key that signed it), or by an operator's rollback (no grant)."""

    previous_digest: str | None
    approved_at: str
    grant: str | None = None
    approver: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"previous_digest": self.previous_digest, "approved_at": self.approved_at}
        if self.grant is not None:
            out["grant"] = self.grant
        if self.approver is not None:
            out["approver"] = self.approver
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Approval:
        return cls(
            previous_digest=doc["previous_digest"],
            approved_at=doc["approved_at"],
            grant=doc.get("grant"),
            approver=doc.get("approver"),
        )


StepKind = Literal["first", "published", "approved", "refreshed", "rolled_back"]


@dataclass(frozen=True)
class Step:
    """One transition of a channel: generation ``generation`` shipped ``digest`` over
    ``previous_digest``, ``how``."""

    generation: int
    digest: str
    previous_digest: str | None
    how: StepKind

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "digest": self.digest,
            "previous_digest": self.previous_digest,
            "how": self.how,
        }


@dataclass(frozen=True)
class Changes:
    """Changes of a promoting channel as a signed manifest records them (``cdr_policy.promotion``):
    ``prefixes`` the addresses as ``planes-zlib-v1`` fields of their collapsed prefix list (read
    with ``promotion.addresses.AddressSet.from_fields``), ``ports``, ``rules`` as (rule id,
    fingerprint of what it matches), and ``count`` the changes they were."""

    prefixes: Mapping[str, Any]
    ports: tuple[str, ...] = ()
    rules: tuple[tuple[str, str], ...] = ()
    count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "prefixes": dict(self.prefixes),
            "ports": list(self.ports),
            "rules": [{"rule": rule, "fingerprint": fp} for rule, fp in self.rules],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Changes:
        return cls(
            prefixes=dict(doc["prefixes"]),
            ports=tuple(doc["ports"]),
            rules=tuple((r["rule"], r["fingerprint"]) for r in doc["rules"]),
            count=doc["count"],
        )


@dataclass(frozen=True)
class RolledBack:
    """The changes generation ``generation`` promoted, taken out again because enforcing them hurt."""

    generation: int
    reason: str
    changes: Changes


@dataclass(frozen=True)
class GrantUsed:
    """An approver's grant of changes a generation used: its fingerprint, the approver's key, how
    many changes it granted."""

    grant: str
    approver: str
    changes: int


@dataclass(frozen=True)
class PromotedEvidence:
    """A promoted change, how (soaked, approved) and the evidence its audit channel gave."""

    change: str
    how: str
    in_audit_since: str | None
    clusters: int
    hits: int
    workloads: int


@dataclass(frozen=True)
class Promotion:
    """What a generation of a promoting channel took from its audit channel ``source`` over bundle
    ``over``, on what evidence (``evidence``: the promoted changes with the most of it), with which
    approvers' grants (``approved``: grant fingerprint, approver key, how many changes); how many
    changes still wait or are held (``pending``); what it took back (``rolled_back``) and what
    stays held until approved (``held_back``)."""

    source: str
    over: str | None
    decided_at: str
    promoted: Changes
    pending: Mapping[str, int]
    approved: tuple[GrantUsed, ...] = ()
    evidence: tuple[PromotedEvidence, ...] = ()
    rolled_back: RolledBack | None = None
    held_back: Changes | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "from": self.source,
            "over": self.over,
            "decided_at": self.decided_at,
            "promoted": self.promoted.to_json(),
            "approved": [dataclasses.asdict(a) for a in self.approved],
            "evidence": [dataclasses.asdict(e) for e in self.evidence],
            "pending": dict(self.pending),
        }
        if self.rolled_back is not None:
            rb = self.rolled_back
            out["rolled_back"] = {"generation": rb.generation, "reason": rb.reason, "changes": rb.changes.to_json()}
        if self.held_back is not None:
            out["held_back"] = self.held_back.to_json()
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Promotion:
        rb = doc.get("rolled_back")
        return cls(
            source=doc["from"],
            over=doc["over"],
            decided_at=doc["decided_at"],
            promoted=Changes.from_json(doc["promoted"]),
            pending=dict(doc["pending"]),
            approved=tuple(GrantUsed(**a) for a in doc["approved"]),
            evidence=tuple(PromotedEvidence(**e) for e in doc["evidence"]),
            rolled_back=RolledBack(rb["generation"], rb["reason"], Changes.from_json(rb["changes"])) if rb else None,
            held_back=Changes.from_json(doc["held_back"]) if "held_back" in doc else None,
        )


@dataclass(frozen=True)
class Signature:
    value: str
    key_id: str
    algorithm: str


@dataclass(frozen=True)
class Manifest:
    """One bundle manifest: unsigned as Render writes it (``bundles/<digest>/bundle.json``), or
    stamped and signed as Publish ships it (``channels/<channel>/manifest.json``)."""

    channel: str
    digest: str
    created_at: str
    expires_at: str
    source_digest: str
    files: tuple[FileEntry, ...]
    counts: Mapping[str, int]
    settings: Settings
    generation: int | None = None
    rollback_of: int | None = None
    approval: Approval | None = None
    steps: tuple[Step, ...] = ()
    promotion: Promotion | None = None
    signature: Signature | None = None
    schema_version: int = SCHEMA_VERSION

    # -- reading ---------------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes, where: str) -> Manifest:
        """Parse and check (not verify: see ``signing.verify_signature``) a manifest document."""
        try:
            doc = jsonio.loads(data)
        except ValueError as exc:
            raise VerificationError("malformed", f"malformed manifest: {where} is not JSON: {exc}") from exc
        return cls.from_json(doc)

    @classmethod
    def from_json(cls, doc: Any) -> Manifest:
        """A manifest from its JSON document: the schema, then its own consistency (digest, unique
        paths, expiry after creation, bounds on what it lists). VerificationError naming the problem."""
        errors = schema_errors(doc, SCHEMA)
        if errors:
            raise VerificationError("malformed", "malformed manifest: " + "; ".join(errors[:10]))
        signature = None
        if "signature" in doc:
            signature = Signature(doc["signature"], doc["key_id"], doc["signature_algorithm"])
        manifest = cls(
            channel=doc["channel"],
            digest=doc["digest"],
            created_at=doc["created_at"],
            expires_at=doc["expires_at"],
            source_digest=doc["source_digest"],
            files=tuple(FileEntry(e["path"], e["sha256"], e["size"]) for e in doc["files"]),
            counts=dict(doc["counts"]),
            settings=Settings.from_json(doc["settings"]),
            generation=doc.get("generation"),
            rollback_of=doc.get("rollback_of"),
            approval=Approval.from_json(doc["approval"]) if "approval" in doc else None,
            steps=tuple(
                Step(s["generation"], s["digest"], s["previous_digest"], s["how"]) for s in doc.get("steps", [])
            ),
            promotion=Promotion.from_json(doc["promotion"]) if "promotion" in doc else None,
            signature=signature,
            schema_version=doc["schema_version"],
        )
        manifest.check()
        return manifest

    def check(self) -> Manifest:
        """Consistency beyond the schema; returns ``self``."""
        paths = [e.path for e in self.files]
        if len(set(paths)) != len(paths):
            raise VerificationError("malformed", "malformed manifest: duplicate file paths")
        for path in paths:
            try:
                validate_path(path)
            except BundleError as exc:
                raise VerificationError("malformed", f"malformed manifest: {exc}") from exc
        computed = entries_digest(self.files)
        if computed != self.digest:
            raise VerificationError(
                "digest_mismatch",
                f"digest mismatch: manifest says {self.digest}, its file list gives {computed}",
            )
        if len(self.files) > MAX_FILES:
            raise VerificationError("too_large", f"the manifest lists {len(self.files)} files (at most {MAX_FILES})")
        for entry in self.files:
            if entry.size > MAX_FILE_BYTES:
                raise VerificationError(
                    "too_large", f"{entry.path} is listed at {entry.size} bytes (at most {MAX_FILE_BYTES} per file)"
                )
        total = sum(e.size for e in self.files)
        if total > MAX_BUNDLE_BYTES:
            raise VerificationError("too_large", f"the files add up to {total} bytes (at most {MAX_BUNDLE_BYTES})")
        try:
            created, expires = self.created, self.expires
        except ValueError as exc:
            raise VerificationError("malformed", f"malformed manifest: {exc}") from exc
        if expires <= created:
            raise VerificationError("malformed", "malformed manifest: expires_at is not after created_at")
        if self.rollback_of is not None and self.rollback_of >= (self.generation or 1):
            raise VerificationError("malformed", "malformed manifest: rollback_of is not an earlier generation")
        if self.steps and not self.path_is_whole():
            raise VerificationError("malformed", "malformed manifest: its steps are not one path ending at itself")
        return self

    # -- writing ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The document (exactly the one ``from_json`` read: optional fields absent when unset)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "channel": self.channel,
            "digest": self.digest,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "source_digest": self.source_digest,
            "files": [e.to_json() for e in self.files],
            "counts": dict(sorted(self.counts.items())),
            "settings": self.settings.to_json(),
        }
        if self.generation is not None:
            out["generation"] = self.generation
        if self.rollback_of is not None:
            out["rollback_of"] = self.rollback_of
        if self.approval is not None:
            out["approval"] = self.approval.to_json()
        if self.steps:
            out["steps"] = [step.to_json() for step in self.steps]
        if self.promotion is not None:
            out["promotion"] = self.promotion.to_json()
        if self.signature is not None:
            out["signature"] = self.signature.value
            out["key_id"] = self.signature.key_id
            out["signature_algorithm"] = self.signature.algorithm
        return out

    def to_bytes(self) -> bytes:
        return jsonio.dumps_pretty(self.to_json())

    def unsigned(self) -> Manifest:
        return dataclasses.replace(self, signature=None)

    def replace(self, **changes: Any) -> Manifest:
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes).check()

    # -- reading fields --------------------------------------------------------------------------

    @property
    def created(self) -> datetime:
        return parse_iso(self.created_at)

    @property
    def expires(self) -> datetime:
        return parse_iso(self.expires_at)

    @property
    def published(self) -> bool:
        """Stamped by Publish (a generation) rather than as Render wrote it."""
        return self.generation is not None

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files)

    def path_is_whole(self) -> bool:
        """The steps follow each other (each one's ``previous_digest`` the digest before it, the
        generations increasing) and the last is this manifest."""
        for before, after in zip(self.steps, self.steps[1:], strict=False):
            if after.previous_digest != before.digest or after.generation <= before.generation:
                return False
        last = self.steps[-1]
        return (last.generation, last.digest) == (self.generation, self.digest)

    def reached_from(self, digest: str) -> bool:
        """This manifest's signed steps lead here from bundle ``digest``: every step after it was a
        decision of Publish (within the budget, approved, or a rollback)."""
        return any(step.previous_digest == digest for step in self.steps)

    def objects_count(self) -> int:
        """Objects per kind added up (the ``counts`` entries without a ``.``)."""
        return sum(n for kind, n in self.counts.items() if "." not in kind)


def build_manifest(
    files: Mapping[str, bytes],
    *,
    channel: str,
    settings: Settings,
    counts: Mapping[str, int],
    created_at: str,
    expires_at: str,
    source_digest: str,
) -> Manifest:
    """The unsigned manifest of ``files`` (checked against the schema before it is returned)."""
    entries = file_entries(files)
    manifest = Manifest(
        channel=channel,
        digest=entries_digest(entries),
        created_at=created_at,
        expires_at=expires_at,
        source_digest=source_digest,
        files=entries,
        counts=dict(sorted(counts.items())),
        settings=settings,
    )
    # Through the document: the schema is the contract, whoever builds the manifest.
    return Manifest.from_json(manifest.to_json())


def verify_files(manifest: Manifest, files: Mapping[str, bytes]) -> None:
    """Every file listed is present with the listed size and sha256, and nothing else is there."""
    listed = {e.path: e for e in manifest.files}
    missing = sorted(set(listed) - set(files))
    if missing:
        raise VerificationError("file_mismatch", f"file mismatch: missing {', '.join(missing[:5])}")
    extra = sorted(set(files) - set(listed))
    if extra:
        raise VerificationError("file_mismatch", f"file mismatch: {len(extra)} file(s) not in the manifest")
    for path, entry in sorted(listed.items()):
        verify_file(entry, files[path])


def verify_file(entry: FileEntry, data: bytes) -> None:
    """``data`` has the size and sha256 ``entry`` lists."""
    if len(data) != entry.size:
        raise VerificationError(
            "file_mismatch",
            f"file mismatch: {entry.path} is {len(data)} bytes, the manifest says {entry.size}",
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.sha256:
        raise VerificationError(
            "file_mismatch",
            f"file mismatch: {entry.path} has sha256 {actual}, the manifest says {entry.sha256}",
        )

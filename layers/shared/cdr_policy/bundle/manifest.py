"""The bundle manifest: the list of files with their sha256 and size, the digest over that list,
and what the bundle was rendered from and with. Schema: ``schemas/manifest.schema.json``.

The digest covers paths, hashes and sizes only, so the same files always give the same digest
(timestamps and settings live beside it in the manifest and are covered by the signature).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from cdr_policy import jsonio, layout
from cdr_policy.errors import BundleError
from cdr_policy.schemas import schema_errors
from cdr_policy.storage import Store, TooLarge
from cdr_policy.timeutil import parse_iso

SCHEMA_VERSION = 1
SCHEMA = "manifest.schema.json"
SIGNATURE_FIELDS = ("signature", "key_id", "signature_algorithm")
# No reader takes more than this of a manifest: ~5,000 file entries, far beyond any real bundle.
MAX_MANIFEST_BYTES = 1 << 20
# The unsigned manifest sits beside the files in the state bucket, so no file may take its name.
RESERVED_PATHS = frozenset({"bundle.json"})


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
        raise BundleError(f"invalid bundle path {path!r}: empty")
    if len(path) > _MAX_PATH:
        raise BundleError(f"invalid bundle path {path[:40]!r}...: longer than {_MAX_PATH} characters")
    if path.startswith("/") or "\\" in path:
        raise BundleError(f"invalid bundle path {path!r}: must be relative and use '/'")
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.match(segment):
            raise BundleError(
                f"invalid bundle path {path!r}: segment {segment!r} must start with a letter or digit "
                "and contain only letters, digits, '.', '_' or '-'"
            )
    if path in RESERVED_PATHS:
        raise BundleError(f"invalid bundle path {path!r}: reserved for the manifest")
    return path


def file_entries(files: Mapping[str, bytes]) -> list[dict[str, Any]]:
    """``[{path, sha256, size}]`` sorted by path; every path validated."""
    return [
        {"path": validate_path(path), "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for path, data in sorted(files.items())
    ]


def entries_digest(entries: list[dict[str, Any]]) -> str:
    """sha256 hex over the canonical JSON of the sorted ``[path, sha256, size]`` list."""
    rows = sorted([e["path"], e["sha256"], e["size"]] for e in entries)
    return hashlib.sha256(jsonio.dumps(rows)).hexdigest()


def unsigned(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest without its signature fields (what the signature covers)."""
    return {k: v for k, v in manifest.items() if k not in SIGNATURE_FIELDS}


def validate_manifest(manifest: Any) -> dict[str, Any]:
    """Check a manifest against its schema and its own consistency (digest, unique paths, expiry after
    creation). Returns it; raises BundleError naming every problem."""
    errors = schema_errors(manifest, SCHEMA)
    if errors:
        raise VerificationError("malformed", "malformed manifest: " + "; ".join(errors[:10]))
    paths = [e["path"] for e in manifest["files"]]
    if len(set(paths)) != len(paths):
        raise VerificationError("malformed", "malformed manifest: duplicate file paths")
    for path in paths:
        try:
            validate_path(path)
        except BundleError as exc:
            raise VerificationError("malformed", f"malformed manifest: {exc}") from exc
    if parse_iso(manifest["expires_at"]) <= parse_iso(manifest["created_at"]):
        raise VerificationError("malformed", "malformed manifest: expires_at is not after created_at")
    if manifest.get("rollback_of", 0) >= manifest.get("generation", 1):
        raise VerificationError("malformed", "malformed manifest: rollback_of is not an earlier generation")
    computed = entries_digest(manifest["files"])
    if computed != manifest["digest"]:
        raise VerificationError(
            "digest_mismatch",
            f"digest mismatch: manifest says {manifest['digest']}, its file list gives {computed}",
        )
    checked: dict[str, Any] = manifest
    return checked


def build_manifest(
    files: dict[str, bytes],
    *,
    channel: str,
    settings: dict[str, Any],
    counts: dict[str, int],
    created_at: str,
    expires_at: str,
    source_digest: str,
) -> dict[str, Any]:
    """The unsigned manifest of ``files`` (validated against the schema before it is returned)."""
    entries = file_entries(files)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "channel": channel,
        "digest": entries_digest(entries),
        "created_at": created_at,
        "expires_at": expires_at,
        "source_digest": source_digest,
        "files": entries,
        "counts": dict(sorted(counts.items())),
        "settings": settings,
    }
    return validate_manifest(manifest)


def read_manifest_bytes(data: bytes, where: str) -> dict[str, Any]:
    """Parse (not verify) a manifest document."""
    try:
        doc = jsonio.loads(data)
    except ValueError as exc:
        raise VerificationError("malformed", f"malformed manifest: {where} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise VerificationError("malformed", f"malformed manifest: {where} is not a JSON object")
    return doc


def read_bundle_files(store: Store, manifest: Mapping[str, Any], *, published: bool) -> dict[str, bytes]:
    """The files a (validated) manifest lists, each read no further than its listed size (+1 byte to
    notice a larger one), then checked with ``verify_files``: as rendered, from the state store's
    ``bundles/<digest>/``, or ``published``, from the distribution store's
    ``channels/<channel>/bundles/<digest>/``. The one reader of bundle files, for Publish, the agent
    and the CLI. StorageError when one cannot be read."""
    digest, channel = manifest["digest"], manifest["channel"]
    files = {}
    for entry in manifest["files"]:
        path = entry["path"]
        key = layout.published_file_key(channel, digest, path) if published else layout.bundle_file_key(digest, path)
        try:
            files[path] = store.get(key, max_bytes=entry["size"]).data
        except TooLarge as exc:
            raise VerificationError(
                "too_large", f"file mismatch: {path} is larger than the {entry['size']} bytes listed"
            ) from exc
    verify_files(manifest, files)
    return files


def verify_files(manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> None:
    """Every file listed is present with the listed size and sha256, and nothing else is there."""
    listed = {e["path"]: e for e in manifest["files"]}
    missing = sorted(set(listed) - set(files))
    if missing:
        raise VerificationError("file_mismatch", f"file mismatch: missing {', '.join(missing[:5])}")
    extra = sorted(set(files) - set(listed))
    if extra:
        raise VerificationError("file_mismatch", f"file mismatch: not in the manifest: {', '.join(extra[:5])}")
    for path, entry in sorted(listed.items()):
        data = files[path]
        if len(data) != entry["size"]:
            raise VerificationError(
                "file_mismatch",
                f"file mismatch: {path} is {len(data)} bytes, the manifest says {entry['size']}",
            )
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry["sha256"]:
            raise VerificationError(
                "file_mismatch",
                f"file mismatch: {path} has sha256 {actual}, the manifest says {entry['sha256']}",
            )

"""The one bundle loader: a manifest and its files, read with bounds, verified, and parsed into
objects once. Publish, the sync agent and the fleet commands read bundles only through it.

- ``read_manifest``: one manifest document, no further than ``MAX_MANIFEST_BYTES``;
- ``load_bundle``: the files a manifest lists, each read no further than its listed size (+1 byte
  to notice a larger one) and checked against its size and sha256; ``Bundle.objects`` parses the
  YAML files once (bounded: ``objects.check_tree``);
- ``latest_render``: the digest of a channel's latest render (Render's pointer in the state store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cdr_policy import jsonio, layout
from cdr_policy.bundle.manifest import MAX_MANIFEST_BYTES, Manifest, VerificationError, verify_file
from cdr_policy.bundle.objects import placed_objects
from cdr_policy.errors import BundleError
from cdr_policy.policy.serialize import load_yaml_documents
from cdr_policy.storage import NotFound, Store, TooLarge

# Render's pointer is ``{"digest": ...}`` and a few fields: anything larger was not written by Render.
MAX_POINTER_BYTES = 4096


@dataclass(frozen=True)
class Bundle:
    """A manifest and the files it lists (verified against it); ``load`` parses a YAML file."""

    manifest: Manifest
    files: Mapping[str, bytes]
    load: Callable[[bytes], list[Any]] = field(default=load_yaml_documents, compare=False, repr=False)

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @cached_property
    def placed(self) -> list[tuple[str, dict[str, Any]]]:
        """The Kubernetes objects of the bundle's YAML files with their places, in path order
        (parsed on first use)."""
        return placed_objects(self.files, self.load)

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [obj for _, obj in self.placed]


def read_manifest(store: Store, key: str) -> tuple[Manifest, str]:
    """The manifest at ``key`` and its ETag. VerificationError (``too_large``, ``malformed``, ...)
    when it is not a manifest; StorageError (NotFound, ...) when it cannot be read."""
    try:
        obj = store.get(key, max_bytes=MAX_MANIFEST_BYTES)
    except TooLarge as exc:
        raise VerificationError("too_large", f"{key} is larger than {MAX_MANIFEST_BYTES} bytes") from exc
    return Manifest.parse(obj.data, key), obj.etag


def load_bundle(
    store: Store,
    manifest: Manifest,
    *,
    published: bool,
    known: Mapping[str, bytes] | None = None,
    load: Callable[[bytes], list[Any]] = load_yaml_documents,
) -> Bundle:
    """The files ``manifest`` lists: as rendered, from the state store's ``bundles/<digest>/``, or
    ``published``, from the distribution store's ``channels/<channel>/bundles/<digest>/``. ``known``:
    file contents by sha256 the caller already holds (the bundle it applied before); a listed file of
    one of those sha256 is taken from there instead of being read again (most of a new bundle is its
    predecessor's files). Every file is checked against the manifest whatever its source.
    VerificationError when one does not match; StorageError when one cannot be read. ``load``: how
    the objects' files are parsed (the agent's ``ParsedYaml.load``: those of its last bundle once)."""
    paths = [e.path for e in manifest.files]
    return Bundle(manifest, load_files(store, manifest, paths, published=published, known=known), load)


def load_files(
    store: Store,
    manifest: Manifest,
    paths: Iterable[str],
    *,
    published: bool,
    known: Mapping[str, bytes] | None = None,
) -> dict[str, bytes]:
    """Some of the files ``manifest`` lists (``paths``), each read no further than its listed size
    (or taken from ``known``, as ``load_bundle`` says) and checked against its size and sha256
    (``load_bundle``'s reads, for a reader that needs only a few files of a large bundle).
    VerificationError for a path it does not list or a file that does not match."""
    listed = {e.path: e for e in manifest.files}
    files = {}
    for path in paths:
        entry = listed.get(path)
        if entry is None:
            raise VerificationError("file_mismatch", f"file mismatch: {path} is not in the manifest")
        if known and entry.sha256 in known:
            files[entry.path] = known[entry.sha256]
        else:
            key = (
                layout.published_file_key(manifest.channel, manifest.digest, entry.path)
                if published
                else layout.bundle_file_key(manifest.digest, entry.path)
            )
            try:
                files[entry.path] = store.get(key, max_bytes=entry.size).data
            except TooLarge as exc:
                raise VerificationError(
                    "too_large", f"file mismatch: {entry.path} is larger than the {entry.size} bytes listed"
                ) from exc
        verify_file(entry, files[entry.path])
    return files


def latest_render(state: Store, channel: str) -> str | None:
    """The digest of ``channel``'s latest render (None: never rendered). BundleError when the
    pointer is not Render's (not JSON, too large, no digest)."""
    key = layout.latest_render_key(channel)
    try:
        doc = jsonio.loads(state.get(key, max_bytes=MAX_POINTER_BYTES).data)
    except NotFound:
        return None
    except (TooLarge, ValueError) as exc:
        raise BundleError(f"{state.describe()}/{key} is not a render pointer ({exc})") from exc
    digest = doc.get("digest") if isinstance(doc, dict) else None
    if not layout.is_digest(digest):
        raise BundleError(f"{state.describe()}/{key} is not a render pointer (no sha256 'digest')")
    return str(digest)

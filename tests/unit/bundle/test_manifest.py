"""Manifest and digests: deterministic, path-safe, and checked against the manifest schema."""

from __future__ import annotations

import copy
import hashlib

import pytest

from cdr_policy.bundle.manifest import (
    SCHEMA,
    VerificationError,
    build_manifest,
    entries_digest,
    file_entries,
    validate_manifest,
    validate_path,
    verify_files,
)
from cdr_policy.errors import BundleError
from cdr_policy.schemas import schema_errors

from .factory import SETTINGS, SOURCE

FILES = {"b.yaml": b"kind: B\n", "a.yaml": b"kind: A\n", "sub/c.json": b"{}"}


def bundle_digest(files) -> str:
    return entries_digest(file_entries(files))


def manifest(files=FILES, **overrides):
    kwargs = dict(
        channel="prod",
        settings=SETTINGS,
        counts={"TracingPolicy": 2, "CiliumCIDRGroup": 1},
        created_at="2026-01-10T16:00:00Z",
        expires_at="2026-01-13T16:00:00Z",
        source_digest=SOURCE,
    )
    kwargs.update(overrides)
    return build_manifest(dict(files), **kwargs)


def test_same_files_give_the_same_digest_in_any_order():
    reordered = dict(reversed(list(FILES.items())))
    assert bundle_digest(FILES) == bundle_digest(reordered)
    assert len(bundle_digest(FILES)) == 64


@pytest.mark.parametrize(
    "change",
    [
        lambda f: {**f, "a.yaml": b"kind: A2\n"},  # content
        lambda f: {**{k: v for k, v in f.items() if k != "a.yaml"}, "a2.yaml": f["a.yaml"]},  # rename
        lambda f: {k: v for k, v in f.items() if k != "b.yaml"},  # removal
        lambda f: {**f, "d.yaml": b""},  # an empty extra file
    ],
)
def test_any_change_to_the_files_changes_the_digest(change):
    assert bundle_digest(change(FILES)) != bundle_digest(FILES)


def test_manifest_lists_files_sorted_with_hashes_and_sizes():
    m = manifest()
    assert [f["path"] for f in m["files"]] == ["a.yaml", "b.yaml", "sub/c.json"]
    assert m["files"][0] == {"path": "a.yaml", "sha256": hashlib.sha256(b"kind: A\n").hexdigest(), "size": 8}
    assert m["digest"] == bundle_digest(FILES)
    assert m["schema_version"] == 1
    assert m["counts"] == {"CiliumCIDRGroup": 1, "TracingPolicy": 2}
    assert not {"signature", "key_id", "signature_algorithm"} & set(m)
    assert schema_errors(m, SCHEMA) == []


@pytest.mark.parametrize(
    "path",
    [
        "../etc/passwd",
        "a/../b",
        "/abs.yaml",
        "a//b.yaml",
        "./a.yaml",
        ".hidden",
        "a\\b.yaml",
        "",
        "bundle.json",
        "a b.yaml",
        "x" * 256,
    ],
)
def test_unsafe_paths_are_refused(path):
    with pytest.raises(BundleError, match="invalid bundle path"):
        validate_path(path)
    with pytest.raises(BundleError):
        manifest(files={path: b"x"})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"channel": "Prod"}, "channel"),
        ({"source_digest": "xyz"}, "source_digest"),
        ({"expires_at": "2026-01-10T16:00:00Z"}, "expires_at is not after created_at"),
        ({"created_at": "2026-01-10 16:00"}, "created_at"),
        ({"settings": {"action": "Post"}}, "mode"),
        ({"settings": {"action": "Drop", "mode": "monitor"}}, "action"),
        ({"counts": {"TracingPolicy": -1}}, "counts"),
    ],
)
def test_invalid_manifest_fields_are_refused(overrides, message):
    with pytest.raises(VerificationError, match=message) as exc:
        manifest(**overrides)
    assert exc.value.code == "malformed"


def test_a_file_list_that_does_not_match_the_digest_is_refused():
    m = manifest()
    m["files"][0]["sha256"] = "0" * 64
    with pytest.raises(VerificationError, match="digest mismatch") as exc:
        validate_manifest(m)
    assert exc.value.code == "digest_mismatch"


def test_duplicate_paths_are_refused():
    m = manifest()
    m["files"].append(copy.deepcopy(m["files"][0]))
    with pytest.raises(VerificationError, match="duplicate"):
        validate_manifest(m)


def test_verify_files_accepts_the_listed_files():
    verify_files(manifest(), FILES)


@pytest.mark.parametrize(
    "files, message",
    [
        ({k: v for k, v in FILES.items() if k != "a.yaml"}, "missing a.yaml"),
        ({**FILES, "evil.yaml": b"x"}, "not in the manifest: evil.yaml"),
        ({**FILES, "a.yaml": b"kind: X\n"}, "a.yaml has sha256"),
        ({**FILES, "a.yaml": b"kind: A\n\n"}, "a.yaml is 9 bytes"),
    ],
)
def test_verify_files_refuses_any_difference(files, message):
    with pytest.raises(VerificationError, match=message) as exc:
        verify_files(manifest(), files)
    assert exc.value.code == "file_mismatch"


def test_schema_requires_all_signature_fields_together():
    m = manifest()
    assert schema_errors({**m, "signature": "AAAA"}, SCHEMA)
    assert (
        schema_errors(
            {**m, "signature": "AAAA", "key_id": "k", "signature_algorithm": "ECDSA_SHA_256", "generation": 1}, SCHEMA
        )
        == []
    )


def test_schema_refuses_unknown_top_level_fields():
    assert schema_errors({**manifest(), "surprise": 1}, SCHEMA)

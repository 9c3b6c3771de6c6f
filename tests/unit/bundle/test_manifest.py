"""Manifest and digests: deterministic, path-safe, and checked against the manifest schema."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdr_policy.bundle.manifest import (
    MAX_BUNDLE_BYTES,
    MAX_FILE_BYTES,
    SCHEMA,
    Manifest,
    Settings,
    VerificationError,
    build_manifest,
    entries_digest,
    file_entries,
    validate_path,
    verify_files,
)
from cdr_policy.errors import BundleError
from cdr_policy.schemas import schema_errors

from .factory import SETTINGS, SOURCE

FILES = {"b.yaml": b"kind: B\n", "a.yaml": b"kind: A\n", "sub/c.json": b"{}"}


def bundle_digest(files: dict[str, bytes]) -> str:
    return entries_digest(file_entries(files))


def manifest(files: dict[str, bytes] = FILES, **overrides: Any) -> Manifest:
    kwargs: dict[str, Any] = dict(
        channel="prod",
        settings=SETTINGS,
        counts={"TracingPolicy": 2, "CiliumCIDRGroup": 1},
        created_at="2026-01-10T16:00:00Z",
        expires_at="2026-01-13T16:00:00Z",
        source_digest=SOURCE,
    )
    kwargs.update(overrides)
    return build_manifest(dict(files), **kwargs)


def test_same_files_give_the_same_digest_in_any_order() -> None:
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
def test_any_change_to_the_files_changes_the_digest(change: Callable[[dict[str, bytes]], dict[str, bytes]]) -> None:
    assert bundle_digest(change(FILES)) != bundle_digest(FILES)


def test_manifest_lists_files_sorted_with_hashes_and_sizes() -> None:
    m = manifest().to_json()
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
def test_unsafe_paths_are_refused(path: str) -> None:
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
        ({"counts": {"TracingPolicy": -1}}, "counts"),
    ],
)
def test_invalid_manifest_fields_are_refused(overrides: dict[str, str] | dict[str, Any], message: str) -> None:
    with pytest.raises(VerificationError, match=message) as exc:
        manifest(**overrides)
    assert exc.value.code == "malformed"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"action": "Post"}, "mode"),
        ({"action": "Drop", "mode": "monitor"}, "action"),
        ({"action": "Post", "mode": "monitor", "surprise": 1}, "settings"),
        ({"action": "Post", "mode": "monitor", "tetragon_max_prefixes": 10**9}, "tetragon_max_prefixes"),
    ],
)
def test_invalid_settings_are_refused(settings: dict[str, str] | dict[str, Any], message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        Manifest.from_json({**manifest().to_json(), "settings": settings})


def test_a_file_list_that_does_not_match_the_digest_is_refused() -> None:
    m = manifest().to_json()
    m["files"][0]["sha256"] = "0" * 64
    with pytest.raises(VerificationError, match="digest mismatch") as exc:
        Manifest.from_json(m)
    assert exc.value.code == "digest_mismatch"


def test_duplicate_paths_are_refused() -> None:
    m = manifest().to_json()
    m["files"].append(copy.deepcopy(m["files"][0]))
    with pytest.raises(VerificationError, match="duplicate"):
        Manifest.from_json(m)


def test_a_manifest_listing_more_than_a_reader_may_hold_is_refused_before_any_file_is_read() -> None:
    """A signed manifest listing a 1 GiB file (the agent's pod has 512 MiB) is refused as too large."""
    huge = manifest().to_json()
    huge["files"][0]["size"] = MAX_FILE_BYTES + 1
    with pytest.raises(VerificationError, match="malformed manifest|at most"):
        Manifest.from_json(huge)
    many = {f"f{i:03d}.json": b"x" for i in range(7)}
    doc = manifest(files=many).to_json()
    for entry in doc["files"]:
        entry["size"] = MAX_BUNDLE_BYTES // 6
    doc["digest"] = entries_digest(
        [type(file_entries({"a": b""})[0])(e["path"], e["sha256"], e["size"]) for e in doc["files"]]
    )
    with pytest.raises(VerificationError, match="add up to") as exc:
        Manifest.from_json(doc)
    assert exc.value.code == "too_large"


@given(
    generation=st.one_of(st.none(), st.integers(1, 2**53 - 1)),
    approval=st.booleans(),
    namespaces=st.one_of(st.none(), st.lists(st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True), max_size=3)),
    budget=st.one_of(st.none(), st.integers(1, 250_000)),
)
def test_a_document_read_and_written_again_is_the_same_document(
    generation: int | None, approval: bool, namespaces: list[str] | None, budget: int | None
) -> None:
    """The signature covers the document: ``to_json`` must give back exactly what ``from_json`` read."""
    doc = manifest(
        settings=Settings(
            action="Sigkill",
            mode="enforce",
            namespaces=tuple(namespaces) if namespaces is not None else None,
            tetragon_max_prefixes=budget,
        )
    ).to_json()
    if generation is not None:
        doc["generation"] = generation
        if approval:
            doc["approval"] = {"previous_digest": None, "approved_at": "2026-01-10T16:00:00Z"}
    assert Manifest.from_json(doc).to_json() == doc
    assert Manifest.parse(Manifest.from_json(doc).to_bytes(), "x").to_json() == doc


def test_verify_files_accepts_the_listed_files() -> None:
    verify_files(manifest(), FILES)


@pytest.mark.parametrize(
    "files, message",
    [
        ({k: v for k, v in FILES.items() if k != "a.yaml"}, "missing a.yaml"),
        ({**FILES, "evil.yaml": b"x"}, "1 file.s. not in the manifest"),
        ({**FILES, "a.yaml": b"kind: X\n"}, "a.yaml has sha256"),
        ({**FILES, "a.yaml": b"kind: A\n\n"}, "a.yaml is 9 bytes"),
    ],
)
def test_verify_files_refuses_any_difference(files: dict[str, bytes], message: str) -> None:
    with pytest.raises(VerificationError, match=message) as exc:
        verify_files(manifest(), files)
    assert exc.value.code == "file_mismatch"


def test_schema_requires_all_signature_fields_together() -> None:
    m = manifest().to_json()
    assert schema_errors({**m, "signature": "AAAA"}, SCHEMA)
    assert (
        schema_errors(
            {**m, "signature": "AAAA", "key_id": "k", "signature_algorithm": "ECDSA_SHA_256", "generation": 1}, SCHEMA
        )
        == []
    )


def test_schema_refuses_unknown_top_level_fields() -> None:
    assert schema_errors({**manifest().to_json(), "surprise": 1}, SCHEMA)

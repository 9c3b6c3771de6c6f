"""DirectoryApplier: the dry-run / GitOps target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdr_policy.agent.directory import DirectoryApplier
from cdr_policy.bundle.objects import file_name
from cdr_policy.policy import serialize
from cdr_policy.policy.serialize import dump_yaml, load_yaml_documents
from tests.unit.bundle.factory import ccg, labels, tracing_policy

from .test_kube import cnp

OURS = labels("prod")


def test_objects_become_one_yaml_file_each(tmp_path: Path) -> None:
    out = DirectoryApplier(tmp_path / "out")
    objects = [ccg("g1", ["45.0.0.1/32", "::ffff:45.0.0.1/128"]), tracing_policy("t1"), cnp("n1", "team-a")]
    for obj in objects:
        out.apply(obj)

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ciliumcidrgroup-g1.yaml",
        "ciliumnetworkpolicy-team-a.n1.yaml",
        "tracingpolicy-t1.yaml",
    ]
    for obj in objects:
        assert load_yaml_documents((tmp_path / "out" / file_name(obj)).read_bytes()) == [obj]
        assert out.get(obj) == obj


def test_owned_ignores_foreign_and_unreadable_files(tmp_path: Path) -> None:
    out = DirectoryApplier(tmp_path)
    out.apply(ccg("mine", []))
    out.apply(ccg("staging", [], channel="staging"))
    (tmp_path / "hand-written.yaml").write_text(
        "apiVersion: cilium.io/v2\nkind: CiliumCIDRGroup\nmetadata:\n  name: x\n"
    )
    (tmp_path / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels:\n"
        "    app.kubernetes.io/managed-by: cdr-policy\n    cdr-policy.io/channel: prod\n"
    )
    (tmp_path / "broken.yaml").write_text("kind: [")
    (tmp_path / "notes.txt").write_text("hello")

    assert [o["metadata"]["name"] for o in out.owned(OURS)] == ["mine"]


def test_delete_removes_the_file_and_tolerates_absence(tmp_path: Path) -> None:
    out = DirectoryApplier(tmp_path)
    out.apply(ccg("g1", []))
    out.delete(ccg("g1", []))
    out.delete(ccg("g1", []))
    assert list(tmp_path.iterdir()) == []
    assert out.get(ccg("g1", [])) is None


def test_missing_directory_owns_nothing(tmp_path: Path) -> None:
    assert DirectoryApplier(tmp_path / "absent").owned(OURS) == []


def test_a_file_edited_on_disk_is_read_again_and_a_caller_cannot_change_what_the_next_read_gets(
    tmp_path: Path,
) -> None:
    out = DirectoryApplier(tmp_path)
    obj = ccg("g1", ["45.0.0.1/32"])
    out.apply(obj)
    first = out.get(obj)
    assert first is not None and first == obj
    first["spec"]["externalCIDRs"].append("45.0.0.2/32")  # a caller changing its copy
    assert out.get(obj) == obj

    edited = ccg("g1", ["45.0.0.9/32"])
    (tmp_path / file_name(obj)).write_bytes(dump_yaml(edited))  # same name, new content, same size
    assert out.get(obj) == edited
    assert [o["spec"] for o in out.owned(OURS)] == [edited["spec"]]


def test_listing_what_it_wrote_parses_nothing_and_an_edited_file_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = DirectoryApplier(tmp_path)
    objects = [ccg("g1", ["45.0.0.1/32"]), tracing_policy("t1")]
    for obj in objects:
        out.apply(obj)
    parsed: list[str | bytes] = []
    real = serialize.load_yaml_documents

    def load(data: str | bytes) -> list[Any]:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(serialize, "load_yaml_documents", load)

    assert sorted(o["metadata"]["name"] for o in out.owned(OURS)) == ["g1", "t1"]
    assert parsed == []
    (tmp_path / file_name(objects[0])).write_bytes(dump_yaml(ccg("g1", ["45.0.0.2/32"])))
    assert len(out.owned(OURS)) == 2 and len(parsed) == 1


def test_a_file_nested_deeper_than_python_can_copy_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    out = DirectoryApplier(tmp_path)
    out.apply(ccg("mine", []))
    (tmp_path / "deep.yaml").write_text("kind: CiliumCIDRGroup\nspec: " + "[" * 5000 + "]" * 5000 + "\n")

    assert [o["metadata"]["name"] for o in out.owned(OURS)] == ["mine"]

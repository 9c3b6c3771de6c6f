"""``cdr-policy validate PATH... [--crds DIR]``: files, directories, multi-document YAML, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdr_policy.cli.validate import CRDS_ENV, default_crds_dir, validate_main
from cdr_policy.errors import PolicyCheckError
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet, check_files
from cdr_policy.policy.checker.files import ValidateReport

from .factories import behaviour, cdr_set, feed_set, file_bytes, indicator, render


def _write_rendered(directory: Path) -> list[str]:
    sets = [
        cdr_set([indicator("45.33.32.0/24"), indicator("tcp/4444", "port")], [behaviour("cloud_credentials")]),
        feed_set("tor-exit", ["185.220.101.4/32"], "tor"),
    ]
    result = render(sets, ChannelSettings(name="prod", action="Sigkill", namespaces=("web",)))
    for name, data in file_bytes(result).items():
        (directory / name).write_bytes(data)
    return sorted(file_bytes(result))


def test_rendered_output_validates_clean(tmp_path: Path, crds_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = _write_rendered(tmp_path)
    assert validate_main([str(tmp_path), "--crds", str(crds_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{len(names)} object(s) in {len(names)} file(s)" in out and "0 error(s)" in out


def test_upstream_examples_fail_the_checklist(crds_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_main([str(crds_dir / "examples"), "--crds", str(crds_dir)]) == 1
    out = capsys.readouterr().out
    assert "tetragon.unscoped-enforcement" in out and "tetragon.not-addr-kill" in out
    assert "schema." not in out.replace("schema.deprecated", "")  # schema-valid, checklist-unsafe


def test_multi_document_files_lists_and_bad_yaml(
    tmp_path: Path, crds_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "deny"},
        "spec": {"endpointSelector": {}, "egressDeny": [{"toFQDNs": [{"matchName": "evil.example"}]}]},
    }
    group = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumCIDRGroup",
        "metadata": {"name": "g"},
        "spec": {"externalCIDRs": ["10.0.0.0/8"]},
    }
    (tmp_path / "a.yaml").write_text(json.dumps(policy) + "\n---\n" + json.dumps({"kind": "List", "items": [group]}))
    (tmp_path / "broken.yml").write_text("a: [1, 2\n")
    (tmp_path / "notes.txt").write_text("ignored")
    report = check_files([tmp_path], SchemaSet.from_dir(crds_dir))
    assert [Path(f.path).name for f in report.files] == ["a.yaml", "broken.yml"]
    a, broken = report.files
    assert [o.kind for o in a.objects] == ["CiliumClusterwideNetworkPolicy", "CiliumCIDRGroup"]
    codes = {p.code for p in a.objects[0].problems}
    assert {"schema.unknown-field", "cilium.fqdn-deny", "cilium.default-deny"} <= codes
    # the group feeds no deny rule here and is not ours: private ranges are allowed in it
    assert "cidr.never-block" not in {p.code for p in a.objects[1].problems}
    assert broken.problems[0].code == "file.yaml"
    assert validate_main([str(tmp_path), "--crds", str(crds_dir), "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert ValidateReport.from_json(printed) == report and report.errors > 0


def test_groups_referenced_by_a_deny_rule_are_checked_against_the_never_block_list(
    tmp_path: Path, crds_dir: Path
) -> None:
    group = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumCIDRGroup",
        "metadata": {"name": "g"},
        "spec": {"externalCIDRs": ["10.0.0.0/8"]},
    }
    policy = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "deny"},
        "spec": {
            "endpointSelector": {},
            "enableDefaultDeny": {"egress": False, "ingress": False},
            "egressDeny": [{"toCIDRSet": [{"cidrGroupRef": "g"}, {"cidrGroupRef": "missing"}]}],
        },
    }
    (tmp_path / "p.yaml").write_text(json.dumps(group) + "\n---\n" + json.dumps(policy))
    assert validate_main([str(tmp_path), "--crds", str(crds_dir), "--protected", "45.33.0.0/16"]) == 1
    from cdr_policy.guards import NeverBlock

    report = check_files([tmp_path / "p.yaml"], SchemaSet.from_dir(crds_dir), guard=NeverBlock())
    group_codes = {p.code for p in report.files[0].objects[0].problems}
    policy_codes = {p.code for p in report.files[0].objects[1].problems}
    assert "cidr.never-block" in group_codes
    assert "cilium.dangling-group" in policy_codes
    assert validate_main([str(tmp_path), "--crds", str(crds_dir), "--no-never-block"]) == 0


def test_usage_errors_exit_2(
    tmp_path: Path, crds_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert validate_main([str(tmp_path / "nope.yaml"), "--crds", str(crds_dir)]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert validate_main([str(tmp_path), "--crds", str(tmp_path)]) == 2
    assert "no CustomResourceDefinition" in capsys.readouterr().err
    assert validate_main([str(tmp_path), "--crds", str(crds_dir), "--protected", "not-a-cidr"]) == 2
    monkeypatch.delenv(CRDS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert validate_main([str(tmp_path)]) == 2
    assert "pass --crds DIR or set CDR_POLICY_CRDS" in capsys.readouterr().err


def test_default_crds_location(tmp_path: Path, crds_dir: Path) -> None:
    assert default_crds_dir({CRDS_ENV: str(crds_dir)}) == crds_dir
    work = tmp_path / "repo"
    (tmp_path / "shared" / "crds").mkdir(parents=True)
    work.mkdir()
    assert default_crds_dir({}, cwd=work) == (tmp_path / "shared" / "crds").resolve()
    with pytest.raises(PolicyCheckError):
        default_crds_dir({}, cwd=tmp_path)


def test_env_variable_is_used(
    tmp_path: Path, crds_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_rendered(tmp_path)
    monkeypatch.setenv(CRDS_ENV, str(crds_dir))
    assert validate_main([str(tmp_path)]) == 0


def test_crds_as_kubectl_writes_them_a_list(tmp_path: Path, crds_dir: Path) -> None:
    import yaml

    crds = [yaml.safe_load(p.read_text()) for p in sorted(crds_dir.glob("tetragon_*.yaml"))]
    (tmp_path / "crds").mkdir()
    (tmp_path / "crds" / "all.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": crds}))
    schemas = SchemaSet.from_dir(tmp_path / "crds")
    assert {key[2] for key in schemas.versions} >= {"TracingPolicy", "TracingPolicyNamespaced"}


def test_an_object_whose_kind_or_name_is_not_a_string_is_reported_without_them(
    tmp_path: Path, crds_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "odd.yaml").write_text("kind: 5\nmetadata: {name: [7]}\n")
    assert validate_main([str(tmp_path), "--crds", str(crds_dir)]) == 1
    assert "odd.yaml: ?/?: error schema.type-meta" in capsys.readouterr().out
    [checked] = check_files([tmp_path], SchemaSet.from_dir(crds_dir)).files[0].objects
    assert (checked.kind, checked.name) == (None, None)

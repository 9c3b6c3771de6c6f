from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from cdr_policy.policy import naming
from cdr_policy.policy.serialize import dump_yaml, load_yaml_documents


def _policy(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": "", "labels": naming.ownership_labels("prod", naming.COMPONENT_BEHAVIOUR)},
        "spec": spec,
    }


def test_name_is_kind_purpose_hash_and_follows_the_content() -> None:
    a = _policy({"kprobes": [{"call": "tcp_connect"}]})
    b = copy.deepcopy(a)
    name = naming.assign_name(a, "cloud_credentials")
    assert name.startswith("tp-cloud-credentials-") and len(name.rsplit("-", 1)[1]) == 8
    assert naming.assign_name(b, "cloud_credentials") == name  # same content, same name
    b["spec"]["kprobes"][0]["call"] = "security_socket_connect"
    assert naming.assign_name(b, "cloud_credentials") != name  # any change, a new name


def test_name_ignores_its_own_name_annotations_and_the_bundle_label() -> None:
    a = _policy({"x": 1})
    name = naming.assign_name(a, "p")
    a["metadata"]["labels"][naming.BUNDLE_KEY] = "0123abcd"
    a["metadata"]["annotations"] = {naming.EXPIRES_AT: "2026-01-17T00:00:00Z"}
    assert naming.assign_name(a, "p") == name
    a["metadata"]["labels"][naming.CHANNEL_KEY] = "staging"  # but not the other labels
    assert naming.assign_name(a, "p") != name


def test_long_purposes_are_cut_to_63_characters_and_stay_dns_1123() -> None:
    obj = _policy({})
    name = naming.assign_name(obj, "A Very_Long Purpose! " * 10)
    assert len(name) <= 63 and naming.is_dns_subdomain(name) and naming.is_label_value(name)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("tp-a-1", True),
        ("Block_FQDN", False),
        ("a" * 254, False),
        ("-a", False),
        ("a.b-c", True),
        ("", False),
    ],
)
def test_dns_subdomain(value: str, ok: bool) -> None:
    assert naming.is_dns_subdomain(value) is ok


@pytest.mark.parametrize(
    ("key", "ok"),
    [("app", True), ("cdr-policy.io/channel", True), ("a/b/c", False), ("Bad_/x", False), ("x" * 64, False)],
)
def test_label_keys(key: str, ok: bool) -> None:
    assert naming.is_label_key(key) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [("", True), ("cloud_credentials", True), ("198.51.100.0/24", False), ("-x", False), ("a" * 64, False)],
)
def test_label_values(value: str, ok: bool) -> None:
    assert naming.is_label_value(value) is ok


def test_ownership_labels_refuse_invalid_values() -> None:
    with pytest.raises(ValueError):
        naming.ownership_labels("prod", "behaviour", blocklist="198.51.100.0/24")


def test_file_names_keep_the_originals() -> None:
    assert naming.behaviour_base("cloud_credentials", "2026-01-10T16:45:00Z") == "cdr-block-cloud-creds-20260110"
    assert naming.behaviour_base("network_scanning", "2026-01-10T00:00:00Z") == "cdr-block-network-scan-20260110"
    assert naming.behaviour_base("log_tampering", "2026-02-01T00:00:00Z") == "cdr-block-log-tampering-20260201"
    assert naming.part_filename("threat-intel-blocklist", 1) == "threat-intel-blocklist.yaml"
    assert naming.part_filename("threat-intel-blocklist", 3, "payments") == "threat-intel-blocklist-3-payments.yaml"
    assert naming.group_filename("cilium-cdr-blocklist", 2) == "cilium-cdr-blocklist-cidrs-002.yaml"
    with pytest.raises(ValueError):
        naming.behaviour_base("x", "yesterday")


def test_dump_yaml_is_deterministic_and_keeps_strings_strings() -> None:
    obj = {"b": ["3", "0x10000000", "::ffff:198.51.100.0/120", "yes", "-1"], "a": {"n": -1, "empty": {}}}
    data = dump_yaml(obj)
    assert data == dump_yaml(copy.deepcopy(obj))
    assert data.startswith(b"b:")  # build order kept, not re-sorted
    assert yaml.safe_load(data) == obj
    assert b"'::ffff:198.51.100.0/120'" in data


def test_load_yaml_documents_skips_empty_documents() -> None:
    assert load_yaml_documents("---\na: 1\n---\n---\nb: 2\n") == [{"a": 1}, {"b": 2}]


class _ReferenceDumper(yaml.SafeDumper):
    """PyYAML's own emitter with the project's representers: what ``dump_yaml`` must equal."""

    def ignore_aliases(self, data: object) -> bool:
        return True


_ReferenceDumper.add_representer(
    str,
    lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="'" if v.startswith(":") else None),
)


def test_long_prefix_lists_written_as_lines_are_the_emitters_bytes() -> None:
    v4 = [f"45.{i // 256}.{i % 256}.0/24" for i in range(100)]
    v6 = [f"2a00:{i:x}::/32" for i in range(70)]
    obj = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumCIDRGroup",
        "metadata": {"name": "g", "annotations": {"x": "3"}},
        "spec": {
            "externalCIDRs": v4 + v6,
            "kprobes": [
                {"values": v4 + [f"::ffff:{v.split('/')[0]}/120" for v in v4]},
                {"index": 0, "nested": {"values": v6}, "short": ["1.2.3.4/32"]},
            ],
            "notPrefixes": [*v4[:70], "not a prefix"],
            "twoLines": [*v4[:70], "45.1.1.0/24\n45.1.2.0/24"],
        },
    }
    reference = yaml.dump(
        obj, Dumper=_ReferenceDumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=10_000
    ).encode()
    assert dump_yaml(obj) == reference
    assert load_yaml_documents(dump_yaml(obj)) == [obj]

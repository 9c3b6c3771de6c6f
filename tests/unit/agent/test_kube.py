"""KubeApplier against the loopback fake API server, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdr_policy.agent.applier import ApplyError
from cdr_policy.agent.kube import KubeApplier
from cdr_policy.errors import ConfigError
from cdr_policy.policy.serialize import load_yaml_documents
from fakes.kube import FakeKubeAPI
from tests.unit.bundle.factory import ccg, ccnp, labels, tracing_policy

OURS = labels("prod")


def cnp(name: str, namespace: str, channel: str = "prod") -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(channel)},
        "spec": {"endpointSelector": {}, "egressDeny": [{"toCIDR": ["45.0.0.1/32"]}]},
    }


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api


@pytest.fixture
def applier(kube: FakeKubeAPI) -> Iterator[KubeApplier]:
    a = KubeApplier(kube.url, kube.token)
    yield a
    a.close()


def test_apply_is_a_strict_forced_server_side_apply(kube: FakeKubeAPI, applier: KubeApplier) -> None:
    applier.apply(ccg("g1", ["45.0.0.1/32"]))

    stored = kube.get_object("CiliumCIDRGroup", "g1")
    assert stored is not None
    assert stored["spec"] == {"externalCIDRs": ["45.0.0.1/32"]}
    (op,) = kube.operations
    assert (op.verb, op.kind, op.name) == ("apply", "CiliumCIDRGroup", "g1")
    assert op.params == {"fieldManager": "cdr-policy", "force": "true", "fieldValidation": "Strict"}


def test_owned_lists_every_kind_by_label_and_nothing_else(kube: FakeKubeAPI, applier: KubeApplier) -> None:
    for obj in (
        ccg("g1", []),
        ccnp("p1", ["g1"]),
        tracing_policy("t1"),
        cnp("n1", "team-a"),
        cnp("n2", "team-b"),
    ):
        applier.apply(obj)
    kube.add_object(ccg("foreign", []) | {"metadata": {"name": "foreign", "labels": {"app": "other"}}})
    kube.add_object(ccg("staging-g", [], channel="staging"))

    owned = applier.owned(OURS)

    assert sorted((o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in owned) == [
        ("CiliumCIDRGroup", None, "g1"),
        ("CiliumClusterwideNetworkPolicy", None, "p1"),
        ("CiliumNetworkPolicy", "team-a", "n1"),
        ("CiliumNetworkPolicy", "team-b", "n2"),
        ("TracingPolicy", None, "t1"),
    ]
    lists = [op for op in kube.operations if op.verb == "list"]
    assert {op.params["labelSelector"] for op in lists} == {
        "app.kubernetes.io/managed-by=cdr-policy,cdr-policy.io/channel=prod"
    }


def test_get_and_delete(kube: FakeKubeAPI, applier: KubeApplier) -> None:
    assert applier.get(ccg("g1", [])) is None
    applier.apply(ccg("g1", []))
    live = applier.get(ccg("g1", []))
    assert live is not None and live["metadata"]["name"] == "g1"
    applier.delete(ccg("g1", []))
    applier.delete(ccg("g1", []))  # already gone is fine
    assert kube.objects() == []


def test_a_rejected_object_raises_with_the_servers_message() -> None:
    with FakeKubeAPI(validator=lambda obj: ["spec.bogus: field not declared in schema"]) as kube:
        applier = KubeApplier(kube.url, kube.token)
        with pytest.raises(ApplyError, match="rejected by the API server: .*spec.bogus: field not declared"):
            applier.apply(ccg("g1", []))
        assert kube.objects() == []


def test_wrong_token_is_reported(kube: FakeKubeAPI) -> None:
    with pytest.raises(ApplyError, match="unauthorized"):
        KubeApplier(kube.url, "wrong").apply(ccg("g1", []))


def test_transient_errors_are_retried(kube: FakeKubeAPI, applier: KubeApplier) -> None:
    kube.fail("apply", 503, times=2)
    applier.apply(ccg("g1", []))
    assert [op.verb for op in kube.operations] == ["apply"] * 3
    assert kube.get_object("CiliumCIDRGroup", "g1") is not None


def test_persistent_errors_give_up_after_three_attempts(kube: FakeKubeAPI, applier: KubeApplier) -> None:
    kube.fail("apply", 500, times=5)
    with pytest.raises(ApplyError, match="after 3 attempts: HTTP 500"):
        applier.apply(ccg("g1", []))


def test_unreachable_server(kube: FakeKubeAPI) -> None:
    url = kube.url
    kube.stop()
    with pytest.raises(ApplyError, match="no answer from"):
        KubeApplier(url, "t", timeout=2).owned(OURS)


def test_token_file_is_read_on_every_request(kube: FakeKubeAPI, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(kube.token + "\n")
    applier = KubeApplier(kube.url, None, token_file=token_file)
    applier.apply(ccg("g1", []))
    kube.token = "rotated-token"
    token_file.write_text("rotated-token")
    applier.apply(ccg("g2", []))
    assert len(kube.objects()) == 2


@pytest.mark.parametrize("url", ["http://10.0.0.1:6443", "ftp://127.0.0.1", "https://"])
def test_unsafe_or_invalid_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        KubeApplier(url, "t")


def test_crds_are_the_installed_cilium_ones(kube: FakeKubeAPI, applier: KubeApplier) -> None:
    kube.crds.append(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "names": {"kind": "Widget", "plural": "widgets"},
                "scope": "Cluster",
                "versions": [],
            },
        }
    )
    assert [c["metadata"]["name"] for c in applier.crds()] == [
        "ciliumcidrgroups.cilium.io",
        "ciliumclusterwidenetworkpolicies.cilium.io",
        "ciliumnetworkpolicies.cilium.io",
        "tracingpolicies.cilium.io",
        "tracingpoliciesnamespaced.cilium.io",
    ]


def load_crds(crds_dir: Path, *paths: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        docs.extend(load_yaml_documents((crds_dir / path).read_bytes()))
    return docs


def test_against_a_cilium_1_16_cluster(crds_dir: Path) -> None:
    # Cilium 1.16 serves CiliumCIDRGroup only as v2alpha1.
    crds = load_crds(
        crds_dir,
        "cilium-v1.16.5/v2alpha1_ciliumcidrgroups.yaml",
        "cilium-v1.16.5/v2_ciliumclusterwidenetworkpolicies.yaml",
        "tetragon_cilium.io_tracingpolicies.yaml",
    )
    with FakeKubeAPI(crds=crds) as kube:
        applier = KubeApplier(kube.url, kube.token)
        with pytest.raises(ApplyError, match="not served by this cluster"):
            applier.apply(ccg("g2", []))
        with pytest.raises(ApplyError, match="not served by this cluster"):
            applier.get(ccg("g2", []))
        applier.apply(ccg("g1", [], api_version="cilium.io/v2alpha1"))
        applier.apply(ccnp("p1", ["g1"]))

        owned = applier.owned(OURS)

        assert sorted((o["apiVersion"], o["kind"]) for o in owned) == [
            ("cilium.io/v2", "CiliumClusterwideNetworkPolicy"),
            ("cilium.io/v2alpha1", "CiliumCIDRGroup"),
        ]
        assert {c["spec"]["names"]["kind"] for c in applier.crds()} == {
            "CiliumCIDRGroup",
            "CiliumClusterwideNetworkPolicy",
            "TracingPolicy",
        }

"""The fake API server itself: enough of the real one's behaviour that tests against it mean something."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest

from fakes.kube import FakeKubeAPI

GROUPS = "/apis/cilium.io/v2/ciliumcidrgroups"


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api


@pytest.fixture
def client(kube: FakeKubeAPI) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kube.url, headers={"Authorization": f"Bearer {kube.token}"}) as c:
        yield c


def apply(client: httpx.Client, obj: dict[str, Any], **params: str) -> httpx.Response:
    params = {"fieldManager": "test", **params}
    return client.patch(
        f"{GROUPS}/{obj['metadata']['name']}",
        params=params,
        content=httpx.Request("PATCH", "http://x", json=obj).content,
        headers={"Content-Type": "application/apply-patch+yaml"},
    )


def group(name: str, labels: dict[str, str] | None = None, cidrs: Sequence[str] = ("45.0.0.1/32",)) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumCIDRGroup",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"externalCIDRs": list(cidrs)},
    }


def test_token_is_required(kube: FakeKubeAPI) -> None:
    assert httpx.get(kube.url + GROUPS).status_code == 401
    assert httpx.get(kube.url + GROUPS, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_apply_creates_then_updates(kube: FakeKubeAPI, client: httpx.Client) -> None:
    created = apply(client, group("g1"))
    assert created.status_code == 201
    assert created.json()["metadata"]["generation"] == 1
    same = apply(client, group("g1"))
    assert same.status_code == 200 and same.json()["metadata"]["generation"] == 1
    changed = apply(client, group("g1", cidrs=("45.0.0.2/32",)))
    assert changed.json()["metadata"]["generation"] == 2
    assert changed.json()["metadata"]["uid"] == created.json()["metadata"]["uid"]
    stored = kube.get_object("CiliumCIDRGroup", "g1")
    assert stored is not None
    assert stored["spec"] == {"externalCIDRs": ["45.0.0.2/32"]}


def test_apply_keeps_labels_of_other_managers_and_drops_its_own_stale_ones(client: httpx.Client) -> None:
    apply(client, group("g1", {"mine": "1", "old": "1"}), fieldManager="a")
    apply(client, group("g1", {"theirs": "1"}), fieldManager="b")
    result = apply(client, group("g1", {"mine": "2"}), fieldManager="a")
    assert result.json()["metadata"]["labels"] == {"mine": "2", "theirs": "1"}


def test_apply_needs_the_apply_patch_content_type_and_a_field_manager(client: httpx.Client) -> None:
    body = httpx.Request("PATCH", "http://x", json=group("g1")).content
    assert (
        client.patch(
            f"{GROUPS}/g1",
            params={"fieldManager": "x"},
            content=body,
            headers={"Content-Type": "application/merge-patch+json"},
        ).status_code
        == 415
    )
    response = client.patch(f"{GROUPS}/g1", content=body, headers={"Content-Type": "application/apply-patch+yaml"})
    assert response.status_code == 400 and "fieldManager" in response.json()["message"]
    assert apply(client, group("other-name")).status_code == 201
    mismatch = client.patch(
        f"{GROUPS}/g2",
        params={"fieldManager": "x"},
        content=body,
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    assert mismatch.status_code == 400


def test_strict_validation_uses_the_injected_validator() -> None:
    def validator(obj: dict[str, Any]) -> list[str]:
        return ["spec.externalCIDRs[0]: invalid CIDR"] if "bad" in obj["spec"]["externalCIDRs"] else []

    with (
        FakeKubeAPI(validator=validator) as kube,
        httpx.Client(base_url=kube.url, headers={"Authorization": f"Bearer {kube.token}"}) as client,
    ):
        lax = apply(client, group("g1", cidrs=("bad",)))
        strict = apply(client, group("g2", cidrs=("bad",)), fieldValidation="Strict")
    assert lax.status_code == 201
    assert strict.status_code == 422
    assert strict.json()["reason"] == "Invalid"
    assert 'CiliumCIDRGroup.cilium.io "g2" is invalid: spec.externalCIDRs[0]: invalid CIDR' == strict.json()["message"]


def test_lists_filter_by_equality_selectors(kube: FakeKubeAPI, client: httpx.Client) -> None:
    kube.add_object(group("a", {"app": "x", "tier": "1"}))
    kube.add_object(group("b", {"app": "x", "tier": "2"}))
    kube.add_object(group("c", {"app": "y"}))

    def names(selector: str) -> list[str]:
        body = client.get(GROUPS, params={"labelSelector": selector}).json()
        assert body["kind"] == "CiliumCIDRGroupList"
        return [i["metadata"]["name"] for i in body["items"]]

    assert names("") == ["a", "b", "c"]
    assert names("app=x") == ["a", "b"]
    assert names("app==x,tier!=2") == ["a"]
    assert names("tier!=1") == ["b", "c"]
    assert client.get(GROUPS, params={"labelSelector": "app in (x)"}).status_code == 400


def test_every_served_version_sees_the_same_object(kube: FakeKubeAPI, client: httpx.Client) -> None:
    apply(client, group("g1"))
    old = client.get("/apis/cilium.io/v2alpha1/ciliumcidrgroups/g1")
    assert old.status_code == 200 and old.json()["apiVersion"] == "cilium.io/v2alpha1"


def test_missing_objects_and_unknown_resources_are_different_404s(client: httpx.Client) -> None:
    missing = client.get(f"{GROUPS}/nope")
    assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"
    assert missing.json()["details"]["name"] == "nope"
    unknown = client.get("/apis/cilium.io/v9/ciliumcidrgroups/nope")
    assert unknown.status_code == 404 and unknown.text == "404 page not found"
    assert client.get("/apis/cilium.io/v2/namespaces/x/ciliumcidrgroups").status_code == 404  # cluster-scoped


def test_delete_and_operation_log(kube: FakeKubeAPI, client: httpx.Client) -> None:
    apply(client, group("g1"))
    assert client.delete(f"{GROUPS}/g1").status_code == 200
    assert client.delete(f"{GROUPS}/g1").status_code == 404
    assert kube.ops() == [
        ("apply", "CiliumCIDRGroup", "g1"),
        ("delete", "CiliumCIDRGroup", "g1"),
        ("delete", "CiliumCIDRGroup", "g1"),
    ]
    assert kube.objects() == []


def test_injected_faults_answer_the_next_requests(kube: FakeKubeAPI, client: httpx.Client) -> None:
    kube.fail("list", 503, times=2)
    assert client.get(GROUPS).status_code == 503
    assert client.get(GROUPS).status_code == 503
    assert client.get(GROUPS).status_code == 200


def test_crd_list(kube: FakeKubeAPI, client: httpx.Client) -> None:
    body = client.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").json()
    assert sorted(c["spec"]["names"]["kind"] for c in body["items"]) == [
        "CiliumCIDRGroup",
        "CiliumClusterwideNetworkPolicy",
        "CiliumNetworkPolicy",
        "TracingPolicy",
        "TracingPolicyNamespaced",
    ]


def test_configmaps_with_optimistic_concurrency(kube: FakeKubeAPI, client: httpx.Client) -> None:
    path = "/api/v1/namespaces/ns1/configmaps"
    assert client.get(f"{path}/state").status_code == 404
    created = client.post(path, json={"metadata": {"name": "state"}, "data": {"a": "1"}})
    assert created.status_code == 201
    assert client.post(path, json={"metadata": {"name": "state"}}).json()["reason"] == "AlreadyExists"
    version = created.json()["metadata"]["resourceVersion"]
    body = {"metadata": {"name": "state", "resourceVersion": version}, "data": {"a": "2"}}
    assert client.put(f"{path}/state", json=body).status_code == 200
    stale = client.put(f"{path}/state", json=body)  # the same resourceVersion again
    assert (stale.status_code, stale.json()["reason"]) == (409, "Conflict")
    stored = kube.configmap("ns1", "state")
    assert stored is not None
    assert stored["data"] == {"a": "2"}
    kube.set_config_map("ns1", "state", None)
    assert client.get(f"{path}/state").status_code == 404

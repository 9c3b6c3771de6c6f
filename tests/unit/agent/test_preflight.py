"""The cluster pre-flight (issue 11) through the agent and the shared apply path, against the
loopback Kubernetes fake serving the upstream Cilium and Tetragon CRDs of the version in question."""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdr_policy import layout
from cdr_policy.admission import protection
from cdr_policy.agent.cli import admission_for
from cdr_policy.agent.directory import DirectoryApplier
from cdr_policy.agent.kube import KubeApplier
from cdr_policy.agent.preflight import run_preflight
from cdr_policy.agent.reconcile import reconcile
from cdr_policy.agent.status import AgentStatus
from cdr_policy.agent.sync import Agent
from cdr_policy.bundle.manifest import Settings
from cdr_policy.bundle.signing import LocalSigner, Verifier
from cdr_policy.errors import ConfigError
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.stages.publish import publish_bundle
from cdr_policy.storage import LocalStore
from fakes.kube import FakeKubeAPI
from fakes.stores import RecordingStore
from tests.unit.bundle.factory import T0, approve, plant_signed
from tests.unit.bundle.factory import render as stage_bundle
from tests.unit.policy.factories import behaviour, cdr_set, file_bytes, indicator, render

MINUTE = timedelta(minutes=1)
CILIUM_KINDS = {"CiliumCIDRGroup", "CiliumClusterwideNetworkPolicy"}
OFF = {("kube-system", "cilium-config"): {"enable-non-default-deny-policies": "false"}}
ON = {("kube-system", "cilium-config"): {"enable-non-default-deny-policies": "true"}}


@functools.cache
def _parsed(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return doc


def _load(path: Path) -> dict[str, Any]:
    return copy.deepcopy(_parsed(path))


def cluster_crds(crds_dir: Path, cilium: str) -> list[dict[str, Any]]:
    """The CRDs a cluster running Cilium ``cilium`` serves (1.17 is main's schema with the
    CiliumCIDRGroup served as v2alpha1 only, as it was before the v2 promotion in 1.18)."""
    tetragon = [_load(p) for p in sorted(crds_dir.glob("tetragon_*.yaml"))]
    if cilium == "1.16":
        return tetragon + [_load(p) for p in sorted((crds_dir / "cilium-v1.16.5").glob("*.yaml"))]
    main = [_load(p) for p in sorted((crds_dir / "cilium-main").glob("*.yaml"))]
    if cilium == "1.17":
        for crd in main:
            if crd["spec"]["names"]["kind"] == "CiliumCIDRGroup":
                [v2] = [v for v in crd["spec"]["versions"] if v["name"] == "v2"]
                crd["spec"]["versions"] = [{**copy.deepcopy(v2), "name": "v2alpha1", "storage": True}]
    return tetragon + main


def bundle_files(cilium_version: str = "1.17", *more: str) -> dict[str, bytes]:
    channel = ChannelSettings(name="prod", action="Sigkill", cilium_version=cilium_version)
    entries = [indicator(v) for v in ("45.33.32.0/24", "2a00:1450:4001::/48", *more)]
    sets = [cdr_set(entries, [behaviour("crypto_mining")])]
    return file_bytes(render(sets, channel))


# bundle_files renders for a Sigkill channel: the manifest says so (Publish compares the two)
SIGKILL = Settings(action="Sigkill", mode="enforce")  # either CiliumCIDRGroup API version


def kinds(kube: FakeKubeAPI) -> set[str]:
    return {o["kind"] for o in kube.objects()}


@pytest.fixture
def bucket(dist: LocalStore) -> RecordingStore:
    return RecordingStore(dist)


@pytest.fixture
def ship(
    state: LocalStore, bucket: RecordingStore, signer: LocalSigner, approver: LocalSigner, approvers: Verifier
) -> Callable[..., str]:
    def ship(files: dict[str, bytes], when: datetime = T0) -> str:
        digest = stage_bundle(state, files, channel="prod", created=when, settings=SIGKILL)
        approve(state, bucket, approver, digest, channel="prod", now=when)  # not about the change budget
        assert publish_bundle(
            state,
            bucket,
            channel="prod",
            digest=digest,
            signer=signer,
            now=when,
            change_budget_percent=100,
            approvers=approvers,
        ).shipped
        return digest

    return ship


@pytest.fixture
def agent_for(bucket: RecordingStore, verifier: Verifier, tmp_path: Path) -> Callable[..., Agent]:
    def make(kube: FakeKubeAPI, *, checked: bool = False, **applier_kwargs: Any) -> Agent:
        applier = KubeApplier(kube.url, kube.token, **applier_kwargs)
        return Agent(
            bucket,
            channel="prod",
            cluster_id="eks-prod-1",
            verifier=verifier,
            applier=applier,
            state_dir=tmp_path / "agent-state",
            # as `cdr-policy agent --kubernetes`: the cluster's CRDs
            admission=admission_for(applier, None, protection(where="this cluster")) if checked else None,
        )

    return make


def test_non_default_deny_off_applies_tetragon_refuses_cilium_and_reports(
    crds_dir: Path,
    ship: Callable[..., str],
    agent_for: Callable[..., Agent],
    bucket: RecordingStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ship(bundle_files("1.17"))
    with FakeKubeAPI(crds=cluster_crds(crds_dir, "1.17"), config_maps=OFF) as kube:
        with caplog.at_level(logging.ERROR):
            status = agent_for(kube).sync_once(T0 + MINUTE).to_json()

        assert kinds(kube) == {"TracingPolicy"}, "the Tetragon part applies, no Cilium object does"
        first_apply = next(i for i, op in enumerate(kube.operations) if op.verb == "apply")
        assert [op.verb for op in kube.operations[:first_apply]].count("configmap") == 1, "read before applying"
    assert status["last_poll"]["result"] == "partial"
    assert "held back by the cluster pre-flight (withdraw)" in status["last_poll"]["detail"]
    preflight = status["preflight"]
    assert preflight["cilium"] == "withdraw"
    assert [f["code"] for f in preflight["findings"]] == ["non-default-deny-off"]
    assert "enable-non-default-deny-policies" in preflight["findings"][0]["message"]
    assert preflight["cluster"]["enable-non-default-deny-policies"] == "false"
    assert preflight["cluster"]["cilium_versions"] == "1.17"
    held = [e for e in status["apply_errors"] if e["action"] == "preflight"]
    assert {e["kind"] for e in held} == CILIUM_KINDS and len(held) == len(status["apply_errors"])
    assert AgentStatus.parse(bucket.inner.get(layout.status_key("eks-prod-1")).data).to_json() == status  # schema-valid
    assert any("pre-flight" in r.getMessage() for r in caplog.records)


def test_live_deny_policies_are_withdrawn_and_a_fixed_config_is_picked_up(
    crds_dir: Path, ship: Callable[..., str], agent_for: Callable[..., Agent]
) -> None:
    ship(bundle_files("1.17"))
    with FakeKubeAPI(crds=cluster_crds(crds_dir, "1.17"), config_maps=ON) as kube:
        agent = agent_for(kube)
        assert agent.sync_once(T0 + MINUTE).to_json()["last_poll"]["result"] == "applied"
        assert kinds(kube) == {"TracingPolicy", *CILIUM_KINDS}

        kube.set_config_map("kube-system", "cilium-config", {"enable-non-default-deny-policies": "false"})
        ship(bundle_files("1.17", "91.92.93.0/24"), when=T0 + 2 * MINUTE)
        status = agent.sync_once(T0 + 3 * MINUTE).to_json()
        assert status["last_poll"]["result"] == "partial"
        assert kinds(kube) == {"TracingPolicy"}, "the live deny policy and its groups are withdrawn"
        # the withdrawn CCNP and CCG, and the Tetragon blocklist the new bundle replaced
        assert status["objects"]["deleted"] == 3

        kube.set_config_map("kube-system", "cilium-config", {})  # key absent: Cilium's default, on
        status = agent.sync_once(T0 + 4 * MINUTE).to_json()  # same manifest: verified again, not skipped by ETag
        assert status["last_poll"]["result"] == "applied" and status["preflight"]["findings"] == []
        assert kinds(kube) == {"TracingPolicy", *CILIUM_KINDS}


@pytest.mark.parametrize("problem", ["missing", "forbidden"])
def test_an_unverifiable_config_withholds_cilium_and_keeps_what_is_live(
    crds_dir: Path, ship: Callable[..., str], agent_for: Callable[..., Agent], problem: str
) -> None:
    ship(bundle_files("1.17"))
    with FakeKubeAPI(crds=cluster_crds(crds_dir, "1.17"), config_maps=ON) as kube:
        agent = agent_for(kube)
        agent.sync_once(T0 + MINUTE).to_json()
        live = sorted(o["metadata"]["name"] for o in kube.objects() if o["kind"] in CILIUM_KINDS)
        if problem == "missing":
            kube.set_config_map("kube-system", "cilium-config", None)
        else:
            kube.fail("configmap", 403, times=10)
        # a new bundle with other Cilium objects: they are not applied, the live ones not pruned
        ship(file_bytes(render([cdr_set([indicator("91.92.93.0/24")])], ChannelSettings(name="prod"))), T0 + 2 * MINUTE)
        status = agent.sync_once(T0 + 3 * MINUTE).to_json()
        assert status["last_poll"]["result"] == "partial"
        assert status["preflight"]["cilium"] == "withhold"
        code = {"missing": "cilium-config-missing", "forbidden": "cilium-config-unreadable"}[problem]
        assert [f["code"] for f in status["preflight"]["findings"]] == [code]
        still = sorted(o["metadata"]["name"] for o in kube.objects() if o["kind"] in CILIUM_KINDS)
        assert still == live, "last known good Cilium objects stay"


def test_the_cilium_namespace_is_configurable(
    crds_dir: Path, ship: Callable[..., str], agent_for: Callable[..., Agent]
) -> None:
    ship(bundle_files("1.17"))
    elsewhere = {("cilium", "cilium-config"): {"enable-non-default-deny-policies": "true"}}
    with FakeKubeAPI(crds=cluster_crds(crds_dir, "1.17"), config_maps=elsewhere) as kube:
        status = agent_for(kube, cilium_namespace="cilium").sync_once(T0 + MINUTE).to_json()
        assert status["last_poll"]["result"] == "applied"
        assert status["preflight"]["cluster"]["cilium_namespace"] == "cilium"
        assert ("configmap", "ConfigMap", "cilium-config") in kube.ops("configmap")
        assert [op.namespace for op in kube.operations if op.verb == "configmap"] == ["cilium"]
    with pytest.raises(ConfigError, match="not a DNS label"):
        KubeApplier("http://127.0.0.1:1", "t", cilium_namespace="Kube_System")


def test_the_agent_reports_a_version_mismatch_instead_of_refusing_the_whole_bundle(
    crds_dir: Path, ship: Callable[..., str], agent_for: Callable[..., Agent]
) -> None:
    """The agent checks bundles against its cluster's CRDs: a CiliumCIDRGroup v2 on a 1.17 cluster
    fails that check. The pre-flight runs first, so the mismatch is reported, the Cilium part held
    back and the Tetragon part still checked and applied."""
    ship(bundle_files("1.18"))
    with FakeKubeAPI(crds=cluster_crds(crds_dir, "1.17")) as kube:
        status = agent_for(kube, checked=True).sync_once(T0 + MINUTE).to_json()
        assert kinds(kube) == {"TracingPolicy"}
        first_apply = next(i for i, op in enumerate(kube.operations) if op.verb == "apply")
        assert "configmap" in [op.verb for op in kube.operations[:first_apply]]
    assert status["verification"]["ok"] is True
    assert status["last_poll"]["result"] == "partial"
    assert status["preflight"]["cilium"] == "withhold"
    codes = {f["code"] for f in status["preflight"]["findings"]}
    assert codes == {"version-mismatch", "not-served"}
    assert "targets Cilium 1.18 but the cluster serves Cilium 1.17" in status["last_poll"]["detail"]


def test_admission_still_refuses_a_bad_tetragon_object(
    crds_dir: Path, bucket: RecordingStore, signer: LocalSigner, agent_for: Callable[..., Agent]
) -> None:
    """A field our compiler never writes, signed by the channel's key: refused before anything is
    applied, and the refusal does not quote the field."""
    files = bundle_files("1.18")
    [name] = [n for n in files if n.startswith("cdr-block-")]
    files[name] = files[name].replace(b"  podSelector: {}\n", b"  podSelector: {}\n  bogus: 1\n")  # unknown field
    plant_signed(bucket, files, signer, settings=SIGKILL)
    with FakeKubeAPI(crds=cluster_crds(crds_dir, "1.17")) as kube:
        status = agent_for(kube, checked=True).sync_once(T0 + MINUTE).to_json()
        assert kube.ops("apply") == []
    assert (status["last_poll"]["result"], status["verification"]["code"]) == ("refused", "inadmissible")
    assert "1 field(s) our compiler never writes" in status["verification"]["reason"]
    assert "bogus" not in status["verification"]["reason"]


@pytest.mark.parametrize(
    ("declared", "cluster", "expected"),
    [
        ("1.16", "1.16", ("apply", [])),
        ("1.17", "1.17", ("apply", [])),
        ("1.18", "1.18", ("apply", [])),
        ("1.16", "1.18", ("apply", [("version-mismatch", "warning")])),
        ("1.17", "1.18", ("apply", [("version-mismatch", "warning")])),
        ("1.17", "1.16", ("withhold", [("version-mismatch", "error")])),
        ("1.18", "1.17", ("withhold", [("not-served", "error"), ("version-mismatch", "error")])),
        ("1.18", "1.16", ("withhold", [("not-served", "error"), ("version-mismatch", "error")])),
    ],
)
def test_declared_cilium_version_is_compared_with_what_the_cluster_serves(
    crds_dir: Path, declared: str, cluster: str, expected: tuple[str, list[tuple[str, str]]]
) -> None:
    objects = [
        f.obj
        for f in render(
            [cdr_set([indicator("45.33.32.0/24")])], ChannelSettings(name="prod", cilium_version=declared)
        ).files
    ]
    with FakeKubeAPI(crds=cluster_crds(crds_dir, cluster)) as kube:
        applier = KubeApplier(kube.url, kube.token)
        preflight = run_preflight(applier, objects)
        assert kube.ops("apply") == [], "the pre-flight itself changes nothing"
        errors, applied, _ = reconcile(applier, objects, channel="prod", preflight=preflight)
        live = kinds(kube)
    assert preflight is not None
    assert (preflight.cilium, sorted((f.code, f.severity) for f in preflight.findings)) == expected
    assert preflight.cluster["cilium_versions"] == {"1.16": "1.16", "1.17": "1.17", "1.18": ">= 1.18"}[cluster]
    assert preflight.cluster["declared_cilium_version"] == declared
    if expected[0] == "apply":
        assert errors == [] and {o["kind"] for o in objects} == live  # 1.16: plain CIDRs, no groups
    else:
        assert {e.action for e in errors} == {"preflight"} and not (CILIUM_KINDS & live)
        assert "TracingPolicy" in live and applied >= 1


def test_the_clis_apply_path_runs_the_preflight_itself(crds_dir: Path) -> None:
    """``cdr-policy --apply`` calls ``reconcile`` without a pre-flight of its own."""
    objects = [
        f.obj
        for f in render(
            [cdr_set([indicator("45.33.32.0/24")], [behaviour("crypto_mining")])], ChannelSettings(name="local")
        ).files
    ]
    with FakeKubeAPI(crds=cluster_crds(crds_dir, "1.17"), config_maps=OFF) as kube:
        errors, applied, deleted = reconcile(KubeApplier(kube.url, kube.token), objects, channel="local")
        assert kinds(kube) == {"TracingPolicy"}
    assert {(e.kind, e.action) for e in errors} == {(k, "preflight") for k in CILIUM_KINDS}
    assert all("enable-non-default-deny-policies" in e.error for e in errors)
    assert applied == sum(o["kind"] == "TracingPolicy" for o in objects) and deleted == 0


def test_no_preflight_without_a_cluster_or_without_cilium_objects(crds_dir: Path, tmp_path: Path) -> None:
    objects = [f.obj for f in render([cdr_set([indicator("45.33.32.0/24")])], ChannelSettings(name="prod")).files]
    assert run_preflight(DirectoryApplier(tmp_path), objects) is None
    tetragon_only = [o for o in objects if o["kind"] == "TracingPolicy"]
    with FakeKubeAPI(crds=cluster_crds(crds_dir, "1.17"), config_maps=OFF) as kube:
        preflight = run_preflight(KubeApplier(kube.url, kube.token), tetragon_only)
        assert kube.operations == [], "nothing to check: nothing read"
    assert preflight is not None and preflight.cilium == "apply"


@pytest.mark.parametrize(("value", "held"), [("true", False), ("True", False), ("1", False), ("0", True), ("no", True)])
def test_the_flag_is_read_as_cilium_reads_it(crds_dir: Path, value: str, held: bool) -> None:
    objects = [f.obj for f in render([cdr_set([indicator("45.33.32.0/24")])], ChannelSettings(name="prod")).files]
    config = {("kube-system", "cilium-config"): {"enable-non-default-deny-policies": value}}
    with FakeKubeAPI(crds=cluster_crds(crds_dir, "1.17"), config_maps=config) as kube:
        preflight = run_preflight(KubeApplier(kube.url, kube.token), objects)
    assert preflight is not None and (preflight.cilium == "withdraw") is held

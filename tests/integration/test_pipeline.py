"""The whole flow, as ``make demo`` runs it: template.yaml deployed on a moto server that enforces IAM,
the stack's schedules, S3 -> SQS notifications and event source mappings driving the real handlers,
each under its own deployed role, a loopback fake Qualys gateway and feed server, signed bundles, and
one sync agent per cluster with its cluster role. Then: what is in each bucket, what each agent
applied, and what happens when the same notifications come again or a bundle is tampered with."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
import yaml

from cdr_policy import aws, layout, schemas
from cdr_policy.agent.directory import DirectoryApplier
from cdr_policy.agent.sync import Agent
from cdr_policy.bundle.manifest import Manifest
from cdr_policy.bundle.signing import KmsSigner, Verifier, verify_manifest
from cdr_policy.cli import main
from cdr_policy.cli.fleet import BundleDiff, ChannelRow, FleetStatusRow, PrefixChanges
from cdr_policy.hits.fleet import read_fired
from cdr_policy.hits.reports import read_report
from cdr_policy.lambda_events import PublishRequest
from cdr_policy.policy.checker import SchemaSet, check_files
from cdr_policy.settings import Settings
from cdr_policy.storage import LocalStore, S3Store, Store
from demo.runner import CHANNELS, PipelineResult

pytestmark = pytest.mark.integration

PUBLIC_CDR_IPS = {"45.61.136.7/32", "45.95.169.12/32", "45.9.20.100/32", "2a0b:f000::15/128", "45.153.160.2/32"}
NEVER_BLOCKED = {"169.254.169.254", "10.20.3.4", "8.8.8.8", "192.0.2.10", "100.64.12.7", "172.16.5.9", "fd00:ec2::254"}


def _store(result: PipelineResult, bucket: str) -> S3Store:
    return S3Store(result.stack.client("s3"), bucket)


def test_every_step_reports_counts(pipeline: tuple[PipelineResult, list[str]]) -> None:
    result, lines = pipeline
    text = "\n".join(lines)
    steps = (
        "[1/7] CdrFetch",
        "[2/7] FeedSync",
        "[3/7] Render",
        "[4/7] Publish",
        "[5/7] Sync agents",
        "[6/7] Promotion",
        "[7/7] Hits",
    )
    for step in steps:
        assert step in text
    assert result.steps["cdr_fetch"]["fetched"] == 20
    assert result.steps["cdr_fetch"]["unique"] == 18
    assert result.steps["cdr_fetch"]["duplicates"] == 1
    assert result.steps["cdr_fetch"]["malformed_count"] == 1
    assert {f["status"] for f in result.steps["feed_sync"]["feeds"].values()} == {"ok"}
    assert result.steps["render"]["failed"] == 0 and result.steps["render"]["messages"] >= 6
    # each render (one per batch of notifications: the sets, and the configuration uploaded before
    # them) asks for one publish per channel
    renders = result.steps["render"]["batches"]
    assert result.steps["publish"] == {"messages": 2 * renders, "batches": 1, "failed": 0}


def test_state_bucket_holds_raw_findings_indicators_and_bundles(pipeline: tuple[PipelineResult, list[str]]) -> None:
    result, _ = pipeline
    state = _store(result, result.stack.state_bucket)
    raw = state.list("raw/cdr/")
    assert raw, "raw findings pages must be kept for audit"
    uuids = set()
    for key in raw:
        page = json.loads(gzip.decompress(state.get(key).data))
        uuids |= {f.get("uuid") for f in page["content"] if isinstance(f, dict)}
    assert len(uuids - {None}) == 18
    indicator_keys = state.list("indicators/")
    assert "indicators/cdr/current.json" in indicator_keys
    assert len([k for k in indicator_keys if k.startswith("indicators/feeds/")]) == 5
    for key in indicator_keys:
        schemas.validate(json.loads(state.get(key).data), "indicator-set.schema.json")
    for channel in CHANNELS:
        latest = json.loads(state.get(layout.latest_render_key(channel["name"])).data)
        manifest = json.loads(state.get(f"bundles/{latest['digest']}/bundle.json").data)
        assert manifest["digest"] == latest["digest"] and manifest["channel"] == channel["name"]
        report = json.loads(state.get(f"bundles/{latest['digest']}/report.json").data)
        schemas.validate(report, "report.schema.json")
        assert report["events"]["unique"] == 18
        assert report["events"]["unmapped_categories"] == {"Suspicious_Unlisted_Activity": 1}
        assert set(report["feeds"]) == {"blocklist-de", "cinsscore", "emerging-threats", "feodo-c2", "tor-exit"}
        rejected = {r["value"].split("/")[0] for r in report["rejected"]}
        assert NEVER_BLOCKED <= rejected


def test_distribution_bucket_holds_signed_manifests_files_history_and_status(
    pipeline: tuple[PipelineResult, list[str]],
) -> None:
    result, _ = pipeline
    dist = _store(result, result.stack.dist_bucket)
    verifier = Verifier.from_public_pem(
        KmsSigner(result.stack.client("kms"), result.stack.signing_key_arn).public_key_pem()
    )
    for channel in CHANNELS:
        name = channel["name"]
        manifest = Manifest.parse(dist.get(f"channels/{name}/manifest.json").data, name)
        verify_manifest(manifest, verifier)
        assert manifest.settings.action == channel["action"]
        for entry in manifest.files:
            data = dist.get(layout.published_file_key(name, manifest.digest, entry.path)).data
            assert hashlib.sha256(data).hexdigest() == entry.sha256
        assert any(k.endswith(f"-{manifest.digest}.json") for k in dist.list(f"channels/{name}/history/"))
        status = json.loads(dist.get(f"status/demo-{name}.json").data)
        schemas.validate(status, "agent-status.schema.json")
        assert status["applied_digest"] == manifest.digest
        assert status["verification"]["ok"] is True


# What a document's value is replaced with, one place at a time (see the test below).
EDGE_VALUES: tuple[object, ...] = (None, True, 0, -1, 1.5, "", "x", "0" * 64, "2026-01-10T16:45:00Z", [], {})


def _replaced(doc: Any, path: tuple[str | int, ...], value: Any) -> Any:
    if not path:
        return value
    copy: Any = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replaced(doc[path[0]], path[1:], value)
    return copy


def _one_change_each(doc: dict[str, Any], items_per_list: int = 1) -> Iterator[Any]:
    """``doc`` changed in one place, in every way: each value (in lists, of the first item)
    replaced by each of EDGE_VALUES, each key removed, an unknown key added to each object."""

    def walk(node: Any, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
        yield path, node
        children: Iterable[tuple[str | int, Any]] = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node[:items_per_list])
            if isinstance(node, list)
            else ()
        )
        for key, child in children:
            yield from walk(child, (*path, key))

    for path, node in walk(doc, ()):
        if path:
            for value in EDGE_VALUES:
                yield _replaced(doc, path, value)
        if isinstance(node, dict):
            for key in node:
                yield _replaced(doc, path, {k: v for k, v in node.items() if k != key})
            yield _replaced(doc, path, {**node, "unexpected": 1})


def test_every_stored_document_is_judged_as_jsonschema_judges_it(pipeline: tuple[PipelineResult, list[str]]) -> None:
    """The contracts' validator (``cdr_policy.schemas``) against jsonschema, the reference, on every
    kind of document the flow stored, each also changed in one place in every way: the same
    documents must fail, at the same places."""
    result, _ = pipeline
    state: Store = _store(result, result.stack.state_bucket)
    dist: Store = _store(result, result.stack.dist_bucket)
    kinds: dict[str, list[tuple[Store, str]]] = {
        "indicator-set.schema.json": [(state, k) for k in state.list("indicators/")],
        "cdr-run.schema.json": [(state, layout.CDR_LAST_RUN)],
        "manifest.schema.json": [(state, k) for k in state.list("bundles/") if k.endswith("/bundle.json")]
        + [(dist, f"channels/{c['name']}/manifest.json") for c in CHANNELS],
        "report.schema.json": [(state, k) for k in state.list("bundles/") if k.endswith("/report.json")],
        "agent-status.schema.json": [(dist, k) for k in dist.list("status/")],
        "provenance-index.schema.json": [(dist, k) for k in dist.list("channels/") if k.endswith("/provenance.json")],
        "fleet-hits.schema.json": [(state, layout.FLEET_HITS)],
        "hit-report.schema.json": [
            (LocalStore(result.output), k) for k in LocalStore(result.output).list("hit-reports/")
        ],
    }
    checked = failing = 0
    for name, documents in kinds.items():
        reference = jsonschema.Draft202012Validator(json.loads((Path(schemas.__file__).parent / name).read_text()))
        ours_checker = schemas.Schema(reference.schema, name)
        assert documents, name
        for store, key in documents[:2]:
            for doc in [json.loads(store.get(key).data), *_one_change_each(json.loads(store.get(key).data))]:
                ours = {path for path, _ in ours_checker.errors(doc, reference.schema, ())}
                theirs = {tuple(e.absolute_path) for e in reference.iter_errors(doc)}
                assert ours == theirs, (name, key)
                checked += 1
                failing += bool(theirs)
    assert checked > 2500 and failing > checked // 3


def _objects(folder: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))]


def test_an_object_deleted_by_hand_comes_back_after_one_drift_interval(
    pipeline: tuple[PipelineResult, list[str]],
) -> None:
    result, lines = pipeline
    drift = result.drift
    assert drift is not None and drift.last_poll.result == "repaired" and drift.drift is not None
    assert len(drift.drift.missing) == 1 and drift.drift.repaired is True
    (missing,) = drift.drift.missing
    name = missing.split("/")[-1]
    assert (result.channel_dir("staging") / f"tracingpolicy-{name}.yaml").exists()
    assert any("drift repaired (1 missing" in line for line in lines)


def test_agents_applied_objects_that_pass_the_crds_and_the_checklist(
    pipeline: tuple[PipelineResult, list[str]], crds_dir: Path
) -> None:
    result, _ = pipeline
    folders = [result.channel_dir(c["name"]) for c in CHANNELS]
    report = check_files(folders, SchemaSet.from_dir(crds_dir))
    assert report.objects >= 2 * 10
    assert report.errors == 0, [p for f in report.files for o in f.objects for p in o.problems]
    kinds = {o["kind"] for o in _objects(folders[0])}
    assert kinds == {"TracingPolicy", "CiliumClusterwideNetworkPolicy", "CiliumCIDRGroup"}


def test_staging_audits_and_prod_enforces(pipeline: tuple[PipelineResult, list[str]]) -> None:
    result, _ = pipeline
    for channel in CHANNELS:
        for obj in _objects(result.channel_dir(channel["name"])):
            if obj["kind"] != "TracingPolicy":
                continue
            assert obj["spec"]["podSelector"] is not None, "never select host processes"
            modes = {o["value"] for o in obj["spec"].get("options", []) if o["name"] == "policy-mode"}
            actions = {
                a["action"]
                for hooks in ("kprobes", "lsmhooks")
                for hook in obj["spec"].get(hooks, [])
                for sel in hook.get("selectors", [])
                for a in sel.get("matchActions", [])
            }
            if channel["action"] == "Post":
                assert modes == {"monitor"} and actions <= {"Post"}
            else:
                assert actions & {"Sigkill", "Override"} or modes == {"monitor"}
    ccg_versions = {
        c["name"]: {o["apiVersion"] for o in _objects(result.channel_dir(c["name"])) if o["kind"] == "CiliumCIDRGroup"}
        for c in CHANNELS
    }
    assert ccg_versions == {"staging": {"cilium.io/v2alpha1"}, "prod": {"cilium.io/v2"}}


def test_public_cdr_ips_are_in_both_blocklists_and_protected_ones_in_neither(
    pipeline: tuple[PipelineResult, list[str]],
) -> None:
    result, _ = pipeline
    objects = _objects(result.channel_dir("prod"))
    cdr_groups = [o for o in objects if o["kind"] == "CiliumCIDRGroup" and "cdr-" in o["metadata"]["name"]]
    cilium = {c for g in cdr_groups for c in g["spec"]["externalCIDRs"]}
    tetragon = {
        v
        for o in objects
        if o["kind"] == "TracingPolicy" and o["metadata"]["name"].startswith("tp-cdr-blocklist")
        for hook in o["spec"]["kprobes"]
        for sel in hook["selectors"]
        for arg in sel.get("matchArgs", [])
        if arg["operator"] == "DAddr"
        for v in arg["values"]
    }
    assert PUBLIC_CDR_IPS <= cilium
    assert PUBLIC_CDR_IPS <= tetragon
    assert "::ffff:45.61.136.7/128" in tetragon, "IPv4 prefixes also in their IPv4-mapped form"
    # Behaviour policies name the metadata service on purpose (who may reach it); blocklists never.
    blocklists = json.dumps([o for o in objects if o["metadata"]["labels"]["cdr-policy.io/component"] != "behaviour"])
    for ip in NEVER_BLOCKED:
        assert f'"{ip}/' not in blocklists


def test_redelivered_notifications_change_nothing(pipeline: tuple[PipelineResult, list[str]]) -> None:
    from cdr_policy.wiring import cloud

    result, _ = pipeline
    state = _store(result, result.stack.state_bucket)
    before = {c["name"]: json.loads(state.get(layout.latest_render_key(c["name"])).data) for c in CHANNELS}
    with result.lambdas.running_as("RenderFunction") as env:
        again = cloud.render(Settings.from_env(env), trigger_keys=["indicators/cdr/current.json"])
    assert {b["channel"]: b["digest"] for b in again} == {k: v["digest"] for k, v in before.items()}
    assert not any(b["changed"] for b in again)
    with result.lambdas.running_as("PublishFunction") as env:
        for channel in CHANNELS:
            request = PublishRequest(channel["name"], before[channel["name"]]["digest"])
            outcome = cloud.publish(Settings.from_env(env), request)
            assert outcome["status"] == "unchanged"


def test_a_stale_publish_request_cannot_roll_a_channel_back(pipeline: tuple[PipelineResult, list[str]]) -> None:
    from cdr_policy.wiring import cloud

    result, _ = pipeline
    with result.lambdas.running_as("PublishFunction") as env:
        outcome = cloud.publish(Settings.from_env(env), PublishRequest("prod", "0" * 64))
    assert outcome["status"] == "superseded"


def test_a_second_fetch_duplicates_nothing(pipeline: tuple[PipelineResult, list[str]]) -> None:
    from cdr_policy.wiring import cloud
    from demo.runner import FINDINGS
    from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway

    result, _ = pipeline
    state = _store(result, result.stack.state_bucket)
    before = json.loads(state.get("indicators/cdr/current.json").data)
    with (
        FakeQualysGateway(FINDINGS, username=DEMO_USERNAME, password=DEMO_PASSWORD) as gateway,
        result.lambdas.running_as("CdrFetchFunction") as env,
    ):
        settings = Settings.from_env({**env, "QUALYS_GATEWAY_URL": gateway.url, "LOOKBACK_HOURS": "720"})
        summary = cloud.cdr_fetch(settings)
    assert summary["new"] == 0
    after = json.loads(state.get("indicators/cdr/current.json").data)
    assert sorted(e["value"] for e in after["entries"]) == sorted(e["value"] for e in before["entries"])


def test_a_tampered_bundle_is_refused_and_nothing_is_applied(
    pipeline: tuple[PipelineResult, list[str]], tmp_path: Path
) -> None:
    result, _ = pipeline
    dist = _store(result, result.stack.dist_bucket)
    manifest = json.loads(dist.get("channels/staging/manifest.json").data)
    path = next(e["path"] for e in manifest["files"] if e["path"].startswith("ciliumcidrgroup-"))
    key = layout.published_file_key("staging", manifest["digest"], path)
    original = dist.get(key).data
    dist.put(key, original.replace(b"externalCIDRs:", b"externalCIDRs:\n  - 0.0.0.0/0"))
    try:
        verifier = Verifier.from_public_pem(
            KmsSigner(result.stack.client("kms"), result.stack.signing_key_arn).public_key_pem()
        )
        agent = Agent(
            dist,
            channel="staging",
            cluster_id="tamper-test",
            verifier=verifier,
            applier=DirectoryApplier(tmp_path / "applied"),
            state_dir=tmp_path / "state",
        )
        status = agent.sync_once().to_json()
    finally:
        dist.put(key, original)
    assert status["last_poll"]["result"] == "refused"
    # the planted file is longer than signed: refused after reading the signed size + 1 byte
    assert status["verification"]["code"] == "too_large"
    assert not list((tmp_path / "applied").glob("*.yaml"))


def _shell(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process's AWS settings as a new process started with ``env`` would have them."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    aws.reset()  # the library's cached clients


def test_fleet_commands_against_the_buckets(
    pipeline: tuple[PipelineResult, list[str]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's commands, with the operator's (administrator's) credentials."""

    result, _ = pipeline
    dist, state = f"s3://{result.stack.dist_bucket}", f"s3://{result.stack.state_bucket}"
    env = result.stack.server.admin_env
    _shell(monkeypatch, env)

    assert main(["channel", "list", f"--dist={dist}", "--json"], env) == 0
    listed = [ChannelRow.from_json(c) for c in json.loads(capsys.readouterr().out)]
    assert sorted(c.channel for c in listed) == sorted(c["name"] for c in CHANNELS)

    assert main(["fleet", "status", f"--dist={dist}", "--json"], env) == 0
    fleet = map(FleetStatusRow.from_json, json.loads(capsys.readouterr().out))
    rows = [r for r in fleet if r.cluster_id.startswith("demo-")]
    assert sorted({r.channel for r in rows}) == sorted(c["name"] for c in CHANNELS)
    assert not any(r.behind for r in rows) and all(r.errors == 0 for r in rows)
    promoted = {r.channel: r.promotion for r in rows}
    prod = promoted["prod"]
    assert promoted["staging"] is None and prod is not None and (prod.source, prod.approved) == ("staging", 1)

    assert main(["channel", "diff", "prod", f"--dist={dist}", f"--state={state}", "--json"], env) == 0
    diff = BundleDiff.from_json(json.loads(capsys.readouterr().out))
    assert diff.shipping == diff.candidate and diff.prefixes == PrefixChanges(added=(), removed=())

    # An approver grants it: the stack's ApproverRole (assumed by ApproverPrincipalArn) and ApproverKey.
    _shell(monkeypatch, result.approver_env)
    key_id = f"--kms-key-id={result.stack.outputs['ApproverKeyArn']}"
    approve = ["channel", "approve", "prod", diff.candidate, f"--state={state}", f"--dist={dist}", key_id]
    assert main(approve, result.approver_env) == 0
    key = layout.approval_key("prod", diff.candidate, diff.shipping)
    grant = json.loads(_store(result, result.stack.state_bucket).get(key).data)
    assert (grant["digest"], grant["previous_digest"]) == (diff.candidate, diff.shipping)
    _shell(monkeypatch, env)
    capsys.readouterr()

    # Rolling back to what the channel ships, signed by the stack's KMS key, changes nothing.
    key = f"--kms-key-id={result.stack.signing_key_arn}"
    assert main(["channel", "rollback", "prod", f"--to={diff.candidate}", f"--dist={dist}", key], env) == 0
    assert capsys.readouterr().out.startswith("unchanged: channel prod")


def test_prod_takes_what_staging_watched_and_the_change_it_holds_on_an_approval(
    pipeline: tuple[PipelineResult, list[str]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result, lines = pipeline
    soaked, approved, (held,) = (result.promotion[k] for k in ("soaked", "approved", "held"))
    assert soaked.counts.promote > 0 and soaked.counts.hold == 1
    assert soaked.change(held).reasons == (
        "would have blocked 2 event(s) in protected namespace(s) payments on staging",
    )
    assert [(c.change, c.decision, c.how) for c in approved.changes] == [(held, "promote", "approved")]
    assert any("soak shortened" in line or "the demo's, 24h by default" in line for line in lines)
    env = result.stack.server.admin_env
    _shell(monkeypatch, env)
    assert main(["channel", "show", "prod", f"--dist=s3://{result.stack.dist_bucket}"], env) == 0
    assert "1 change(s) promoted (1 grant(s))" in capsys.readouterr().out


def test_the_hits_of_the_export_lines_come_back_to_the_fleet(
    pipeline: tuple[PipelineResult, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Tetragon and Hubble lines written on the demo's nodes for the shipped objects: each agent's
    status carries its nodes' sums, HitsRollup wrote what fired, and fleet hits agrees with the
    clusters; ``cdr-policy hits`` on the published bundle counts one node's files the same way."""
    result, _ = pipeline
    hits = result.hits
    assert hits["agree"] and hits["report"].hits > 0
    statuses = hits["statuses"]
    assert statuses["prod"].hits.nodes == 2 and statuses["staging"].hits.nodes == 1
    actions = {c.channel: set(c.actions) for c in hits["report"].clusters}
    assert actions == {"prod": {"SIGKILL", "DROPPED"}, "staging": {"POST", "AUDIT"}}  # staging would have blocked
    assert hits["rollup"].refused == 0 and hits["rollup"].addresses > 0
    assert {f.feed for f in hits["report"].feeds if f.hits} and hits["report"].findings
    state = _store(result, result.stack.state_bucket)
    assert read_fired(state.get(layout.FLEET_HITS).data, "fleet.json").hits == hits["report"].hits
    # the published bundle folder, as the demo copied the bucket
    folder = result.output / "dist" / layout.published_file_key("prod", statuses["prod"].applied_digest, "")
    node = result.output / "nodes" / "demo-node-1"
    argv = ["hits", "--policies", str(folder), "--tetragon-export", str(node / "tetragon.log")]
    assert main([*argv, "--hubble-export", str(node / "hubble.log"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    node_report = read_report((result.output / "hit-reports" / "prod" / "demo-node-1.json").read_bytes(), "node")
    assert report["events"] == node_report.table.totals.to_dict()

"""The documents that cross a process or a bucket are read through their typed contracts only.

Every such document (the manifest, the agent status, the hits sections and reports, the stage
summaries, Publish's result and its change budget, the fleet commands' rows and ``channel diff``'s
report) is defined once, as a frozen dataclass with ``from_json``/``to_json``; everyone else reads
typed fields. This test scans the library, the handlers, the demo and the benchmarks for a
string-keyed read (``doc["key"]`` or ``doc.get("key")``) of a variable named like one of those
documents outside a contract's decoder, and fails naming the place; in the CLI, whose commands'
reports are read under any name (``diff["added"]``, ``entry["prefix"]``), every string-keyed read
counts. What is read by key on purpose is listed in ``ALLOWED`` with its reason: documents that are
not ours (Kubernetes objects, AWS responses, upstream events, the environment), or a document read
before it can be trusted to be one (a manifest that failed verification, for the digest it claims).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pytest

from cdr_policy.agent.status import AgentStatus, Drift, LastPoll, Verification
from cdr_policy.bundle.change_budget import Budget, EngineChange
from cdr_policy.bundle.manifest import Manifest, Settings
from cdr_policy.cli.fleet import (
    BundleDiff,
    ChannelHistory,
    ChannelRow,
    FleetStatusRow,
    GenerationRow,
    ObjectChange,
    ObjectChanges,
    PrefixChange,
    PrefixChanges,
)
from cdr_policy.cli.promotion import GenerationPromotion
from cdr_policy.errors import ContractError
from cdr_policy.hits.aggregate import HitsSection, HitTable
from cdr_policy.hits.fleet import FleetHitsReport
from cdr_policy.hits.reports import NodeReport
from cdr_policy.hits.tally import HitRow, HitsReport
from cdr_policy.policy.checker.files import CheckedFile, CheckedObject, ValidateReport
from cdr_policy.promotion.decisions import ChangeDecision, Decisions, WatchTrip
from cdr_policy.report import EngineBudget, FeedReport, RunReport
from cdr_policy.stages.publish import PublishResult
from cdr_policy.summaries import CdrRunSummary, FeedSummary, FeedSyncSummary, HitsRollupSummary, RenderSummary
from tests.unit.agent.test_status import GOOD

REPO = Path(__file__).resolve().parents[2]
L = "layers/shared/cdr_policy/"
SCANNED = ("layers/shared/cdr_policy", "functions", "demo", "benchmarks")
# A variable named like a contract document (``status``, ``ours_summary``, ``manifest``, ...).
DOCUMENT = re.compile(
    r"(^|_)(status|statuses|summary|report|manifest|budget|result|section|rollup|poll|verification|drift|doc|document)$"
)
# The contracts; a key that is one of their multi-word field names (``applied_digest``,
# ``last_poll``, ``malformed_count``, ...) is read by key from one of their documents, whatever the
# variable is called.
CONTRACTS_TYPED = (
    AgentStatus,
    LastPoll,
    Drift,
    Verification,
    HitsSection,
    CdrRunSummary,
    FeedSyncSummary,
    RenderSummary,
    HitsRollupSummary,
    PublishResult,
    Budget,
    Manifest,
    Settings,
    RunReport,
    FeedReport,
    EngineBudget,
    ValidateReport,
    CheckedFile,
    CheckedObject,
    HitsReport,
    HitRow,
    FleetHitsReport,
    Decisions,
    ChangeDecision,
    WatchTrip,
    ChannelRow,
    GenerationRow,
    ChannelHistory,
    FleetStatusRow,
    GenerationPromotion,
    BundleDiff,
    ObjectChanges,
    ObjectChange,
    PrefixChanges,
    PrefixChange,
)
FIELD_KEYS = frozenset(f.name for cls in CONTRACTS_TYPED for f in dataclasses.fields(cls) if "_" in f.name)
# Where a contract's document is read by key: its decoders.
DECODERS = frozenset({"from_json", "from_dict", "_build", "parse"})
# Where every string-keyed read counts, whatever the variable is called: the commands' reports are
# read there under any name (``diff["added"]``, ``entry["prefix"]``, ``e.get("scope")``).
EVERY_READ = (f"{L}cli/",)
# What is read by key there under a name of its own, and is no document.
NOT_DOCUMENTS = {"env": "the process environment (os.environ, or the mapping a test passes main)"}
# (file, function) -> why a string-keyed read of a document-named variable is right there.
ALLOWED = {
    # not ours: Kubernetes objects, CRDs, upstream events and AWS notifications, the operator's files
    (f"{L}agent/directory.py", "owned"): "Kubernetes objects in the applier's folder",
    (f"{L}agent/kubeconfig.py", "token"): "an exec credential plugin's ExecCredential status",
    (f"{L}bundle/objects.py", "_documents"): "the Kubernetes objects of a bundle's YAML files",
    (f"{L}policy/checker/files.py", "_objects"): "Kubernetes objects of a file being checked",
    (f"{L}policy/checker/schema.py", "_crds_in"): "CustomResourceDefinitions",
    (f"{L}hits/events.py", "_tetragon"): "Tetragon's export format",
    (f"{L}hits/events.py", "_hubble"): "Hubble's export format",
    (f"{L}lambda_events.py", "parse_s3_notification"): "S3's event notification format",
    (f"{L}documents.py", "parse_one_channel"): "the operator's channel.yaml",
    (f"{L}documents.py", "parse_channels"): "the operator's channels.yaml",
    (f"{L}feeds/config.py", "load_feeds"): "the operator's feeds.yaml",
    (f"{L}qualys/categories.py", "parse_mapping"): "the operator's category mapping",
    (f"{L}cli/fleet.py", "_provenance"): "a bundle's Kubernetes object's annotations",
    (f"{L}cli/output.py", "_ours"): "a Kubernetes object in the output folder",
    (f"{L}cli/run.py", "group"): "a rendered Kubernetes object's labels",
    # maps inside typed contracts, their keys required by the contract's schema
    (f"{L}cli/run.py", "_fetch"): "CdrRunSummary.range (start, end, checkpoint: cdr-run.schema.json)",
    (f"{L}cli/run.py", "_summarise"): "CdrRunSummary.indicators_total (cdr-run.schema.json); its own groups",
    (f"{L}cli/promotion.py", "manifest_lines"): "a manifest promotion's pending counts (wait, hold: manifest schema)",
    (f"{L}cli/promotion.py", "summary"): "a manifest promotion's pending counts (wait, hold: manifest schema)",
    # decoders of our own documents that are not named from_json (each checks what it reads)
    (f"{L}bundle/loader.py", "latest_render"): "Render's pointer, its digest checked right there",
    (f"{L}bundle/provenance.py", "read_index"): "the provenance index, after its schema",
    (f"{L}bundle/provenance.py", "_unpack_u32"): "a packed column of the provenance index",
    (f"{L}netprefix/vector.py", "from_fields"): "a packed prefix column, after its schema",
    (f"{L}hits/fleet.py", "read_fired"): "hits/fleet.json, after its schema",
    (f"{L}feeds/persist.py", "parse_set"): "an indicator set, after its schema",
    (f"{L}last_good.py", "_read_index"): "the last-good index, each entry checked",
    (f"{L}qualys/state.py", "read_checkpoint"): "CdrFetch's checkpoint, version checked",
    (f"{L}qualys/state.py", "read_seen"): "CdrFetch's dedup state, version checked",
    (f"{L}feeds/abuseipdb.py", "load"): "the AbuseIPDB cache, version checked",
    # benchmarks' own measurement records (printed and written as BENCHMARKS.json, read by nothing)
    ("benchmarks/__main__.py", "_run"): "the benchmark's own result record",
    ("benchmarks/__main__.py", "_feed_ingest"): "the benchmark's own result records",
    ("benchmarks/fleet.py", "run"): "the benchmark's own result record",
    ("benchmarks/hits.py", "rows"): "the benchmark's own result records",
    ("benchmarks/pipeline.py", "rows"): "the benchmark's own result records",
}


def _receiver(node: ast.expr) -> str:
    """The name of what is read: ``status`` for ``status["a"]["b"]``, ``self.status.get("a")``."""
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _receiver(node.func)
    return ""


def _keyed_reads(tree: ast.AST) -> list[tuple[int, str, str, str]]:
    """(line, function, receiver, key) of every ``x["key"]`` / ``x.get("key")`` read."""
    found: list[tuple[int, str, str, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        line = getattr(node, "lineno", 0)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            found.append((line, function, _receiver(node.value), node.slice.value))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((line, function, _receiver(node.func.value), node.args[0].value))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "<module>")
    return found


def _document_reads(path: str, text: str) -> list[tuple[int, str, str]]:
    """(line, function, receiver) of the keyed reads of a document: of a document's name or one of
    the contracts' field keys; in ``EVERY_READ``, of any name but ``NOT_DOCUMENTS``."""
    every = path.startswith(EVERY_READ)
    return [
        (line, function, receiver)
        for line, function, receiver, key in _keyed_reads(ast.parse(text))
        if DOCUMENT.search(receiver) or key in FIELD_KEYS or (every and receiver not in NOT_DOCUMENTS)
    ]


def violations(files: dict[str, str]) -> list[str]:
    out = []
    for path, text in sorted(files.items()):
        for line, function, receiver in _document_reads(path, text):
            if function in DECODERS or (path, function) in ALLOWED:
                continue
            out.append(f"{path}:{line} in {function}(): {receiver}[...] read by key")
    return out


def _sources() -> dict[str, str]:
    return {
        str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for root in SCANNED for p in (REPO / root).rglob("*.py")
    }


def test_contract_documents_are_read_through_their_typed_definitions_only() -> None:
    found = violations(_sources())
    assert not found, "read these through the contract's typed fields:\n" + "\n".join(found)


def test_every_allowance_is_still_needed() -> None:
    sources = _sources()
    used = {
        (path, function)
        for path, text in sources.items()
        for _, function, _ in _document_reads(path, text)
        if (path, function) in ALLOWED
    }
    assert set(ALLOWED) - used == set(), "allowances that no longer read by key: remove them"
    named = {
        receiver
        for path, text in sources.items()
        if path.startswith(EVERY_READ)
        for _, _, receiver, _ in _keyed_reads(ast.parse(text))
    }
    assert set(NOT_DOCUMENTS) - named == set(), "names no longer read by key where every read counts: remove them"


@pytest.mark.parametrize(
    "planted",
    [
        'def line(status):\n    return status["last_poll"]["result"]\n',
        "def feeds(summary):\n    return summary.get('feeds')\n",
        "def show(self):\n    return self.ours_summary['prefixes']\n",
        'def digest(store):\n    return store.read_manifest()["digest"]\n',
        'def shown(result):\n    return result.agents["prod"]["applied_digest"]\n',
    ],
)
def test_a_planted_read_by_key_is_found(planted: str) -> None:
    sources = {**_sources(), "demo/planted.py": planted}
    assert [v for v in violations(sources) if v.startswith("demo/planted.py")]


@pytest.mark.parametrize(
    "planted",
    [
        'def _lines(diff):\n    return diff["added"]\n',
        'def _group(entry):\n    return entry.get("scope")\n',
        "def _counts(e):\n    return len(e['objects']['removed'])\n",
    ],
)
def test_in_the_cli_a_read_by_key_under_any_name_is_found(planted: str) -> None:
    sources = _sources()
    fleet = f"{L}cli/fleet.py"
    found = violations({**sources, fleet: sources[fleet] + "\n\n" + planted})
    assert [v for v in found if v.startswith(fleet)]
    assert violations({**sources, "demo/planted.py": planted}) == []  # elsewhere only documents' names count


def test_a_decoder_may_read_by_key_and_an_object_by_attribute_is_fine() -> None:
    text = (
        "class S:\n    @classmethod\n    def from_json(cls, doc):\n        return cls(doc['a'])\n"
        "def f(status):\n    return status.last_poll.result\n"
    )
    assert violations({"demo/fine.py": text}) == []
    environment = "def home(env):\n    return env.get('HOME')\n"
    assert violations({f"{L}cli/fine.py": text + environment}) == []


# -- round trips and hostile documents of each contract -------------------------------------------

BUDGET: dict[str, Any] = {
    "budget_percent": 20,
    "min_changes": 5,
    "engines": {
        "tetragon": {"current": 10, "proposed": 12, "added": 3, "removed": 1, "percent": 40.0},
        "cilium": {"current": 0, "proposed": 2, "added": 2, "removed": 0, "percent": 200.0},
    },
    "shrink": ["removes behaviour policy crypto_mining"],
    "vetted": False,
}
# promoted on evidence: only the removals count
VETTED: dict[str, Any] = {
    **BUDGET,
    "engines": {
        "tetragon": {**BUDGET["engines"]["tetragon"], "percent": 10.0},
        "cilium": {**BUDGET["engines"]["cilium"], "percent": 0.0},
    },
    "vetted": True,
}
PUBLISHED: dict[str, Any] = {
    "status": "held",
    "channel": "prod",
    "digest": "a" * 64,
    "reason": "over the change budget",
    "previous_digest": "b" * 64,
    "generation": None,
    "manifest_key": None,
    "history_key": None,
    "budget": BUDGET,
    "errors": [],
}
RUN_REPORT: dict[str, Any] = {
    "generated_at": "2026-01-10T00:00:00Z",
    "schema_version": 1,
    "channel": {"name": "prod", "action": "Sigkill"},
    "events": {"fetched": 3, "unique": 2, "by_category": {"c2": 2}, "unmapped_categories": {}},
    "indicators": {"ips": 4, "domains": 1, "ports": 0},
    "feeds": {"tor": {"status": "ok", "entries": 2, "error": None, "fetched_at": "2026-01-10T00:00:00Z", "stats": {}}},
    "rejected": [{"value": "10.0.0.1/32", "source": "cdr", "reason": "never-block range"}],
    "policies": [{"file": "a.yaml", "kind": "TracingPolicy", "name": "a"}],
    "behaviours": [],
    "budget": {"tetragon": {"limit": 10, "used": 2, "covered": 0, "left_out": 1, "kept_by_hits": 0}},
    "hits": None,
    "left_out": [{"value": "192.0.2.0/24", "rank": 3}],
    "left_out_total": 1,
    "left_out_unranked": {},
    "checks": {"schemas": True, "errors": 0, "warnings": []},
    "domains": {},
    "ports": {"values": []},
}
PROBLEM: dict[str, Any] = {
    "severity": "error",
    "code": "schema.unknown-field",
    "path": "spec.x",
    "message": "unknown field x",
}
VALIDATED: dict[str, Any] = {
    "files": [
        {"path": "broken.yml", "problems": [{**PROBLEM, "code": "file.yaml", "path": ""}], "objects": []},
        {
            "path": "a.yaml",
            "problems": [],
            "objects": [
                {"index": 0, "kind": "TracingPolicy", "name": "a", "problems": [PROBLEM]},
                {"index": 1, "kind": None, "name": None, "problems": [{**PROBLEM, "severity": "warning"}]},
            ],
        },
    ],
    "objects": 2,
    "errors": 2,
    "warnings": 1,
    "skipped_rules": ["cilium: rule"],
}
HIT_ROW: dict[str, Any] = {
    "engine": "tetragon",
    "object": "cdr-dynamic-blocklist-1",
    "address": "45.33.32.7",
    "prefix": "45.33.32.0/24",
    "port": None,
    "rule": None,
    "action": "Sigkill",
    "count": 3,
    "feeds": ["tor"],
    "findings": ["f-1", "f-2"],
    "categories": [],
}
HITS: dict[str, Any] = {"hits": [HIT_ROW], "events": {"read": 5, "ours": 3, "unattributed": 1, "malformed": 1}}
FLEET_HITS: dict[str, Any] = {
    "since": "2026-01-03T00:00:00Z",
    "until": "2026-01-10T00:00:00Z",
    "hits": 8,
    "clusters": [
        {
            "cluster_id": "eks-prod-1",
            "channel": "prod",
            "nodes": 2,
            "hits": 8,
            "actions": {"SIGKILL": 6, "DROPPED": 2},
            "refused": {},
            "totals": {"read": 10, "ours": 8, "unattributed": 2, "malformed": 0},
        }
    ],
    "feeds": [
        {"feed": "tor", "hits": 2, "prefixes_held": 40, "hits_per_thousand_prefixes": 50.0},
        {"feed": "c2", "hits": 0, "prefixes_held": 0, "hits_per_thousand_prefixes": None},
    ],
    "findings": [{"finding": "f-1", "hits": 6}],
    "categories": [{"category": "c2", "hits": 6}],
    "never_fired": {
        "prefixes": 38,
        "by_feed": {"tor": 38},
        "rules": ["webshell"],
        "findings": 1,
        "findings_listed": ["f-2"],
    },
    "top_indicators": [{"channel": "prod", "kind": "prefix", "indicator": "45.33.32.0/24", "hits": 6}],
    "top_workloads": [{"cluster_id": "eks-prod-1", "namespace": "shop", "workload": None, "hits": 6}],
    "unreadable_statuses": 0,
}
WORKLOAD: dict[str, Any] = {"cluster": "stg-1", "namespace": "payments", "workload": "checkout", "hits": 2}
DECIDED: dict[str, Any] = {
    "schema_version": 1,
    "channel": "prod",
    "from": "staging",
    "bundle": "a" * 64,
    "over": "b" * 64,
    "decided_at": "2026-01-10T00:00:00Z",
    "settings": {
        "from": "staging",
        "soak": 86400,
        "max_workloads_hit": 3,
        "protected_namespaces": ["payments"],
        "min_clusters_reporting": 1,
        "watch": {"for": 3600, "max_workloads_hit": 2, "max_rate_increase": 2.0, "min_events": 20, "rollback": True},
    },
    "counts": {"promote": 1, "wait": 0, "hold": 1},
    "promoted": {"prefixes": ["45.33.32.0/24"], "ports": [], "rules": [{"rule": "webshell", "fingerprint": "c" * 64}]},
    "changes": [
        {
            "change": "prefix:193.42.33.0/24",
            "kind": "prefix",
            "decision": "hold",
            "how": None,
            "reasons": ["would have blocked 2 event(s) in protected namespace(s) payments on staging"],
            "sources": ["cdr"],
            "evidence": {
                "in_audit_since": "2026-01-09T00:00:00Z",
                "clusters": 1,
                "hits": 2,
                "workloads": [WORKLOAD],
                "workloads_total": 1,
                "namespaces": {"payments": 2},
            },
        },
        {
            "change": f"rule:webshell@{'c' * 16}",
            "kind": "rule",
            "decision": "promote",
            "how": "soaked",
            "reasons": [],
            "sources": [],
            "fingerprint": "c" * 64,
            "evidence": {
                "in_audit_since": None,
                "clusters": 1,
                "hits": 0,
                "workloads": [],
                "workloads_total": 0,
                "namespaces": {},
            },
        },
    ],
    "watch": [
        {
            "generation": 4,
            "published_at": "2026-01-09T12:00:00Z",
            "reasons": ["stopped 6 event(s) in 3 distinct workloads"],
            "events": 6,
            "workloads": [WORKLOAD],
            "workloads_total": 3,
            "changes": [{"change": "prefix:45.33.32.0/24", "events": 6}],
            "changes_total": 1,
            "rolled_back": False,
        }
    ],
}
PROMOTED: dict[str, Any] = {
    "generation": 4,
    "from": "staging",
    "promoted": 3,
    "approved": 1,
    "waiting": 2,
    "held": 0,
    "rolled_back": None,
    "held_back": 0,
}
CHANNEL_ROW: dict[str, Any] = {
    "channel": "prod",
    "digest": "a" * 64,
    "generation": 4,
    "created_at": "2026-01-10T00:00:00Z",
    "expires_at": "2026-01-13T00:00:00Z",
    "action": "Sigkill",
    "mode": "enforce",
    "objects": 3,
}
GENERATION: dict[str, Any] = {
    "generation": 4,
    "digest": "a" * 64,
    "created_at": "2026-01-10T00:00:00Z",
    "expires_at": "2026-01-13T00:00:00Z",
    "approval": "approved by ops over bbbbbbbbbbbb at 2026-01-09T23:00:00Z",
    "bytes": 2202,
    "objects": 3,
    "action": "Sigkill",
    "shipping": True,
    "promotion": PROMOTED,
}
HISTORY: dict[str, Any] = {
    "channel": "prod",
    "shipping": "a" * 64,
    "generations": [GENERATION, {**GENERATION, "generation": 3, "shipping": False, "promotion": None}],
    "skipped": 1,
}
FLEET_ROW: dict[str, Any] = {
    "cluster_id": "eks-prod-1",
    "channel": "prod",
    "applied_digest": "a" * 64,
    "applied_age_s": 3600,
    "behind": False,
    "last_poll": "unchanged",
    "last_poll_at": "2026-01-10T00:59:00Z",
    "drift": {
        "checked_at": "2026-01-10T00:59:00Z",
        "missing": ["TracingPolicy/x"],
        "changed": [],
        "extra": [],
        "repaired": False,
    },
    "errors": 0,
    "promotion": PROMOTED,
}
OBJECT_CHANGE: dict[str, Any] = {
    "object": "TracingPolicy/tp-threat-intel-blocklist",
    "provenance": {"sources": "tor-exit=38"},
}
PREFIX_CHANGE: dict[str, Any] = {
    "prefix": "45.33.32.0/24",
    "objects": ["CiliumCIDRGroup/ccg-threat-intel-001", "TracingPolicy/tp-threat-intel-blocklist"],
    "provenance": {"categories": "tor", "feeds": "tor-exit"},
    "scope": "prefix",
}
DIFF: dict[str, Any] = {
    "channel": "prod",
    "from": "a" * 64,
    "to": "b" * 64,
    "objects": {"added": [OBJECT_CHANGE], "removed": [], "changed": [{**OBJECT_CHANGE, "provenance": {}}]},
    "prefixes": {
        "added": [PREFIX_CHANGE],
        "removed": [{**PREFIX_CHANGE, "prefix": "10.9.0.0/16", "objects": ["TracingPolicy/x"], "scope": "object"}],
    },
}


class Contract(Protocol):
    """A contract's value: ``to_json`` writes the document it was read from."""

    def to_json(self) -> dict[str, Any]: ...


class ContractClass(Protocol):
    """A contract's class: ``from_json`` reads a document into one."""

    def from_json(self, doc: Any, /) -> Contract: ...


CONTRACTS: list[tuple[ContractClass, dict[str, Any]]] = [
    (BundleDiff, DIFF),
    (
        BundleDiff,
        {**DIFF, "objects": {"added": [], "removed": [], "changed": []}, "prefixes": {"added": [], "removed": []}},
    ),
    (ChannelRow, CHANNEL_ROW),
    (GenerationRow, GENERATION),
    (ChannelHistory, HISTORY),
    (ChannelHistory, {**HISTORY, "shipping": None, "generations": []}),
    (FleetStatusRow, FLEET_ROW),
    (FleetStatusRow, {**FLEET_ROW, "applied_digest": None, "applied_age_s": None, "drift": None, "promotion": None}),
    (GenerationPromotion, PROMOTED),
    (Decisions, DECIDED),
    (
        Decisions,
        {**DECIDED, "publish": {"at": "2026-01-10T00:01:00Z", "status": "held", "generation": None, "reason": "x"}},
    ),
    (FleetHitsReport, FLEET_HITS),
    (HitsReport, HITS),
    (ValidateReport, VALIDATED),
    (RunReport, RUN_REPORT),
    (RunReport, {**RUN_REPORT, "unreadable_sets": [{"key": "indicators/feeds/x.json", "error": "e", "kept": None}]}),
    (PublishResult, PUBLISHED),
    (Budget, BUDGET),
    (Budget, VETTED),
    (FeedSyncSummary, {"feeds": {"spamhaus": {"status": "ok", "entries": 3}}, "written": ["x"], "rejected": 0}),
    (RenderSummary, {"channel": "prod", "digest": "a" * 64, "changed": True}),
    (
        HitsRollupSummary,
        {
            "since": "2026-01-10T00:00:00Z",
            "clusters": 2,
            "hits": 8,
            "refused": 1,
            "unreadable_statuses": 0,
            "addresses": 3,
            "rules": 1,
            "ports": 1,
        },
    ),
]


@pytest.mark.parametrize(("contract", "doc"), CONTRACTS, ids=lambda c: getattr(c, "__name__", ""))
def test_a_contract_reads_back_what_it_wrote(contract: ContractClass, doc: dict[str, Any]) -> None:
    value = contract.from_json(doc)
    assert value.to_json() == doc and contract.from_json(value.to_json()) == value


def _deep(levels: int) -> dict[str, object]:
    root: dict[str, object] = {}
    node = root
    for _ in range(levels):
        child: dict[str, object] = {}
        node["x"] = child
        node = child
    return root


@pytest.mark.parametrize(("contract", "doc"), CONTRACTS, ids=lambda c: getattr(c, "__name__", ""))
@pytest.mark.parametrize("break_it", ["missing", "wrong_type", "extra", "not_an_object", "deep"])
def test_a_broken_document_is_one_contract_error_naming_it(
    contract: ContractClass, doc: dict[str, Any], break_it: str
) -> None:
    first = next(iter(doc))
    broken: object = {
        "missing": {k: v for k, v in doc.items() if k != first},
        "wrong_type": {**doc, first: ["SECRET-VALUE"] * 3},
        "extra": {**doc, "SECRET-KEY": 1},
        "not_an_object": ["SECRET-VALUE"],
        "deep": {**doc, first: _deep(10_000)},
    }[break_it]
    with pytest.raises(ContractError, match="^malformed ") as caught:
        contract.from_json(broken)
    assert "SECRET" not in str(caught.value)


def test_a_budget_whose_percent_does_not_follow_from_its_counts_is_refused() -> None:
    engines = {**BUDGET["engines"], "tetragon": {**BUDGET["engines"]["tetragon"], "percent": 1.0}}
    with pytest.raises(ContractError, match="engines/tetragon: percent"):
        Budget.from_json({**BUDGET, "engines": engines})
    assert EngineChange.from_json("cilium", BUDGET["engines"]["cilium"], "x").percent == 200.0


@pytest.mark.parametrize(
    ("promotion", "named"),
    [({**PROMOTED, "from": ["SECRET"]}, "from is not of type"), ({**PROMOTED, "held": "SECRET"}, "held")],
)
def test_a_history_names_a_broken_promotion_by_the_generations_position(promotion: dict[str, Any], named: str) -> None:
    generations = [GENERATION, {**GENERATION, "promotion": promotion}]
    with pytest.raises(ContractError, match=f"channel history: generations/1: promotion: {named}") as caught:
        ChannelHistory.from_json({**HISTORY, "generations": generations})
    assert "SECRET" not in str(caught.value)


@pytest.mark.parametrize(
    ("prefixes", "named"),
    [
        ({"added": [PREFIX_CHANGE, {**PREFIX_CHANGE, "scope": "SECRET"}], "removed": []}, "prefixes: added/1: scope"),
        (
            {"added": [], "removed": [{**PREFIX_CHANGE, "provenance": {"feeds": "x", "SECRET": ["SECRET"]}}]},
            "prefixes: removed/0: provenance/1",
        ),
        ({"added": [{**PREFIX_CHANGE, "objects": ["x", 7]}], "removed": []}, "prefixes: added/0: objects/1"),
        ({"added": [], "removed": ["SECRET"]}, "prefixes: removed/0: not an object"),
    ],
)
def test_a_diff_names_a_broken_prefix_by_its_position(prefixes: dict[str, object], named: str) -> None:
    with pytest.raises(ContractError, match=f"^malformed channel diff: {named}") as caught:
        BundleDiff.from_json({**DIFF, "prefixes": prefixes})
    assert "SECRET" not in str(caught.value)


def test_a_diff_writes_its_digests_as_from_and_to() -> None:
    diff = BundleDiff.from_json(DIFF)
    assert (diff.shipping, diff.candidate) == ("a" * 64, "b" * 64)
    with pytest.raises(ContractError, match="^malformed channel diff: to is required"):
        BundleDiff.from_json({k: v for k, v in DIFF.items() if k != "to"})
    with pytest.raises(ContractError, match="^malformed channel diff: from is not of type"):
        BundleDiff.from_json({**DIFF, "from": None})


def test_a_feed_summary_names_the_feed_by_position() -> None:
    with pytest.raises(ContractError, match="feeds/0") as caught:
        FeedSyncSummary.from_json({"feeds": {"SECRET": {"status": 1, "entries": 3}}, "written": [], "rejected": 0})
    assert "SECRET" not in str(caught.value) and FeedSummary.from_json({"status": "ok", "entries": 1}, "f")


@pytest.mark.parametrize("count", ["objects", "errors", "warnings"])
def test_a_validate_report_whose_counts_disagree_with_its_problems_is_refused(count: str) -> None:
    with pytest.raises(ContractError, match=f"validate report: {count} does not agree"):
        ValidateReport.from_json({**VALIDATED, count: VALIDATED[count] + 1})


def test_a_validate_report_names_a_broken_problem_by_position() -> None:
    with pytest.raises(ContractError, match="files/1: objects/0: problems/0: severity") as caught:
        bad = {**PROBLEM, "severity": "SECRET"}
        ValidateReport.from_json(
            {
                **VALIDATED,
                "files": [
                    VALIDATED["files"][0],
                    {
                        **VALIDATED["files"][1],
                        "objects": [{"index": 0, "kind": "TracingPolicy", "name": "a", "problems": [bad]}],
                    },
                ],
            }
        )
    assert "SECRET" not in str(caught.value)


def test_a_node_report_and_a_status_carry_the_same_hits_section() -> None:
    report = NodeReport("worker-1", "prod", HitTable().to_section(datetime(2026, 1, 10, tzinfo=UTC)))
    assert NodeReport.from_json(report.to_json(), "worker-1") == report
    status = AgentStatus.from_json({**GOOD, "hits": report.hits.to_json()})
    assert status.hits == report.hits and AgentStatus.from_json(status.to_json()) == status
    with pytest.raises(ContractError, match="hit report worker-1"):
        NodeReport.from_json({**report.to_json(), "hits": "SECRET"}, "worker-1")

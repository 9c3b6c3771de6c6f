"""Objects inside a bundle, the prefixes the change budget counts, and the budget arithmetic."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from cdr_policy.admission.effect import BundleEffect
from cdr_policy.bundle.change_budget import Budget, EngineChange, assess
from cdr_policy.bundle.manifest import VerificationError
from cdr_policy.bundle.objects import ObjectRef, placed_objects, prefixes, ref_of

from .factory import ccg, files_of, network_bundle, tracing_policy


def test_yaml_files_hold_objects_other_files_are_carried() -> None:
    files = network_bundle(["45.0.0.1/32"])
    files["report.json"] = b'{"not": "an object"}'
    files["multi.yaml"] = (
        b"---\n"
        + files["cdr-dynamic-blocklist.yaml"].replace(b"tp-blocklist-a", b"tp-x")
        + (b"\n---\n" + files["cdr-dynamic-blocklist.yaml"].replace(b"tp-blocklist-a", b"tp-y") + b"\n---\n")
    )
    placed = placed_objects(files)
    assert [p for p, _ in placed if p.startswith("multi")] == ["multi.yaml, document 1", "multi.yaml, document 2"]
    assert sorted(ref_of(o).name for _, o in placed) == [
        "ccg-blocklist-a",
        "ccnp-blocklist-a",
        "tp-blocklist-a",
        "tp-x",
        "tp-y",
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"kind: [unclosed", "not valid YAML"),
        (b"- just\n- a list\n", "expected a Kubernetes object"),
        (b"apiVersion: v1\nmetadata: {name: x}\n", "apiVersion and kind"),
        (b"apiVersion: cilium.io/v2\nkind: CiliumCIDRGroup\nmetadata: {}\n", "metadata.name"),
        (
            b"apiVersion: cilium.io/v2\nkind: CiliumCIDRGroup\nmetadata: {name: a, namespace: 3}\n",
            "namespace",
        ),
    ],
)
def test_malformed_objects_are_refused(content: bytes, message: str) -> None:
    with pytest.raises(VerificationError, match=message) as exc:
        placed_objects({"x.yaml": content})
    assert exc.value.code == "bad_object"


def test_the_same_object_twice_is_refused() -> None:
    files = files_of({"a.yaml": ccg("g", []), "b.yaml": ccg("g", ["45.0.0.1/32"])})
    with pytest.raises(VerificationError, match="same kind, namespace and name"):
        placed_objects(files)


def test_refs_identify_objects_across_api_versions() -> None:
    assert (
        ref_of(ccg("g", [], api_version="cilium.io/v2alpha1"))
        == ref_of(ccg("g", []))
        == ObjectRef("CiliumCIDRGroup", None, "g")
    )


def test_prefixes_are_canonical_and_counted_once() -> None:
    objects = [
        ccg("g", ["45.0.0.1/32", "45.0.1.7/24", "2a00:1450::/32"]),
        tracing_policy("t", ["45.0.0.1/32", "::ffff:45.0.0.1/128", "::ffff:45.0.1.0/120", "45.0.2.9"]),
    ]
    objects[0]["metadata"]["annotations"] = {"cdr-policy.io/entries": "46.1.1.1/32"}  # metadata is not content
    objects[1]["spec"]["kprobes"][0]["message"] = "1.17"  # versions, ports and hooks are not prefixes
    assert prefixes(objects) == {"45.0.0.1/32", "45.0.1.0/24", "45.0.2.9/32", "2a00:1450::/32"}


def effect(tetragon: Iterable[str] = (), cilium: Iterable[str] = (), programs: Iterable[str] = ()) -> BundleEffect:
    made = BundleEffect()
    made.prefixes["tetragon"].update(tetragon)
    made.prefixes["cilium"].update(cilium)
    made.programs.update(programs)
    return made


def engine(budget: Budget, name: str) -> EngineChange:
    return next(e for e in budget.engines if e.engine == name)


def test_churn_counts_even_when_totals_stay_the_same() -> None:
    budget = assess(
        effect(tetragon={f"45.0.0.{i}/32" for i in range(100)}),
        effect(tetragon={f"45.0.1.{i}/32" for i in range(100)}),
        budget_percent=50,
        min_changes=0,
    )
    tetragon = engine(budget, "tetragon")
    assert (tetragon.added, tetragon.removed, tetragon.percent) == (100, 100, 200.0)
    assert budget.over() == [tetragon]
    assert "tetragon: 200 changes (100 added, 100 removed) against 100 current entries is 200.0%" in budget.reasons()[0]


def test_each_engine_is_measured_on_its_own() -> None:
    """Replacing every Cilium prefix is over the budget, however many Tetragon prefixes stay."""
    same = {f"45.0.{i // 256}.{i % 256}/32" for i in range(1000)}
    budget = assess(
        effect(tetragon=same, cilium={f"46.0.0.{i}/32" for i in range(50)}),
        effect(tetragon=same, cilium={f"47.0.0.{i}/32" for i in range(50)}),
        budget_percent=50,
        min_changes=20,
    )
    assert [e.engine for e in budget.over()] == ["cilium"]


def test_new_programs_in_kill_rules_count_like_prefixes() -> None:
    budget = assess(
        effect(programs={"/xmrig"}),
        effect(programs={"/xmrig", *(f"/miner{i}" for i in range(30))}),
        budget_percent=50,
        min_changes=20,
    )
    assert [e.engine for e in budget.over()] == ["programs"]


def test_small_changes_are_within_budget() -> None:
    current = {f"45.0.0.{i}/32" for i in range(100)}
    budget = assess(
        effect(cilium=current),
        effect(cilium=current - {"45.0.0.1/32"} | {"45.0.9.9/32"}),
        budget_percent=5,
        min_changes=0,
    )
    assert engine(budget, "cilium").percent == 2.0 and not budget.reasons()


def test_min_changes_keeps_small_lists_flowing() -> None:
    before, after = effect(tetragon={"45.0.0.1/32"}), effect(tetragon={"45.0.0.2/32", "45.0.0.3/32"})
    assert not assess(before, after, budget_percent=50, min_changes=20).reasons()
    assert assess(before, after, budget_percent=50, min_changes=0).reasons()


def test_emptying_a_list_is_over_budget() -> None:
    budget = assess(effect(tetragon={f"45.0.0.{i}/32" for i in range(50)}), effect(), budget_percent=50, min_changes=20)
    tetragon = engine(budget, "tetragon")
    assert tetragon.removed == 50 and tetragon.percent == 100.0 and budget.over() == [tetragon]


@pytest.mark.parametrize("budget, minimum", [(0, 0), (101, 0), (50, -1)])
def test_budget_arguments_are_checked(budget: int, minimum: int) -> None:
    with pytest.raises(ValueError):
        assess(effect(), effect(), budget_percent=budget, min_changes=minimum)

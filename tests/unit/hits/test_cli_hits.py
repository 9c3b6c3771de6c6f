"""``cdr-policy hits``: mixed Tetragon and Hubble exports (our objects, other policies, forwarded
flows, other destinations, a rotated gzip file beside the active one, malformed lines) attributed
exactly, with the feeds, finding ids and categories of each indicator hit; hostile files bounded;
one error line for what a user can get wrong."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import pytest

from cdr_policy.cli import main
from cdr_policy.hits import events
from tests.unit.hits.conftest import (
    CCNP_CDR,
    CCNP_TI,
    FINDING_C2,
    FINDING_PORT,
    FINDINGS_MINING,
    TP_CDR,
    TP_MINING,
    TP_TI,
)


def _hit(
    engine: str,
    obj: str,
    action: str,
    count: int,
    *,
    address: str | None = None,
    prefix: str | None = None,
    port: str | None = None,
    rule: str | None = None,
    feeds: Sequence[str] = (),
    findings: Sequence[str] = (),
    cats: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "engine": engine,
        "object": obj,
        "address": address,
        "prefix": prefix,
        "port": port,
        "rule": rule,
        "action": action,
        "count": count,
        "feeds": list(feeds),
        "findings": list(findings),
        "categories": list(cats),
    }


class _Provenance(TypedDict):
    feeds: tuple[str, ...]
    findings: tuple[str, ...]
    cats: tuple[str, ...]


C2: _Provenance = {"feeds": ("feodo",), "findings": (FINDING_C2,), "cats": ("C2_Communication", "c2")}
EXPECTED = [
    _hit("tetragon", TP_CDR, "SIGKILL", 3, address="45.33.32.156", prefix="45.33.32.156/32", **C2),
    _hit("cilium", CCNP_CDR, "DROPPED", 2, address="45.33.32.156", prefix="45.33.32.156/32", **C2),
    _hit(
        "cilium",
        CCNP_TI,
        "AUDIT",
        1,
        address="185.220.101.33",
        prefix="185.220.101.0/24",
        feeds=("tor",),
        cats=("tor",),
    ),
    _hit(
        "cilium",
        CCNP_TI,
        "DROPPED",
        1,
        address="2a0b:f4c0:16c:7::1",
        prefix="2a0b:f4c0::/32",
        feeds=("tor",),
        cats=("tor",),
    ),
    _hit("tetragon", TP_CDR, "POST", 1, port="tcp/4444", findings=(FINDING_PORT,), cats=("Reverse_Shell",)),
    _hit(
        "tetragon",
        TP_MINING,
        "SIGKILL",
        1,
        rule="crypto_mining",
        findings=FINDINGS_MINING,
        cats=("CryptoMiner_Execution",),
    ),
    _hit(
        "tetragon",
        TP_TI,
        "OVERRIDE",
        1,
        address="185.100.0.77",
        prefix="185.100.0.0/24",
        feeds=("feodo",),
        cats=("c2",),
    ),
    _hit(
        "tetragon",
        TP_TI,
        "SIGKILL",
        1,
        address="2a0b:f4c0:16c:7::1",
        prefix="2a0b:f4c0::/32",
        feeds=("tor",),
        cats=("tor",),
    ),
]


def _args(policies: Path, exports: dict[str, list[Path]]) -> list[str]:
    args = ["hits", "--policies", str(policies)]
    for path in exports["tetragon"]:
        args += ["--tetragon-export", str(path)]
    for path in exports["cilium"]:
        args += ["--hubble-export", str(path)]
    return args


def test_mixed_exports_are_attributed_exactly(
    policies: Path, exports: dict[str, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_args(policies, exports), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == {"read": 23, "ours": 11, "unattributed": 7, "malformed": 5}
    assert report["hits"] == EXPECTED


def test_the_table_names_each_hit_and_its_provenance(
    policies: Path, exports: dict[str, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(policies, exports)) == 0
    out = capsys.readouterr().out
    assert "45.33.32.156 in 45.33.32.156/32" in out and f"findings {FINDING_C2}" in out
    assert "rule crypto_mining" in out and "port tcp/4444" in out
    assert out.strip().endswith("events: 23 read, 11 ours, 7 unattributed, 5 malformed")


def test_nothing_of_an_event_is_echoed_but_the_named_fields(
    policies: Path, exports: dict[str, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_args(policies, exports), "--json"]) == 0
    out = capsys.readouterr().out
    for text in (
        "/usr/bin/curl",
        "xmrig",
        "10.244.1.17",
        "observe-egress",
        "deny-all-egress",
        "worker-1",
        "151.101.1.69",
    ):
        assert text not in out


def test_hostile_lines_are_bounded_and_counted_malformed(
    policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "MAX_LINE_BYTES", 4096)
    monkeypatch.setattr("cdr_policy.hits.files.MAX_LINE_BYTES", 4096)
    hostile = tmp_path / "hostile.log"
    hostile.write_bytes(
        b'{"process_kprobe":{"policy_name":"'
        + b"x" * 100_000
        + b'"}}\n'  # far over the line limit
        + b"[" * 200_000
        + b"\n"  # nested beyond the parser
        + b'{"process_kprobe":{"policy_name":"\xff\xfe"}}\n'  # not UTF-8
        + b'{"process_kprobe":{"policy_name":7}}\n'  # wrong type
        + b"\n\n"  # blank lines are not events
    )
    assert main(["hits", "--policies", str(policies), "--tetragon-export", str(hostile), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == {"read": 4, "ours": 0, "unattributed": 0, "malformed": 4}


@pytest.mark.parametrize(
    "args, expected",
    [
        (["hits", "--policies", "{nowhere}"], "give at least one --tetragon-export or --hubble-export"),
        (["hits", "--policies", "{nowhere}", "--tetragon-export", "x"], "no provenance.json there"),
        (["hits", "--policies", "{policies}", "--hubble-export", "{tmp}/missing.log"], "no such file"),
        (["hits", "--policies", "{policies}", "--hubble-export", "{tmp}/broken.log.gz"], "gzip"),
        (["hits", "--policies", "{bad}", "--hubble-export", "{tmp}/missing.log"], "provenance index refused"),
    ],
)
def test_user_errors_are_one_line(
    policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    (tmp_path / "broken.log.gz").write_bytes(gzip.compress(b'{"flow":{}}\n' * 100)[:40])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "provenance.json").write_text('{"schema_version": 1}')
    values = {"nowhere": str(tmp_path / "nowhere"), "policies": str(policies), "tmp": str(tmp_path), "bad": str(bad)}
    assert main([a.format(**values) for a in args]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cdr-policy: error: ") and expected in err

"""Tolerant parsing of findings: whatever the gateway sends, a Finding or a reasoned Malformed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdr_policy.qualys.findings import (
    TEXT_LIMIT,
    Finding,
    Malformed,
    clean_text,
    parse_finding,
    parse_severity,
    parse_techniques,
    parse_timestamp,
)

BASE = {"uuid": "f-1", "threatCategory": "Network_Scanning_Utility"}


@pytest.mark.parametrize(
    "value, expected",
    [
        (1, 1),
        (3, 3),
        (5, 5),
        (3.0, 3),
        ("3", 3),
        (" 4 ", 4),
        ("LOW", 1),
        ("medium", 2),
        ("High", 3),
        ("CRITICAL", 4),
        (0, None),
        (6, None),
        (9, None),
        ("", None),
        ("severe", None),
        (True, None),
        (None, None),
        (2.5, None),
        ([3], None),
    ],
)
def test_severity(value: object, expected: int | None) -> None:
    assert parse_severity(value) == expected


def test_severity_name() -> None:
    finding = parse_finding({**BASE, "severity": "5"})
    assert isinstance(finding, Finding) and finding.severity == 5 and finding.severity_name == "CRITICAL"
    unrated = parse_finding(BASE)
    assert isinstance(unrated, Finding) and unrated.severity_name is None


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2026-01-10T16:45:00Z", datetime(2026, 1, 10, 16, 45, tzinfo=UTC)),
        ("2026-01-10T16:45:00.123Z", datetime(2026, 1, 10, 16, 45, 0, 123000, tzinfo=UTC)),
        ("2026-01-10T18:45:00+02:00", datetime(2026, 1, 10, 16, 45, tzinfo=UTC)),
        ("2026-01-10T16:45:00", datetime(2026, 1, 10, 16, 45, tzinfo=UTC)),
        ("2026-01-10 16:45:00", datetime(2026, 1, 10, 16, 45, tzinfo=UTC)),
        (1768063500, datetime(2026, 1, 10, 16, 45, tzinfo=UTC)),
        (1768063500000, datetime(2026, 1, 10, 16, 45, tzinfo=UTC)),
        ("1768063500000", datetime(2026, 1, 10, 16, 45, tzinfo=UTC)),
        (1768063500.5, datetime(2026, 1, 10, 16, 45, 0, 500000, tzinfo=UTC)),
        ("yesterday", None),
        ("", None),
        (None, None),
        (True, None),
        ({"t": 1}, None),
        (1e30, None),
    ],
)
def test_timestamp(value: object, expected: datetime | None) -> None:
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"T1552.005": "Cloud Instance Metadata API", "T1046": {}}, ("T1046", "T1552.005")),
        (["T1046", "t1611", "T1046"], ("T1046", "T1611")),
        ([{"technique": "T1059.004"}, {"techniqueId": "T1611"}, {"name": "x"}], ("T1059.004", "T1611")),
        ("T1552_005, T1046", ("T1046", "T1552.005")),
        (None, ()),
        ({}, ()),
        (42, ()),
        (["not-a-technique", 7, None], ()),
    ],
)
def test_techniques(value: object, expected: tuple[str, ...]) -> None:
    assert parse_techniques(value) == expected


def test_full_finding() -> None:
    raw = {
        **BASE,
        "severity": "HIGH",
        "timestamp": "2026-01-10T16:45:00.000Z",
        "processName": "nmap",
        "processPath": "/usr/bin/nmap",
        "containerName": "web",
        "pod": "web-1",
        "imageName": "nginx:1.27",
        "resourceType": "container",
        "resourceId": "abc",
        "eventMessage": "nmap ran",
        "mitreRulesInfo": {"T1046": "Network Service Discovery"},
        "somethingNew": {"nested": [1, 2]},
    }
    f = parse_finding(raw)
    assert isinstance(f, Finding)
    assert (f.uuid, f.category, f.severity, f.process_name, f.pod, f.techniques) == (
        "f-1",
        "Network_Scanning_Utility",
        3,
        "nmap",
        "web-1",
        ("T1046",),
    )
    assert f.raw is raw  # kept, untouched


def test_missing_optional_fields() -> None:
    f = parse_finding(BASE)
    assert isinstance(f, Finding)
    assert f.timestamp is None and f.severity is None and f.techniques == () and f.process_name is None


def test_integer_uuid_is_accepted_as_text() -> None:
    f = parse_finding({**BASE, "uuid": 1234})
    assert isinstance(f, Finding) and f.uuid == "1234"


@pytest.mark.parametrize(
    "obj, reason, uuid",
    [
        ("a string", "finding is not a JSON object (got str)", None),
        ([BASE], "finding is not a JSON object (got list)", None),
        (None, "finding is not a JSON object (got NoneType)", None),
        ({"threatCategory": "X"}, "missing uuid", None),
        ({"uuid": "", "threatCategory": "X"}, "missing uuid", None),
        ({"uuid": {"id": 1}, "threatCategory": "X"}, "uuid is not a short printable string", None),
        ({"uuid": "a b", "threatCategory": "X"}, "uuid is not a short printable string", None),
        ({"uuid": "x" * 129, "threatCategory": "X"}, "uuid is not a short printable string", None),
        ({"uuid": True, "threatCategory": "X"}, "uuid is not a short printable string", None),
        ({"uuid": "u-1"}, "missing threatCategory", "u-1"),
        ({"uuid": "u-1", "threatCategory": "   "}, "missing threatCategory", "u-1"),
        ({"uuid": "u-1", "threatCategory": ["A"]}, "missing threatCategory", "u-1"),
    ],
)
def test_malformed(obj: object, reason: str, uuid: str | None) -> None:
    result = parse_finding(obj)
    assert result == Malformed(reason, uuid)
    assert result.to_dict() == ({"reason": reason, "uuid": uuid} if uuid else {"reason": reason})


def test_unicode_and_huge_strings() -> None:
    huge = "ü" * 100_000 + "\x00\x1b[31m"
    raw = {**BASE, "threatCategory": "Réseau_Scan_扫描", "eventMessage": huge, "processName": "cu\trl\n"}
    f = parse_finding(raw)
    assert isinstance(f, Finding)
    assert f.category == "Réseau_Scan_扫描"
    assert f.message is not None and len(f.message) == 512 and f.message.endswith("…")
    assert f.process_name == "cu rl"
    assert f.raw["eventMessage"] == huge  # the raw finding keeps everything


def test_clean_text() -> None:
    assert clean_text("  a \n b\x00c ") == "a b c"
    assert clean_text("x" * 1000) == "x" * (TEXT_LIMIT - 1) + "…"
    assert clean_text(42) == "42"
    assert clean_text({"a": 1}) is None and clean_text(True) is None and clean_text("   ") is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "uuid",
        "threatCategory",
        "severity",
        "timestamp",
        "mitreRulesInfo",
        "processName",
        "eventMessage",
        "destinationIp",
        "destinationPort",
        "networkInformation",
    ]
)


@settings(max_examples=100, deadline=None)
@given(st.one_of(JSON, st.dictionaries(FIELDS, JSON, max_size=10)))
def test_never_raises_on_any_json(obj: object) -> None:
    result = parse_finding(obj)
    assert isinstance(result, Finding | Malformed)
    if isinstance(result, Malformed):
        assert result.reason


PRINTABLE = st.characters(categories=["L", "M", "N", "P", "S", "Zs"])


@settings(max_examples=100, deadline=None)
@given(
    uuid=st.text(alphabet=st.characters(categories=["L", "N", "Pd"]), min_size=1, max_size=64),
    category=st.text(alphabet=PRINTABLE, min_size=1, max_size=300).filter(lambda s: s.strip()),
    extra=st.dictionaries(FIELDS, JSON, max_size=8),
)
def test_any_uuid_and_category_make_a_finding(uuid: str, category: str, extra: dict[str, Any]) -> None:
    result = parse_finding({**extra, "uuid": uuid, "threatCategory": category})
    assert isinstance(result, Finding)
    assert result.uuid == uuid and 0 < len(result.category) <= TEXT_LIMIT

"""The fake gateway keeps to the documented protocol, so that passing against it means something."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from fakes.qualys import (
    DEMO_PASSWORD,
    DEMO_USERNAME,
    FakeQualysGateway,
    load_findings,
    rebase_findings,
    synthetic_findings,
)

from .conftest import REPO, SAMPLES

START, END = "2026-01-10T00:00:00.000Z", "2026-01-11T00:00:00.000Z"


def token(http: httpx.Client, gw: FakeQualysGateway) -> str:
    r = http.post(gw.url + "/auth", data={"username": DEMO_USERNAME, "password": DEMO_PASSWORD, "token": "true"})
    assert r.status_code == 201 and r.headers["content-type"] == "text/plain"
    return r.text


def get(http: httpx.Client, gw: FakeQualysGateway, tok: str | None, **params: str | int) -> httpx.Response:
    params = {"startAt": START, "endAt": END, **params}
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    return http.get(gw.url + "/cdr-api/rest/v1/findings", params=params, headers=headers)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def test_auth(http: httpx.Client, samples_gateway: FakeQualysGateway) -> None:
    gw = samples_gateway
    assert token(http, gw).count(".") == 2
    bad = http.post(gw.url + "/auth", data={"username": DEMO_USERNAME, "password": "nope", "token": "true"})
    assert bad.status_code == 401
    no_token = http.post(gw.url + "/auth", data={"username": DEMO_USERNAME, "password": DEMO_PASSWORD})
    assert no_token.status_code == 400
    as_json = http.post(gw.url + "/auth", json={"username": DEMO_USERNAME, "password": DEMO_PASSWORD, "token": "true"})
    assert as_json.status_code == 400


def test_bearer_required_and_checked(http: httpx.Client, samples_gateway: FakeQualysGateway) -> None:
    gw = samples_gateway
    assert get(http, gw, None).status_code == 401
    tok = token(http, gw)
    assert get(http, gw, tok[:-2] + "xx").json() == {"message": "invalid token signature"}
    assert get(http, gw, tok).status_code == 200
    gw.expire_tokens()
    assert get(http, gw, tok).json() == {"message": "JWT expired"}
    assert get(http, gw, token(http, gw)).status_code == 200


def test_token_lifetime_uses_the_fakes_clock(http: httpx.Client) -> None:
    now = [1_000_000.0]
    with FakeQualysGateway(SAMPLES, token_lifetime_s=60, clock=lambda: now[0]) as gw:
        tok = token(http, gw)
        payload = json.loads(base64.urlsafe_b64decode(tok.split(".")[1] + "=="))
        assert payload["exp"] - payload["iat"] == 60
        assert get(http, gw, tok).status_code == 200
        now[0] += 60
        assert get(http, gw, tok).status_code == 401


@pytest.mark.parametrize(
    "params, message",
    [
        ({"startAt": "2026-01-10T00:00:00Z"}, "startAt/endAt must be"),
        ({"endAt": "2026-01-11T00:00:00.000+00:00"}, "startAt/endAt must be"),
        ({"limit": "101"}, "limit 1..100"),
        ({"offSet": "-1"}, "offSet must be"),
        ({"offSet": "ten"}, "invalid literal"),
    ],
)
def test_parameters_are_checked(
    http: httpx.Client, samples_gateway: FakeQualysGateway, params: dict[str, str], message: str
) -> None:
    r = get(http, samples_gateway, token(http, samples_gateway), **params)
    assert r.status_code == 400 and message in r.json()["message"]


def test_mandatory_parameters(http: httpx.Client, samples_gateway: FakeQualysGateway) -> None:
    tok = token(http, samples_gateway)
    r = http.get(
        samples_gateway.url + "/cdr-api/rest/v1/findings/",
        params={"startAt": START},
        headers={"Authorization": f"Bearer {tok}"},
    )
    assert r.status_code == 400 and r.json()["message"] == "missing mandatory parameter endAt"


def test_time_filter_is_inclusive_and_paging_is_stable(http: httpx.Client) -> None:
    items = [{"uuid": f"u{i}", "threatCategory": "X", "timestamp": f"2026-01-10T0{i}:00:00.000Z"} for i in range(5)]
    with FakeQualysGateway(items) as gw:
        tok = token(http, gw)
        r = get(http, gw, tok, startAt="2026-01-10T01:00:00.000Z", endAt="2026-01-10T03:00:00.000Z")
        assert [i["uuid"] for i in r.json()["content"]] == ["u1", "u2", "u3"] and r.json()["totalElements"] == 3
        pages = [get(http, gw, tok, offSet=str(o), limit="2").json()["content"] for o in (0, 2, 4)]
        assert [[i["uuid"] for i in p] for p in pages] == [["u0", "u1"], ["u2", "u3"], ["u4"]]
        r = get(http, gw, tok, offSet="0", limit="2")
        assert {"x-ratelimit-limit", "x-ratelimit-window-sec", "x-ratelimit-remaining"} <= set(r.headers.keys())


def test_malformed_items_are_served_once_in_place() -> None:
    items = load_findings(SAMPLES)
    with FakeQualysGateway(items) as gw:
        assert len(gw.findings) == len(items)
        position = next(i for i, item in enumerate(gw.findings) if isinstance(item, dict) and "uuid" not in item)
        assert gw.findings[position - 1]["timestamp"] <= "2026-01-10T15:00:00.000Z"
    odd = [
        {"uuid": "a", "timestamp": "2026-01-10T01:00:00Z"},
        "junk",
        7,
        {"uuid": "b", "timestamp": "garbage"},
    ]
    with FakeQualysGateway(odd) as gw, httpx.Client() as http:
        served = get(http, gw, token(http, gw)).json()["content"]
    assert served == odd


def test_rebase_keeps_spacing() -> None:
    items = load_findings(SAMPLES)
    target = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    shifted = rebase_findings(items, target)
    times = [datetime.fromisoformat(i["timestamp"].replace("Z", "+00:00")) for i in shifted if isinstance(i, dict)]
    originals = [datetime.fromisoformat(i["timestamp"].replace("Z", "+00:00")) for i in items if isinstance(i, dict)]
    assert max(times) == target
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [
        b - a for a, b in zip(originals, originals[1:], strict=False)
    ]
    assert items[0]["timestamp"].startswith("2026-01-10")  # the input is not modified


def test_rebased_samples_fall_in_the_last_day(http: httpx.Client) -> None:
    now = datetime.now(UTC)
    with FakeQualysGateway(SAMPLES, rebase_to=now - timedelta(minutes=5)) as gw:
        fmt = "%Y-%m-%dT%H:%M:%S.000Z"
        r = get(
            http,
            gw,
            token(http, gw),
            startAt=(now - timedelta(hours=24)).strftime(fmt),
            endAt=now.strftime(fmt),
        )
        assert r.json()["totalElements"] == len(load_findings(SAMPLES))


def test_load_findings_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_findings(tmp_path)
    (tmp_path / "bad.json").write_text('{"items": []}')
    with pytest.raises(ValueError, match="expected"):
        load_findings(tmp_path)


def test_synthetic_findings_are_deterministic() -> None:
    start, end = datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 1, 11, tzinfo=UTC)
    a = synthetic_findings(100, start=start, end=end, malformed_every=10)
    assert a == synthetic_findings(100, start=start, end=end, malformed_every=10)
    assert sum(1 for i in a if not isinstance(i, dict) or "uuid" not in i or "threatCategory" not in i) == 10


def test_standalone_server_prints_url_and_credentials() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fakes.qualys",
            "--port",
            "0",
            "--findings",
            str(SAMPLES),
            "--rebase-timestamps",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert lines[0].startswith("Fake Qualys gateway serving 20 findings at http://127.0.0.1:")
    assert "QUALYS_GATEWAY_URL=http://127.0.0.1:" in lines[2]
    assert f"QUALYS_USERNAME='{DEMO_USERNAME}'" in lines[3] and f"QUALYS_PASSWORD='{DEMO_PASSWORD}'" in lines[4]

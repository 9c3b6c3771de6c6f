"""The /auth exchange, token lifetime and renewal, and secrets kept out of logs and errors."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cdr_policy.errors import QualysError
from cdr_policy.guards import NeverBlock
from cdr_policy.qualys.auth import jwt_expiry
from cdr_policy.qualys.categories import CategoryMapping
from cdr_policy.qualys.client import FindingsPage, QualysClient
from cdr_policy.qualys.credentials import Credentials
from cdr_policy.stages.cdr_fetch import run_cdr_fetch
from cdr_policy.storage import LocalStore
from fakes.clock import FakeClock
from fakes.qualys import DEMO_PASSWORD, FakeQualysGateway, Fault

from .conftest import SAMPLES, SAMPLES_NOW

START, END = datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 1, 11, tzinfo=UTC)


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _pages(client: QualysClient) -> list[FindingsPage]:
    return list(client.findings_pages(START, END))


@pytest.mark.parametrize("password", ["p@ss word&x=1", "  leading and trailing  ", "ünïcødé+%2F#?", "a&password=b"])
def test_form_encoding_survives_special_characters(make_client: Callable[..., QualysClient], password: str) -> None:
    with FakeQualysGateway(SAMPLES, username="alice@corp", password=password) as gw:
        client = make_client(gw, credentials=Credentials("alice@corp", password))
        assert len(_pages(client)) == 1
        auth = [r for r in gw.requests if r.path == "/auth"]
        assert [r.status for r in auth] == [201]
        assert auth[0].form_fields == ("password", "token", "username")
        assert auth[0].headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_bad_credentials(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(SAMPLES) as gw:
        client = make_client(gw, credentials=Credentials("demo_user", "wrong password"))
        with pytest.raises(QualysError) as err:
            _pages(client)
    assert str(err.value) == "authentication failed: check QUALYS_USERNAME/QUALYS_PASSWORD"
    assert not gw.findings_requests()


def test_200_accepted_and_body_trimmed(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(SAMPLES, auth_status=200, auth_body_suffix="\r\n  ") as gw:
        client = make_client(gw)
        assert len(_pages(client)) == 1
        assert gw.findings_requests()[0].status == 200


@pytest.mark.parametrize("body", [b"<html><body>Login</body></html>", b'{"token": "abc"}', b"", b"a.b", b"a.b.c d"])
def test_body_that_is_not_a_jwt(make_client: Callable[..., QualysClient], body: bytes) -> None:
    with FakeQualysGateway(SAMPLES) as gw:
        gw.inject(Fault(status=201, body=body), path="auth")
        client = make_client(gw)
        with pytest.raises(QualysError, match="expected a JWT") as err:
            _pages(client)
    assert body.decode() not in str(err.value) or not body


@pytest.mark.parametrize(
    "status, message",
    [(403, "locked or has no API access"), (404, "check the platform/gateway"), (418, "HTTP 418")],
)
def test_other_auth_failures(make_client: Callable[..., QualysClient], status: int, message: str) -> None:
    with FakeQualysGateway(SAMPLES) as gw:
        gw.inject(Fault(status=status), path="auth")
        with pytest.raises(QualysError, match=message):
            _pages(make_client(gw))


def test_auth_transient_errors_are_retried(make_client: Callable[..., QualysClient], clock: FakeClock) -> None:
    with FakeQualysGateway(SAMPLES) as gw:
        gw.inject(Fault(status=503, headers={"Retry-After": "2"}), path="auth")
        gw.inject(Fault(drop=True), path="auth")
        client = make_client(gw)
        assert len(_pages(client)) == 1
    assert clock.sleeps[0] == 2.0
    assert len(clock.sleeps) == 2
    assert client.authentications == 1


def test_jwt_expiry() -> None:
    token = f"{_b64({'alg': 'HS256'})}.{_b64({'exp': 1767225600, 'sub': 'x'})}.c2ln"
    assert jwt_expiry(token) == 1767225600.0
    assert jwt_expiry(f"{_b64({'alg': 'HS256'})}.{_b64({'sub': 'x'})}.c2ln") is None
    assert jwt_expiry(f"{_b64({'alg': 'HS256'})}.{_b64({'exp': 'soon'})}.c2ln") is None
    assert jwt_expiry(f"{_b64({'alg': 'HS256'})}.{_b64({'exp': True})}.c2ln") is None
    assert jwt_expiry("bm90.anNvbg.c2ln") is None
    assert jwt_expiry("nodots") is None


def test_token_reused_until_the_refresh_margin_then_renewed(make_client: Callable[..., QualysClient]) -> None:
    wall = [1_000_000.0]
    with FakeQualysGateway(SAMPLES, token_lifetime_s=4 * 3600, clock=lambda: wall[0]) as gw:
        client = make_client(gw, wall_clock=lambda: wall[0])
        _pages(client)
        wall[0] += 3 * 3600 + 1799  # 3 h 29 min 59 s: still inside the 4 h lifetime minus 30 min
        _pages(client)
        assert client.authentications == 1
        wall[0] += 1  # 3 h 30 min: renewed before the gateway would refuse it
        _pages(client)
        assert client.authentications == 2
        assert all(r.status == 200 for r in gw.findings_requests())


def test_short_lived_token_renewed_at_half_life(make_client: Callable[..., QualysClient]) -> None:
    wall = [1_000_000.0]
    with FakeQualysGateway(SAMPLES, token_lifetime_s=600, clock=lambda: wall[0]) as gw:
        client = make_client(gw, wall_clock=lambda: wall[0])
        _pages(client)
        wall[0] += 299
        _pages(client)
        assert client.authentications == 1
        wall[0] += 1
        _pages(client)
        assert client.authentications == 2


def test_token_without_readable_exp_gets_the_documented_lifetime_and_a_401_renews_it(
    make_client: Callable[..., QualysClient],
) -> None:
    opaque = f"{_b64({'alg': 'none'})}.bm90LWpzb24.c2ln"  # payload is not JSON: 4 h assumed
    with FakeQualysGateway(SAMPLES) as gw:
        gw.inject(Fault(status=201, body=opaque.encode()), path="auth")
        client = make_client(gw)
        assert len(_pages(client)) == 1  # the gateway refuses the odd token once; one re-auth fixes it
        assert [r.status for r in gw.findings_requests()] == [401, 200]
        assert client.authentications == 2


def test_refused_fresh_token_is_an_error_not_a_loop(make_client: Callable[..., QualysClient]) -> None:
    with FakeQualysGateway(SAMPLES) as gw:
        gw.inject(Fault(status=401), times=3)
        client = make_client(gw)
        with pytest.raises(QualysError, match="refused a fresh token"):
            _pages(client)
        assert len(gw.findings_requests()) == 2
        assert client.authentications == 2


def test_secrets_never_in_logs_errors_or_reprs(
    make_client: Callable[..., QualysClient],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    guard: NeverBlock,
    mapping: CategoryMapping,
) -> None:
    """A failed login, a token expiring mid-run and a full fetch, with every logger at DEBUG."""
    caplog.set_level(logging.DEBUG)
    tokens: list[str] = []
    with FakeQualysGateway(SAMPLES) as gw:
        bad = make_client(gw, credentials=Credentials("demo_user", DEMO_PASSWORD + "x"))
        with pytest.raises(QualysError) as err:
            _pages(bad)
        texts = [str(err.value), repr(err.value), repr(bad), repr(bad._auth)]
        client = make_client(gw)
        _pages(client)
        tokens.append(client._auth.token())
        gw.expire_tokens()
        result = run_cdr_fetch(
            LocalStore(tmp_path),
            client,
            now=SAMPLES_NOW,
            lookback_hours=24,
            overlap_minutes=10,
            ttl_hours=24,
            guard=guard,
            mapping=mapping,
        )
        tokens.append(client._auth.token())
        texts += [repr(client), json.dumps(result.summary().to_json())]
    out, errout = capfd.readouterr()
    texts += [out, errout, caplog.text]
    stored = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.json"))
    for secret in (DEMO_PASSWORD, DEMO_PASSWORD + "x", "d3mo+p%40ss", "d3mo%20p%40ss", *tokens):
        for text in (*texts, stored):
            assert secret not in text
    # The logs were captured (so the absence of secrets means something), with the fields we log.
    assert "qualys token obtained" in out + caplog.text

"""Every platform's gateway, custom gateways and the errors a user sees."""

from __future__ import annotations

import pytest

from cdr_policy.errors import ConfigError
from cdr_policy.qualys.platforms import PLATFORMS, resolve_gateway

# Written out independently of the module's table, from https://qualys.com/platform-identification.
OFFICIAL = {
    "US1": "https://gateway.qg1.apps.qualys.com",
    "US2": "https://gateway.qg2.apps.qualys.com",
    "US3": "https://gateway.qg3.apps.qualys.com",
    "US4": "https://gateway.qg4.apps.qualys.com",
    "GOV1": "https://gateway.gov1.qualys.us",
    "EU1": "https://gateway.qg1.apps.qualys.eu",
    "EU2": "https://gateway.qg2.apps.qualys.eu",
    "EU3": "https://gateway.qg3.apps.qualys.it",
    "IN1": "https://gateway.qg1.apps.qualys.in",
    "CA1": "https://gateway.qg1.apps.qualys.ca",
    "AE1": "https://gateway.qg1.apps.qualys.ae",
    "UK1": "https://gateway.qg1.apps.qualys.co.uk",
    "AU1": "https://gateway.qg1.apps.qualys.com.au",
    "KSA1": "https://gateway.qg1.apps.qualysksa.com",
}


def test_every_platform_of_the_reference_is_known() -> None:
    assert set(PLATFORMS) == set(OFFICIAL)


@pytest.mark.parametrize("platform, url", sorted(OFFICIAL.items()))
def test_platform_gateway(platform: str, url: str) -> None:
    assert resolve_gateway(platform, None) == url
    assert resolve_gateway(f" {platform.lower()} ", None) == url


@pytest.mark.parametrize(
    "platform, wrong",
    [
        ("EU3", "qualys.eu"),  # qualys-mcp's mistake
        ("KSA1", "qualys.sa"),  # qualys-mcp's mistake
        ("GOV1", "qualys.com"),  # seen in one public repo
        ("EU1", "qualys.com"),  # nelssec podToRegion()
        ("EU2", "qualys.com"),
        ("IN1", "qualys.com"),
        ("CA1", "qualys.com"),
        ("AE1", "qualys.com"),
        ("UK1", "qualys.com"),
    ],
)
def test_known_wrong_mappings_are_not_repeated(platform: str, wrong: str) -> None:
    assert not resolve_gateway(platform, None).endswith(wrong)


def test_unknown_platform_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_gateway("US9", None)
    message = str(err.value)
    assert "unknown Qualys platform 'US9'" in message
    for platform in OFFICIAL:
        assert platform in message


@pytest.mark.parametrize("platform, gateway", [(None, None), ("", ""), ("  ", None)])
def test_nothing_configured(platform: str | None, gateway: str | None) -> None:
    with pytest.raises(ConfigError, match=r"set --platform/QUALYS_PLATFORM or --gateway/QUALYS_GATEWAY_URL"):
        resolve_gateway(platform, gateway)


@pytest.mark.parametrize(
    "gateway, url",
    [
        (
            "gateway.qg2.apps.qualys.com",
            "https://gateway.qg2.apps.qualys.com",
        ),  # the original's host-only form
        ("Gateway.QG2.apps.qualys.com", "https://gateway.qg2.apps.qualys.com"),
        ("https://gateway.qg2.apps.qualys.com/", "https://gateway.qg2.apps.qualys.com"),
        ("https://qualysapi.customer.example:8443/", "https://qualysapi.customer.example:8443"),
        ("https://gw.private.example/qualys/", "https://gw.private.example/qualys"),
        ("gw.private.example:9443", "https://gw.private.example:9443"),
        ("http://127.0.0.1:8443", "http://127.0.0.1:8443"),
        ("http://127.3.2.1:1/", "http://127.3.2.1:1"),
        ("http://localhost:8443", "http://localhost:8443"),
        ("http://[::1]:8443/", "http://[::1]:8443"),
        ("https://[2001:db8::5]", "https://[2001:db8::5]"),
    ],
)
def test_custom_gateway(gateway: str, url: str) -> None:
    assert resolve_gateway(None, gateway) == url


def test_gateway_wins_over_platform() -> None:
    assert resolve_gateway("US1", "gw.private.example") == "https://gw.private.example"


@pytest.mark.parametrize(
    "gateway, message",
    [
        ("http://gateway.qg2.apps.qualys.com", "plain http:// is only allowed for loopback"),
        ("http://10.0.0.5:8080", "plain http:// is only allowed for loopback"),
        ("http://128.0.0.1", "plain http:// is only allowed for loopback"),
        ("ftp://gateway.qg2.apps.qualys.com", "only https:// URLs"),
        ("https://user:secret@gw.example", "must not carry credentials"),
        ("https://gw.example/?x=1", "query string or fragment"),
        ("https://gw.example:99999", "invalid port"),
        ("https://", "has no host name"),
    ],
)
def test_bad_gateway(gateway: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        resolve_gateway("US1", gateway)
    assert "secret" not in str(err.value)

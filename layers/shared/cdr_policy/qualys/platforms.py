"""Qualys platforms and their API gateways (reference: qualys-cdr-api.md §2, from
https://qualys.com/platform-identification).

Public code gets several of these wrong (EU3 on ``qualys.eu``, KSA1 on ``qualys.sa``, GOV1 on
``qualys.com``, non-US pods on ``qualys.com``); this table follows the official page. Private cloud
platforms have customer-specific hosts: pass them as a gateway instead of a platform.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from cdr_policy.errors import ConfigError

# platform id -> API gateway host
PLATFORMS: dict[str, str] = {
    "US1": "gateway.qg1.apps.qualys.com",
    "US2": "gateway.qg2.apps.qualys.com",
    "US3": "gateway.qg3.apps.qualys.com",
    "US4": "gateway.qg4.apps.qualys.com",
    "GOV1": "gateway.gov1.qualys.us",
    "EU1": "gateway.qg1.apps.qualys.eu",
    "EU2": "gateway.qg2.apps.qualys.eu",
    "EU3": "gateway.qg3.apps.qualys.it",
    "IN1": "gateway.qg1.apps.qualys.in",
    "CA1": "gateway.qg1.apps.qualys.ca",
    "AE1": "gateway.qg1.apps.qualys.ae",
    "UK1": "gateway.qg1.apps.qualys.co.uk",
    "AU1": "gateway.qg1.apps.qualys.com.au",
    "KSA1": "gateway.qg1.apps.qualysksa.com",
}


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _normalise_gateway(gateway: str) -> str:
    raw = gateway.strip()
    if not raw:
        raise ConfigError("the Qualys gateway is empty: give a host name or an https:// URL")
    if "://" not in raw:
        # A bare host name (as the original operator's --gateway took), possibly with a port.
        raw = "https://" + raw
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ConfigError(f"Qualys gateway {gateway!r}: only https:// URLs are accepted")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("Qualys gateway URL must not carry credentials: use QUALYS_USERNAME/QUALYS_PASSWORD")
    if parts.query or parts.fragment:
        raise ConfigError(f"Qualys gateway {gateway!r}: a query string or fragment is not allowed")
    host = parts.hostname
    if not host:
        raise ConfigError(f"Qualys gateway {gateway!r} has no host name")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"Qualys gateway {gateway!r}: invalid port") from exc
    if scheme == "http" and not _is_loopback(host):
        raise ConfigError(
            f"Qualys gateway {gateway!r}: plain http:// is only allowed for loopback addresses "
            "(127.0.0.0/8, ::1, localhost); use https://"
        )
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def resolve_gateway(platform: str | None, gateway: str | None) -> str:
    """The gateway base URL (no trailing slash). An explicit ``gateway`` wins over ``platform``; a
    ``platform`` is checked even then, so that a typo never passes unnoticed."""
    key = platform.strip().upper() if platform is not None and platform.strip() else None
    if key is not None and key not in PLATFORMS:
        raise ConfigError(f"unknown Qualys platform {platform!r}: valid platforms are {', '.join(PLATFORMS)}")
    if gateway is not None and gateway.strip():
        return _normalise_gateway(gateway)
    if key is not None:
        return f"https://{PLATFORMS[key]}"
    raise ConfigError("no Qualys gateway configured: set --platform/QUALYS_PLATFORM or --gateway/QUALYS_GATEWAY_URL")

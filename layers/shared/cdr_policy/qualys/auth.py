"""The gateway JWT: obtained with a form POST to ``/auth``, cached with its expiry, renewed before it.

``POST <gateway>/auth`` with ``username``, ``password`` and ``token=true`` URL-encoded (httpx
percent-encodes every field, so passwords with ``@``, ``&`` or spaces work). The answer is the raw
JWT (201 documented, 200 seen in practice), which we trim and check for the ``x.y.z`` shape. Its
lifetime comes from the token's ``exp`` claim when readable, else the documented 4 hours.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable

import httpx

from cdr_policy.errors import QualysError
from cdr_policy.observability import logger
from cdr_policy.qualys.credentials import Credentials
from cdr_policy.qualys.retry import Retrier

AUTH_PATH = "/auth"
DEFAULT_LIFETIME_S = 4 * 3600
REFRESH_MARGIN_S = 30 * 60
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, or None when it cannot be read. Not verified:
    the gateway verifies its own tokens; we only need to know when to ask for a new one."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


class TokenManager:
    """Hands out a valid bearer token; re-authenticates before expiry or when told a token was refused."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        http: httpx.Client,
        retrier: Retrier,
        *,
        headers: dict[str, str],
        wall_clock: Callable[[], float] = time.time,
        refresh_margin_s: float = REFRESH_MARGIN_S,
        default_lifetime_s: float = DEFAULT_LIFETIME_S,
    ) -> None:
        self._url = base_url + AUTH_PATH
        self._credentials = credentials
        self._http = http
        self._retrier = retrier
        self._headers = {**headers, "Accept": "text/plain, */*"}
        self._now = wall_clock
        self._margin = refresh_margin_s
        self._default_lifetime = default_lifetime_s
        self._token: str | None = None
        self._refresh_at = 0.0
        self.authentications = 0

    def __repr__(self) -> str:
        return f"TokenManager(url={self._url!r}, has_token={self._token is not None})"

    def token(self) -> str:
        if self._token is None or self._now() >= self._refresh_at:
            self._authenticate()
        assert self._token is not None
        return self._token

    def invalidate(self, token: str) -> None:
        """The gateway refused ``token`` (HTTP 401): the next ``token()`` call fetches a new one."""
        if self._token == token:
            self._token = None

    def _authenticate(self) -> None:
        form = {
            "username": self._credentials.username,
            "password": self._credentials.password,
            "token": "true",
        }

        def send(timeout: float) -> httpx.Response:
            return self._http.post(self._url, data=form, headers=self._headers, timeout=timeout)

        response = self._retrier.call("POST /auth", send, counted=False)  # exempt from the limits
        status = response.status_code
        if status == 401:
            raise QualysError("authentication failed: check QUALYS_USERNAME/QUALYS_PASSWORD")
        if status == 403:
            raise QualysError("authentication refused (HTTP 403): the account is locked or has no API access")
        if status == 404:
            raise QualysError(f"no authentication endpoint at {self._url} (HTTP 404): check the platform/gateway")
        if status not in (200, 201):
            raise QualysError(f"authentication failed with HTTP {status} from {self._url}")
        token = response.text.strip()
        if not _JWT.match(token):
            raise QualysError(
                f"unexpected answer from {self._url}: expected a JWT (header.payload.signature), "
                f"got {len(token)} characters of {response.headers.get('content-type', 'unknown type')}"
            )
        issued = self._now()
        expiry = jwt_expiry(token)
        lifetime = (expiry - issued) if expiry is not None else self._default_lifetime
        if lifetime <= 0:
            # Clock skew or a broken exp claim: trust the documented lifetime rather than looping.
            logger.warning("qualys token exp is in the past; assuming the documented 4 h lifetime")
            lifetime = self._default_lifetime
        # Renew ``margin`` before expiry, but never spend more than half a (short) lifetime waiting.
        self._refresh_at = issued + lifetime - min(self._margin, lifetime / 2)
        self._token = token
        self.authentications += 1
        logger.info(
            "qualys token obtained",
            extra={"gateway": self._url, "lifetime_s": round(lifetime), "exp_from_token": expiry is not None},
        )

"""Lambda settings: read from the environment once per cold start, validated, then passed down as
arguments. Logic never reads ``os.environ`` itself. A missing or malformed variable fails the cold
start with a message naming the variable."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cdr_policy.errors import ConfigError

# The scheduled re-render runs at least once a day: a bundle lives at least twice the period
# (``policy.channel``), and the default channels' 72 hours must fit.
MAX_RENDER_REFRESH_HOURS = 24


@dataclass(frozen=True)
class Settings:
    state_bucket: str
    dist_bucket: str
    publish_queue_url: str | None
    # Secrets Manager secret holding {"username": ..., "password": ...} for the Qualys gateway.
    qualys_secret_name: str | None
    qualys_platform: str | None
    qualys_gateway_url: str | None
    # Secrets Manager secret holding {"api_key": ...}; None disables AbuseIPDB.
    abuseipdb_secret_name: str | None
    # KMS asymmetric key used to sign channel manifests.
    signing_key_id: str | None
    lookback_hours: int
    overlap_minutes: int
    cdr_ttl_hours: int
    reputation_threshold: int
    change_budget_percent: int
    # DynamoDB table of the Publish function's idempotency records (Powertools idempotency).
    idempotency_table: str | None = None
    # The approvers' KMS key (only the Approver role signs with it): Publish verifies grants with
    # its public key. None: nothing past the change budget can be approved.
    approver_key_id: str | None = None
    # Hours between scheduled re-renders (template RenderRefreshHours): every channel's
    # bundle_ttl_hours must be at least twice this.
    render_refresh_hours: int = 6
    # Most findings requests CdrFetch sends to the Qualys gateway in any hour (template
    # QualysRequestsPerHour; the gateway's own limit is per subscription, shared with other tools).
    qualys_requests_per_hour: int = 120

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(f"environment variable {name} is required")
            return value

        def optional(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def integer(name: str, default: int, lo: int, hi: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r} is not an integer") from exc
            if not lo <= value <= hi:
                raise ConfigError(f"{name}={value} is outside {lo}..{hi}")
            return value

        return cls(
            state_bucket=required("STATE_BUCKET"),
            dist_bucket=required("DIST_BUCKET"),
            publish_queue_url=optional("PUBLISH_QUEUE_URL"),
            qualys_secret_name=optional("QUALYS_SECRET_NAME"),
            qualys_platform=optional("QUALYS_PLATFORM"),
            qualys_gateway_url=optional("QUALYS_GATEWAY_URL"),
            abuseipdb_secret_name=optional("ABUSEIPDB_SECRET_NAME"),
            signing_key_id=optional("SIGNING_KEY_ID"),
            lookback_hours=integer("LOOKBACK_HOURS", 24, 1, 24 * 30),
            overlap_minutes=integer("OVERLAP_MINUTES", 10, 0, 24 * 60),
            cdr_ttl_hours=integer("CDR_TTL_HOURS", 24 * 7, 1, 24 * 365),
            reputation_threshold=integer("REPUTATION_THRESHOLD", 50, 0, 100),
            change_budget_percent=integer("CHANGE_BUDGET_PERCENT", 50, 1, 100),
            idempotency_table=optional("IDEMPOTENCY_TABLE"),
            approver_key_id=optional("APPROVER_KEY_ID"),
            render_refresh_hours=integer("RENDER_REFRESH_HOURS", 6, 1, MAX_RENDER_REFRESH_HOURS),
            qualys_requests_per_hour=integer("QUALYS_REQUESTS_PER_HOUR", 120, 1, 3600),
        )


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The validated settings of this execution environment (cached; ``get_settings.cache_clear()`` in tests)."""
    return Settings.from_env(os.environ)

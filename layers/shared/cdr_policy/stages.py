"""The four pipeline stages as the Lambda handlers call them. Each composes library pieces.

(Being assembled by the integrator; the signatures below are the contract the handlers rely on.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cdr_policy.config import Settings


def cdr_fetch(settings: Settings, *, now: datetime | None = None, deadline_s: float | None = None) -> dict[str, Any]:
    """Fetch findings since the checkpoint, store raw pages and the CDR indicator set. Returns a summary."""
    raise NotImplementedError


def feed_sync(settings: Settings, *, now: datetime | None = None, deadline_s: float | None = None) -> dict[str, Any]:
    """Download every enabled feed, gate, normalise, store indicator sets; refresh AbuseIPDB. Returns a summary."""
    raise NotImplementedError


def render(settings: Settings, *, trigger_keys: list[str], now: datetime | None = None) -> list[dict[str, Any]]:
    """Render one bundle per channel from all current indicator sets; enqueue each new one for Publish.
    Returns ``[{"channel": ..., "digest": ..., "changed": bool}]``."""
    raise NotImplementedError


def publish(settings: Settings, *, channel: str, digest: str, now: datetime | None = None) -> dict[str, Any]:
    """Check, sign and publish one rendered bundle to one channel. Returns a summary."""
    raise NotImplementedError

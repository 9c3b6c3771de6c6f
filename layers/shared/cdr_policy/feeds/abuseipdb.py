"""AbuseIPDB reputation for the IPs that CDR extracted (APIv2, https://docs.abuseipdb.com/).

- ``GET /check?ipAddress=..&maxAgeInDays=..`` with the ``Key`` header and ``Accept:
  application/json`` (without it a 429 comes back as an HTML page);
- a per-IP cache in ``state/abuseipdb/cache.json``: an IP is asked again once its score is older
  than ``cache_ttl_hours``; cached scores stay usable for ``keep_hours``;
- quota: ``X-RateLimit-Remaining: 0`` or a 429 (``Retry-After``, else ``X-RateLimit-Reset``)
  stops all asking until then; the cache keeps serving and the set is marked ``stale`` with the
  reason; the pause is stored so that the next runs do not knock either;
- ``threshold``: IPs scoring at or above it are blocked: they form the ``abuseipdb`` indicator set
  (``indicators/reputation/abuseipdb.json``, ``score`` on each entry); addresses AbuseIPDB
  whitelists are never blocked;
- IPs the never-block guard refuses are not sent to AbuseIPDB at all;
- optional ``/blacklist`` (``blacklist=True``): downloaded at most once per
  ``blacklist_interval_hours`` (free plans get five a day; the server caches it a day anyway)
  into ``indicators/reputation/abuseipdb-blacklist.json``;
- no API key: one log line and a ``disabled`` report line, nothing else;
- a key that is configured but cannot be read now (``AbuseIPDB.unavailable``: Secrets Manager is
  down): nothing is asked, the cached scores keep serving and the sets are marked ``stale`` with
  the reason, as when the quota is used up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from aws_lambda_powertools.metrics import MetricUnit

from cdr_policy import jsonio, layout
from cdr_policy.errors import ConfigError
from cdr_policy.feeds.download import make_client
from cdr_policy.feeds.parse import parse_token
from cdr_policy.feeds.persist import FeedOutcome, load_set, save_set_if_changed
from cdr_policy.guards import NeverBlock
from cdr_policy.models import Indicator, IndicatorSet, Rejection, SetStatus
from cdr_policy.netprefix import BITS, last_address, sort_key, to_string
from cdr_policy.observability import logger, metrics
from cdr_policy.storage import NotFound, Store
from cdr_policy.timeutil import iso, parse_iso

DEFAULT_BASE_URL = "https://api.abuseipdb.com/api/v2"
CACHE_SCHEMA_VERSION = 1
SOURCE = "abuseipdb"
BLACKLIST_SOURCE = "abuseipdb-blacklist"
# Indicator-set ``source`` of each set (the blacklist is "an extra feed" to the schema and report).
SET_SOURCES = {SOURCE: SOURCE, BLACKLIST_SOURCE: f"feed:{BLACKLIST_SOURCE}"}
CATEGORY = "reputation"
MISSING_KEY = "ABUSEIPDB_API_KEY is not set: AbuseIPDB reputation checks are off"


@dataclass
class CachedScore:
    score: int
    checked_at: str
    first_checked_at: str
    whitelisted: bool | None = None
    total_reports: int | None = None
    last_reported_at: str | None = None
    country: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CachedScore:
        values: dict[str, Any] = {f.name: d.get(f.name) for f in fields(cls)}
        return cls(**values)


@dataclass
class _Cache:
    scores: dict[str, CachedScore]
    paused_until: dict[str, str]  # endpoint -> ISO time before which we do not call it
    blacklist_fetched_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": CACHE_SCHEMA_VERSION,
            "scores": {ip: asdict(c) for ip, c in sorted(self.scores.items())},
            "paused_until": dict(sorted(self.paused_until.items())),
            "blacklist_fetched_at": self.blacklist_fetched_at,
        }

    @classmethod
    def load(cls, store: Store) -> _Cache:
        try:
            d = jsonio.loads(store.get(layout.ABUSEIPDB_CACHE).data)
            if d.get("schema_version") != CACHE_SCHEMA_VERSION:
                raise ValueError(f"not schema_version {CACHE_SCHEMA_VERSION}")
            return cls(
                scores={ip: CachedScore.from_dict(c) for ip, c in d.get("scores", {}).items()},
                paused_until=dict(d.get("paused_until", {})),
                blacklist_fetched_at=d.get("blacklist_fetched_at"),
            )
        except NotFound:
            return cls(scores={}, paused_until={})
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.warning(
                "AbuseIPDB cache unreadable, starting afresh", extra={"key": layout.ABUSEIPDB_CACHE, "error": str(exc)}
            )
            return cls(scores={}, paused_until={})


class _Stop(Exception):
    """AbuseIPDB must not be asked again in this run (quota, auth, server trouble)."""


DEFAULT_THRESHOLD = 50


class AbuseIPDB:
    def __init__(
        self,
        api_key: str | None,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        max_age_days: int = 30,
        cache_ttl_hours: int = 24,
        keep_hours: int = 24 * 7,
        base_url: str = DEFAULT_BASE_URL,
        max_checks: int = 1000,
        blacklist: bool = False,
        blacklist_confidence: int = 100,
        blacklist_limit: int = 10_000,
        blacklist_interval_hours: int = 24,
    ) -> None:
        if not 0 <= threshold <= 100:
            raise ConfigError(f"reputation threshold {threshold} is outside 0..100")
        if not 1 <= max_age_days <= 365:
            raise ConfigError(f"AbuseIPDB maxAgeInDays {max_age_days} is outside 1..365")
        if not 25 <= blacklist_confidence <= 100:
            raise ConfigError(f"AbuseIPDB confidenceMinimum {blacklist_confidence} is outside 25..100")
        if cache_ttl_hours < 1 or keep_hours < cache_ttl_hours or max_checks < 0 or blacklist_limit < 1:
            raise ConfigError("AbuseIPDB: need cache_ttl_hours >= 1, keep_hours >= cache_ttl_hours, max_checks >= 0")
        parts = urlsplit(base_url)
        loopback = parts.hostname in ("localhost",) or _is_loopback_ip(parts.hostname)
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ConfigError(f"AbuseIPDB base URL {base_url!r} must be https:// (plain http only on loopback)")
        self.api_key = (api_key or "").strip() or None
        self.key_problem: str | None = None  # set by ``unavailable``
        self.threshold = threshold
        self.max_age_days = max_age_days
        self.cache_ttl = timedelta(hours=cache_ttl_hours)
        self.keep = timedelta(hours=keep_hours)
        self.base_url = base_url.rstrip("/")
        self.max_checks = max_checks
        self.blacklist = blacklist
        self.blacklist_confidence = blacklist_confidence
        self.blacklist_limit = blacklist_limit
        self.blacklist_interval = timedelta(hours=blacklist_interval_hours)

    @classmethod
    def unavailable(cls, reason: str, *, threshold: int = 50) -> AbuseIPDB:
        """A check whose key is configured but cannot be read now: it asks nothing and keeps the
        cached scores, its sets marked stale with ``reason``."""
        check = cls(None, threshold=threshold)
        check.key_problem = reason
        return check

    # -- public ------------------------------------------------------------------------------------

    def refresh(
        self,
        store: Store,
        ips: Sequence[str],
        *,
        now: datetime,
        guard: NeverBlock,
        http: httpx.Client | None = None,
    ) -> list[FeedOutcome]:
        """Score the given IPs (cache first), store the reputation set(s); one outcome per set."""
        if self.api_key is None and self.key_problem is None:
            logger.info(MISSING_KEY)
            names = [SOURCE] + ([BLACKLIST_SOURCE] if self.blacklist else [])
            return [self._disabled(store, name, now) for name in names]
        client = http or make_client()
        try:
            cache = _Cache.load(store)
            outcomes = [self._refresh_checks(store, cache, ips, now, guard, client)]
            if self.blacklist:
                outcomes.append(self._refresh_blacklist(store, cache, now, guard, client))
            store.put(layout.ABUSEIPDB_CACHE, jsonio.dumps_pretty(cache.to_dict()), "application/json")
            return outcomes
        finally:
            if http is None:
                client.close()

    # -- /check ------------------------------------------------------------------------------------

    def _refresh_checks(
        self, store: Store, cache: _Cache, ips: Sequence[str], now: datetime, guard: NeverBlock, client: httpx.Client
    ) -> FeedOutcome:
        rejected: dict[str, Rejection] = {}
        candidates = self._candidates(ips, guard, rejected)
        stats = {"asked": len(candidates), "checked": 0, "cached": 0, "not_checked": 0, "below_threshold": 0}
        problem = self.key_problem or self._pause_reason(cache, "check", now)
        for ip in candidates:
            cached = cache.scores.get(ip)
            if cached is not None and parse_iso(cached.checked_at) + self.cache_ttl > now:
                stats["cached"] += 1
                continue
            if problem is not None or stats["checked"] >= self.max_checks:
                stats["not_checked"] += 1
                continue
            params = {"ipAddress": ip, "maxAgeInDays": str(self.max_age_days)}
            try:
                data = self._call(client, cache, "check", params, now)
                cache.scores[ip] = _score_from(data.get("data"), cached, now)
            except _Stop as exc:
                problem = str(exc)
                stats["not_checked"] += 1
                continue
            except _Refused as exc:
                rejected[ip] = Rejection(value=_as_prefix(ip), source=SOURCE, reason=f"AbuseIPDB refused it: {exc}")
                continue
            stats["checked"] += 1
            # X-RateLimit-Remaining: 0 on this answer pauses the endpoint from the next IP on.
            problem = self._pause_reason(cache, "check", now)
        if stats["not_checked"] and problem is None:
            problem = f"the per-run limit of {self.max_checks} checks was reached"
        entries = []
        for ip in candidates:
            cached = cache.scores.get(ip)
            if cached is None or parse_iso(cached.checked_at) + self.keep <= now:
                continue
            if cached.whitelisted:
                rejected[ip] = Rejection(value=_as_prefix(ip), source=SOURCE, reason="whitelisted by AbuseIPDB")
            elif cached.score >= self.threshold:
                entries.append(self._indicator(ip, cached))
            else:
                stats["below_threshold"] += 1
        self._prune(cache, now)
        status: SetStatus = "ok" if problem is None else "stale"
        error = None
        if problem is not None:
            error = f"{problem}; {stats['not_checked']} IP(s) not checked, cached scores used"
            metrics.add_metric(name="ReputationNotChecked", unit=MetricUnit.Count, value=stats["not_checked"])
            logger.warning("AbuseIPDB checks incomplete", extra={"reason": problem, **stats})
        stats["entries"] = len(entries)
        stats["threshold"] = self.threshold
        new = IndicatorSet(
            source=SOURCE,
            fetched_at=iso(now),
            status=status,
            entries=entries,
            rejected=[rejected[k] for k in sorted(rejected, key=_ip_order)],
            stats=stats,
            error=error,
        )
        return self._save(store, SOURCE, new, now)

    def _candidates(self, ips: Sequence[str], guard: NeverBlock, rejected: dict[str, Rejection]) -> list[str]:
        out: set[str] = set()
        for raw in ips:
            parsed = parse_token(raw.strip())
            if isinstance(parsed, str) or parsed[2] != BITS[parsed[0]]:
                continue  # not a single address: nothing to look up
            version, value, length = parsed
            ip = to_string(version, value, length).split("/")[0]
            reason = guard.check_interval(version, value, last_address(version, value, length), length)
            if reason is not None:
                rejected[ip] = Rejection(value=_as_prefix(ip), source=SOURCE, reason=reason)
            else:
                out.add(ip)
        return sorted(out, key=_ip_order)

    def _indicator(self, ip: str, cached: CachedScore) -> Indicator:
        return Indicator(
            value=_as_prefix(ip),
            kind="ip",
            category=CATEGORY,
            sources=[SOURCE],
            first_seen=cached.first_checked_at,
            last_seen=cached.checked_at,
            expires_at=iso(parse_iso(cached.checked_at) + self.keep),
            refs=[SOURCE],
            score=cached.score,
        )

    def _prune(self, cache: _Cache, now: datetime) -> None:
        for ip in [ip for ip, c in cache.scores.items() if parse_iso(c.checked_at) + self.keep <= now]:
            del cache.scores[ip]

    # -- /blacklist --------------------------------------------------------------------------------

    def _refresh_blacklist(
        self, store: Store, cache: _Cache, now: datetime, guard: NeverBlock, client: httpx.Client
    ) -> FeedOutcome:
        previous = load_set(store, layout.reputation_set_key(BLACKLIST_SOURCE)).indicator_set
        last = cache.blacklist_fetched_at
        if previous is not None and last is not None and parse_iso(last) + self.blacklist_interval > now:
            return FeedOutcome(
                name=BLACKLIST_SOURCE,
                status=previous.status,
                entries=len(previous.entries),
                error=previous.error,
                stats={**previous.stats, "downloaded": False},
                rejected=list(previous.rejected),
                key=layout.reputation_set_key(BLACKLIST_SOURCE),
            )
        problem = self.key_problem or self._pause_reason(cache, "blacklist", now)
        data: dict[str, Any] = {}
        if problem is None:
            params = {"confidenceMinimum": str(self.blacklist_confidence), "limit": str(self.blacklist_limit)}
            try:
                data = self._call(client, cache, "blacklist", params, now)
            except (_Stop, _Refused) as exc:
                problem = str(exc)
        if problem is not None:
            kept = [e for e in (previous.entries if previous else []) if parse_iso(e.expires_at) > now]
            new = IndicatorSet(
                source=SET_SOURCES[BLACKLIST_SOURCE],
                fetched_at=previous.fetched_at if previous else iso(now),
                status="stale" if previous else "error",
                entries=kept,
                rejected=list(previous.rejected) if previous else [],
                stats={**(previous.stats if previous else {}), "entries": len(kept), "downloaded": False},
                error=problem,
            )
            logger.warning("AbuseIPDB blacklist not refreshed", extra={"reason": problem})
            return self._save(store, BLACKLIST_SOURCE, new, now)
        cache.blacklist_fetched_at = iso(now)
        entries, rejected = self._blacklist_entries(data, now, guard)
        generated = (data.get("meta") or {}).get("generatedAt")
        new = IndicatorSet(
            source=SET_SOURCES[BLACKLIST_SOURCE],
            fetched_at=iso(now),
            status="ok" if entries else "empty",
            entries=entries,
            rejected=rejected,
            stats={
                "entries": len(entries),
                "rejected_guard": len(rejected),
                "generated_at": generated,
                "downloaded": True,
            },
        )
        return self._save(store, BLACKLIST_SOURCE, new, now)

    def _blacklist_entries(
        self, data: dict[str, Any], now: datetime, guard: NeverBlock
    ) -> tuple[list[Indicator], list[Rejection]]:
        entries: dict[str, Indicator] = {}
        rejected: dict[str, Rejection] = {}
        expires = iso(now + 2 * self.blacklist_interval)
        rows = data.get("data")
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict):
                continue
            raw = str(row.get("ipAddress", ""))
            parsed = parse_token(raw)
            if isinstance(parsed, str):
                rejected[raw] = Rejection(value=raw[:100], source=BLACKLIST_SOURCE, reason=parsed)
                continue
            version, value, length = parsed
            prefix = to_string(version, value, length)
            reason = guard.check_interval(version, value, last_address(version, value, length), length)
            if reason is not None:
                rejected[prefix] = Rejection(value=prefix, source=BLACKLIST_SOURCE, reason=reason)
                continue
            seen = _iso_or(row.get("lastReportedAt"), now)
            score = row.get("abuseConfidenceScore")
            entries[prefix] = Indicator(
                value=prefix,
                kind="ip",
                category=CATEGORY,
                sources=[SOURCE],
                first_seen=seen,
                last_seen=seen,
                expires_at=expires,
                refs=[BLACKLIST_SOURCE],
                score=score if isinstance(score, int) and not isinstance(score, bool) else None,
            )
        ordered = [entries[k] for k in sorted(entries, key=sort_key)]
        return ordered, [rejected[k] for k in sorted(rejected)]

    # -- plumbing ----------------------------------------------------------------------------------

    def _call(
        self, client: httpx.Client, cache: _Cache, endpoint: str, params: dict[str, str], now: datetime
    ) -> dict[str, Any]:
        """One API call. Raises ``_Stop`` (and records a pause) when AbuseIPDB must not be asked
        again, ``_Refused`` when it refused this one request."""
        assert self.api_key is not None
        try:
            resp = client.get(
                f"{self.base_url}/{endpoint}",
                params=params,
                headers={"Key": self.api_key, "Accept": "application/json"},
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            raise _Stop(f"AbuseIPDB unreachable: {type(exc).__name__}") from exc
        detail = _error_detail(resp)
        if resp.status_code == 429:
            until = _retry_at(resp, now) or now + timedelta(hours=1)
            cache.paused_until[endpoint] = iso(until)
            metrics.add_metric(name="ReputationRateLimited", unit=MetricUnit.Count, value=1)
            raise _Stop(f"AbuseIPDB rate limit reached (429: {detail}); paused until {iso(until)}")
        if resp.status_code in (401, 403):
            raise _Stop(f"AbuseIPDB refused the API key ({resp.status_code}: {detail})")
        if resp.status_code == 422:
            raise _Refused(detail)
        if resp.status_code != 200:
            raise _Stop(f"AbuseIPDB answered HTTP {resp.status_code}: {detail}")
        try:
            body = resp.json()
        except ValueError as exc:
            raise _Stop("AbuseIPDB answered with something that is not JSON") from exc
        if not isinstance(body, dict):
            raise _Stop("AbuseIPDB answered with an unexpected JSON document")
        if resp.headers.get("x-ratelimit-remaining", "").strip() == "0":
            until = _reset_at(resp) or now + timedelta(days=1)
            cache.paused_until[endpoint] = iso(until)
        return body

    def _pause_reason(self, cache: _Cache, endpoint: str, now: datetime) -> str | None:
        until = cache.paused_until.get(endpoint)
        if until is not None and parse_iso(until) > now:
            return f"AbuseIPDB {endpoint} quota used up; not asking again before {until}"
        cache.paused_until.pop(endpoint, None)
        return None

    def _disabled(self, store: Store, name: str, now: datetime) -> FeedOutcome:
        # Stored even on a first run, so that every report says the list is off (written once: unchanged later).
        previous = load_set(store, layout.reputation_set_key(name))
        new = IndicatorSet(source=SET_SOURCES[name], fetched_at=iso(now), status="disabled", error=MISSING_KEY)
        changed = save_set_if_changed(store, previous, new, now=now, ttl=None)
        return FeedOutcome(
            name=name, status="disabled", entries=0, error=MISSING_KEY, changed=changed, key=previous.key
        )

    def _save(self, store: Store, name: str, new: IndicatorSet, now: datetime) -> FeedOutcome:
        previous = load_set(store, layout.reputation_set_key(name))
        changed = save_set_if_changed(store, previous, new, now=now, ttl=self.keep)
        return FeedOutcome.of_set(name, new, changed=changed, key=previous.key)


class _Refused(Exception):
    """AbuseIPDB refused one request (422); the others may go on."""


def _score_from(data: Any, previous: CachedScore | None, now: datetime) -> CachedScore:
    if not isinstance(data, dict):
        raise _Stop("AbuseIPDB check answer has no 'data' object")
    score = data.get("abuseConfidenceScore")
    if not isinstance(score, int) or isinstance(score, bool) or not 0 <= score <= 100:
        raise _Stop(f"AbuseIPDB check answer has no valid abuseConfidenceScore ({score!r})")
    reports = data.get("totalReports")
    whitelisted = data.get("isWhitelisted")
    return CachedScore(
        score=score,
        checked_at=iso(now),
        first_checked_at=previous.first_checked_at if previous else iso(now),
        whitelisted=whitelisted if isinstance(whitelisted, bool) else None,
        total_reports=reports if isinstance(reports, int) else None,
        last_reported_at=data.get("lastReportedAt") if isinstance(data.get("lastReportedAt"), str) else None,
        country=data.get("countryCode") if isinstance(data.get("countryCode"), str) else None,
    )


def _error_detail(resp: httpx.Response) -> str:
    if resp.status_code == 200:
        return ""
    try:
        errors = resp.json().get("errors") or []
        details = [str(e.get("detail")) for e in errors if isinstance(e, dict) and e.get("detail")]
        if details:
            return "; ".join(details)[:300]
    except (ValueError, AttributeError):
        pass
    return resp.reason_phrase or f"HTTP {resp.status_code}"


def _retry_at(resp: httpx.Response, now: datetime) -> datetime | None:
    raw = resp.headers.get("retry-after", "").strip()
    if raw.isdigit():
        return now + timedelta(seconds=int(raw))
    return _reset_at(resp)


def _reset_at(resp: httpx.Response) -> datetime | None:
    raw = resp.headers.get("x-ratelimit-reset", "").strip()
    if raw.isdigit():
        return datetime.fromtimestamp(int(raw), tz=UTC)
    return None


def _iso_or(value: Any, default: datetime) -> str:
    if isinstance(value, str):
        try:
            return iso(parse_iso(value))
        except ValueError:
            pass
    return iso(default)


def _as_prefix(ip: str) -> str:
    return f"{ip}/{32 if ':' not in ip else 128}"


def _ip_order(ip: str) -> tuple[int, int, int]:
    return sort_key(_as_prefix(ip))


def _is_loopback_ip(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

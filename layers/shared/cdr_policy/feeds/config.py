"""Feed configuration: the built-in list and the ``feeds:`` YAML that replaces or extends it.

YAML (``--feeds FILE`` or ``config/feeds.yaml`` in the state bucket)::

    mode: replace          # optional; "replace" (default) or "extend"
    feeds:
      - name: blocklist-de
        url: https://lists.blocklist.de/lists/all.txt
        category: attacker
        format: plain      # optional, default auto
        ttl_hours: 48      # optional, default 48
        enabled: true      # optional, default true
        can_be_empty: false  # optional, default false
        allow_http: false  # optional: plain http:// to a non-loopback host needs this

``replace`` uses exactly the listed feeds. ``extend`` starts from the built-in five: an entry
with a built-in name overrides only the keys it gives (``{name: tor-exit, enabled: false}``
switches that feed off), other entries are added after them. Unknown keys and bad values are
refused with a ``ConfigError`` naming the feed and key.

``file:///path`` feeds are accepted only from the command line (``allow_file=True``): in the state
bucket's ``config/feeds.yaml`` such a URL could only ever read the function's own filesystem.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from cdr_policy.config_text import load_yaml_mapping
from cdr_policy.errors import ConfigError
from cdr_policy.evidence import CATEGORY_WEIGHTS
from cdr_policy.feeds.parse import FORMATS

CATEGORIES = tuple(CATEGORY_WEIGHTS)
MODES = ("replace", "extend")
# Names used by other sources in indicator provenance; a feed may not take them.
RESERVED_NAMES = ("cdr", "abuseipdb", "abuseipdb-blacklist")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
DEFAULT_TTL_HOURS = 48
MAX_TTL_HOURS = 24 * 365


@dataclass(frozen=True)
class FeedConfig:
    """One feed. ``ttl_hours``: how long its entries stay in force after the last good download
    (they age out when the feed stays broken); ``can_be_empty``: an empty list is legitimate."""

    name: str
    url: str
    category: str
    format: str = "auto"
    ttl_hours: int = DEFAULT_TTL_HOURS
    enabled: bool = True
    can_be_empty: bool = False
    allow_http: bool = False

    def __post_init__(self) -> None:
        label = f"feed {self.name!r}" if isinstance(self.name, str) else "feed"
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"{label}: name must be 1-40 lower-case letters, digits or '-'")
        if self.name in RESERVED_NAMES:
            raise ConfigError(f"{label}: name is reserved for another source ({', '.join(RESERVED_NAMES)})")
        if not isinstance(self.category, str) or self.category not in CATEGORIES:
            raise ConfigError(f"{label}: category {self.category!r} is not one of {', '.join(CATEGORIES)}")
        if not isinstance(self.format, str) or self.format not in FORMATS:
            raise ConfigError(f"{label}: format {self.format!r} is not one of {', '.join(FORMATS)}")
        if (
            not isinstance(self.ttl_hours, int)
            or isinstance(self.ttl_hours, bool)
            or not 1 <= self.ttl_hours <= MAX_TTL_HOURS
        ):
            raise ConfigError(f"{label}: ttl_hours must be an integer in 1..{MAX_TTL_HOURS}, got {self.ttl_hours!r}")
        for key in ("enabled", "can_be_empty", "allow_http"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{label}: {key} must be true or false, got {getattr(self, key)!r}")
        _check_url(label, self.url, self.allow_http)

    @classmethod
    def from_dict(cls, d: Any, where: str = "feed") -> FeedConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping with name, url and category, got {type(d).__name__}")
        label = f"{where} ({d['name']})" if isinstance(d.get("name"), str) else where
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise ConfigError(f"{label}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        missing = [k for k in ("name", "url", "category") if k not in d]
        if missing:
            raise ConfigError(f"{label}: missing required key(s) {', '.join(missing)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_url(label: str, url: Any, allow_http: bool) -> None:
    if not isinstance(url, str) or not url or any(c.isspace() for c in url):
        raise ConfigError(f"{label}: url must be a non-empty string without spaces, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme == "file":
        if not parts.path or parts.netloc not in ("", "localhost"):
            raise ConfigError(f"{label}: file URL {url!r} must look like file:///absolute/path")
        return
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{label}: url {url!r} must be https://host/path, http://host/path or file:///path")
    if parts.scheme == "http" and not allow_http and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"{label}: plain http:// to {parts.hostname} can be tampered with on the way; "
            "use https:// or set allow_http: true for this feed"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


BUILTIN_FEEDS: tuple[FeedConfig, ...] = (
    # Updated every 5 minutes; legitimately empty at times (firehol marks it can_be_empty).
    FeedConfig(
        name="feodo-c2",
        url="https://feodotracker.abuse.ch/downloads/ipblocklist.txt",
        category="c2",
        format="abusech",
        ttl_hours=24,
        can_be_empty=True,
    ),
    # Exits come and go within hours: a broken download should not keep them blocked for long.
    FeedConfig(
        name="tor-exit",
        url="https://check.torproject.org/torbulkexitlist",
        category="tor",
        format="plain",
        ttl_hours=12,
    ),
    # Published daily.
    FeedConfig(
        name="emerging-threats",
        url="https://rules.emergingthreats.net/blockrules/compromised-ips.txt",
        category="compromised",
        format="plain",
        ttl_hours=72,
    ),
    # Attackers of the last 48 hours, refreshed every 30 minutes.
    FeedConfig(
        name="blocklist-de",
        url="https://lists.blocklist.de/lists/all.txt",
        category="attacker",
        format="plain",
        ttl_hours=48,
    ),
    # Refreshed hourly.
    FeedConfig(
        name="cinsscore",
        url="https://cinsscore.com/list/ci-badguys.txt",
        category="scanner",
        format="plain",
        ttl_hours=48,
    ),
)


def load_feeds(text: str, *, origin: str = "feeds config", allow_file: bool = False) -> list[FeedConfig]:
    """Parse a ``feeds:`` YAML document (see the module docstring) into the effective feed list.
    ``allow_file``: accept ``file://`` URLs (the local CLI's own files only)."""
    doc = load_yaml_mapping(text, origin, "a mapping with a 'feeds:' list at the top level")
    unknown = sorted(str(k) for k in set(doc) - {"feeds", "mode"})
    if unknown:
        raise ConfigError(f"{origin}: unknown top-level key(s) {', '.join(unknown)} (known: feeds, mode)")
    mode = doc.get("mode", "replace")
    if mode not in MODES:
        raise ConfigError(f"{origin}: mode {mode!r} is not one of {', '.join(MODES)}")
    items = doc.get("feeds")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{origin}: 'feeds:' must be a non-empty list of {{name, url, category}} entries")
    builtin = {f.name: f for f in BUILTIN_FEEDS}
    listed = []
    for i, item in enumerate(items):
        if mode == "extend" and isinstance(item, dict) and item.get("name") in builtin:
            # A built-in name in extend mode overrides only the keys it gives.
            item = {**builtin[item["name"]].to_dict(), **item}
        feed = FeedConfig.from_dict(item, f"{origin}: feeds[{i}]")
        if not allow_file and urlsplit(feed.url).scheme == "file":
            raise ConfigError(
                f"{origin}: feeds[{i}] ({feed.name}): file:// URLs are accepted only from the command line "
                "(--feeds), never from a bucket's configuration"
            )
        listed.append(feed)
    seen: set[str] = set()
    for feed in listed:
        if feed.name in seen:
            raise ConfigError(f"{origin}: feed name {feed.name!r} appears more than once")
        seen.add(feed.name)
    if mode == "replace":
        return listed
    by_name = {f.name: f for f in listed}
    merged = [by_name.pop(f.name, f) for f in BUILTIN_FEEDS]
    return merged + [f for f in listed if f.name in by_name]

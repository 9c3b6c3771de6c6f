"""Operator-supplied configuration documents, the same in the cloud and on a laptop.

In the state bucket (all optional; the shipped defaults apply when absent):
- ``config/channels.yaml``   the channels and their render settings (``policy.channel``)
- ``config/feeds.yaml``      the feed list (``feeds.config.load_feeds``)
- ``config/categories.yaml`` the CDR category mapping (``qualys.categories``)
Locally the CLI takes the same documents from files (``--channel``, ``--feeds``, ``--categories``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdr_policy import layout
from cdr_policy.config_text import decode_text, load_yaml_mapping
from cdr_policy.errors import ConfigError
from cdr_policy.storage import NotFound, Store

# Each document's module is imported where it is read: a Lambda function reads one of them, and
# its cold start should not load the other two (benchmarks/README.md, part d).
if TYPE_CHECKING:
    from cdr_policy.feeds.config import FeedConfig
    from cdr_policy.policy.channel import ChannelSettings
    from cdr_policy.qualys.categories import CategoryMapping


def parse_channels(text: str, origin: str, *, refresh_hours: float) -> list[ChannelSettings]:
    """A ``channels:`` list (YAML or JSON). Names must be unique; at least one channel; every
    bundle lifetime at least twice the re-render period ``refresh_hours`` (``check_lifetime``);
    every promotion from another configured audit channel (``check_promotions``)."""
    from cdr_policy.policy.channel import ChannelSettings, check_promotions

    doc = load_yaml_mapping(text, origin, "exactly one top-level key 'channels' holding a list")
    if set(doc) != {"channels"} or not isinstance(doc["channels"], list):
        raise ConfigError(f"{origin}: expected exactly one top-level key 'channels' holding a list")
    if not doc["channels"]:
        raise ConfigError(f"{origin}: 'channels' is empty")
    channels = []
    for i, item in enumerate(doc["channels"]):
        try:
            channel = ChannelSettings.from_dict(item)
            channel.check_lifetime(refresh_hours)
            channels.append(channel)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{origin}: channels[{i}]: {exc}") from exc
    names = [c.name for c in channels]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{origin}: channel name(s) used twice: {', '.join(dupes)}")
    try:
        check_promotions(channels)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from exc
    return channels


def _text(store: Store, key: str) -> str | None:
    try:
        data = store.get(key).data
    except NotFound:
        return None
    return decode_text(data, f"{store.describe()}/{key}")


def channels_from_store(store: Store, *, refresh_hours: float) -> list[ChannelSettings]:
    """The channels of ``config/channels.yaml`` (the defaults when absent), each checked against
    the re-render period ``refresh_hours``."""
    from cdr_policy.policy.channel import default_channels

    text = _text(store, layout.CHANNELS_CONFIG)
    if text is not None:
        return parse_channels(text, f"{store.describe()}/{layout.CHANNELS_CONFIG}", refresh_hours=refresh_hours)
    channels = default_channels()
    for channel in channels:
        channel.check_lifetime(refresh_hours)
    return channels


def feeds_from_store(store: Store) -> list[FeedConfig]:
    from cdr_policy.feeds.config import BUILTIN_FEEDS, load_feeds

    text = _text(store, layout.FEEDS_CONFIG)
    return list(BUILTIN_FEEDS) if text is None else load_feeds(text, origin=f"{store.describe()}/{layout.FEEDS_CONFIG}")


def mapping_from_store(store: Store) -> CategoryMapping:
    from cdr_policy.qualys.categories import load_mapping, parse_mapping

    text = _text(store, layout.CATEGORIES_CONFIG)
    return load_mapping() if text is None else parse_mapping(text, f"{store.describe()}/{layout.CATEGORIES_CONFIG}")

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
    from cdr_policy.policy.channel import check_promotions

    doc = load_yaml_mapping(text, origin, "exactly one top-level key 'channels' holding a list")
    if set(doc) != {"channels"} or not isinstance(doc["channels"], list):
        raise ConfigError(f"{origin}: expected exactly one top-level key 'channels' holding a list")
    if not doc["channels"]:
        raise ConfigError(f"{origin}: 'channels' is empty")
    channels = [_channel(item, f"{origin}: channels[{i}]", refresh_hours) for i, item in enumerate(doc["channels"])]
    names = [c.name for c in channels]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{origin}: channel name(s) used twice: {', '.join(dupes)}")
    try:
        check_promotions(channels)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from exc
    return channels


def parse_one_channel(
    text: str, origin: str, default_name: str, *, refresh_hours: float
) -> tuple[ChannelSettings, frozenset[str]]:
    """The settings of one channel, for the CLI's ``--channel FILE``: a mapping of its settings
    (``name`` defaults to ``default_name``), or a ``channels:`` list holding exactly one. Returns the
    settings and the keys the file set (so that a flag can tell a setting from a default); its bundle
    lifetime at least twice the re-render period ``refresh_hours``."""
    doc = load_yaml_mapping(text, origin, "one channel's settings (a mapping), or 'channels:' with one channel")
    if set(doc) == {"channels"} and isinstance(doc["channels"], list):
        if len(doc["channels"]) != 1:
            raise ConfigError(f"{origin}: the CLI renders one channel; found {len(doc['channels'])} under 'channels'")
        item, where = doc["channels"][0], f"{origin}: channels[0]"
    else:
        item, where = {"name": default_name, **doc}, origin
    channel = _channel(item, where, refresh_hours)
    if channel.promote is not None:
        raise ConfigError(
            f"{where}: channel {channel.name}: promote follows another channel of the pipeline's channels.yaml; "
            "the CLI renders one channel"
        )
    return channel, frozenset(item) if isinstance(item, dict) else frozenset()


def _channel(item: object, where: str, refresh_hours: float) -> ChannelSettings:
    from cdr_policy.policy.channel import ChannelSettings

    try:
        channel = ChannelSettings.from_dict(item)  # type: ignore[arg-type]  # from_dict checks it is a mapping
        channel.check_lifetime(refresh_hours)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return channel


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

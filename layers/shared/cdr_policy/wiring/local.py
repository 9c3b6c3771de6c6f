"""The local wiring: build each stage's ports from the CLI's flags and environment (a state folder,
credentials from ``QUALYS_USERNAME``/``QUALYS_PASSWORD``, the operator's documents from files, CRDs
from ``--crds``) and call the same stages as the Lambda functions (:mod:`cdr_policy.wiring.cloud`).

Everything is read and checked once, in :meth:`LocalPorts.from_args`, before any network traffic.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from cdr_policy.config_text import read_text_file
from cdr_policy.documents import parse_channels
from cdr_policy.errors import ConfigError
from cdr_policy.feeds.abuseipdb import AbuseIPDB
from cdr_policy.feeds.config import BUILTIN_FEEDS, FeedConfig, load_feeds
from cdr_policy.guards import NeverBlock
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.qualys.categories import CategoryMapping, load_mapping
from cdr_policy.qualys.client import QualysClient
from cdr_policy.qualys.credentials import Credentials, load_credentials
from cdr_policy.qualys.platforms import resolve_gateway
from cdr_policy.stages.cdr_fetch import CdrFetchResult, run_cdr_fetch
from cdr_policy.stages.feed_sync import FeedSyncResult, run_feed_sync
from cdr_policy.stages.render import RenderedChannel, run_render
from cdr_policy.storage import LocalStore

LOCAL_CHANNEL = "local"
OVERLAP_MINUTES = 10


@dataclass(frozen=True)
class LocalPorts:
    """What the stages need, built from the command line once."""

    state: LocalStore
    gateway_url: str
    credentials: Credentials
    mapping: CategoryMapping
    feeds: list[FeedConfig]
    reputation_key: str | None
    reputation_threshold: int
    channel: ChannelSettings
    crds: SchemaSet | None
    lookback_hours: int

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str]) -> LocalPorts:
        if args.channel:
            channels = parse_channels(read_text_file(args.channel, "channel settings"), args.channel)
            if len(channels) != 1:
                raise ConfigError(f"{args.channel}: the CLI renders one channel; found {len(channels)}")
            channel = replace(channels[0], action=args.action, threat_intel=args.threat_intel)
        else:
            channel = ChannelSettings(name=LOCAL_CHANNEL, action=args.action, threat_intel=args.threat_intel)
        feeds = list(BUILTIN_FEEDS)
        if args.feeds:
            feeds = load_feeds(read_text_file(args.feeds, "feed list"), origin=args.feeds, allow_file=True)
        return cls(
            state=LocalStore(Path(args.state_dir)),
            gateway_url=resolve_gateway(args.platform, args.gateway),
            credentials=load_credentials(None, env),
            mapping=load_mapping(args.categories) if args.categories else load_mapping(),
            feeds=feeds,
            reputation_key=env.get("ABUSEIPDB_API_KEY", "").strip() or None,
            reputation_threshold=args.reputation_threshold,
            channel=channel,
            crds=SchemaSet.from_dir(args.crds) if args.crds else None,
            lookback_hours=args.hours,
        )


def cdr_fetch(ports: LocalPorts, *, now: datetime, resume: bool) -> CdrFetchResult:
    """CdrFetch over the look-back (``--hours``); ``resume`` continues from the checkpoint (controller mode)."""
    with QualysClient(ports.gateway_url, ports.credentials) as client:
        return run_cdr_fetch(
            ports.state,
            client,
            now=now,
            lookback_hours=ports.lookback_hours,
            overlap_minutes=OVERLAP_MINUTES,
            ttl_hours=ports.lookback_hours,
            guard=NeverBlock(),
            mapping=ports.mapping,
            resume=resume,
        )


def feed_sync(ports: LocalPorts, *, now: datetime) -> FeedSyncResult:
    reputation = AbuseIPDB(ports.reputation_key, threshold=ports.reputation_threshold)
    return run_feed_sync(ports.state, ports.feeds, now=now, guard=NeverBlock(), reputation=reputation)


def render(ports: LocalPorts, *, now: datetime) -> RenderedChannel:
    """Render the one local channel into the state folder (``bundles/<digest>/``); nothing is published."""
    (rendered,) = run_render(
        ports.state, channels=[ports.channel], now=now, guard=NeverBlock(), crds=ports.crds, publish=None
    )
    return rendered

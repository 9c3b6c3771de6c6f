"""The local wiring: build each stage's ports from the CLI's flags and environment (a state folder,
credentials from ``QUALYS_USERNAME``/``QUALYS_PASSWORD``, the operator's documents from files, CRDs
from ``--crds``) and call the same stages as the Lambda functions (:mod:`cdr_policy.wiring.cloud`).

Everything is read and checked once, in :meth:`LocalPorts.from_args`, before any network traffic.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from cdr_policy.config_text import read_text_file
from cdr_policy.documents import parse_channels
from cdr_policy.errors import ConfigError, PolicyCheckError
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
    def from_args(
        cls, args: argparse.Namespace, env: Mapping[str, str], *, state_root: Path | None = None
    ) -> LocalPorts:
        """``args.state_dir`` None: one folder per tenant under ``state_root``."""
        gateway_url = resolve_gateway(args.platform, args.gateway)
        credentials = load_credentials(None, env)
        state_dir = state_dir_for(args.state_dir, gateway_url, credentials, state_root)
        # The CLI re-renders every --interval (controller mode; a CronJob's schedule with --once).
        refresh_hours = args.interval / 3600
        if args.channel:
            channels = parse_channels(
                read_text_file(args.channel, "channel settings"), args.channel, refresh_hours=refresh_hours
            )
            if len(channels) != 1:
                raise ConfigError(f"{args.channel}: the CLI renders one channel; found {len(channels)}")
            channel = replace(channels[0], action=args.action, threat_intel=args.threat_intel)
        else:
            channel = ChannelSettings(name=LOCAL_CHANNEL, action=args.action, threat_intel=args.threat_intel)
            channel.check_lifetime(refresh_hours)
        feeds = list(BUILTIN_FEEDS)
        if args.feeds:
            feeds = load_feeds(read_text_file(args.feeds, "feed list"), origin=args.feeds, allow_file=True)
        return cls(
            state=LocalStore(writable_dir(state_dir, "--state-dir")),
            gateway_url=gateway_url,
            credentials=credentials,
            mapping=load_mapping(args.categories) if args.categories else load_mapping(),
            feeds=feeds,
            reputation_key=env.get("ABUSEIPDB_API_KEY", "").strip() or None,
            reputation_threshold=args.reputation_threshold,
            channel=channel,
            crds=_crds(args.crds),
            lookback_hours=args.hours,
        )


def tenant_id(gateway_url: str, username: str) -> str:
    """A stable folder name for one tenant (gateway and user): the host, readable, and a hash that
    tells two users of one gateway apart without writing the user name to disk."""
    host = urlsplit(gateway_url).hostname or "gateway"
    digest = hashlib.sha256(f"{gateway_url}\n{username}".encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9.-]', '_', host)}-{digest}"


def state_dir_for(given: str | None, gateway_url: str, credentials: Credentials, root: Path | None) -> Path:
    """``--state-dir`` when given, else the tenant's folder under ``root``."""
    if given is not None:
        return Path(given)
    if root is None:
        raise ConfigError("--state-dir is required")
    return root / tenant_id(gateway_url, credentials.username)


def writable_dir(path: Path, flag: str) -> Path:
    """``path`` as a folder we can write to (created if needed), or a ConfigError naming ``flag``."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path} is not a folder we can write to: {exc.strerror or exc}") from exc
    return path


def _crds(path: str | None) -> SchemaSet | None:
    if not path:
        return None
    try:
        return SchemaSet.from_dir(path)
    except PolicyCheckError as exc:
        raise ConfigError(f"--crds: {exc}") from exc


def cdr_fetch(
    ports: LocalPorts, *, now: datetime, resume: bool, progress: Callable[[str], None] | None = None
) -> CdrFetchResult:
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
            progress=progress,
        )


def feed_sync(ports: LocalPorts, *, now: datetime, progress: Callable[[str], None] | None = None) -> FeedSyncResult:
    reputation = AbuseIPDB(ports.reputation_key, threshold=ports.reputation_threshold)
    return run_feed_sync(
        ports.state, ports.feeds, now=now, guard=NeverBlock(), reputation=reputation, progress=progress
    )


def render(ports: LocalPorts, *, now: datetime) -> RenderedChannel:
    """Render the one local channel into the state folder (``bundles/<digest>/``); nothing is published."""
    rendered: list[RenderedChannel] = []
    run_render(
        ports.state,
        channels=[ports.channel],
        now=now,
        guard=NeverBlock(),
        crds=ports.crds,
        publish=None,
        each=rendered.append,
    )
    (channel,) = rendered
    return channel

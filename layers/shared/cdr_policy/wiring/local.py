"""The local wiring: build each stage's ports from the CLI's flags and environment (a state folder,
credentials from ``QUALYS_USERNAME``/``QUALYS_PASSWORD``, the operator's documents from files, CRDs
from ``--crds``) and call the same stages as the Lambda functions (:mod:`cdr_policy.wiring.cloud`).

Everything is read and checked once, in :meth:`LocalPorts.from_args`, before any network traffic.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from cdr_policy.config_text import read_text_file
from cdr_policy.documents import parse_one_channel
from cdr_policy.errors import ConfigError, PolicyCheckError
from cdr_policy.feeds.abuseipdb import DEFAULT_THRESHOLD, AbuseIPDB
from cdr_policy.feeds.config import BUILTIN_FEEDS, FeedConfig, load_feeds
from cdr_policy.guards import NeverBlock
from cdr_policy.policy.channel import Action, ChannelSettings
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.qualys.categories import CategoryMapping, load_mapping
from cdr_policy.qualys.client import QualysClient
from cdr_policy.qualys.credentials import Credentials, load_credentials
from cdr_policy.qualys.platforms import resolve_gateway
from cdr_policy.stages.cdr_fetch import CdrFetchResult, run_cdr_fetch
from cdr_policy.stages.feed_sync import FeedSyncResult, run_feed_sync
from cdr_policy.stages.render import RenderedChannel, run_render
from cdr_policy.storage import LocalStore, writable_dir

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
        channel = local_channel(
            args.channel, action=args.action, threat_intel=args.threat_intel, refresh_hours=args.interval / 3600
        )
        if args.reputation_threshold is not None and not channel.threat_intel:
            raise ConfigError(
                "--reputation-threshold applies only with threat intel (--threat-intel, or threat_intel: true in "
                "the --channel file): AbuseIPDB scores the CDR addresses as part of it"
            )
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
            reputation_threshold=(
                DEFAULT_THRESHOLD if args.reputation_threshold is None else args.reputation_threshold
            ),
            channel=channel,
            crds=_crds(args.crds),
            lookback_hours=args.hours,
        )


def local_channel(
    path: str | None, *, action: Action | None, threat_intel: bool | None, refresh_hours: float
) -> ChannelSettings:
    """The channel the CLI renders: ``--channel FILE``'s settings, else the defaults (channel
    ``local``, audit, no threat intel). ``--action`` and ``--threat-intel`` (None: not given) fill in
    what the file does not set; given both ways with different values, they are a ConfigError. The
    bundle lifetime is at least twice the re-render period ``refresh_hours`` (``--interval``)."""
    if not path:
        channel = ChannelSettings(name=LOCAL_CHANNEL, action=action or "Post", threat_intel=bool(threat_intel))
        channel.check_lifetime(refresh_hours)
        return channel
    text = read_text_file(path, "channel settings")
    channel, given = parse_one_channel(text, path, LOCAL_CHANNEL, refresh_hours=refresh_hours)
    for key, flag, value in (("action", "--action", action), ("threat_intel", "--threat-intel", threat_intel)):
        if key in given and value is not None and getattr(channel, key) != value:
            shown = flag if value is True else f"{flag} {value}"
            in_file = str(getattr(channel, key)).lower() if key == "threat_intel" else getattr(channel, key)
            raise ConfigError(
                f"{shown} contradicts '{key}: {in_file}' in the channel file {path} (drop the flag or change the file)"
            )
    return replace(
        channel,
        action=channel.action if "action" in given else (action or "Post"),
        threat_intel=channel.threat_intel if "threat_intel" in given else bool(threat_intel),
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

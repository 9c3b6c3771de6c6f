"""The Render stage: every current indicator set → one bundle per channel in the state store.

Reads every set under ``indicators/`` (``last_good``: a set that cannot be read is replaced by its
last good copy, named in each channel's report and counted in the ``IndicatorSetUnreadable``
metric, so that one bad input never stops the re-renders that keep the channels signed; of the
compact feed sets it holds only what a ranking can take, ``policy.ranked.hold_to_room``) and what
fired in the fleet (``hits/fleet.json``, HitsRollup's; ranked without it when it is missing, broken
or stale), compiles each channel's policies (``policy.render``), assembles the bundle
(``bundle.assemble``) and, when its digest is new for the channel, writes its files,
``report.json`` and then ``bundle.json`` last, and moves the channel's latest-render pointer. Then
it asks for a publish of every channel, changed or not: Publish does nothing for a current bundle
until half its lifetime has passed and then re-signs it, so a quiet channel's manifest never
expires under its agents.

A channel that promotes from an audit channel (``promote`` in its settings) is composed from what
it ships now plus the changes that qualify (``cdr_policy.promotion``): its render reads the
distribution store (its own signed bundle and history, its audit channel's, the fleet's hits) and
writes the decisions beside the bundle (``promotion.json``), which Publish verifies.

Output is deterministic: the same sets, channels, clock, shipped bundles and hits give
byte-identical files and digests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from cdr_policy import jsonio, layout
from cdr_policy.bundle.assemble import assemble
from cdr_policy.bundle.loader import Bundle
from cdr_policy.bundle.signing import Verifier
from cdr_policy.errors import ConfigError
from cdr_policy.guards import NeverBlock
from cdr_policy.hits.fleet import Fired, Fleet, load_fired, read_fleet
from cdr_policy.lambda_events import PublishRequest
from cdr_policy.last_good import LoadedSets, load_indicator_sets
from cdr_policy.observability import logger, metrics
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.policy.output import PolicyFile
from cdr_policy.policy.ranked import hold_to_room
from cdr_policy.policy.render import compile_policies
from cdr_policy.promotion.compose import Composer
from cdr_policy.promotion.decisions import write
from cdr_policy.promotion.evidence import World, fleet_window
from cdr_policy.report import RunReport, bundle_report
from cdr_policy.storage import NotFound, Store
from cdr_policy.summaries import CdrRunSummary, RenderSummary, read_last_run

PublishPort = Callable[[PublishRequest], None]


@dataclass(frozen=True)
class PromotionPorts:
    """What a promoting channel's render reads beyond the state store: the distribution store,
    the pipeline's public key (every bundle and history entry it trusts verifies with it) and the
    approvers' (their grants of changes)."""

    dist: Store
    verifier: Verifier
    approvers: Verifier | None


@dataclass(frozen=True)
class RenderedChannel:
    """One channel's render: the policies, the bundle made of them and its report."""

    channel: ChannelSettings
    policies: list[PolicyFile]
    bundle: Bundle
    report: RunReport
    changed: bool

    def summary(self) -> RenderSummary:
        return RenderSummary(channel=self.channel.name, digest=self.bundle.digest, changed=self.changed)


def run_render(
    state: Store,
    *,
    channels: Sequence[ChannelSettings],
    now: datetime,
    guard: NeverBlock,
    crds: SchemaSet | None,
    publish: PublishPort | None,
    each: Callable[[RenderedChannel], None] | None = None,
    promotion: PromotionPorts | None = None,
) -> list[RenderSummary]:
    """Render every channel from the sets in ``state``; ``publish`` (a queue, or None locally) is
    asked to publish each channel's bundle, and ``each`` is given each channel's render (policies,
    bundle, report). One channel is held at a time, however many there are: only its summary is
    kept once the next one starts. ``promotion``: what a promoting channel reads (ConfigError
    when one is configured without it)."""
    loaded = load_indicator_sets(state, after_each=functools.partial(hold_to_room, now=now), now=now)
    _alarm(loaded)
    fired = load_fired(state, now=now)
    if crds is None:
        logger.info("no CRDs to check against: checking against the safety checklist only")
    last_run = read_last_run(state)
    gates = _Gates(state, channels, promotion, now)
    return [
        _render_channel(
            state,
            channel,
            loaded,
            last_run,
            now=now,
            guard=guard,
            crds=crds,
            publish=publish,
            each=each,
            fired=fired,
            gate=gates.of(channel),
        )
        for channel in channels
    ]


class _Gates:
    """The promotion gate of each promoting channel, the fleet's hits read once for all of them."""

    def __init__(
        self, state: Store, channels: Sequence[ChannelSettings], ports: PromotionPorts | None, now: datetime
    ) -> None:
        self.state, self.ports, self.now = state, ports, now
        self.promoting = [c for c in channels if c.promote is not None]
        self.fleet: Fleet | None = None

    def of(self, channel: ChannelSettings) -> Composer | None:
        if channel.promote is None:
            return None
        if self.ports is None:
            raise ConfigError(
                f"channel {channel.name} promotes from {channel.promote.source}: its render reads the distribution "
                "store, which this render has not been given"
            )
        if self.fleet is None:
            self.fleet = read_fleet(self.ports.dist, now=self.now, window=max(fleet_window(c) for c in self.promoting))
        world = World.read(
            state=self.state,
            dist=self.ports.dist,
            channel=channel,
            verifier=self.ports.verifier,
            approvers=self.ports.approvers,
            now=self.now,
            fleet=self.fleet,
        )
        return Composer(world)


def _alarm(loaded: LoadedSets) -> None:
    """``IndicatorSetUnreadable``: once per unreadable set for the alarm, and once more with the
    set's key as a dimension, which names it."""
    if not loaded.unreadable:
        return
    metrics.add_metric(name="IndicatorSetUnreadable", unit=MetricUnit.Count, value=len(loaded.unreadable))
    for bad in loaded.unreadable:
        with single_metric(
            name="IndicatorSetUnreadable", unit=MetricUnit.Count, value=1, namespace=metrics.namespace
        ) as metric:
            metric.add_dimension(name="set", value=bad.key)


def _render_channel(
    state: Store,
    channel: ChannelSettings,
    loaded: LoadedSets,
    last_run: CdrRunSummary | None,
    *,
    now: datetime,
    guard: NeverBlock,
    crds: SchemaSet | None,
    publish: PublishPort | None,
    each: Callable[[RenderedChannel], None] | None,
    fired: Fired | None,
    gate: Composer | None,
) -> RenderSummary:
    result = compile_policies(loaded.sets, channel, now=now, guard=guard, schemas=crds, fired=fired, gate=gate)
    bundle = assemble(result.files, channel, now=now, index=result.provenance)
    changed = _latest_digest(state, channel.name) != bundle.digest
    report = bundle_report(result.report, loaded.sets, last_run, now=now, unreadable=loaded.unreadable)
    decisions = None
    if gate is not None:
        # before the bundle's manifest and pointer: Publish finds the decisions of whatever it is asked for
        decisions = write(state, layout.promotion_decisions_key(bundle.digest), gate.decisions(bundle.digest))
    if changed:
        _write_bundle(state, channel.name, bundle, report)
    elif loaded.unreadable or loaded.index_changed:
        # the same policies, but what the report says about the sets changed (a set failed or recovered)
        _write_report(state, bundle.digest, report)
    if publish is not None:
        publish(PublishRequest(channel.name, bundle.digest, decisions=decisions))
    logger.info("channel rendered", extra={"channel": channel.name, "digest": bundle.digest, "changed": changed})
    rendered = RenderedChannel(channel, result.files, bundle, report, changed)
    if each is not None:
        each(rendered)
    return rendered.summary()


def _latest_digest(state: Store, channel: str) -> str | None:
    try:
        return str(jsonio.loads(state.get(layout.latest_render_key(channel)).data)["digest"])
    except NotFound:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("latest-render pointer unreadable; rewriting it", extra={"channel": channel, "error": str(exc)})
        return None


def _write_bundle(state: Store, channel: str, bundle: Bundle, report: RunReport) -> None:
    """Files, then ``report.json``, then ``bundle.json``, then the channel's pointer: a reader that
    finds the pointer finds a whole bundle."""
    for path, data in sorted(bundle.files.items()):
        state.put(layout.bundle_file_key(bundle.digest, path), data, "application/yaml")
    _write_report(state, bundle.digest, report)
    state.put(layout.bundle_manifest_key(bundle.digest), bundle.manifest.to_bytes(), "application/json")
    pointer = {"digest": bundle.digest, "rendered_at": bundle.manifest.created_at}
    state.put(layout.latest_render_key(channel), jsonio.dumps_pretty(pointer), "application/json")


def _write_report(state: Store, digest: str, report: RunReport) -> None:
    data = jsonio.dumps_pretty(report.to_json())
    state.put(layout.bundle_file_key(digest, layout.REPORT_FILE), data, "application/json")

"""The HitsRollup stage (EventBridge schedule): what fired in the fleet, for Render.

Reads every cluster's status from the distribution store, checks each row of its hits against
the cluster's own channel's bundles (``hits.fleet.read_fleet``: a cluster can only report hits
for what its channel was sent), and writes ``hits/fleet.json`` to the state store: the addresses,
rules and ports that fired within the window. The next render ranks with it (``policy.ranked``):
an indicator that fired ranks above those that never did within its evidence class. It is the one
stage that reads the statuses and the one writer of ``hits/``; Render only reads what it wrote.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from aws_lambda_powertools.metrics import MetricUnit

from cdr_policy import layout
from cdr_policy.hits.aggregate import RETENTION_HOURS
from cdr_policy.hits.fleet import fired, read_fleet
from cdr_policy.observability import logger, metrics
from cdr_policy.storage import Store
from cdr_policy.summaries import HitsRollupSummary

WINDOW = timedelta(hours=RETENTION_HOURS)


def run_hits_rollup(state: Store, dist: Store, *, now: datetime, window: timedelta = WINDOW) -> HitsRollupSummary:
    """Write ``hits/fleet.json``; the run's summary."""
    fleet = read_fleet(dist, now=now, window=window)
    result = fired(fleet)
    state.put(layout.FLEET_HITS, result.to_bytes(), "application/json")
    summary = HitsRollupSummary(
        since=result.since,
        clusters=result.clusters,
        hits=result.hits,
        refused=result.refused,
        unreadable_statuses=fleet.unreadable,
        addresses=len(result.v4) + len(result.v6),
        rules=len(result.rules),
        ports=len(result.ports),
    )
    metrics.add_metric(name="FleetHits", unit=MetricUnit.Count, value=result.hits)
    metrics.add_metric(name="FleetHitRowsRefused", unit=MetricUnit.Count, value=result.refused)
    metrics.add_metric(name="FleetAddressesFired", unit=MetricUnit.Count, value=len(result.v4) + len(result.v6))
    logger.info("fleet hits rolled up", extra=summary.to_json())
    return summary

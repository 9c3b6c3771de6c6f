"""The four pipeline stages as the Lambda handlers call them: each builds its adapters from the
validated ``Settings`` and calls the library once. The local CLI composes the same library pieces
(``cdr_policy.local``), and the local runner (``demo``) calls these through the real handlers.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from aws_lambda_powertools.utilities import parameters

from cdr_policy import aws, jsonio, schemas
from cdr_policy.bundle import keys
from cdr_policy.bundle.assemble import assemble
from cdr_policy.bundle.channel_rules import protected_guard
from cdr_policy.bundle.publish import publish_bundle
from cdr_policy.bundle.signing import KmsSigner
from cdr_policy.config import Settings
from cdr_policy.errors import CdrPolicyError, ConfigError
from cdr_policy.feeds.abuseipdb import AbuseIPDB
from cdr_policy.feeds.download import DEADLINE_S as DOWNLOAD_DEADLINE_S
from cdr_policy.feeds.sync import run_feed_sync
from cdr_policy.guards import NeverBlock
from cdr_policy.lambda_events import INDICATORS_PREFIX, PublishRequest
from cdr_policy.models import IndicatorSet
from cdr_policy.observability import logger
from cdr_policy.operator_config import channels_from_store, feeds_from_store, mapping_from_store
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.policy.checker.bundle import bundle_checker
from cdr_policy.policy.render import compile_policies
from cdr_policy.policy.serialize import load_yaml_documents
from cdr_policy.qualys.client import QualysClient
from cdr_policy.qualys.credentials import load_credentials
from cdr_policy.qualys.fetch import load_cdr_set, run_cdr_fetch
from cdr_policy.qualys.platforms import resolve_gateway
from cdr_policy.report import bundle_report
from cdr_policy.storage import NotFound, S3Store, Store
from cdr_policy.timeutil import utcnow

CDR_LAST_RUN_KEY = "state/cdr/last-run.json"
CRDS_PREFIX = "crds/"


def _state(settings: Settings) -> S3Store:
    return S3Store(aws.client("s3"), settings.state_bucket)


def _dist(settings: Settings) -> S3Store:
    return S3Store(aws.client("s3"), settings.dist_bucket)


def cdr_fetch(settings: Settings, *, now: datetime | None = None, deadline_s: float | None = None) -> dict[str, Any]:
    """Fetch findings since the checkpoint, store raw pages and the CDR indicator set. Returns a summary."""
    store = _state(settings)
    credentials = load_credentials(settings.qualys_secret_name, {})
    base_url = resolve_gateway(settings.qualys_platform, settings.qualys_gateway_url)
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    with QualysClient(base_url, credentials, deadline=deadline) as client:
        result = run_cdr_fetch(
            store,
            client,
            now=now or utcnow(),
            lookback_hours=settings.lookback_hours,
            overlap_minutes=settings.overlap_minutes,
            ttl_hours=settings.cdr_ttl_hours,
            guard=NeverBlock(),
            mapping=mapping_from_store(store),
        )
    section = result.report_section()
    store.put(CDR_LAST_RUN_KEY, jsonio.dumps_pretty(section), "application/json")
    wanted = ("complete", "fetched", "unique", "new", "duplicates", "malformed_count", "indicators")
    return {k: section[k] for k in wanted}


def feed_sync(settings: Settings, *, now: datetime | None = None, deadline_s: float | None = None) -> dict[str, Any]:
    """Download every enabled feed, gate, normalise, store indicator sets; refresh AbuseIPDB. Returns a summary."""
    store = _state(settings)
    reputation = None
    if settings.abuseipdb_secret_name:
        secret = parameters.get_secret(settings.abuseipdb_secret_name, transform="json", max_age=300)
        if not isinstance(secret, dict) or not secret.get("api_key"):
            raise ConfigError(f"secret {settings.abuseipdb_secret_name} must be JSON with an 'api_key'")
        reputation = AbuseIPDB(secret["api_key"], threshold=settings.reputation_threshold)
    # Downloads run concurrently: give them at most half of the time left, the rest is for storing.
    fetch_deadline = DOWNLOAD_DEADLINE_S if deadline_s is None else max(1.0, min(DOWNLOAD_DEADLINE_S, deadline_s / 2))
    result = run_feed_sync(
        store,
        feeds_from_store(store),
        now=now or utcnow(),
        guard=NeverBlock(),
        reputation=reputation,
        cdr_ips=cdr_ips(store),
        fetch_deadline_s=fetch_deadline,
    )
    section = result.report_section()
    return {
        "feeds": {name: {"status": f["status"], "entries": f["entries"]} for name, f in section["feeds"].items()},
        "written": result.written,
        "rejected": len(section["rejected"]),
    }


def cdr_ips(store: Store) -> list[str]:
    """The addresses of the CDR set in force (what AbuseIPDB is asked about)."""
    cdr = load_cdr_set(store)
    return sorted(e.value.split("/")[0] for e in (cdr.entries if cdr else []) if e.kind == "ip")


def load_indicator_sets(store: Store) -> list[IndicatorSet]:
    """Every current indicator set under ``indicators/``, in key order, each checked against its
    schema. A broken set stops the render (the channels keep their last good bundle) rather than
    silently shrinking the blocklists."""
    sets = []
    for key in store.list(INDICATORS_PREFIX):
        if key.endswith(".json"):
            try:
                doc = jsonio.loads(store.get(key).data)
            except ValueError as exc:
                raise CdrPolicyError(f"{store.describe()}/{key} is not JSON: {exc}") from exc
            schemas.validate(doc, "indicator-set.schema.json")
            sets.append(IndicatorSet.from_dict(doc))
    return sets


def load_schemas(store: Store) -> SchemaSet | None:
    """The CRDs the operator uploaded under ``crds/`` (the target clusters' versions), if any."""
    schemas = None
    for key in store.list(CRDS_PREFIX):
        if not key.endswith((".yaml", ".yml")):
            continue
        for doc in load_yaml_documents(store.get(key).data):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                schemas = schemas or SchemaSet()
                schemas.add_crd(doc, f"{store.describe()}/{key}")
    return schemas


def render(settings: Settings, *, trigger_keys: list[str], now: datetime | None = None) -> list[dict[str, Any]]:
    """Render one bundle per channel from all current indicator sets; enqueue each for Publish.
    Returns ``[{"channel": ..., "digest": ..., "changed": bool}]``."""
    now = now or utcnow()
    store = _state(settings)
    sets = load_indicator_sets(store)
    schemas = load_schemas(store)
    if schemas is None:
        logger.warning("no CRDs under crds/ in the state bucket: checking against the safety checklist only")
    last_run = _last_cdr_run(store)
    out = []
    for channel in channels_from_store(store):
        result = compile_policies(sets, channel, now=now, guard=NeverBlock(), schemas=schemas)
        bundle = assemble(result.files, channel, now=now)
        latest = _read_json(store, keys.latest_render_key(channel.name))
        changed = latest is None or latest.get("digest") != bundle.digest
        if changed:
            for path, data in sorted(bundle.files.items()):
                store.put(keys.bundle_file_key(bundle.digest, path), data, "application/yaml")
            report = bundle_report(result.report, sets, last_run, now=now)
            report_key = keys.bundle_file_key(bundle.digest, "report.json")
            store.put(report_key, jsonio.dumps_pretty(report), "application/json")
            store.put(keys.bundle_manifest_key(bundle.digest), jsonio.dumps_pretty(bundle.manifest), "application/json")
            store.put(
                keys.latest_render_key(channel.name),
                jsonio.dumps_pretty({"digest": bundle.digest, "rendered_at": bundle.manifest["created_at"]}),
                "application/json",
            )
        # Always ask for a publish: it is a no-op for the current bundle until half its lifetime,
        # then it re-signs it, so a quiet channel's manifest never expires under its agents.
        if settings.publish_queue_url:
            aws.client("sqs").send_message(
                QueueUrl=settings.publish_queue_url,
                MessageBody=PublishRequest(channel.name, bundle.digest).to_message(),
            )
        logger.info("channel rendered", extra={"channel": channel.name, "digest": bundle.digest, "changed": changed})
        out.append({"channel": channel.name, "digest": bundle.digest, "changed": changed})
    return out


def _read_json(store: Store, key: str) -> Any:
    try:
        return jsonio.loads(store.get(key).data)
    except NotFound:
        return None


def _last_cdr_run(store: Store) -> dict[str, Any] | None:
    return _read_json(store, CDR_LAST_RUN_KEY)


def publish(settings: Settings, *, channel: str, digest: str, now: datetime | None = None) -> dict[str, Any]:
    """Check, sign and publish one rendered bundle to one channel. Returns a summary.

    A request for a digest that is no longer the channel's latest render is skipped (SQS does not
    keep order: an old request must not roll a channel back). An operator approves a bundle held by
    the change budget by creating ``approvals/<channel>/<digest>`` in the state bucket.
    """
    state = _state(settings)
    latest = _read_json(state, keys.latest_render_key(channel))
    if latest is not None and latest.get("digest") != digest:
        logger.info("publish request superseded", extra={"channel": channel, "digest": digest, "latest": latest})
        return {"status": "superseded", "channel": channel, "digest": digest, "latest": latest.get("digest")}
    if not settings.signing_key_id:
        raise ConfigError("SIGNING_KEY_ID is required to publish")
    approved = _exists(state, f"approvals/{channel}/{digest}")
    configured = next((c for c in channels_from_store(state) if c.name == channel), None)
    guard = protected_guard(configured.protected_cidrs, f"channel {channel}") if configured else None
    result = publish_bundle(
        state,
        _dist(settings),
        channel=channel,
        digest=digest,
        signer=KmsSigner(aws.client("kms"), settings.signing_key_id),
        now=now or utcnow(),
        change_budget_percent=settings.change_budget_percent,
        check=bundle_checker(load_schemas(state), guard=guard),
        approved=approved,
    )
    return result.to_dict()


def _exists(store: Store, key: str) -> bool:
    try:
        store.get(key)
    except NotFound:
        return False
    return True

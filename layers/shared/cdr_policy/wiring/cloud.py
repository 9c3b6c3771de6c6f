"""The Lambda wiring: build each stage's ports from the validated ``Settings`` (S3 stores, the
publish queue, the KMS signer, secrets from Secrets Manager) and call the stage once. The handlers
call these; the CLI calls the same stages through :mod:`cdr_policy.wiring.local`.

Each function imports its own stage and adapters when it runs, so that a handler's cold start
loads only what its stage needs (numpy only in FeedSync and Render; ``make bench``, part d).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from cdr_policy import aws
from cdr_policy.documents import channels_from_store, feeds_from_store, mapping_from_store
from cdr_policy.errors import ConfigError
from cdr_policy.guards import NeverBlock
from cdr_policy.lambda_events import PublishRequest
from cdr_policy.observability import logger, metrics
from cdr_policy.settings import Settings
from cdr_policy.storage import S3Store
from cdr_policy.timeutil import utcnow

if TYPE_CHECKING:
    from cdr_policy.bundle.signing import Verifier
    from cdr_policy.feeds.abuseipdb import AbuseIPDB


def _state(settings: Settings) -> S3Store:
    return S3Store(aws.client("s3"), settings.state_bucket)


def _dist(settings: Settings) -> S3Store:
    return S3Store(aws.client("s3"), settings.dist_bucket)


def cdr_fetch(settings: Settings, *, now: datetime | None = None, deadline_s: float | None = None) -> dict[str, Any]:
    """CdrFetch: the run's summary (also stored as ``state/cdr/last-run.json``)."""
    from cdr_policy.qualys.client import QualysClient
    from cdr_policy.qualys.credentials import load_credentials
    from cdr_policy.qualys.platforms import resolve_gateway
    from cdr_policy.qualys.state import read_request_budget
    from cdr_policy.stages.cdr_fetch import run_cdr_fetch

    store = _state(settings)
    credentials = load_credentials(settings.qualys_secret_name, {})
    base_url = resolve_gateway(settings.qualys_platform, settings.qualys_gateway_url)
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    budget = read_request_budget(store, settings.qualys_requests_per_hour)
    with QualysClient(base_url, credentials, deadline=deadline, budget=budget) as client:
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
    return result.summary().to_json()


def feed_sync(settings: Settings, *, now: datetime | None = None, deadline_s: float | None = None) -> dict[str, Any]:
    """FeedSync: per-feed status and entry count, the sets written, the number of refused entries."""
    from cdr_policy.stages.feed_sync import run_feed_sync

    store = _state(settings)
    reputation = _abuseipdb(settings.abuseipdb_secret_name, settings) if settings.abuseipdb_secret_name else None
    result = run_feed_sync(
        store,
        feeds_from_store(store),
        now=now or utcnow(),
        guard=NeverBlock(),
        reputation=reputation,
        deadline_s=deadline_s,
    )
    return result.summary().to_json()


# Secrets Manager answers that are the configuration's fault: no such secret, or no grant to read it.
_SECRET_CONFIG_ERRORS = ("ResourceNotFoundException", "AccessDeniedException", "DecryptionFailure")


def _abuseipdb(name: str, settings: Settings) -> AbuseIPDB:
    """AbuseIPDB with its key from Secrets Manager (template parameter AbuseIpdbSecretName). The
    reputation check is optional: when Secrets Manager cannot be reached, FeedSync refreshes the
    feeds anyway and the reputation set keeps its cached scores, marked not checked (metric
    ``ReputationKeyUnavailable``). A secret that is missing, unreadable to this function or
    malformed is a configuration error."""
    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError, TransformParameterError
    from botocore.exceptions import ClientError

    from cdr_policy.feeds.abuseipdb import AbuseIPDB

    try:
        secret = parameters.get_secret(name, transform="json", max_age=300)
    except TransformParameterError as exc:
        raise ConfigError(f"secret {name} must be JSON with an 'api_key'") from exc
    except GetParameterError as exc:
        cause = exc.__cause__ or exc.__context__
        code = cause.response.get("Error", {}).get("Code", "") if isinstance(cause, ClientError) else ""
        if code in _SECRET_CONFIG_ERRORS:
            raise ConfigError(f"secret {name} cannot be read ({code})") from exc
        why = f"its API key could not be read from Secrets Manager ({code or type(cause).__name__})"
        logger.warning("AbuseIPDB reputation not checked this run", extra={"secret": name, "reason": why})
        metrics.add_metric(name="ReputationKeyUnavailable", unit=MetricUnit.Count, value=1)
        return AbuseIPDB.unavailable(why, threshold=settings.reputation_threshold)
    if not isinstance(secret, dict) or not secret.get("api_key"):
        raise ConfigError(f"secret {name} must be JSON with an 'api_key'")
    return AbuseIPDB(secret["api_key"], threshold=settings.reputation_threshold)


def render(settings: Settings, *, trigger_keys: Sequence[str], now: datetime | None = None) -> list[dict[str, Any]]:
    """Render (for the indicator sets that changed, ``trigger_keys``; a render always reads them all):
    ``[{"channel", "digest", "changed"}]``; each channel's bundle is sent to PublishQueue. A channel
    that promotes reads the distribution bucket and the signing and approver keys' public halves."""
    from cdr_policy.policy.checker import SchemaSet
    from cdr_policy.stages.render import PromotionPorts, run_render

    store = _state(settings)
    logger.info("render triggered", extra={"trigger_keys": list(trigger_keys)})

    def enqueue(request: PublishRequest) -> None:
        aws.client("sqs").send_message(QueueUrl=settings.publish_queue_url, MessageBody=request.to_message())

    crds = SchemaSet.from_store(store)
    if crds is None:
        logger.warning("no CRDs under crds/ in the state bucket: checking against the safety checklist only")
    channels = channels_from_store(store, refresh_hours=settings.render_refresh_hours)
    promotion = None
    if any(c.promote is not None for c in channels):
        if not settings.signing_key_id:
            raise ConfigError("SIGNING_KEY_ID is required to render a channel that promotes")
        promotion = PromotionPorts(_dist(settings), _public(settings.signing_key_id), _approvers(settings))
    summaries = run_render(
        store,
        channels=channels,
        now=now or utcnow(),
        guard=NeverBlock(),
        crds=crds,
        publish=enqueue if settings.publish_queue_url else None,
        promotion=promotion,
    )
    return [s.to_json() for s in summaries]


def _public(key_id: str) -> Verifier:
    """The public half of a KMS signing key."""
    from cdr_policy.bundle.signing import KmsSigner, Verifier

    return Verifier.from_public_pem(KmsSigner(aws.client("kms"), key_id).public_key_pem())


def _approvers(settings: Settings) -> Verifier | None:
    """The approvers' public key (None: no approver is configured, nothing can be approved)."""
    return _public(settings.approver_key_id) if settings.approver_key_id else None


def publish(settings: Settings, request: PublishRequest, *, now: datetime | None = None) -> dict[str, Any]:
    """Publish: what publishing ``request`` did (``PublishResult``)."""
    from cdr_policy.admission import Admission, protection
    from cdr_policy.bundle.signing import KmsSigner
    from cdr_policy.policy.checker import SchemaSet
    from cdr_policy.stages.publish import publish_bundle

    if not settings.signing_key_id:
        raise ConfigError("SIGNING_KEY_ID is required to publish")
    channel = request.channel
    state = _state(settings)
    channels = channels_from_store(state, refresh_hours=settings.render_refresh_hours)
    configured = next((c for c in channels if c.name == channel), None)
    protected = (
        protection(configured.protected_cidrs, configured.protected_ports, where=f"channel {channel}")
        if configured
        else protection(where=f"channel {channel}")
    )
    result = publish_bundle(
        state,
        _dist(settings),
        channel=channel,
        digest=request.digest,
        signer=KmsSigner(aws.client("kms"), settings.signing_key_id),
        now=now or utcnow(),
        change_budget_percent=settings.change_budget_percent,
        admission=Admission(protected, SchemaSet.from_store(state)),
        channels=channels,
        approvers=_approvers(settings),
        decisions=request.decisions,
    )
    return result.to_json()


def hits_rollup(settings: Settings, *, now: datetime | None = None) -> dict[str, Any]:
    """HitsRollup: what fired in the fleet (``hits/fleet.json``), for Render."""
    from cdr_policy.stages.hits_rollup import run_hits_rollup

    return run_hits_rollup(_state(settings), _dist(settings), now=now or utcnow()).to_json()

"""A pipeline on a moto server for the promotion tests (``test_promotion.py``): the operator's
documents and indicator sets in the state bucket, Render and Publish through their real handlers
(RenderQueue, PublishQueue), clusters (``fakes.cluster``) whose node readers count export
lines in the upstream formats and whose agents report them in their statuses, and the operator's
commands (``cdr-policy``)."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import numpy as np
import yaml

from cdr_policy import aws, layout
from cdr_policy.bundle.manifest import Manifest, Promotion
from cdr_policy.bundle.signing import KmsSigner, Verifier
from cdr_policy.cli import main
from cdr_policy.feeds.persist import dump_set
from cdr_policy.models import Behaviour, FeedPrefixes, Indicator, IndicatorSet
from cdr_policy.netprefix.vector import V4, V6
from cdr_policy.promotion.decisions import ChangeDecision, Decisions, PublishOutcome
from cdr_policy.storage import S3Store
from cdr_policy.timeutil import iso, utcnow
from fakes.cluster import Cluster
from fakes.exports import Workload
from fakes.lambda_runtime import REPO, LambdaContext, drain_queue, load_handler
from tests.unit.functions.conftest import HandlerStack

REFRESH = json.loads((REPO / "events" / "sqs_render_refresh.json").read_text())["Records"][0]["body"]
WEB = Workload("shop", "web", "web-7c9d8f6b5-x2k4q")
CHECKOUT = Workload("payments", "checkout", "checkout-5d8f7c6b4-p9q2r")
BATCH = Workload("batch", "nightly", "nightly-28441720-5mq2t", kind="CronJob")


def workloads(n: int, namespace: str = "shop") -> list[Workload]:
    return [Workload(namespace, f"app{i}", f"app{i}-6b7c8d9f4-{i:05d}") for i in range(n)]


class Pipeline:
    def __init__(self, stack: HandlerStack, root: Path) -> None:
        self.stack, self.root = stack, root
        s3 = stack.client("s3")
        self.state = S3Store(s3, stack.state_bucket)
        self.dist = S3Store(s3, stack.dist_bucket)
        self.verifier = Verifier.from_public_pem(KmsSigner(stack.client("kms"), stack.signing_key_id).public_key_pem())

    def configure(self, *channels: dict[str, Any]) -> None:
        self.state.put(layout.CHANNELS_CONFIG, yaml.safe_dump({"channels": list(channels)}).encode())

    def indicators(
        self,
        cdr: list[str] = (),  # type: ignore[assignment]
        *,
        feed: list[str] = (),  # type: ignore[assignment]
        behaviours: dict[str, list[str]] | None = None,
    ) -> None:
        """The CDR set (``cdr`` prefixes, ``behaviours``: rule -> process names) and one feed."""
        now = utcnow()
        seen, expires = iso(now - timedelta(hours=1)), iso(now + timedelta(days=7))
        entries = [
            Indicator(v, "ip", "C2_Communication", ["cdr"], seen, seen, expires, [f"finding-{i}"])
            for i, v in enumerate(cdr)
        ]
        rules = [
            Behaviour(rule, {"CryptoMiner_Execution": 1}, sorted(names), [f"finding-{rule}"], seen, seen, expires)
            for rule, names in (behaviours or {}).items()
        ]
        self.state.put(layout.CDR_SET, dump_set(IndicatorSet("cdr", iso(now), "ok", entries, rules)))
        nets = sorted(ipaddress.ip_network(v) for v in feed)
        prefixes = FeedPrefixes(
            "c2",
            seen,
            expires,
            V4(
                np.array([int(n.network_address) for n in nets], np.uint32),
                np.array([n.prefixlen for n in nets], np.uint8),
            ),
            V6([], b""),
        )
        self.state.put(
            layout.feed_set_key("c2-feed"), dump_set(IndicatorSet("feed:c2-feed", iso(now), "ok", prefixes=prefixes))
        )

    def render(self, *, publish: bool = True) -> dict[str, PublishOutcome]:
        """Render (the refresh schedule's event, with every notification queued), then Publish
        (unless not ``publish``: its requests stay queued); what Publish answered, per promoting channel."""
        sqs = self.stack.client("sqs")
        sqs.send_message(QueueUrl=self.stack.render_queue_url, MessageBody=REFRESH)
        self._deliver("render", self.stack.render_queue_url)
        if not publish:
            sqs.purge_queue(QueueUrl=self.stack.publish_queue_url)
            return {}
        self._deliver("publish", self.stack.publish_queue_url)
        return {c: self._outcome(c) for c in self.promoting()}

    def _outcome(self, channel: str) -> PublishOutcome:
        outcome = self.report(channel).publish
        assert outcome is not None, "Publish's copy says what it did"
        return outcome

    def promoting(self) -> list[str]:
        doc = yaml.safe_load(self.state.get(layout.CHANNELS_CONFIG).data)
        return [c["name"] for c in doc["channels"] if "promote" in c]

    def _deliver(self, function: str, queue_url: str) -> None:
        handler = load_handler(function)
        counts = drain_queue(
            self.stack.client("sqs"),
            queue_url,
            lambda event: handler.lambda_handler(event, LambdaContext(function)),
            region=self.stack.region,
        )
        assert counts["failed"] == 0, counts

    def cluster(self, channel: str, cluster_id: str) -> Cluster:
        """A cluster onboarded as the README says (deploy/cluster-access): its agent and reader read its
        channel and write its status with its own role's session, nothing else."""
        dist = S3Store(self.session_client(self.onboard(channel, cluster_id), "s3"), self.stack.dist_bucket)
        return Cluster(dist, self.verifier, channel=channel, cluster_id=cluster_id, root=self.root)

    def onboard(self, channel: str, cluster_id: str) -> dict[str, str]:
        """The session of a new cluster's role (``demo.runner.onboard_cluster``)."""
        from demo.runner import onboard_cluster

        return onboard_cluster(self.stack.stack, cluster_id, channel).session

    def session_client(self, session: dict[str, str], service: str) -> Any:
        return self.stack.stack.server.client(service, **session)

    def shipped(self, channel: str) -> Manifest:
        return Manifest.parse(self.dist.get(layout.channel_manifest_key(channel)).data, channel)

    def promotion(self, channel: str) -> Promotion:
        """The promotion record of what ``channel`` ships (a promoting channel's manifest has one)."""
        record = self.shipped(channel).promotion
        assert record is not None, f"{channel} ships no promotion record"
        return record

    def report(self, channel: str) -> Decisions:
        return Decisions.parse(self.dist.get(layout.promotion_report_key(channel)).data)

    def decision(self, channel: str, change: str) -> ChangeDecision:
        found = self.report(channel).change(change)
        assert found is not None, f"{change} is not listed"
        return found

    def run(self, *argv: str, approver: bool = False) -> tuple[int, str]:
        """``cdr-policy ARGV`` as an operator runs it against the buckets (``{dist}``, ``{state}``), with
        the administrator's credentials or (``approver``) in a shell of the stack's ApproverRole."""
        names = {"{dist}": f"s3://{self.stack.dist_bucket}", "{state}": f"s3://{self.stack.state_bucket}"}
        shell = {k.upper(): v for k, v in self.stack.approver.items()} if approver else {}
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), _shell(shell):
            code = main([names.get(a, a) for a in argv])
        return code, out.getvalue()


@contextlib.contextmanager
def _shell(credentials: dict[str, str]) -> Iterator[None]:
    """This process's AWS credentials as a new shell with ``credentials`` would have them (none: as they are)."""
    if not credentials:
        yield
        return
    with mock.patch.dict(os.environ, credentials), mock.patch.object(boto3, "DEFAULT_SESSION", None):
        aws.reset()  # the library's cached clients
        try:
            yield
        finally:
            aws.reset()

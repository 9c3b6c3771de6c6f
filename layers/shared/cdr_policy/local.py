"""One local run of ``cdr-policy`` (the original operator's ``--once`` loop body): the same library
stages as the Lambda functions, against a local state directory, writing the policies and
``report.json`` into ``--output`` and printing the original's step-by-step summary."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TextIO

from cdr_policy import jsonio
from cdr_policy.agent.reconcile import reconcile
from cdr_policy.errors import CdrPolicyError, ConfigError
from cdr_policy.feeds.abuseipdb import AbuseIPDB
from cdr_policy.feeds.config import BUILTIN_FEEDS, load_feeds
from cdr_policy.feeds.sync import run_feed_sync
from cdr_policy.guards import NeverBlock
from cdr_policy.operator_config import parse_channels
from cdr_policy.policy import naming
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.policy.output import PolicyFile
from cdr_policy.policy.render import compile_policies
from cdr_policy.policy.serialize import load_yaml_documents
from cdr_policy.qualys.categories import load_mapping
from cdr_policy.qualys.client import QualysClient
from cdr_policy.qualys.credentials import load_credentials
from cdr_policy.qualys.fetch import run_cdr_fetch
from cdr_policy.qualys.platforms import resolve_gateway
from cdr_policy.report import build_report
from cdr_policy.stages import cdr_ips, load_indicator_sets
from cdr_policy.storage import LocalStore
from cdr_policy.timeutil import iso, utcnow

LOCAL_CHANNEL = "local"
OVERLAP_MINUTES = 10


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc


@dataclass
class LocalRun:
    args: argparse.Namespace
    env: Mapping[str, str]
    channel: ChannelSettings
    out: TextIO | None = None  # None: whatever sys.stdout is when a line is written
    runs: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str], out: TextIO | None = None) -> LocalRun:
        if args.channel:
            channels = parse_channels(_read(args.channel, "channel settings"), args.channel)
            if len(channels) != 1:
                raise ConfigError(f"{args.channel}: the CLI renders one channel; found {len(channels)}")
            channel = replace(channels[0], action=args.action, threat_intel=args.threat_intel)
        else:
            channel = ChannelSettings(name=LOCAL_CHANNEL, action=args.action, threat_intel=args.threat_intel)
        # Fail fast on configuration, before any network traffic.
        resolve_gateway(args.platform, args.gateway)
        load_credentials(None, env)
        if args.feeds:
            load_feeds(_read(args.feeds, "feed list"), origin=args.feeds, allow_file=True)
        if args.categories:
            load_mapping(args.categories)
        return cls(args=args, env=env, channel=channel, out=out)

    def say(self, line: str = "") -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def once(self) -> int:
        """One run. Returns the exit code: 0 ok, 1 finished with problems (a stale feed, an
        incomplete fetch, apply errors); raises CdrPolicyError when nothing could be written."""
        args, now = self.args, utcnow()
        store = LocalStore(args.state_dir)
        guard = NeverBlock()
        problems = 0
        self.say(f"=== Policy Generation Run: {iso(now)} ===")
        self.say()

        cdr = self._fetch(store, guard, now)
        if not cdr["complete"]:
            problems += 1
        feeds: dict[str, dict] = {}
        feed_rejected: list[dict] = []
        if args.threat_intel:
            feeds, feed_rejected, stale = self._feeds(store, guard, now)
            problems += stale

        sets = load_indicator_sets(store)
        schemas = SchemaSet.from_dir(args.crds) if args.crds else None
        result = compile_policies(sets, self.channel, now=now, guard=guard, schemas=schemas)
        output = Path(args.output)
        self._write(output, result.files)
        self._summarise(output, result.files, cdr)
        report = build_report(now=now, render=result.report, cdr=cdr, feeds=feeds, rejected=feed_rejected)
        (output / "report.json").write_bytes(jsonio.dumps_pretty(report))
        left_out = len(result.report.get("left_out", []))
        if left_out:
            self.say(f"Capacity budget: {left_out} prefix(es) left out (lowest evidence first, see report.json)")
        if args.apply:
            problems += self._apply(result.files)
        self.say(f"  Report: {output / 'report.json'}")
        self.say()
        self.say("Done." if not problems else f"Done, with {problems} problem(s): see above and report.json.")
        self.runs += 1
        return 1 if problems else 0

    # -- steps --------------------------------------------------------------------------------------

    def _fetch(self, store: LocalStore, guard: NeverBlock, now: datetime) -> dict:
        args = self.args
        self.say(f"Fetching CDR events (last {args.hours} hours)...")
        mapping = load_mapping(args.categories) if args.categories else load_mapping()
        credentials = load_credentials(None, self.env)
        with QualysClient(resolve_gateway(args.platform, args.gateway), credentials) as client:
            result = run_cdr_fetch(
                store,
                client,
                now=now,
                lookback_hours=args.hours,
                overlap_minutes=OVERLAP_MINUTES,
                ttl_hours=args.hours,
                guard=guard,
                mapping=mapping,
                resume=self.runs > 0,
            )
        cdr = result.report_section()
        self.say(f"Found {cdr['fetched']} events")
        if cdr["duplicates"] or cdr["malformed_count"]:
            self.say(f"  ({cdr['unique']} unique, {cdr['duplicates']} duplicates, {cdr['malformed_count']} malformed)")
        if not cdr["complete"]:
            self.say(f"  Warning: fetch incomplete: {cdr['stopped_reason']}")
        if cdr["by_category"]:
            self.say()
            self.say("Event categories:")
            for category, count in sorted(cdr["by_category"].items(), key=lambda kv: (-kv[1], kv[0])):
                self.say(f"  {category}: {count}")
        for category, count in sorted(cdr["unmapped_categories"].items()):
            self.say(f"  (no policy for category {category}: {count} event(s); see report.json)")
        self.say()
        return cdr

    def _feeds(self, store: LocalStore, guard: NeverBlock, now: datetime) -> tuple[dict, list, int]:
        args = self.args
        self.say("Loading threat intelligence feeds...")
        feeds = (
            load_feeds(_read(args.feeds, "feed list"), origin=args.feeds, allow_file=True)
            if args.feeds
            else list(BUILTIN_FEEDS)
        )
        key = self.env.get("ABUSEIPDB_API_KEY", "").strip()
        reputation = AbuseIPDB(key or None, threshold=args.reputation_threshold)
        result = run_feed_sync(store, feeds, now=now, guard=guard, reputation=reputation, cdr_ips=cdr_ips(store))
        section = result.report_section()
        stale = 0
        for name, feed in section["feeds"].items():
            status = feed["status"]
            if status in ("ok", "empty"):
                self.say(f"Loaded {feed['entries']} IPs from {name}")
            elif status == "disabled":
                self.say(f"Skipped {name}: {feed.get('error') or 'disabled'}")
            else:
                stale += 1
                self.say(f"Kept last good copy of {name} ({feed['entries']} IPs): {status}: {feed.get('error')}")
        rejected = section["rejected"]
        if rejected:
            self.say(f"Refused {len(rejected)} feed entries (never-block list, parse errors; see report.json)")
        self.say()
        return section["feeds"], rejected, stale

    def _write(self, output: Path, files: list[PolicyFile]) -> None:
        """Write every file, then remove our own files from earlier runs that are no longer produced."""
        output.mkdir(parents=True, exist_ok=True)
        wanted = {f.filename for f in files}
        for f in files:
            (output / f.filename).write_bytes(f.to_bytes())
        for path in sorted(output.glob("*.yaml")):
            if path.name not in wanted and _ours(path):
                path.unlink()

    def _summarise(self, output: Path, files: list[PolicyFile], cdr: dict) -> None:
        def group(f: PolicyFile) -> str:
            labels = f.obj["metadata"].get("labels", {})
            if labels.get(naming.COMPONENT_KEY) == naming.COMPONENT_BEHAVIOUR:
                return "behaviour"
            return labels.get(naming.BLOCKLIST_KEY, "cdr")

        groups: dict[str, list[PolicyFile]] = {"behaviour": [], "cdr": [], "threat-intel": []}
        for f in files:
            groups[group(f)].append(f)
        self.say("Generating behavior-based policies...")
        self.say(f"Generated {len(groups['behaviour'])} behavior policies")
        for f in groups["behaviour"]:
            self.say(f"  Created: {output / f.filename}")
        self.say()
        self.say("Extracting network indicators from events...")
        ind = cdr["indicators_total"]
        self.say(f"Extracted: {ind['ips']} IPs, {ind['domains']} domains, {ind['ports']} ports")
        for f in groups["cdr"]:
            self.say(f"  Created: {output / f.filename}")
        if self.args.threat_intel:
            self.say()
            blocked = sum(f.entries for f in groups["threat-intel"] if f.kind == "CiliumCIDRGroup")
            self.say(f"Known bad IPs: {blocked} prefixes after aggregation")
            for f in groups["threat-intel"]:
                self.say(f"  Created: {output / f.filename}")
        self.say()

    def _apply(self, files: list[PolicyFile]) -> int:
        from cdr_policy.agent.kube import KubeApplier

        applier = KubeApplier.from_environment(dict(self.env))
        self.say(f"Applying to {applier.describe()}...")
        errors, applied, deleted = reconcile(applier, [f.obj for f in files], channel=self.channel.name)
        self.say(f"Applied {applied} object(s), removed {deleted} stale object(s)")
        for e in errors:
            self.say(f"  Error: {e['action']} {e['kind']}/{e['name']}: {e['error']}")
        return 1 if errors else 0


def _ours(path: Path) -> bool:
    """A YAML file holding one object we generated (by its managed-by label)."""
    try:
        docs = load_yaml_documents(path.read_bytes())
    except (OSError, CdrPolicyError, ValueError):
        return False
    return (
        len(docs) == 1
        and isinstance(docs[0], dict)
        and (docs[0].get("metadata", {}).get("labels", {}).get(naming.MANAGED_BY_KEY) == naming.MANAGED_BY)
    )

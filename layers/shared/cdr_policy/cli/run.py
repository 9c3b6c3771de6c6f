"""One local run of ``cdr-policy`` (the original operator's ``--once`` loop body): the same stages
as the Lambda functions (through :mod:`cdr_policy.wiring.local`), against a local state folder;
then the rendered policies, their provenance index (``provenance.json``, what ``cdr-policy hits``
attributes events with) and ``report.json`` are copied into ``--output`` and the original's
step-by-step summary is printed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from cdr_policy import jsonio, layout
from cdr_policy.agent.kube import KubeApplier
from cdr_policy.agent.reconcile import reconcile
from cdr_policy.bundle import provenance
from cdr_policy.cli.output import check_output, replace_output
from cdr_policy.policy import naming
from cdr_policy.policy.output import PolicyFile
from cdr_policy.stages.render import RenderedChannel
from cdr_policy.summaries import CdrRunSummary
from cdr_policy.timeutil import iso, utcnow
from cdr_policy.wiring import local
from cdr_policy.wiring.local import LocalPorts


@dataclass
class LocalRun:
    args: argparse.Namespace
    env: Mapping[str, str]
    ports: LocalPorts
    output: Path
    applier: KubeApplier | None
    out: TextIO | None = None  # None: whatever sys.stdout is when a line is written
    runs: int = 0

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, env: Mapping[str, str], out: TextIO | None = None, *, state_root: Path
    ) -> LocalRun:
        """Every check that needs no network runs here, before the first request: the output and
        state folders, the configuration files, the CRDs, the gateway, the credentials, and the
        cluster's credentials for ``--apply``."""
        output = check_output(Path(args.output))
        ports = LocalPorts.from_args(args, env, state_root=state_root)
        applier = KubeApplier.from_environment(dict(env)) if args.apply else None
        return cls(args=args, env=env, ports=ports, output=output, applier=applier, out=out)

    def say(self, line: str = "") -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def _progress(self) -> Callable[[str], None] | None:
        """On a terminal: one line on standard error, rewritten in place; elsewhere nothing."""
        if not sys.stderr.isatty():
            return None

        def show(text: str) -> None:
            sys.stderr.write(f"\r\033[K  ... {text}")
            sys.stderr.flush()

        return show

    def _progress_done(self) -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def once(self) -> int:
        """One run. Returns the exit code: 0 ok, 1 finished with problems (a stale feed, an
        incomplete fetch, apply errors); raises CdrPolicyError when nothing could be written."""
        args, now = self.args, utcnow()
        problems = 0
        self.say(f"=== Policy Generation Run: {iso(now)} ===")
        self.say()

        cdr = self._fetch(now)
        if not cdr.complete:
            problems += 1
        if self.ports.channel.threat_intel:
            problems += self._feeds(now)

        rendered = local.render(self.ports, now=now)
        output = self.output
        files = {f.filename: f.to_bytes() for f in rendered.policies}
        files[provenance.PATH] = rendered.bundle.files[provenance.PATH]
        replace_output(output, {**files, layout.REPORT_FILE: jsonio.dumps_pretty(rendered.report.to_json())})
        self._summarise(output, rendered.policies, cdr)
        left_out = rendered.report.left_out_total
        if left_out:
            self.say(
                f"Capacity budget: {left_out} prefix(es) left out (lowest evidence first, see {layout.REPORT_FILE})"
            )
        if args.apply:
            problems += self._apply(rendered)
        self.say(f"  Report: {output / layout.REPORT_FILE}")
        self.say()
        self.say("Done." if not problems else f"Done, with {problems} problem(s): see above and {layout.REPORT_FILE}.")
        self.runs += 1
        return 1 if problems else 0

    # -- steps --------------------------------------------------------------------------------------

    def _fetch(self, now: datetime) -> CdrRunSummary:
        resume = self.runs > 0  # controller mode: after a good run, only what is new since its checkpoint
        if resume:
            self.say("Fetching new CDR events (since the last run's checkpoint)...")
        else:
            self.say(f"Fetching CDR events (last {self.args.hours} hours)...")
        cdr = local.cdr_fetch(self.ports, now=now, resume=resume, progress=self._progress()).summary()
        self._progress_done()
        since = cdr.range.get("start")
        self.say(f"Found {cdr.fetched} new events since {since}" if resume and since else f"Found {cdr.fetched} events")
        if cdr.duplicates or cdr.malformed_count:
            self.say(f"  ({cdr.unique} unique, {cdr.duplicates} duplicates, {cdr.malformed_count} malformed)")
        if not cdr.complete:
            self.say(f"  Warning: fetch incomplete: {cdr.stopped_reason}")
        if cdr.by_category:
            self.say()
            self.say("Event categories:")
            for category, count in sorted(cdr.by_category.items(), key=lambda kv: (-kv[1], kv[0])):
                self.say(f"  {category}: {count}")
        for category, count in sorted(cdr.unmapped_categories.items()):
            self.say(f"  (no policy for category {category}: {count} event(s); see {layout.REPORT_FILE})")
        self.say()
        return cdr

    def _feeds(self, now: datetime) -> int:
        """Sync the feeds; returns how many are stale (kept their last good copy)."""
        self.say("Loading threat intelligence feeds...")
        result = local.feed_sync(self.ports, now=now, progress=self._progress())
        self._progress_done()
        stale = 0
        for name, feed in result.outcomes.items():
            if feed.status in ("ok", "empty"):
                self.say(f"Loaded {name}: {_loaded(feed.stats, feed.entries)}")
            elif feed.status == "disabled":
                self.say(f"Skipped {name}: {feed.error or 'disabled'}")
            elif feed.status == "stale":
                stale += 1
                kept = f"{feed.entries:,} prefixes"
                self.say(f"Kept the last good copy of {name} ({kept}): this download failed: {feed.error}")
            else:
                stale += 1
                self.say(f"Nothing from {name}: {feed.error}")
        if result.refused:
            self.say(
                f"Refused {result.refused} feed entries (never-block list, parse errors; see {layout.REPORT_FILE})"
            )
        self.say()
        return stale

    def _summarise(self, output: Path, files: list[PolicyFile], cdr: CdrRunSummary) -> None:
        def group(f: PolicyFile) -> str:
            labels = f.obj["metadata"].get("labels", {})
            if labels.get(naming.COMPONENT_KEY) == naming.COMPONENT_BEHAVIOUR:
                return "behaviour"
            return str(labels.get(naming.BLOCKLIST_KEY, "cdr"))

        groups: dict[str, list[PolicyFile]] = {"behaviour": [], "cdr": [], "threat-intel": []}
        for f in files:
            groups[group(f)].append(f)
        self.say("Generating behavior-based policies...")
        self.say(f"Generated {len(groups['behaviour'])} behavior policies")
        for f in groups["behaviour"]:
            self.say(f"  Created: {output / f.filename}")
        self.say()
        self.say("Extracting network indicators from events...")
        ind = cdr.indicators_total
        self.say(f"Extracted: {ind['ips']} IPs, {ind['domains']} domains, {ind['ports']} ports")
        for f in groups["cdr"]:
            self.say(f"  Created: {output / f.filename}")
        if self.ports.channel.threat_intel:
            self.say()
            blocked = sum(f.entries for f in groups["threat-intel"] if f.kind == "CiliumCIDRGroup")
            self.say(f"Known bad IPs: {blocked} prefixes after aggregation")
            for f in groups["threat-intel"]:
                self.say(f"  Created: {output / f.filename}")
        self.say()

    def _apply(self, rendered: RenderedChannel) -> int:
        applier = self.applier
        assert applier is not None, "--apply builds its applier up front"
        self.say(f"Applying to {applier.describe()}...")
        objects = [f.obj for f in rendered.policies]
        errors, applied, deleted = reconcile(applier, objects, channel=rendered.channel.name)
        self.say(f"Applied {applied} object(s), removed {deleted} stale object(s)")
        for e in errors:
            self.say(f"  Error: {e.action} {e.kind}/{e.name}: {e.error}")
        return 1 if errors else 0


def _loaded(stats: Mapping[str, Any], prefixes: int) -> str:
    """``25,961 entries in 16,234 prefixes`` (what a feed listed, and what merging made of it);
    AbuseIPDB's set counts only what it blocks."""
    listed = sum(int(stats.get(k, 0)) for k in ("ipv4", "ipv6", "cidr"))
    if not listed:
        return f"{prefixes:,} entries"
    return f"{listed:,} entries in {prefixes:,} prefixes after merging"

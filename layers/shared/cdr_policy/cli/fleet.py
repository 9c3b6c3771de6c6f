"""Day-2 commands for a fleet, against the distribution store (``s3://bucket`` or a folder) and,
where needed, the state store:

- ``cdr-policy channel list|show``: the channels and what each ships;
- ``cdr-policy channel history``: a channel's generations (verified history entries): digest,
  time, approval, size; which one it ships now;
- ``cdr-policy channel diff``: what a bundle (by default the channel's latest render, e.g. one the
  change budget held) adds and removes against the one the channel ships, per object and per
  prefix with each prefix's provenance: summarised, ``--full`` for every prefix;
- ``cdr-policy channel approve``: approve a held bundle (Publish ships it on its next request), or
  with ``--change`` the changes a promoting channel holds (``cli.promotion``);
- ``cdr-policy channel evidence``: a promoting channel's pending changes, their evidence and decisions;
- ``cdr-policy channel rollback``: publish an earlier signed bundle of the channel again;
- ``cdr-policy fleet status``: per cluster, from its status document: channel, applied bundle and
  its age, whether it is behind its channel, drift, errors;
- ``cdr-policy fleet hits``: what the clusters' node readers attributed, checked against each
  cluster's own channel (``cli.hits``, ``hits.fleet``).

A digest is taken whole or by any unique prefix of 12 or more hex digits (``cli.digests``). A
document that is not what it should be (malformed, oversized, planted) is skipped and named by
its key on standard error, never by its content; the others are shown.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shlex
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Self

from cdr_policy import aws, jsonio, layout, schemas
from cdr_policy.agent.status import AgentStatus, Drift, PollResult
from cdr_policy.bundle.approvals import DEFAULT_VALIDITY, MAX_VALIDITY, grant
from cdr_policy.bundle.loader import Bundle, latest_render, load_bundle, read_manifest
from cdr_policy.bundle.manifest import Manifest, Mode, VerificationError
from cdr_policy.bundle.objects import ObjectRef, prefixes, ref_of
from cdr_policy.bundle.provenance import read_index
from cdr_policy.bundle.signing import KmsSigner, LocalSigner, Signer, Verifier, verify_signature
from cdr_policy.cli import digests, promotion
from cdr_policy.cli.flags import bounded_int, channel_name, digest_prefix
from cdr_policy.cli.hits import add_since, fleet_hits, fleet_hits_lines
from cdr_policy.cli.parser import Parser, invoked_as
from cdr_policy.cli.promotion import GenerationPromotion, change_argument
from cdr_policy.errors import BundleError, ConfigError, ContractError
from cdr_policy.hits.fleet import FleetHitsReport
from cdr_policy.lambda_events import PublishRequest
from cdr_policy.layout import PROVENANCE_FILE
from cdr_policy.observability import logger
from cdr_policy.policy import naming
from cdr_policy.policy.channel import Action
from cdr_policy.promotion.decisions import Decisions
from cdr_policy.stages.publish import rollback
from cdr_policy.storage import NotFound, Store, TooLarge, open_store
from cdr_policy.timeutil import parse_duration, parse_iso, utcnow

PROVENANCE_KEYS = (naming.SOURCES, naming.CATEGORIES, naming.REFS, naming.EVIDENCE)
# Without --full, a diff lists this many objects of each kind of change.
SUMMARY_OBJECTS = 20
DEFAULT_HISTORY = 20


def channel_main(argv: list[str]) -> int:
    parser = Parser(prog="cdr-policy channel", description="Inspect, approve and roll back channels.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    listing = commands.add_parser("list", help="the channels and the bundle each ships")
    _dist(listing)
    show = commands.add_parser("show", help="one channel's signed manifest")
    _dist(show)
    show.add_argument("channel", type=channel_name)
    history = commands.add_parser("history", help="a channel's generations: digest, time, approval, size")
    _dist(history)
    history.add_argument("channel", type=channel_name)
    history.add_argument(
        "--limit",
        type=bounded_int(1, 100_000),
        default=DEFAULT_HISTORY,
        help=f"show the newest N generations (default {DEFAULT_HISTORY})",
    )
    _verifying(history)
    diff = commands.add_parser("diff", help="what a bundle changes against the one the channel ships")
    _dist(diff)
    _state(diff)
    diff.add_argument("channel", type=channel_name)
    diff.add_argument(
        "--digest",
        type=digest_prefix,
        help="the bundle to compare, by digest or a unique prefix of 12+ hex digits (default: the latest render)",
    )
    diff.add_argument("--full", action="store_true", help="list every prefix and object, not a summary")
    evidence = commands.add_parser(
        "evidence", help="a promoting channel's pending changes: the evidence so far and the decision, with its reasons"
    )
    _dist(evidence)
    evidence.add_argument("channel", type=channel_name)
    approve = commands.add_parser(
        "approve",
        help="as an approver: grant a bundle the change budget held, as the replacement of the one shipped, "
        "or (--change) changes a promotion holds",
    )
    _state(approve)
    _dist(approve)
    approve.add_argument("channel", type=channel_name)
    approve.add_argument(
        "digest", nargs="?", type=digest_prefix, help="the held bundle: its digest or a unique prefix (12+)"
    )
    approve.add_argument(
        "--change",
        action="append",
        type=change_argument,
        default=[],
        metavar="CHANGE",
        help="instead of a bundle, a pending change of a promoting channel as channel evidence names it "
        "(prefix:<cidr>, port:<proto>/<n>, rule:<id>@<fingerprint>); repeat for more",
    )
    approve.add_argument(
        "--replacing",
        type=_replacing,
        metavar="DIGEST|none",
        help="the bundle it replaces, as the held message names it (default: the one the channel ships now; "
        "none: the channel ships nothing Publish can use, as after a signing-key change)",
    )
    approving = approve.add_mutually_exclusive_group(required=True)
    approving.add_argument("--key", metavar="PEM", help="the approver's own key file (never the channel's signing key)")
    approving.add_argument("--kms-key-id", metavar="ARN", help="the approvers' KMS key (stack output ApproverKeyArn)")
    approve.add_argument("--reason", default="", help="why (printable, at most 256 characters; kept in the grant)")
    approve.add_argument(
        "--valid-for",
        type=_validity,
        default=DEFAULT_VALIDITY,
        metavar="DURATION",
        help="how long it holds (default 7d)",
    )
    approve.add_argument(
        "--publish-queue", metavar="URL", help="the stack's PublishQueue: ask Publish to ship it now (cloud)"
    )
    back = commands.add_parser("rollback", help="publish an earlier bundle of the channel again")
    _dist(back)
    back.add_argument("channel", type=channel_name)
    back.add_argument(
        "--to",
        required=True,
        type=digest_prefix,
        metavar="DIGEST",
        help="the earlier bundle: digest or unique prefix (see channel history)",
    )
    signing = back.add_mutually_exclusive_group(required=True)
    signing.add_argument("--key", metavar="PEM", help="local signing key (keygen)")
    signing.add_argument("--kms-key-id", metavar="ARN", help="the stack's KMS signing key")
    for sub in (listing, show, history, diff, evidence):
        sub.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.command == "evidence":
        return _print(promotion.evidence(_open(args.dist, "--dist"), args.channel), args.json, promotion.evidence_lines)
    if args.command == "list":
        return _print(_list(_open(args.dist, "--dist")), args.json, _list_lines)
    if args.command == "show":
        return _print(_current(_open(args.dist, "--dist"), args.channel), args.json, _show_lines)
    if args.command == "history":
        generations = channel_history(_open(args.dist, "--dist"), args.channel, _verifier(args), args.limit)
        return _print(generations, args.json, _history_lines)
    if args.command == "diff":
        changes = diff_bundles(_open(args.dist, "--dist"), _open(args.state, "--state"), args.channel, args.digest)
        return _print(changes, args.json, lambda d: _diff_lines(d, full=args.full))
    if args.command == "approve":
        if (args.digest is None) == (not args.change):
            raise ConfigError("approve: give a held bundle's digest, or the changes to approve with --change")
        approver: Signer = (
            LocalSigner.from_file(args.key) if args.key else KmsSigner(aws.client("kms"), args.kms_key_id)
        )
        if args.change:
            _check_reason(args.reason)
            lines = promotion.approve_changes(
                _open(args.state, "--state"),
                _open(args.dist, "--dist"),
                args.channel,
                args.change,
                approver=approver,
                reason=args.reason,
                valid_for=args.valid_for,
            )
            print("\n".join(lines))
            return 0
        return _approve(args, _open(args.state, "--state"), _open(args.dist, "--dist"), approver)
    return _rollback(args)


def fleet_main(argv: list[str]) -> int:
    parser = Parser(prog="cdr-policy fleet", description="What every cluster runs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    status = commands.add_parser("status", help="per cluster: channel, applied bundle, age, behind, drift, errors")
    _dist(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    hits = commands.add_parser("hits", help="what each indicator blocked, per feed, finding, category and cluster")
    _dist(hits)
    add_since(hits)
    hits.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.command == "hits":
        return _print(fleet_hits(_open(args.dist, "--dist"), args.since), args.json, fleet_hits_lines)
    return _print(fleet_status(_open(args.dist, "--dist"), now=utcnow()), args.json, _fleet_lines)


# -- what the commands print (--json: each row's to_json) ------------------------------------------


@dataclass(frozen=True)
class ChannelRow:
    """One channel as ``channel list`` shows it: what its manifest ships."""

    channel: str
    digest: str
    generation: int | None
    created_at: str
    expires_at: str
    action: Action
    mode: Mode
    objects: int

    def to_json(self) -> dict[str, Any]:
        return schemas.fields_to_json(self)

    @classmethod
    def from_json(cls, doc: Any) -> ChannelRow:
        return schemas.from_fields(cls, doc, "channel list row")


@dataclass(frozen=True)
class _Promoting:
    """A row that carries what its generation promoted (None: the channel does not promote),
    written as ``GenerationPromotion.to_json`` writes it."""

    WHAT: ClassVar[str]
    promotion: GenerationPromotion | None

    def to_json(self) -> dict[str, Any]:
        promotion = None if self.promotion is None else self.promotion.to_json()
        return {**schemas.fields_to_json(self), "promotion": promotion}

    @classmethod
    def from_json(cls, doc: Any, what: str = "") -> Self:
        what = what or cls.WHAT
        fields = schemas.fields_from_json(cls, doc, what, nested=("promotion",))
        promotion = doc["promotion"]
        if promotion is not None:
            promotion = GenerationPromotion.from_json(promotion, f"{what}: promotion")
        return cls(promotion=promotion, **fields)


@dataclass(frozen=True)
class GenerationRow(_Promoting):
    """One generation as ``channel history`` shows it (``approval``: by whom over what, or the
    rollback it was; ``shipping``: the one the channel ships now)."""

    WHAT = "channel history generation"
    generation: int
    digest: str
    created_at: str
    expires_at: str
    approval: str | None
    bytes: int
    objects: int
    action: Action
    shipping: bool


@dataclass(frozen=True)
class ChannelHistory:
    """What ``channel history`` shows: the generations newest first, the digest the channel ships,
    and how many history entries did not verify."""

    channel: str
    shipping: str | None
    generations: tuple[GenerationRow, ...]
    skipped: int

    def to_json(self) -> dict[str, Any]:
        return {**schemas.fields_to_json(self), "generations": [g.to_json() for g in self.generations]}

    @classmethod
    def from_json(cls, doc: Any) -> ChannelHistory:
        what = "channel history"
        fields = schemas.fields_from_json(cls, doc, what, nested=("generations",))
        generations = doc["generations"]
        if not isinstance(generations, list):
            raise ContractError(f"malformed {what}: generations is not a list")
        rows = tuple(GenerationRow.from_json(g, f"{what}: generations/{i}") for i, g in enumerate(generations))
        return cls(generations=rows, **fields)


@dataclass(frozen=True)
class FleetStatusRow(_Promoting):
    """One cluster as ``fleet status`` shows it, from its status document: ``behind`` when it has
    not applied what its channel ships; ``errors``: its object operations that failed."""

    WHAT = "fleet status row"
    cluster_id: str
    channel: str
    applied_digest: str | None
    applied_age_s: int | None
    behind: bool
    last_poll: PollResult
    last_poll_at: str
    drift: Drift | None
    errors: int


# -- reading ---------------------------------------------------------------------------------------


def _dist(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dist", required=True, metavar="URL", help="distribution store: s3://BUCKET or a folder")


def _state(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        required=True,
        metavar="URL",
        help="state store: s3://BUCKET or a folder ('cdr-policy state path' prints the local one)",
    )


def _verifying(parser: argparse.ArgumentParser) -> None:
    keys = parser.add_mutually_exclusive_group(required=True)
    keys.add_argument("--public-key", metavar="PEM", help="the channel's public key (the agents' bundle-signing.pub)")
    keys.add_argument("--kms-key-id", metavar="ARN", help="the stack's KMS signing key")


def _open(url: str, flag: str) -> Store:
    return open_store(url, flag=flag)


def _verifier(args: argparse.Namespace) -> Verifier:
    if args.public_key:
        return Verifier.from_file(args.public_key)
    return Verifier.from_public_pem(KmsSigner(aws.client("kms"), args.kms_key_id).public_key_pem())


def _skipped(key: str, why: str) -> None:
    """A document that was not shown: named by its key, never by its content."""
    print(f"cdr-policy: warning: skipped {key}: {why}", file=sys.stderr)


def _current(dist: Store, channel: str) -> Manifest:
    try:
        return read_manifest(dist, layout.channel_manifest_key(channel))[0]
    except NotFound as exc:
        raise ConfigError(
            f"channel {channel} has no manifest in {dist.describe()} "
            f"({invoked_as()} channel list --dist {shlex.quote(dist.describe())} lists the channels)"
        ) from exc
    except VerificationError as exc:
        raise BundleError(
            f"{dist.describe()}/{layout.channel_manifest_key(channel)} is not a valid manifest ({exc.code})"
        ) from exc


def _list(dist: Store) -> list[ChannelRow]:
    keys = set(dist.list(layout.CHANNELS))
    names = sorted({k.split("/")[1] for k in keys if k.count("/") >= 2})
    out = []
    for name in names:
        key = layout.channel_manifest_key(name)
        if key not in keys:
            continue
        if not layout.is_channel_name(name):
            _skipped(layout.channel_manifest_key(f"<{len(name)} characters>"), "not a channel name")
            continue
        try:
            manifest = read_manifest(dist, key)[0]
        except VerificationError as exc:
            _skipped(key, f"not a valid manifest ({exc.code})")
            continue
        except NotFound:
            continue  # deleted since the listing
        out.append(
            ChannelRow(
                channel=name,
                digest=manifest.digest,
                generation=manifest.generation,
                created_at=manifest.created_at,
                expires_at=manifest.expires_at,
                action=manifest.settings.action,
                mode=manifest.settings.mode,
                objects=manifest.objects_count(),
            )
        )
    return out


def channel_history(dist: Store, channel: str, verifier: Verifier, limit: int) -> ChannelHistory:
    """The channel's generations from its verified history entries, newest first (at most
    ``limit``); entries that do not verify (planted, another key, malformed) are counted, not shown."""
    try:
        current: Manifest | None = _current(dist, channel)
    except (ConfigError, BundleError):
        current = None
    entries: list[tuple[Manifest, int]] = []
    skipped = 0
    for key in sorted((k for ks in digests.in_history(dist, channel).values() for k in ks), reverse=True):
        # keys sort by publish time; entries published within the same second are all read, then ordered
        published_at = (layout.history_entry(channel, key) or ("", ""))[0]
        if len(entries) >= limit and published_at != entries[-1][0].created_at:
            break
        try:
            manifest = read_manifest(dist, key)[0]
            verify_signature(manifest, verifier)
            if manifest.channel != channel or manifest.generation is None:
                raise VerificationError("wrong_channel", "not this channel's")
        except (VerificationError, NotFound):
            skipped += 1
            continue
        entries.append((manifest, manifest.generation))
    rows = []
    for m, generation in sorted(entries, key=lambda e: e[1], reverse=True)[:limit]:
        approval = None
        if m.rollback_of is not None:
            approval = f"rollback to generation {m.rollback_of}"
        elif m.approval is not None:
            by = f" by {m.approval.approver}" if m.approval.approver else ""
            approval = f"approved{by} over {(m.approval.previous_digest or '-')[:12]} at {m.approval.approved_at}"
        rows.append(
            GenerationRow(
                generation=generation,
                digest=m.digest,
                created_at=m.created_at,
                expires_at=m.expires_at,
                approval=approval,
                bytes=m.total_bytes,
                objects=m.objects_count(),
                action=m.settings.action,
                shipping=current is not None and (generation, m.digest) == (current.generation, current.digest),
                promotion=promotion.summary(m),
            )
        )
    shipping = current.digest if current is not None else None
    return ChannelHistory(channel=channel, shipping=shipping, generations=tuple(rows), skipped=skipped)


@dataclass(frozen=True)
class _Side:
    objects: dict[ObjectRef, dict[str, Any]]
    prefixes: dict[str, list[ObjectRef]]


def _side(bundle: Bundle) -> _Side:
    objects = {ref_of(o): o for o in bundle.objects}
    by_prefix: dict[str, list[ObjectRef]] = {}
    for ref, obj in objects.items():
        for prefix in prefixes([obj]):
            by_prefix.setdefault(prefix, []).append(ref)
    return _Side(objects, by_prefix)


def _content(obj: Mapping[str, Any]) -> Any:
    """What an object enforces (the bundle label and annotations aside)."""
    return {k: v for k, v in obj.items() if k != "metadata"}


def _provenance(obj: Mapping[str, Any]) -> dict[str, str]:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    return {k.split("/", 1)[1]: str(v) for k, v in sorted(annotations.items()) if k in PROVENANCE_KEYS}


# A prefix's own provenance, when the bundle says it (a per-prefix provenance index): the prefix ->
# {"sources": ..., "categories": ..., "refs": ...}, or None when the bundle does not say.
PrefixProvenance = Callable[[str], Mapping[str, str] | None]


def no_index(bundle: Bundle) -> PrefixProvenance:
    """For bundles without a per-prefix provenance index: every prefix gets its objects' provenance."""
    return lambda prefix: None


def index_provenance(bundle: Bundle) -> PrefixProvenance:
    """Each prefix's own provenance from the bundle's provenance index (``provenance.json``): its
    feeds, CDR finding ids and categories, merged over the blocklists holding it. A bundle without
    an index, or with one that does not read back, gives none (its objects' provenance is shown)."""
    data = bundle.files.get(PROVENANCE_FILE)
    if data is None:
        return no_index(bundle)
    try:
        index = read_index(data, f"bundle {bundle.digest[:12]} {PROVENANCE_FILE}")
    except VerificationError as exc:
        logger.warning("provenance index not used", extra={"digest": bundle.digest, "error": str(exc)})
        return no_index(bundle)

    def lookup(prefix: str) -> Mapping[str, str] | None:
        try:
            net = ipaddress.ip_network(prefix)
        except ValueError:
            return None
        found = []
        for blocklist in index.blocklists:
            i = blocklist.find(net.version, int(net.network_address))
            if i is not None and blocklist.prefix(i) == prefix:
                found.append(index.classes[int(blocklist.classes[i])])
        if not found:
            return None
        merged = {
            "feeds": sorted({f for p in found for f in p.feeds}),
            "findings": sorted({f for p in found for f in p.findings}),
            "categories": sorted({c for p in found for c in p.categories}),
        }
        return {key: ",".join(values) for key, values in merged.items() if values}

    return lookup


def diff_bundles(
    dist: Store,
    state: Store,
    channel: str,
    digest: str | None,
    *,
    provenance: Callable[[Bundle], PrefixProvenance] = index_provenance,
) -> dict[str, Any]:
    """What bundle ``digest`` (a digest or unique prefix; None: the latest render) changes against
    what ``channel`` ships. Each prefix carries its own provenance where ``provenance`` gives it
    (``"scope": "prefix"``), else that of the objects holding it (``"scope": "object"``)."""
    current = _current(dist, channel)
    if digest is None:
        digest = latest_render(state, channel)
        if digest is None:
            raise ConfigError(f"channel {channel} has no render in {state.describe()}: give --digest")
    else:
        digest = _rendered_digest(state, digest)
    try:
        candidate, _ = read_manifest(state, layout.bundle_manifest_key(digest))
    except NotFound as exc:
        raise ConfigError(f"bundle {digest} is not in {state.describe()}") from exc
    old_bundle = load_bundle(dist, current, published=True)
    new_bundle = load_bundle(state, candidate, published=False)
    old, new = _side(old_bundle), _side(new_bundle)
    own = {id(old): provenance(old_bundle), id(new): provenance(new_bundle)}

    def entry(side: _Side, ref: ObjectRef) -> dict[str, Any]:
        return {"object": str(ref), "provenance": _provenance(side.objects[ref])}

    def prefix_entry(side: _Side, prefix: str) -> dict[str, Any]:
        refs = side.prefixes[prefix]
        given = own[id(side)](prefix)
        scope, found = ("prefix", dict(given)) if given is not None else ("object", _provenance(side.objects[refs[0]]))
        return {"prefix": prefix, "objects": [str(r) for r in refs], "provenance": found, "scope": scope}

    return {
        "channel": channel,
        "from": current.digest,
        "to": digest,
        "objects": {
            "added": [entry(new, r) for r in sorted(new.objects.keys() - old.objects.keys())],
            "removed": [entry(old, r) for r in sorted(old.objects.keys() - new.objects.keys())],
            "changed": [
                entry(new, r)
                for r in sorted(new.objects.keys() & old.objects.keys())
                if _content(new.objects[r]) != _content(old.objects[r])
            ],
        },
        "prefixes": {
            "added": [prefix_entry(new, p) for p in sorted(new.prefixes.keys() - old.prefixes.keys())],
            "removed": [prefix_entry(old, p) for p in sorted(old.prefixes.keys() - new.prefixes.keys())],
        },
    }


def _replacing(text: str) -> str:
    """A digest, or ``none`` (returned as ``""``)."""
    if text == "none":
        return ""
    if not layout.is_digest(text):
        raise argparse.ArgumentTypeError("a bundle digest (64 hex digits) or none")
    return text


def _validity(text: str) -> timedelta:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds <= MAX_VALIDITY.total_seconds():
        raise argparse.ArgumentTypeError(f"an approval holds for at most {MAX_VALIDITY.days} days")
    return timedelta(seconds=seconds)


def _rendered_digest(state: Store, given: str) -> str:
    """The rendered bundle ``given`` (a digest or a unique prefix) names in the state store."""
    found = digests.resolve(given, digests.rendered(state, given), "rendered bundles")
    if found is None:
        raise ConfigError(
            f"no rendered bundle in {state.describe()} starts with {given} (the folder 'cdr-policy state path' "
            f"prints, or the state bucket; 'cdr-policy publish' prints the exact command for a held bundle)"
        )
    return found


def _approve(args: argparse.Namespace, state: Store, dist: Store, approver: Signer) -> int:
    """Write the approver's signed grant of ``args.digest`` (a digest or unique prefix of a rendered
    bundle) over the bundle the channel ships (or ``--replacing``); with ``--publish-queue``, ask
    Publish to ship it now."""
    args.digest = _rendered_digest(state, args.digest)
    _check_reason(args.reason)
    previous = args.replacing
    if previous == "":
        previous = None  # --replacing none
    elif previous is None:
        try:
            previous = _current(dist, args.channel).digest
        except (ConfigError, BundleError):
            previous = None  # the channel ships nothing usable: the grant is for that
    signed = grant(
        args.channel, args.digest, previous, signer=approver, now=utcnow(), reason=args.reason, validity=args.valid_for
    )
    state.put(signed.key, jsonio.dumps_pretty(signed.to_json()), "application/json")
    over = f"over {previous[:12]}" if previous else "for a channel that ships nothing usable"
    print(f"approved: bundle {args.digest[:12]} of channel {args.channel} {over}, until {signed.expires_at}")
    if args.publish_queue:
        request = PublishRequest(args.channel, args.digest, approval=signed.fingerprint())
        aws.client("sqs").send_message(QueueUrl=args.publish_queue, MessageBody=request.to_message())
        print("  Publish was asked to ship it now")
    else:
        print("  Publish ships it on its next request for this bundle (locally: the publish command the held")
        print("  message printed, with the approvers' public key as --approver-key)")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    dist = _open(args.dist, "--dist")
    found = digests.resolve(args.to, digests.in_history(dist, args.channel), "generations")
    if found is None:
        raise ConfigError(
            f"channel {args.channel} has no history entry for {args.to} in {dist.describe()} "
            f"(see: {invoked_as()} channel history {args.channel} --dist {shlex.quote(dist.describe())} "
            "--public-key PEM)"
        )
    signer: Signer = LocalSigner.from_file(args.key) if args.key else KmsSigner(aws.client("kms"), args.kms_key_id)
    result = rollback(dist, channel=args.channel, to_digest=found, signer=signer, now=utcnow())
    was = (result.previous_digest or "-")[:12]
    print(f"{result.status}: channel {args.channel} now ships {result.digest[:12]} (was {was})")
    return 0


def _check_reason(reason: str) -> None:
    if len(reason) > 256 or not reason.isprintable() or not reason.isascii():
        raise ConfigError("--reason: printable text of at most 256 characters")


# A status document is a few kB; anything far larger was not written by an agent.
MAX_STATUS_BYTES = 1 << 20
# Status objects are read this many at a time: one by one, a thousand clusters take 10-30 s from S3.
STATUS_READERS = 16


def _status(dist: Store, key: str) -> tuple[AgentStatus | None, str | None]:
    """A cluster's status document, or why it is not one (without its content)."""
    try:
        status = AgentStatus.parse(dist.get(key, max_bytes=MAX_STATUS_BYTES).data)
    except NotFound:
        return None, None  # gone since the listing
    except TooLarge:
        return None, f"larger than {MAX_STATUS_BYTES} bytes"
    except ContractError as exc:
        return None, str(exc)
    if status.cluster_id != layout.status_cluster(key):
        return None, "written under another cluster's key"
    return status, None


def fleet_status(dist: Store, *, now: datetime) -> list[FleetStatusRow]:
    """One row per valid status document whose cluster id matches its key (the others are skipped
    and named); each channel's manifest read once; a promoting channel's rows carry what its current
    generation promoted (``promotion``)."""
    shipping: dict[str, Manifest | None] = {}
    rows = []
    keys = [k for k in dist.list(layout.STATUS) if layout.status_cluster(k) is not None]
    with ThreadPoolExecutor(max_workers=STATUS_READERS) as pool:
        statuses = list(pool.map(lambda key: _status(dist, key), keys))
    for key, (status, why) in zip(keys, statuses, strict=True):
        if status is None:
            if why:
                _skipped(key, why)
            continue
        channel = status.channel
        if channel not in shipping:
            try:
                shipping[channel] = _current(dist, channel)
            except (ConfigError, BundleError):
                shipping[channel] = None
        manifest = shipping[channel]
        applied, applied_at = status.applied_digest, status.applied_at
        rows.append(
            FleetStatusRow(
                cluster_id=status.cluster_id,
                channel=channel,
                applied_digest=applied,
                applied_age_s=int((now - parse_iso(applied_at)).total_seconds()) if applied_at else None,
                behind=applied != (manifest.digest if manifest else None),
                last_poll=status.last_poll.result,
                last_poll_at=status.last_poll.at,
                drift=status.drift,
                errors=len(status.apply_errors),
                promotion=promotion.summary(manifest),
            )
        )
    return sorted(rows, key=lambda r: (r.channel, r.cluster_id))


# -- printing --------------------------------------------------------------------------------------


def _contract_json(value: Any) -> Any:
    """A typed contract (a manifest, a report, a row) as its JSON document."""
    if isinstance(value, Manifest | FleetHitsReport | Decisions | ChannelRow | ChannelHistory | _Promoting):
        return value.to_json()
    raise TypeError(f"{type(value).__name__} is not a contract")


def _print(value: Any, as_json: bool, lines: Callable[[Any], list[str]]) -> int:
    if as_json:
        print(json.dumps(value, indent=2, sort_keys=True, default=_contract_json))
    else:
        for line in lines(value):
            print(line)
    return 0


def _list_lines(rows: Sequence[ChannelRow]) -> list[str]:
    out = [f"{'CHANNEL':<20} {'GEN':>5} {'DIGEST':<12} {'ACTION':<8} {'MODE':<8} {'OBJECTS':>7} CREATED"]
    for r in rows:
        gen = "-" if r.generation is None else str(r.generation)
        out.append(
            f"{r.channel:<20} {gen:>5} {r.digest[:12]:<12} {r.action:<8} {r.mode:<8} {r.objects:>7} {r.created_at}"
        )
    return out


def _show_lines(manifest: Manifest) -> list[str]:
    out = [
        f"channel: {manifest.channel}",
        f"digest: {manifest.digest}",
        f"generation: {manifest.generation}",
        f"created_at: {manifest.created_at}",
        f"expires_at: {manifest.expires_at}",
    ]
    out.append("settings: " + ", ".join(f"{k}={v}" for k, v in sorted(manifest.settings.to_json().items())))
    out += [f"  {kind}: {n}" for kind, n in sorted(manifest.counts.items())]
    return out + promotion.manifest_lines(manifest)


def _history_lines(history: ChannelHistory) -> list[str]:
    out = [f"{'':1} {'GEN':>5} {'DIGEST':<16} {'CREATED':<20} {'OBJECTS':>7} {'SIZE':>10}  APPROVAL"]
    for r in history.generations:
        mark = "*" if r.shipping else ""
        out.append(
            f"{mark:1} {r.generation:>5} {r.digest[:16]:<16} {r.created_at:<20} {r.objects:>7} "
            f"{_size(r.bytes):>10}  {r.approval or '-'}"
        )
        if r.promotion is not None:
            out.append(f"{'':8}{r.promotion.line()}")
    if history.shipping is not None:
        out.append(f"* the generation channel {history.channel} ships now")
    if history.skipped:
        out.append(f"{history.skipped} history entr(ies) skipped: not signed by this key, or malformed")
    return out


def _size(n: int) -> str:
    for unit, size in (("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _provenance_text(entry: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in entry["provenance"].items()) or "no provenance recorded"


def _group(entry: Mapping[str, Any]) -> str:
    """What a summary line says of a group of prefixes: their own provenance, or (without a
    per-prefix index) the objects holding them and those objects' provenance."""
    if entry.get("scope") == "prefix":
        return f"from {_provenance_text(entry)}"
    return f"in {', '.join(entry['objects'])} (the objects' provenance: {_provenance_text(entry)})"


def _diff_lines(diff: Mapping[str, Any], *, full: bool) -> list[str]:
    out = [f"channel {diff['channel']}: ships {diff['from'][:12]}, compared with {diff['to'][:12]}"]
    for what, sign in (("added", "+"), ("removed", "-"), ("changed", "~")):
        objects = diff["objects"][what]
        shown = objects if full else objects[:SUMMARY_OBJECTS]
        out += [f"  {sign} object {e['object']}" for e in shown]
        if len(objects) > len(shown):
            out.append(f"  {sign} ... and {len(objects) - len(shown)} more object(s) {what} (--full lists them)")
    for what, sign in (("added", "+"), ("removed", "-")):
        entries = diff["prefixes"][what]
        if full:
            for e in entries:
                scope = "" if e.get("scope") == "prefix" else "objects' "
                out.append(f"  {sign} {e['prefix']}  ({', '.join(e['objects'])}; {scope}{_provenance_text(e)})")
            continue
        groups: dict[str, list[str]] = defaultdict(list)
        for e in entries:
            groups[_group(e)].append(e["prefix"])
        for label, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            example = ", ".join(members[:3]) + (", ..." if len(members) > 3 else "")
            out.append(f"  {sign} {len(members)} prefix(es) {what} {label}: {example}")
    counts = {w: len(diff["prefixes"][w]) for w in ("added", "removed")}
    out.append(
        f"{counts['added']} prefix(es) added, {counts['removed']} removed"
        + ("" if full or not (counts["added"] or counts["removed"]) else " (--full lists each with its provenance)")
    )
    return out


def _fleet_lines(rows: Sequence[FleetStatusRow]) -> list[str]:
    out = [f"{'CLUSTER':<24} {'CHANNEL':<16} {'APPLIED':<12} {'AGE':>8} {'BEHIND':<6} {'POLL':<12} ERRORS"]
    promoting: dict[str, GenerationPromotion] = {}
    for r in rows:
        age = "-" if r.applied_age_s is None else f"{r.applied_age_s // 60}m"
        applied = (r.applied_digest or "-")[:12]
        out.append(
            f"{r.cluster_id:<24} {r.channel:<16} {applied:<12} {age:>8} "
            f"{'yes' if r.behind else 'no':<6} {r.last_poll:<12} {r.errors}"
        )
        if r.promotion is not None:
            promoting[r.channel] = r.promotion
    for channel, p in sorted(promoting.items()):
        evidence = f"cdr-policy channel evidence {channel}"
        out.append(f"channel {channel}, generation {p.generation}: {p.line()} ({evidence})")
    return out

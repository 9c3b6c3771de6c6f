"""Day-2 commands for a fleet, against the distribution store (``s3://bucket`` or a folder) and,
where needed, the state store:

- ``cdr-policy channel list|show``: the channels and what each ships;
- ``cdr-policy channel diff``: what a bundle (by default the channel's latest render, e.g. one the
  change budget held) adds and removes against the one the channel ships, per object and per prefix,
  with each prefix's provenance;
- ``cdr-policy channel approve``: approve a held bundle (Publish ships it on its next request), or
  with ``--change`` the changes a promoting channel holds (``cli.promotion``);
- ``cdr-policy channel evidence``: a promoting channel's pending changes, their evidence and decisions;
- ``cdr-policy channel rollback``: publish an earlier signed bundle of the channel again;
- ``cdr-policy fleet status``: per cluster, from its status document: channel, applied bundle and
  its age, whether it is behind its channel, drift, errors;
- ``cdr-policy fleet hits``: what the clusters' node readers attributed, checked against each
  cluster's own channel (``cli.hits``, ``hits.fleet``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cdr_policy import aws, jsonio, layout
from cdr_policy.bundle.approvals import DEFAULT_VALIDITY, MAX_VALIDITY, grant
from cdr_policy.bundle.loader import Bundle, load_bundle, read_manifest
from cdr_policy.bundle.manifest import Manifest
from cdr_policy.bundle.objects import ObjectRef, prefixes, ref_of
from cdr_policy.bundle.signing import KmsSigner, LocalSigner, Signer
from cdr_policy.cli import promotion
from cdr_policy.cli.hits import add_since, fleet_hits, fleet_hits_lines
from cdr_policy.cli.parser import Parser
from cdr_policy.cli.promotion import change_argument
from cdr_policy.errors import BundleError, ConfigError
from cdr_policy.lambda_events import PublishRequest
from cdr_policy.policy import naming
from cdr_policy.stages.publish import rollback
from cdr_policy.storage import NotFound, Store, TooLarge, exists, open_store
from cdr_policy.timeutil import parse_duration, parse_iso, utcnow

PROVENANCE_KEYS = (naming.SOURCES, naming.CATEGORIES, naming.REFS, naming.EVIDENCE)


def channel_main(argv: list[str]) -> int:
    parser = Parser(prog="cdr-policy channel", description="Inspect, approve and roll back channels.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    listing = commands.add_parser("list", help="the channels and the bundle each ships")
    _dist(listing)
    show = commands.add_parser("show", help="one channel's signed manifest")
    _dist(show)
    show.add_argument("channel")
    diff = commands.add_parser("diff", help="what a bundle changes against the one the channel ships")
    _dist(diff)
    _state(diff)
    diff.add_argument("channel")
    diff.add_argument("--digest", help="the bundle to compare (default: the channel's latest render)")
    evidence = commands.add_parser(
        "evidence", help="a promoting channel's pending changes: the evidence so far and the decision, with its reasons"
    )
    _dist(evidence)
    evidence.add_argument("channel")
    approve = commands.add_parser(
        "approve",
        help="as an approver: grant a bundle the change budget held, as the replacement of the one shipped, "
        "or (--change) changes a promotion holds",
    )
    _state(approve)
    _dist(approve)
    approve.add_argument("channel")
    approve.add_argument("digest", nargs="?", help="the held bundle (not with --change)")
    approve.add_argument(
        "--change",
        action="append",
        type=change_argument,
        default=[],
        metavar="CHANGE",
        help="a pending change of a promoting channel as channel evidence names it (prefix:<cidr>, "
        "port:<proto>/<n>, rule:<id>@<fingerprint>); repeat for more",
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
    back.add_argument("channel")
    back.add_argument("--to", required=True, metavar="DIGEST", help="the earlier bundle (see channel show)")
    signing = back.add_mutually_exclusive_group(required=True)
    signing.add_argument("--key", metavar="PEM", help="local signing key (keygen)")
    signing.add_argument("--kms-key-id", metavar="ARN", help="the stack's KMS signing key")
    for sub in (listing, show, diff, evidence):
        sub.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.command == "evidence":
        return _print(promotion.evidence(open_store(args.dist), args.channel), args.json, promotion.evidence_lines)
    if args.command == "list":
        return _print(_list(open_store(args.dist)), args.json, _list_lines)
    if args.command == "show":
        return _print(_current(open_store(args.dist), args.channel), args.json, _show_lines)
    if args.command == "diff":
        changes = diff_bundles(open_store(args.dist), open_store(args.state), args.channel, args.digest)
        return _print(changes, args.json, _diff_lines)
    if args.command == "approve":
        if (args.digest is None) == (not args.change):
            raise ConfigError("approve: give a held bundle's digest, or the changes to approve with --change")
        approver: Signer = (
            LocalSigner.from_file(args.key) if args.key else KmsSigner(aws.client("kms"), args.kms_key_id)
        )
        if args.change:
            _check_reason(args.reason)
            lines = promotion.approve_changes(
                open_store(args.state),
                open_store(args.dist),
                args.channel,
                args.change,
                approver=approver,
                reason=args.reason,
                valid_for=args.valid_for,
            )
            print("\n".join(lines))
            return 0
        return _approve(args, open_store(args.state), open_store(args.dist), approver)
    signer: Signer = LocalSigner.from_file(args.key) if args.key else KmsSigner(aws.client("kms"), args.kms_key_id)
    result = rollback(open_store(args.dist), channel=args.channel, to_digest=args.to, signer=signer, now=utcnow())
    was = (result.previous_digest or "-")[:12]
    print(f"{result.status}: channel {args.channel} now ships {result.digest[:12]} (was {was})")
    return 0


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
        return _print(fleet_hits(open_store(args.dist), args.since), args.json, fleet_hits_lines)
    return _print(fleet_status(open_store(args.dist), now=utcnow()), args.json, _fleet_lines)


# -- reading ---------------------------------------------------------------------------------------


def _dist(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dist", required=True, metavar="URL", help="distribution store: s3://BUCKET or a folder")


def _state(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", required=True, metavar="URL", help="state store: s3://BUCKET or a folder")


def _json(store: Store, key: str, max_bytes: int | None = None) -> Any:
    try:
        return jsonio.loads(store.get(key, max_bytes=max_bytes).data)
    except ValueError as exc:
        raise BundleError(f"{store.describe()}/{key} is not valid JSON: {exc}") from exc


def _current(dist: Store, channel: str) -> Manifest:
    try:
        return read_manifest(dist, layout.channel_manifest_key(channel))[0]
    except NotFound as exc:
        raise ConfigError(f"channel {channel} has no manifest in {dist.describe()}") from exc


def _list(dist: Store) -> list[dict[str, Any]]:
    keys = set(dist.list(layout.CHANNELS))
    names = sorted(n for n in {k.split("/")[1] for k in keys} if layout.channel_manifest_key(n) in keys)
    out = []
    for name in names:
        manifest = _current(dist, name)
        out.append(
            {
                "channel": name,
                "digest": manifest.digest,
                "generation": manifest.generation,
                "created_at": manifest.created_at,
                "expires_at": manifest.expires_at,
                "action": manifest.settings.action,
                "mode": manifest.settings.mode,
                "objects": manifest.objects_count(),
            }
        )
    return out


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


def diff_bundles(dist: Store, state: Store, channel: str, digest: str | None) -> dict[str, Any]:
    current = _current(dist, channel)
    if digest is None:
        try:
            digest = str(_json(state, layout.latest_render_key(channel))["digest"])
        except NotFound as exc:
            raise ConfigError(f"channel {channel} has no render in {state.describe()}") from exc
    try:
        candidate, _ = read_manifest(state, layout.bundle_manifest_key(digest))
    except NotFound as exc:
        raise ConfigError(f"bundle {digest} is not in {state.describe()}") from exc
    old = _side(load_bundle(dist, current, published=True))
    new = _side(load_bundle(state, candidate, published=False))

    def entry(side: _Side, ref: ObjectRef) -> dict[str, Any]:
        return {"object": str(ref), "provenance": _provenance(side.objects[ref])}

    def prefix_entry(side: _Side, prefix: str) -> dict[str, Any]:
        refs = side.prefixes[prefix]
        return {"prefix": prefix, "objects": [str(r) for r in refs], "provenance": _provenance(side.objects[refs[0]])}

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


def _approve(args: argparse.Namespace, state: Store, dist: Store, approver: Signer) -> int:
    """Write the approver's signed grant of ``args.digest`` over the bundle the channel ships (or
    ``--replacing``); with ``--publish-queue``, ask Publish to ship it now."""
    if not layout.is_digest(args.digest):
        raise ConfigError("approve: the held bundle's digest is 64 hex digits")
    if not exists(state, layout.bundle_manifest_key(args.digest)):
        raise ConfigError(f"bundle {args.digest} is not in {state.describe()}: nothing to approve")
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
        print("  Publish ships it on its next request for this bundle")
    return 0


def _check_reason(reason: str) -> None:
    if len(reason) > 256 or not reason.isprintable() or not reason.isascii():
        raise ConfigError("--reason: printable text of at most 256 characters")


# A status document is a few kB; anything far larger was not written by an agent.
MAX_STATUS_BYTES = 1 << 20
# Status objects are read this many at a time: one by one, a thousand clusters take 10-30 s from S3.
STATUS_READERS = 16


def _status(dist: Store, key: str) -> Any:
    try:
        return _json(dist, key, MAX_STATUS_BYTES)
    except (NotFound, TooLarge, BundleError):
        return None  # gone since the listing, planted, or not JSON: not a cluster's word


def fleet_status(dist: Store, *, now: datetime) -> list[dict[str, Any]]:
    """One row per status document whose cluster id matches its key, newest channels read once; a
    promoting channel's rows carry what its current generation promoted (``promotion``)."""
    shipping: dict[str, Manifest | None] = {}
    rows = []
    keys = dist.list(layout.STATUS)
    with ThreadPoolExecutor(max_workers=STATUS_READERS) as pool:
        docs = list(pool.map(lambda key: _status(dist, key), keys))
    for key, doc in zip(keys, docs, strict=True):
        cluster = key[len(layout.STATUS) :].removesuffix(".json")
        if not isinstance(doc, dict) or doc.get("cluster_id") != cluster:
            continue  # a document under another cluster's key is not that cluster's word
        channel = str(doc.get("channel"))
        if channel not in shipping:
            try:
                shipping[channel] = _current(dist, channel)
            except (ConfigError, BundleError):
                shipping[channel] = None
        manifest = shipping[channel]
        applied, applied_at = doc.get("applied_digest"), doc.get("applied_at")
        poll = doc.get("last_poll") or {}
        rows.append(
            {
                "cluster_id": cluster,
                "channel": channel,
                "applied_digest": applied,
                "applied_age_s": int((now - parse_iso(applied_at)).total_seconds()) if applied_at else None,
                "behind": applied != (manifest.digest if manifest else None),
                "last_poll": poll.get("result"),
                "last_poll_at": poll.get("at"),
                "drift": doc.get("drift"),
                "errors": len(doc.get("apply_errors") or []),
                "promotion": promotion.summary(manifest),
            }
        )
    return sorted(rows, key=lambda r: (r["channel"], r["cluster_id"]))


# -- printing --------------------------------------------------------------------------------------


def _print(value: Any, as_json: bool, lines: Any) -> int:
    if as_json:
        print(json.dumps(value.to_json() if isinstance(value, Manifest) else value, indent=2, sort_keys=True))
    else:
        for line in lines(value):
            print(line)
    return 0


def _list_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = [f"{'CHANNEL':<20} {'GEN':>5} {'DIGEST':<12} {'ACTION':<8} {'MODE':<8} {'OBJECTS':>7} CREATED"]
    for r in rows:
        gen = "-" if r["generation"] is None else str(r["generation"])
        out.append(
            f"{r['channel']:<20} {gen:>5} {r['digest'][:12]:<12} {r['action']:<8} {r['mode']:<8} "
            f"{r['objects']:>7} {r['created_at']}"
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


def _diff_lines(diff: Mapping[str, Any]) -> list[str]:
    out = [f"channel {diff['channel']}: {diff['from'][:12]} -> {diff['to'][:12]}"]
    for what in ("added", "removed", "changed"):
        for e in diff["objects"][what]:
            out.append(f"  object {what}: {e['object']}")
    for what, sign in (("added", "+"), ("removed", "-")):
        for e in diff["prefixes"][what]:
            source = ", ".join(f"{k}={v}" for k, v in e["provenance"].items())
            out.append(f"  {sign} {e['prefix']}  ({', '.join(e['objects'])}{'; ' + source if source else ''})")
    counts = {w: len(diff["prefixes"][w]) for w in ("added", "removed")}
    out.append(f"{counts['added']} prefix(es) added, {counts['removed']} removed")
    return out


def _fleet_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = [f"{'CLUSTER':<24} {'CHANNEL':<16} {'APPLIED':<12} {'AGE':>8} {'BEHIND':<6} {'POLL':<12} ERRORS"]
    promoting = {}
    for r in rows:
        age = "-" if r["applied_age_s"] is None else f"{r['applied_age_s'] // 60}m"
        applied = (r["applied_digest"] or "-")[:12]
        out.append(
            f"{r['cluster_id']:<24} {r['channel']:<16} {applied:<12} {age:>8} "
            f"{'yes' if r['behind'] else 'no':<6} {str(r['last_poll']):<12} {r['errors']}"
        )
        if r["promotion"] is not None:
            promoting[r["channel"]] = r["promotion"]
    for channel, p in sorted(promoting.items()):
        taken = f", took back generation {p['rolled_back']}'s changes" if p["rolled_back"] else ""
        out.append(
            f"channel {channel}, generation {p['generation']}: promoted {p['promoted']} change(s) from {p['from']} "
            f"({p['approved']} approved), {p['waiting']} waiting, {p['held']} held, {p['held_back']} held back"
            f"{taken} (cdr-policy channel evidence {channel})"
        )
    return out

"""Signed channels on a laptop: ``cdr-policy keygen`` makes a signing key pair, ``cdr-policy
publish --to DIR`` signs the latest local render (``cdr-policy --once``) into a folder laid out
like the distribution bucket, which the agent's directory mode (``cdr-policy agent --bucket DIR``)
consumes. The same Publish stage as the Lambda function runs, with a key file instead of KMS.
``cdr-policy state path`` prints the local state folder those commands use.

A held or refused publish prints the exact commands that come next (with the real state folder
and the full digest), so that the walkthrough of docs/operations.md works by copying them."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Mapping
from pathlib import Path

from cdr_policy.admission import Admission
from cdr_policy.bundle.loader import latest_render
from cdr_policy.bundle.signing import LocalSigner, Verifier, generate_local_key
from cdr_policy.cli.flags import bounded_int, channel_name
from cdr_policy.cli.parser import Parser, add_protection_arguments, invoked_as, protection_of
from cdr_policy.errors import ConfigError, PolicyCheckError, StorageError, os_cause
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.qualys.credentials import load_credentials
from cdr_policy.qualys.platforms import resolve_gateway
from cdr_policy.stages.publish import PublishResult, publish_bundle
from cdr_policy.storage import LocalStore, writable_dir
from cdr_policy.timeutil import utcnow
from cdr_policy.wiring.local import LOCAL_CHANNEL, state_dir_for

PRIVATE_KEY = "bundle-signing.pem"
PUBLIC_KEY = "bundle-signing.pub"
DEFAULT_CHANGE_BUDGET = 50
GITIGNORE = ".gitignore"


def keygen_main(argv: list[str]) -> int:
    parser = Parser(prog="cdr-policy keygen", description="Make an ECDSA P-256 key pair for signing channels.")
    parser.add_argument(
        "--out",
        default=".",
        metavar="DIR",
        help=f"where {PRIVATE_KEY} and {PUBLIC_KEY} go (a new folder gets a {GITIGNORE} that keeps the private "
        "key out of commits)",
    )
    args = parser.parse_args(argv)
    out = writable_dir(Path(args.out), "--out")
    for name in (PRIVATE_KEY, PUBLIC_KEY):
        if (out / name).exists():
            raise ConfigError(f"{out / name} already exists: refusing to overwrite a key (choose another --out)")
    public = generate_local_key(out / PRIVATE_KEY)
    try:
        (out / PUBLIC_KEY).write_text(public, encoding="utf-8")
        if not (out / GITIGNORE).exists():
            note = "# cdr-policy keygen: the private key never goes into a repository"
            (out / GITIGNORE).write_text(f"{note}\n{PRIVATE_KEY}\n", encoding="utf-8")
    except OSError as exc:  # a full disk: no private key without its public half, nothing half-written
        for name in (PRIVATE_KEY, PUBLIC_KEY):
            (out / name).unlink(missing_ok=True)
        raise StorageError(f"cannot write {out / PUBLIC_KEY} ({os_cause(exc)})") from exc
    print(f"private key (mode 600, never share it): {out / PRIVATE_KEY}")
    print(f"public key (give it to the agents):      {out / PUBLIC_KEY}")
    print(f"key id: {LocalSigner.from_file(out / PRIVATE_KEY).key_id}")
    if not _ignored(out) and _in_git_work_tree(out):
        print(
            f"warning: {out / PRIVATE_KEY} is inside a git work tree: add {PRIVATE_KEY} to {out / GITIGNORE} "
            "so that it is never committed"
        )
    return 0


def _in_git_work_tree(folder: Path) -> bool:
    return any((parent / ".git").exists() for parent in (folder.resolve(), *folder.resolve().parents))


def _ignored(folder: Path) -> bool:
    """The folder's own .gitignore names the private key."""
    try:
        lines = (folder / GITIGNORE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return any(line.strip() in (PRIVATE_KEY, "*", "*.pem") for line in lines)


def publish_main(argv: list[str], env: Mapping[str, str], state_root: Path) -> int:
    parser = Parser(
        prog="cdr-policy publish",
        description="Sign the latest local render of a channel into a folder the agent's directory mode reads.",
    )
    parser.add_argument("--to", required=True, metavar="DIR", help="the distribution folder (created if needed)")
    parser.add_argument("--key", required=True, metavar="PEM", help=f"the signing key ({PRIVATE_KEY} from keygen)")
    parser.add_argument(
        "--channel", type=channel_name, default=LOCAL_CHANNEL, help=f"the channel (default {LOCAL_CHANNEL})"
    )
    _state_flags(parser, env)
    parser.add_argument(
        "--change-budget",
        type=bounded_int(1, 100),
        default=DEFAULT_CHANGE_BUDGET,
        metavar="PERCENT",
        help=f"hold a bundle that changes more than this share of the prefixes (1..100, default "
        f"{DEFAULT_CHANGE_BUDGET})",
    )
    parser.add_argument(
        "--approver-key",
        metavar="PEM",
        help="the approvers' public key(s): a bundle over the change budget ships only with a grant they signed "
        "(cdr-policy channel approve); without it nothing past the budget ships",
    )
    add_protection_arguments(parser, "the channel's clusters")
    parser.add_argument(
        "--crds", metavar="PATH", help="CRD file or folder of the target clusters to check the objects against"
    )
    args = parser.parse_args(argv)
    state_dir = state_folder(args, env, state_root)
    if not state_dir.is_dir():
        raise ConfigError(f"no local state folder {state_dir}: run 'cdr-policy --once' first (or give --state-dir)")
    state = LocalStore(state_dir)
    digest = latest_render(state, args.channel)
    if digest is None:
        raise ConfigError(f"no render of channel {args.channel} in {state_dir}: run 'cdr-policy --once' first")
    signer = LocalSigner.from_file(args.key)
    result = publish_bundle(
        state,
        LocalStore(writable_dir(Path(args.to), "--to")),
        channel=args.channel,
        digest=digest,
        signer=signer,
        now=utcnow(),
        change_budget_percent=args.change_budget,
        admission=Admission(protection_of(args, f"channel {args.channel}"), _crds(args.crds)),
        approvers=Verifier.from_file(args.approver_key) if args.approver_key else None,
    )
    print(f"{result.status}: channel {args.channel}, bundle {result.digest[:12]} in {args.to}")
    if result.reason:
        print(f"  {result.reason}")
    for error in result.errors:
        print(f"  {error}")
    for line in next_steps(result, args, state_dir):
        print(line)
    return 0 if result.shipped or result.status == "unchanged" else 1


def _crds(path: str | None) -> SchemaSet | None:
    try:
        return SchemaSet.from_dir(path) if path else None
    except PolicyCheckError as exc:
        raise ConfigError(f"--crds: {exc}") from exc


# Where the walkthrough keeps the approver's own key pair, when publish was given none.
APPROVER_DIR = "approver"


def next_steps(result: PublishResult, args: argparse.Namespace, state_dir: Path) -> list[str]:
    """The exact commands that come after a held or refused publish. A held bundle ships with an
    approver's grant: signed with the approver's own key (never the channel's), checked by Publish
    against ``--approver-key``; the approver's private key is taken to lie beside that public key,
    as ``keygen`` leaves them (without ``--approver-key``, in a folder made for it first)."""
    q = shlex.quote
    state, channel, digest = q(str(state_dir)), args.channel, result.digest
    lines: list[str] = []
    me = invoked_as()
    approver_pub = Path(args.approver_key) if args.approver_key else Path(APPROVER_DIR) / PUBLIC_KEY
    if result.status == "held" and not args.approver_key:
        lines.append(f"  {me} keygen --out {APPROVER_DIR}    # once: the approver's own key pair, not the channel's")
    again = [f"--to {q(args.to)}", f"--key {q(args.key)}", f"--state-dir {state}"]
    if channel != LOCAL_CHANNEL:
        again.append(f"--channel {channel}")
    if args.change_budget != DEFAULT_CHANGE_BUDGET:
        again.append(f"--change-budget {args.change_budget}")
    if args.approver_key or result.status == "held":
        again.append(f"--approver-key {q(str(approver_pub))}")
    for flag, values in (("--protected-cidrs", args.protected_cidrs), ("--protected-ports", args.protected_ports)):
        if values:
            again.append(f"{flag} {q(','.join(values))}")
    if args.crds:
        again.append(f"--crds {q(args.crds)}")
    publish = f"  {me} publish {' '.join(again)}"
    if result.status == "held":
        replacing = result.previous_digest or "none"
        approver_key = approver_pub.with_name(PRIVATE_KEY) if approver_pub.name == PUBLIC_KEY else "APPROVER-KEY.pem"
        return [
            "Next: review the change, have an approver grant it (their own key), publish again:",
            *lines,
            f"  {me} channel diff {channel} --dist {q(args.to)} --state {state} --digest {digest}",
            f"  {me} channel approve {channel} {digest} --replacing {replacing} --state {state} --dist {q(args.to)} "
            f"--key {q(str(approver_key))} --reason reviewed",
            publish,
        ]
    if result.status == "refused":
        return [
            "Next: nothing was published; fix what the lines above name (feeds, --channel settings), render again "
            "with 'cdr-policy --once', then:",
            publish,
        ]
    return []


def _state_flags(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    parser.add_argument("--state-dir", default=None, help="the run's state folder (default: as cdr-policy uses)")
    parser.add_argument("--platform", default=env.get("QUALYS_PLATFORM"), help="as cdr-policy's --platform")
    parser.add_argument("--gateway", default=env.get("QUALYS_GATEWAY_URL"), help="as cdr-policy's --gateway")


def state_folder(args: argparse.Namespace, env: Mapping[str, str], root: Path) -> Path:
    """``--state-dir``, else the tenant's folder that ``cdr-policy`` uses for this gateway and user."""
    if args.state_dir is not None:
        return Path(args.state_dir)
    gateway = resolve_gateway(args.platform, args.gateway)
    return state_dir_for(None, gateway, load_credentials(None, env), root)


def state_main(argv: list[str], env: Mapping[str, str], state_root: Path) -> int:
    parser = Parser(prog="cdr-policy state", description="The local state folder of cdr-policy.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    path = commands.add_parser(
        "path",
        help="print the state folder of this gateway and user (QUALYS_GATEWAY_URL or --gateway, QUALYS_USERNAME)",
    )
    _state_flags(path, env)
    args = parser.parse_args(argv)
    print(state_folder(args, env, state_root))
    return 0

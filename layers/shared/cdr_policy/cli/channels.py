"""Signed channels on a laptop: ``cdr-policy keygen`` makes a signing key pair, ``cdr-policy
publish --to DIR`` signs the latest local render (``cdr-policy --once``) into a folder laid out
like the distribution bucket, which the agent's directory mode (``cdr-policy agent --bucket DIR``)
consumes. The same Publish stage as the Lambda function runs, with a key file instead of KMS."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from cdr_policy import jsonio, layout
from cdr_policy.admission import Admission
from cdr_policy.bundle.signing import LocalSigner, Verifier, generate_local_key
from cdr_policy.cli.parser import Parser, add_protection_arguments, protection_of
from cdr_policy.errors import ConfigError
from cdr_policy.policy.checker import SchemaSet
from cdr_policy.qualys.credentials import load_credentials
from cdr_policy.qualys.platforms import resolve_gateway
from cdr_policy.stages.publish import publish_bundle
from cdr_policy.storage import LocalStore, NotFound
from cdr_policy.timeutil import utcnow
from cdr_policy.wiring.local import LOCAL_CHANNEL, state_dir_for, writable_dir

PRIVATE_KEY = "bundle-signing.pem"
PUBLIC_KEY = "bundle-signing.pub"


def keygen_main(argv: list[str]) -> int:
    parser = Parser(prog="cdr-policy keygen", description="Make an ECDSA P-256 key pair for signing channels.")
    parser.add_argument("--out", default=".", metavar="DIR", help=f"where {PRIVATE_KEY} and {PUBLIC_KEY} go")
    args = parser.parse_args(argv)
    out = writable_dir(Path(args.out), "--out")
    public = generate_local_key(out / PRIVATE_KEY)
    (out / PUBLIC_KEY).write_text(public)
    print(f"private key (mode 600, never share it): {out / PRIVATE_KEY}")
    print(f"public key (give it to the agents):      {out / PUBLIC_KEY}")
    print(f"key id: {LocalSigner.from_file(out / PRIVATE_KEY).key_id}")
    return 0


def publish_main(argv: list[str], env: Mapping[str, str], state_root: Path) -> int:
    parser = Parser(
        prog="cdr-policy publish",
        description="Sign the latest local render of a channel into a folder the agent's directory mode reads.",
    )
    parser.add_argument("--to", required=True, metavar="DIR", help="the distribution folder (created if needed)")
    parser.add_argument("--key", required=True, metavar="PEM", help=f"the signing key ({PRIVATE_KEY} from keygen)")
    parser.add_argument("--channel", default=LOCAL_CHANNEL, help=f"the channel (default {LOCAL_CHANNEL})")
    parser.add_argument("--state-dir", default=None, help="the run's state folder (default: as cdr-policy uses)")
    parser.add_argument("--platform", default=env.get("QUALYS_PLATFORM"))
    parser.add_argument("--gateway", default=env.get("QUALYS_GATEWAY_URL"))
    parser.add_argument("--change-budget", type=int, default=50, metavar="PERCENT", help="hold bigger changes")
    parser.add_argument(
        "--approver-key",
        metavar="PEM",
        help="the approvers' public key(s): a bundle over the change budget ships only with a grant they signed "
        "(cdr-policy channel approve); without it nothing past the budget ships",
    )
    add_protection_arguments(parser, "the channel's clusters")
    parser.add_argument("--crds", metavar="DIR", help="CRD files of the target clusters to check the objects against")
    args = parser.parse_args(argv)
    state = LocalStore(_state_dir(args, env, state_root))
    try:
        pointer = jsonio.loads(state.get(layout.latest_render_key(args.channel)).data)
    except NotFound as exc:
        raise ConfigError(
            f"no render of channel {args.channel} in {state.describe()}: run cdr-policy --once first"
        ) from exc
    result = publish_bundle(
        state,
        LocalStore(writable_dir(Path(args.to), "--to")),
        channel=args.channel,
        digest=str(pointer["digest"]),
        signer=LocalSigner.from_file(args.key),
        now=utcnow(),
        change_budget_percent=args.change_budget,
        admission=Admission(
            protection_of(args, f"channel {args.channel}"), SchemaSet.from_dir(args.crds) if args.crds else None
        ),
        approvers=Verifier.from_file(args.approver_key) if args.approver_key else None,
    )
    print(f"{result.status}: channel {args.channel}, bundle {result.digest[:12]} in {args.to}")
    if result.reason:
        print(f"  {result.reason}")
    for error in result.errors:
        print(f"  {error}")
    return 0 if result.shipped or result.status == "unchanged" else 1


def _state_dir(args: argparse.Namespace, env: Mapping[str, str], root: Path) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    gateway = resolve_gateway(args.platform, args.gateway)
    return state_dir_for(None, gateway, load_credentials(None, env), root)

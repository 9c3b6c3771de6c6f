"""Day-2 commands that lead the way (issue 21, points 3 to 5): digests by any unique prefix of 12
or more hex digits, ``channel history``, ``channel diff`` summarised with ``--full`` for
everything, messages that name the next command, ``cdr-policy state path``."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from cdr_policy import jsonio, layout
from cdr_policy.bundle.loader import Bundle
from cdr_policy.cli import main
from cdr_policy.cli.fleet import ChannelHistory, PrefixProvenance, diff_bundles
from cdr_policy.storage import LocalStore
from cdr_policy.timeutil import utcnow
from tests.unit.bundle.factory import files_of, ips, network_bundle, render, tracing_policy


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The channel's signing key pair in ``keys/``, an approver's own in ``approver/``."""
    assert main(["keygen", f"--out={tmp_path / 'keys'}"], {}) == 0
    assert main(["keygen", f"--out={tmp_path / 'approver'}"], {}) == 0
    capsys.readouterr()
    return tmp_path / "keys"


class Channel:
    """Channel ``prod`` of a distribution folder, published with the CLI from a state folder."""

    def __init__(self, tmp_path: Path, keys: Path) -> None:
        self.state = LocalStore(tmp_path / "state")
        self.dist = tmp_path / "dist"
        self.keys = keys

    def render(self, files: dict[str, bytes]) -> str:
        digest = render(self.state, files, created=utcnow())
        self.state.put(layout.latest_render_key("prod"), jsonio.dumps({"digest": digest}))
        return digest

    def publish(self) -> int:
        argv = ["publish", f"--to={self.dist}", f"--key={self.keys / 'bundle-signing.pem'}", "--channel=prod"]
        argv.append(f"--approver-key={self.keys.parent / 'approver/bundle-signing.pub'}")
        return main([*argv, f"--state-dir={self.state.root}"], {})

    def approve(self, given: str, *extra: str) -> list[str]:
        """``channel approve prod GIVEN`` as the approver."""
        approver = f"--key={self.keys.parent / 'approver/bundle-signing.pem'}"
        return ["channel", "approve", "prod", given, f"--dist={self.dist}", approver, *extra]

    def cli(self, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        code = main(list(argv), {})
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err


@pytest.fixture
def channel(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> Channel:
    ch = Channel(tmp_path, keys)
    ch.render(network_bundle(ips(0, 10)))
    assert ch.publish() == 0
    capsys.readouterr()
    return ch


def test_approve_takes_a_unique_prefix_and_refuses_short_or_unknown_ones(
    channel: Channel, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = channel.render(network_bundle(ips(0, 200)))  # held: far over the change budget
    assert channel.publish() == 1
    capsys.readouterr()
    state = f"--state={channel.state.root}"

    code, out, _ = channel.cli(*channel.approve(digest[:12], state), capsys=capsys)
    assert code == 0 and out.startswith(f"approved: bundle {digest[:12]} of channel prod over ")
    assert channel.publish() == 0, "the grant of the full digest the prefix named lets it through"

    code, _, err = channel.cli(*channel.approve(digest[:11], state), capsys=capsys)
    assert code == 2 and "is not a bundle digest: give the 64 hex digits or a unique prefix of at least 12" in err
    code, _, err = channel.cli(*channel.approve("0" * 12, state), capsys=capsys)
    assert code == 2 and f"no rendered bundle in {channel.state.root} starts with 000000000000" in err
    assert "cdr-policy state path" in err
    code, _, err = channel.cli(*channel.approve(digest[:12], "--state=./no-such-state"), capsys=capsys)
    assert code == 2 and "--state ./no-such-state does not exist" in err


def test_an_ambiguous_prefix_lists_the_candidates(channel: Channel, capsys: pytest.CaptureFixture[str]) -> None:
    digest = channel.render(network_bundle(ips(0, 20)))
    twin = digest[:13] + ("0" if digest[13] != "0" else "1") + digest[14:]  # a copy under a near name
    root = channel.state.root
    shutil.copytree(root / layout.BUNDLES / digest, root / layout.BUNDLES / twin)

    code, _, err = channel.cli(*channel.approve(digest[:12], f"--state={root}"), capsys=capsys)

    assert code == 2 and len(err.splitlines()) == 1
    assert f"{digest[:12]} is ambiguous: 2 rendered bundles start with it (" in err
    assert sorted([digest[:14], twin[:14]]) == sorted(err.split("(")[1].split(")")[0].split(", "))


def test_history_lists_the_generations_and_counts_what_does_not_verify(
    channel: Channel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = json.loads((channel.dist / layout.channel_manifest_key("prod")).read_text())
    second = channel.render(network_bundle(ips(0, 11)))
    assert channel.publish() == 0
    history_dir = channel.dist / layout.history_prefix("prod")
    planted = dict(first, generation=99, digest="ee" * 32)  # a copy with another generation: its signature fails
    (history_dir / f"9999-01-01T00:00:00Z-{'ee' * 32}.json").write_text(json.dumps(planted))
    (history_dir / f"9999-01-01T00:00:01Z-{'ff' * 32}.json").write_bytes(b"[" * 100_000)
    capsys.readouterr()
    public = f"--public-key={channel.keys / 'bundle-signing.pub'}"

    code, out, _ = channel.cli("channel", "history", "prod", f"--dist={channel.dist}", public, capsys=capsys)

    assert code == 0
    rows = out.splitlines()
    assert rows[1].startswith("*     2 " + second[:16]) and rows[2].startswith("      1 " + first["digest"][:16])
    assert "2 history entr(ies) skipped: not signed by this key, or malformed" in out
    code, out, _ = channel.cli(
        "channel", "history", "prod", f"--dist={channel.dist}", public, "--json", "--limit=1", capsys=capsys
    )
    history = ChannelHistory.from_json(json.loads(out))
    assert [g.digest for g in history.generations] == [second] and history.generations[0].shipping
    assert history.generations[0].bytes > 0 and history.generations[0].objects >= 0


def test_rollback_takes_a_prefix_and_points_to_history_when_it_finds_none(
    channel: Channel, capsys: pytest.CaptureFixture[str]
) -> None:
    first = json.loads((channel.dist / layout.channel_manifest_key("prod")).read_text())["digest"]
    channel.render(network_bundle(ips(0, 11)))
    assert channel.publish() == 0
    capsys.readouterr()
    key = f"--key={channel.keys / 'bundle-signing.pem'}"
    dist = f"--dist={channel.dist}"

    code, out, _ = channel.cli("channel", "rollback", "prod", f"--to={first[:16]}", dist, key, capsys=capsys)
    assert code == 0 and out.startswith(f"rolled_back: channel prod now ships {first[:12]}")

    code, _, err = channel.cli("channel", "rollback", "prod", "--to=abcdefabcdef", dist, key, capsys=capsys)
    assert code == 2 and "has no history entry for abcdefabcdef" in err
    assert f"channel history prod --dist {channel.dist} --public-key PEM" in err


def test_diff_is_summarised_by_default_and_complete_with_full(
    channel: Channel, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = {f"tp-{i:03d}.yaml": tracing_policy(f"tp-part-{i:03d}", ips(100 + i * 10, 10)) for i in range(25)}
    channel.render({**network_bundle(ips(0, 10)), **files_of(parts)})
    args = ("channel", "diff", "prod", f"--dist={channel.dist}", f"--state={channel.state.root}")

    code, summary, _ = channel.cli(*args, capsys=capsys)
    assert code == 0
    assert summary.count("+ object TracingPolicy/") == 20 and "+ ... and 5 more object(s) added (--full" in summary
    assert "250 prefix(es) added, 0 removed (--full lists each with its provenance)" in summary
    assert len(summary.splitlines()) < 60

    code, full, _ = channel.cli(*args, "--full", capsys=capsys)
    assert code == 0 and full.count("+ object TracingPolicy/") == 25
    assert sum(1 for line in full.splitlines() if line.startswith("  + 45.")) == 250


def test_diff_shows_each_prefixs_own_provenance_when_the_bundle_gives_it(channel: Channel) -> None:
    """The seam for a per-prefix provenance index: what it says of a prefix is that prefix's
    provenance (``scope: prefix``); without one, the objects' (``scope: object``)."""
    channel.render(network_bundle(ips(0, 12)))
    dist = LocalStore(channel.dist)
    plain = diff_bundles(dist, channel.state, "prod", None)
    assert {e.scope for e in plain.prefixes.added} == {"object"}

    def index(bundle: Bundle) -> PrefixProvenance:
        return lambda prefix: {"sources": "blocklist-de"} if prefix.endswith(".10/32") else {"sources": "cdr"}

    own = diff_bundles(dist, channel.state, "prod", None, provenance=index)
    by_prefix = {e.prefix: e for e in own.prefixes.added}
    assert by_prefix["45.0.0.10/32"].provenance == {"sources": "blocklist-de"}
    assert by_prefix["45.0.0.11/32"].provenance == {"sources": "cdr"}
    assert {e.scope for e in own.prefixes.added} == {"prefix"}


def test_state_path_prints_the_folder_the_run_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {
        "QUALYS_USERNAME": "ops",
        "QUALYS_PASSWORD": "x",
        "QUALYS_GATEWAY_URL": "https://gateway.example.com",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    assert main(["state", "path"], env) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.parent == tmp_path / "cache/cdr-policy/state" and path.name.startswith("gateway.example.com-")
    assert main(["state", "path", "--state-dir=/srv/x"], env) == 0
    assert capsys.readouterr().out.strip() == "/srv/x"
    assert main(["--help"], env) == 0
    assert "'cdr-policy state path'" in capsys.readouterr().out


def test_rollback_help_points_to_channel_history(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["channel", "rollback", "--help"], {}) == 0
    assert "(see channel history)" in " ".join(capsys.readouterr().out.split())


def test_a_held_publish_without_an_approver_key_says_how_to_make_one(
    channel: Channel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed commands, run in order as printed, ship the held bundle: the approver's key pair
    is made first, then the grant, then the publish that checks it."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # where no approver key is yet
    digest = channel.render(network_bundle(ips(0, 200)))
    argv = ["publish", f"--to={channel.dist}", f"--key={channel.keys / 'bundle-signing.pem'}", "--channel=prod"]
    code, out, _ = channel.cli(*argv, f"--state-dir={channel.state.root}", capsys=capsys)
    assert code == 1 and out.startswith("held: ")
    printed = [line.split("#")[0].strip() for line in out.splitlines() if line.startswith("  cdr-policy ")]
    assert [c.split()[1:3] for c in printed] == [
        ["keygen", "--out"], ["channel", "diff"], ["channel", "approve"], ["publish", "--to"],
    ]  # fmt: skip
    for command in printed:
        code, out, _ = channel.cli(*shlex.split(command)[1:], capsys=capsys)
        assert code == 0, command
    assert out.startswith(f"published: channel prod, bundle {digest[:12]}")

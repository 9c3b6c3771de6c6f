"""Approvals through the command line (issue 20, points 6, 8 and 16): a held bundle ships only with a
grant signed by an approver's own key, for exactly the change it names, once; whoever can write the
state folder or holds the pipeline's key cannot approve; the change budget is per engine; deleting
the channel manifest never makes a publish a first publish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdr_policy import jsonio, layout
from cdr_policy.bundle.signing import generate_local_key
from cdr_policy.cli import main
from cdr_policy.storage import LocalStore
from cdr_policy.timeutil import utcnow
from tests.unit.bundle.factory import ccg, ccnp, files_of, ips, network_bundle, render, tracing_policy


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("signing", "approver", "stranger"):
        (folder / f"{name}.pub").write_text(generate_local_key(folder / f"{name}.pem"))
    return folder


class Channel:
    """One channel's state and distribution folders, and the commands a team runs on them."""

    def __init__(self, root: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.state_dir, self.dist_dir, self.keys, self.capsys = root / "state", root / "dist", keys, capsys
        self.state, self.dist = LocalStore(self.state_dir), LocalStore(self.dist_dir)

    def render(self, files: dict[str, bytes]) -> str:
        """A render as ``cdr-policy --once`` leaves it: the bundle and the channel's pointer."""
        digest = render(self.state, files, created=utcnow())
        pointer = {"digest": digest, "rendered_at": "2026-01-10T16:00:00Z"}
        self.state.put(layout.latest_render_key("prod"), jsonio.dumps(pointer))
        return digest

    def run(self, *argv: str) -> tuple[int, str]:
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return code, out + err

    def publish(self, *, approvers: str | None = "approver") -> tuple[int, str]:
        extra = ["--approver-key", str(self.keys / f"{approvers}.pub")] if approvers else []
        return self.run(
            "publish", "--to", str(self.dist_dir), "--key", str(self.keys / "signing.pem"), "--channel", "prod",
            "--state-dir", str(self.state_dir), *extra,
        )  # fmt: skip

    def approve(self, digest: str, *, key: str = "approver") -> tuple[int, str]:
        return self.run(
            "channel", "approve", "prod", digest, "--state", str(self.state_dir), "--dist", str(self.dist_dir),
            "--key", str(self.keys / f"{key}.pem"), "--reason", "reviewed the feed change",
        )  # fmt: skip

    def shipping(self) -> dict[str, Any]:
        value: dict[str, Any] = jsonio.loads(self.dist.get(layout.channel_manifest_key("prod")).data)
        return value


@pytest.fixture
def channel(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> Channel:
    return Channel(tmp_path, keys, capsys)


def far(tag: str, start: int) -> dict[str, bytes]:
    """A bundle of 100 addresses of its own: replacing another such bundle is 200% churn."""
    return network_bundle(ips(start, 100), tag=tag)


def test_a_grant_ships_exactly_the_change_it_names_once(channel: Channel) -> None:
    a = channel.render(far("a", 0))
    assert channel.publish()[0] == 0
    b = channel.render(far("b", 1000))
    code, out = channel.publish()
    assert (code, out.startswith(f"held: channel prod, bundle {b[:12]}")) == (1, True)

    code, out = channel.approve(b)
    assert code == 0 and f"approved: bundle {b[:12]} of channel prod over {a[:12]}" in out
    assert channel.publish()[0] == 0
    shipped = channel.shipping()
    assert (shipped["digest"], shipped["approval"]["previous_digest"]) == (b, a)
    assert channel.state.list(layout.APPROVALS) == []  # used once

    c = channel.render(far("c", 2000))
    assert channel.publish()[0] == 1
    channel.approve(c)
    assert channel.publish()[0] == 0 and channel.shipping()["digest"] == c

    # B again, over C: the grant of B over A is gone, and named A anyway
    channel.render(far("b", 1000))
    code, out = channel.publish()
    assert code == 1 and out.startswith("held:") and channel.shipping()["digest"] == c


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("written by hand", "malformed approval"),
        ("signed with the pipeline's key", "is signed with the pipeline's key: only an approver may approve"),
        ("signed by a stranger", "is not signed by an approver key"),
        ("no approver configured", "cannot be checked: no approver key is configured"),
    ],
)
def test_only_a_second_principal_can_approve(how: str, expected: str, channel: Channel) -> None:
    a = channel.render(far("a", 0))
    channel.publish()
    b = channel.render(far("b", 1000))
    if how == "written by hand":
        key = layout.approval_key("prod", b, a)
        channel.state.put(key, jsonio.dumps({"channel": "prod", "digest": b, "approved_at": "2026-01-10T16:00:00Z"}))
    else:
        channel.approve(
            b,
            key={"signed with the pipeline's key": "signing", "signed by a stranger": "stranger"}.get(how, "approver"),
        )

    code, out = channel.publish(approvers=None if how == "no approver configured" else "approver")

    assert code == 1 and out.startswith("held:") and expected in out
    assert channel.shipping()["digest"] == a


def test_each_engine_has_its_own_budget(channel: Channel) -> None:
    """Every Cilium prefix replaced while the Tetragon blocklist stays: held, naming the engine."""
    tetragon = tracing_policy("tp-blocklist", ips(0, 500))

    def bundle(start: int, tag: str) -> dict[str, bytes]:
        return files_of(
            {
                "g.yaml": ccg(f"ccg-{tag}", ips(start, 100)),
                "p.yaml": ccnp(f"ccnp-{tag}", [f"ccg-{tag}"]),
                "t.yaml": tetragon,
            }
        )

    channel.render(bundle(10_000, "a"))
    channel.publish()
    channel.render(bundle(20_000, "b"))

    code, out = channel.publish()

    assert code == 1 and "cilium: 200 changes (100 added, 100 removed) against 100 current entries" in out
    assert "tetragon:" not in out


def test_deleting_the_manifest_does_not_make_a_first_publish(channel: Channel) -> None:
    channel.render(far("a", 0))
    channel.publish()
    channel.dist.delete(layout.channel_manifest_key("prod"))
    b = channel.render(far("b", 1000))

    code, out = channel.publish()

    assert code == 1 and out.startswith(f"held: channel prod, bundle {b[:12]}")
    assert "200.0%" in out

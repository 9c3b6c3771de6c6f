"""The docs' walkthroughs, run as a new user runs them: every ``<!-- walkthrough:NAME -->`` block of
the README and of docs/*.md has a test here that runs its commands as written (a block without one,
or a test whose block is gone, fails). The held-bundle walkthrough then runs the commands the CLI
prints when the change budget holds the bundle, copied as they are (issue 21: publish -> held ->
approve -> publish by copying what the CLI prints). And nothing the walkthroughs create can be
committed."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from cdr_policy import layout
from cdr_policy.cli import main
from fakes.feeds import DEMO_FEEDS_DIR, FeedServer, demo_feeds_yaml

REPO = Path(__file__).resolve().parents[2]
PROGRAM = ".venv/bin/cdr-policy"
BLOCK = re.compile(r"<!-- walkthrough:([\w-]+) -->\n```bash\n(.*?)```\n<!-- /walkthrough:\1 -->", re.S)
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TESTED = {"first-run", "held"}  # the walkthroughs the tests below run


def walkthroughs() -> dict[str, list[str]]:
    """Each walkthrough block of the docs by name: its command lines, continuations joined."""
    found: dict[str, list[str]] = {}
    for page in PAGES:
        for name, block in BLOCK.findall(page.read_text(encoding="utf-8")):
            assert name not in found, f"two walkthroughs named {name}"
            found[name] = [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return found


def test_every_walkthrough_of_the_docs_is_run_here() -> None:
    assert set(walkthroughs()) == TESTED


def run(command: str, env: dict[str, str], capsys: pytest.CaptureFixture[str], program: str) -> tuple[int, str]:
    words = shlex.split(command)
    assert words[0] == program, command
    code = main(words[1:], env)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out


def test_the_held_bundle_walkthrough_works_by_copying_the_printed_commands(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", env["HOME"])  # the agent keeps its state under ~/.cache by default
    commands = walkthroughs()["held"]
    assert [c.split()[1] for c in commands] == ["keygen", "keygen", "--once", "publish", "agent", "--once", "publish"]
    with FeedServer(root=DEMO_FEEDS_DIR) as feeds:
        Path("feeds.yaml").write_text(demo_feeds_yaml(feeds.url("/")))
        outputs = []
        for command in commands[:-1]:
            code, out = run(command, env, capsys, PROGRAM)
            assert code == 0, (command, out)
            outputs.append(out)
        assert outputs[4].startswith("applied: bundle ")

        code, held = run(commands[-1], env, capsys, PROGRAM)
    assert code == 1 and held.startswith("held: channel local, bundle "), held
    printed = [line.strip() for line in held.splitlines() if line.startswith("  cdr-policy ")]
    assert [c.split()[1:3] for c in printed] == [["channel", "diff"], ["channel", "approve"], ["publish", "--to"]]
    found = re.search(r"bundle ([0-9a-f]{12})", held)
    assert found is not None, held
    digest = found.group(1)
    approve = shlex.split(printed[1])
    state = Path(approve[approve.index("--state") + 1])
    assert state.is_dir() and state.is_absolute(), "the real state folder"
    assert approve[approve.index("--key") + 1] == "approver/bundle-signing.pem", "the approver's own key"
    assert layout.is_digest(approve[approve.index("--replacing") + 1]), "the exact bundle it replaces"

    code, diff = run(printed[0], env, capsys, "cdr-policy")
    assert code == 0 and "prefix(es) added" in diff and "--full lists each" in diff
    code, approved = run(printed[1], env, capsys, "cdr-policy")
    assert code == 0 and approved.startswith(f"approved: bundle {digest} of channel local over ")
    code, published = run(printed[2], env, capsys, "cdr-policy")
    assert code == 0 and published.startswith(f"published: channel local, bundle {digest}"), published

    code, applied = run(commands[4], env, capsys, PROGRAM)
    assert code == 0 and applied.startswith(f"applied: bundle {digest}"), applied
    code, history = run(
        f"{PROGRAM} channel history local --dist ./channel --public-key keys/bundle-signing.pub", env, capsys, PROGRAM
    )
    assert code == 0 and "approved by local:" in history and history.count("\n") >= 3


def test_the_readmes_first_run_works_as_written(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's first run against the fake gateway (``make fake-gateway``'s exports in ``env``):
    audit-mode policies, checked; signed into a channel folder; the agent applies them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", env["HOME"])
    commands = walkthroughs()["first-run"]
    assert [c.split()[1] for c in commands] == ["--once", "keygen", "publish", "agent"]
    outputs = []
    for command in commands:
        code, out = run(command, env, capsys, PROGRAM)
        assert code == 0, (command, out)
        outputs.append(out)
    policies = sorted(Path("policies").glob("*.yaml"))
    assert policies and all("Sigkill" not in p.read_text() for p in policies), "audit first"
    assert (Path("policies") / layout.REPORT_FILE).is_file()
    assert outputs[2].startswith("published: channel local, bundle "), outputs[2]
    assert outputs[3].startswith("applied: bundle "), outputs[3]
    assert sorted(p.name for p in Path("applied").rglob("*.yaml")), "the agent wrote the objects"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_nothing_the_walkthrough_creates_can_be_committed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    assert main(["keygen", f"--out={tmp_path / 'keys'}"], {}) == 0
    assert main(["keygen", f"--out={tmp_path / 'approver'}"], {}) == 0
    for folder in ("channel", "applied", "policies"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.yaml").write_text("x: 1\n")
    (tmp_path / "feeds.yaml").write_text("feeds: []\n")
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path, capture_output=True, text=True
    )
    assert status.stdout.splitlines() == ["?? .gitignore"], status.stdout

    # Without the repository's .gitignore, keygen's own keeps the private key out; the public key may go in.
    (tmp_path / ".gitignore").unlink()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "keys"], cwd=tmp_path, capture_output=True, text=True
    )
    assert sorted(status.stdout.splitlines()) == ["?? keys/.gitignore", "?? keys/bundle-signing.pub"]
    assert (
        "bundle-signing.pem"
        not in subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path, capture_output=True, text=True
        ).stdout
    )
    capsys.readouterr()

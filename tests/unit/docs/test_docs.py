"""The docs cannot drift from the code: the README stays a short guide with a table of contents, every
relative link and anchor of the README and docs/ resolves, every ``cdr-policy`` command they show uses
only flags its sub-command has, and the README's benchmark figures are rows of docs/benchmarks.md.
(tests/integration/test_walkthrough.py runs the walkthroughs themselves.)"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from cdr_policy.cli import main

REPO = Path(__file__).resolve().parents[3]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?cdr-policy(?: |$)")


def anchor(title: str) -> str:
    """GitHub's anchor of a Markdown header."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {anchor(title) for title in re.findall(r"^#{1,6} (.*)$", FENCE.sub("", text), re.M)}


def links(text: str) -> list[str]:
    return [target for target in LINK.findall(FENCE.sub("", text)) if not re.match(r"[a-z]+:", target)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked.read_text(encoding="utf-8")):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A part\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n[ok](other.md#a-part) [self](#page) [gone](missing.md) [bad](other.md#nope) [web](https://x)\n"
        "```\n[not a link](nowhere.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md", "other.md#nope"]


def test_the_readme_is_a_short_guide_with_contents() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"\(#([\w-]+)\)", contents)
    sections = [anchor(t) for t in re.findall(r"^## (.*)$", FENCE.sub("", text), re.M) if t != "Contents"]
    assert listed == sections


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert {f"docs/{p.name}" for p in PAGES[1:]} <= {target.partition("#")[0] for target in links(readme)}


def test_the_readmes_benchmark_rows_are_those_of_the_benchmarks_page() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    figures = readme.split("## Benchmarks at a glance", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in figures.splitlines() if line.startswith(("| (", "- ours"))]
    page = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8").splitlines()
    assert rows and [row for row in rows if row not in page] == []


def shown_commands() -> list[tuple[str, str]]:
    """Each ``cdr-policy`` command the README and docs show (bash blocks and inline code), by page."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        lines = [line for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
        lines += re.findall(r"`([^`\n]+)`", FENCE.sub("", text))
        found += [(page.name, line.split(" #", 1)[0].strip()) for line in lines if COMMAND.match(line.strip())]
    return found


def help_of(words: list[str]) -> str | None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*words, "--help"], {})
    return out.getvalue() or None


def unknown_flags(command: str) -> list[str]:
    """The flags of ``command`` that the help of its deepest sub-command does not list."""
    words = shlex.split(re.sub(r"[][<>|]", " ", command.replace("...", "x")))
    words = words[next(i for i, w in enumerate(words) if w.endswith("cdr-policy")) + 1 :]
    path = [w for w in words[:2] if re.fullmatch(r"[a-z][a-z-]*", w)]
    text = None
    while text is None:
        text = help_of(path)
        path = path[:-1]
    flags = {w.split("=", 1)[0] for w in words if w.startswith("--")}
    return sorted(flag for flag in flags if not re.search(rf"{re.escape(flag)}\b", text))


def test_every_shown_command_uses_flags_its_sub_command_has() -> None:
    commands = shown_commands()
    assert len(commands) > 20
    assert [(page, c) for page, c in commands if unknown_flags(c)] == []


def test_a_flag_that_does_not_exist_is_found() -> None:
    assert unknown_flags("cdr-policy --once --hours=24 --no-such-flag") == ["--no-such-flag"]
    assert unknown_flags(".venv/bin/cdr-policy channel history local --dist ./c --limit 3 --newest") == ["--newest"]

"""docs/ARCHITECTURE.md shows the bucket layout exactly as ``cdr_policy.layout`` defines it."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from cdr_policy import layout
from tests.conftest import REPO


@pytest.mark.parametrize(("marker", "families"), [("state", layout.STATE_KEYS), ("dist", layout.DIST_KEYS)])
def test_architecture_page_shows_the_layout(marker: str, families: tuple[layout.KeyFamily, ...]) -> None:
    page = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- layout:{marker} -->\n(.*?)\n<!-- /layout:{marker} -->", page, re.S)
    assert match, f"docs/ARCHITECTURE.md has no layout:{marker} block"
    assert match.group(1) == layout.markdown_table(families), "regenerate the table from cdr_policy.layout"


def test_every_key_function_lands_in_a_documented_family() -> None:
    keys = [
        layout.raw_cdr_page_key(datetime(2026, 1, 27, 8, 54, 41, 396000), 1),
        layout.feed_set_key("tor-exit"),
        layout.feed_state_key("tor-exit"),
        layout.feed_last_good_key("tor-exit"),
        layout.reputation_set_key("abuseipdb"),
        layout.approval_key("prod", "ab" * 32, "cd" * 32),
        layout.bundle_manifest_key("ab" * 32),
        layout.latest_render_key("prod"),
        layout.last_good_set_key(layout.feed_set_key("tor-exit")),
        layout.LAST_GOOD_INDEX,
    ]
    prefixes = {p for _, ps in layout.WRITE_PREFIXES.values() for p in ps} | {layout.CONFIG, layout.APPROVALS}
    assert all(any(k.startswith(p) for p in prefixes) for k in keys)
    assert keys[0] == "raw/cdr/2026/01/27/20260127T085441.396Z-00001.json.gz"


def test_the_demo_feeds_readme_names_files_that_exist() -> None:
    """Issue 21 point 11: demo/feeds/README.md named ``demo/feed_server.py``, which does not exist."""
    folder = REPO / "demo" / "feeds"
    named = re.findall(r"`([\w./-]+\.(?:py|txt))`", (folder / "README.md").read_text(encoding="utf-8"))
    assert "fakes/feeds.py" in named
    for name in named:
        assert (REPO / name).is_file() or (folder / name).is_file(), name

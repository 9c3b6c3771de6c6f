"""The loopback feed server used by the demo and the tests, and the demo feed files it serves."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cdr_policy.feeds.aggregate import ingest
from cdr_policy.feeds.config import BUILTIN_FEEDS, load_feeds
from cdr_policy.feeds.gate import check
from cdr_policy.feeds.parse import parse_feed
from cdr_policy.guards import NeverBlock
from fakes.feeds import DEMO_FEED_FILES, DEMO_FEEDS_DIR, HTML_PAGE, FeedServer, demo_feeds_yaml


def test_serves_files_and_configured_behaviour(www: Path) -> None:
    (www / "a.txt").write_text("1.2.3.4\n")
    (www.parent / "secret.txt").write_text("nope")
    with FeedServer(root=www) as srv, httpx.Client() as c:
        assert c.get(srv.url("/a.txt")).text == "1.2.3.4\n"
        assert c.get(srv.url("/missing.txt")).status_code == 404
        assert c.get(srv.url("/../secret.txt")).status_code == 404
        assert c.get(srv.url("/%2e%2e/secret.txt")).status_code == 404
        srv.route("/a.txt", html=True)
        page = c.get(srv.url("/a.txt"))
        assert (page.status_code, page.content, page.headers["content-type"]) == (
            200,
            HTML_PAGE,
            "text/html; charset=utf-8",
        )
        srv.route("/a.txt", empty=True)
        assert c.get(srv.url("/a.txt")).content == b""
        srv.route("/a.txt", truncate=3)
        assert c.get(srv.url("/a.txt")).content == b"1.2"
        srv.update("/a.txt", truncate=None, body=b"5.6.7.8\n", status=503)
        assert (c.get(srv.url("/a.txt")).status_code, c.get(srv.url("/a.txt")).content) == (503, b"5.6.7.8\n")
        srv.reset("/a.txt")
        assert c.get(srv.url("/a.txt")).text == "1.2.3.4\n"
        srv.route("/b.txt", body=b"x", headers={"X-Test": "1"})
        assert c.get(srv.url("b.txt")).headers["x-test"] == "1"
        assert [r.path for r in srv.requests_for("/a.txt")][:1] == ["/a.txt"]


def test_demo_feed_files_are_small_real_format_lists_with_poisoned_entries() -> None:
    guard = NeverBlock()
    builtin = {f.name: f for f in BUILTIN_FEEDS}
    poisoned = 0
    for name, (file, category, fmt) in DEMO_FEED_FILES.items():
        assert builtin[name].category == category
        body = (DEMO_FEEDS_DIR / file).read_bytes()
        parsed = parse_feed(body, fmt)
        assert 15 <= parsed.entries <= 80, name
        verdict = check(builtin[name], parsed, content_type="text/plain", last_good_count=None)
        assert verdict.status == "ok", (name, verdict)
        refused = ingest(parsed, guard, name).rejected
        assert refused, f"{name} has no poisoned entry"
        poisoned += len(refused)
    assert poisoned >= 8
    assert (DEMO_FEEDS_DIR / "ci-badguys.txt").read_bytes().count(b"\r\n") > 10
    assert not (DEMO_FEEDS_DIR / "blocklist_de_all.txt").read_bytes().endswith(b"\n")


def test_demo_feeds_yaml_loads_into_the_builtin_names() -> None:
    feeds = load_feeds(demo_feeds_yaml("http://127.0.0.1:8080/"))
    assert [f.name for f in feeds] == [f.name for f in BUILTIN_FEEDS]
    assert feeds[0].url == "http://127.0.0.1:8080/feodo_ipblocklist.txt" and feeds[0].can_be_empty


@pytest.mark.parametrize("argv", [["--help"]])
def test_command_line_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from fakes.feeds import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0 and "--root" in capsys.readouterr().out

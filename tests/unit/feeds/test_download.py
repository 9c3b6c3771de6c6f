"""Downloads over real loopback HTTP (``fakes.feeds``): conditional GET, gzip, redirects,
caps, timeouts, file:// URLs and concurrency."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import httpx
import pytest

from cdr_policy import __version__
from cdr_policy.feeds.config import FeedConfig
from cdr_policy.feeds.download import (
    Validators,
    _check_redirects,
    fetch,
    fetch_all,
    make_client,
    redact_url,
    user_agent,
)
from fakes.feeds import FIXED_LAST_MODIFIED, FeedServer
from tests.unit.feeds.conftest import feed_for

BODY = b"198.51.100.1\n198.51.100.2\n2001:db8::7\n"


@pytest.fixture
def listed(www: Path) -> Path:
    (www / "list.txt").write_bytes(BODY)
    return www / "list.txt"


def test_plain_download_with_validators_and_an_honest_user_agent(
    server: FeedServer, http: httpx.Client, listed: Path
) -> None:
    feed = feed_for(server, "/list.txt", "f")
    r = fetch(http, feed, Validators())
    assert (r.outcome, r.body, r.status_code, r.error) == ("ok", BODY, 200, None)
    assert (r.content_type or "").startswith("text/plain") and r.final_url == feed.url
    assert r.etag and r.last_modified == FIXED_LAST_MODIFIED
    (req,) = server.requests_for("/list.txt")
    assert req.headers["User-Agent"] == user_agent()
    assert "If-None-Match" not in req.headers and "If-Modified-Since" not in req.headers


def test_user_agent_names_the_product_and_version() -> None:
    assert user_agent().startswith(f"cdr-policy/{__version__} (")
    assert "python-httpx" not in user_agent()


def test_conditional_get_gets_304_without_a_body(server: FeedServer, http: httpx.Client, listed: Path) -> None:
    feed = feed_for(server, "/list.txt", "f")
    first = fetch(http, feed, Validators())
    again = fetch(http, feed, Validators(url=feed.url, etag=first.etag, last_modified=first.last_modified))
    assert (again.outcome, again.body, again.status_code) == ("not_modified", None, 304)
    req = server.requests_for("/list.txt")[-1]
    assert req.headers["If-None-Match"] == first.etag
    assert req.headers["If-Modified-Since"] == FIXED_LAST_MODIFIED


def test_if_modified_since_alone_and_changed_content(server: FeedServer, http: httpx.Client, listed: Path) -> None:
    server.route("/list.txt", etag=False)
    feed = feed_for(server, "/list.txt", "f")
    assert fetch(http, feed, Validators(url=feed.url, last_modified=FIXED_LAST_MODIFIED)).outcome == "not_modified"
    server.route("/list.txt")
    stale_tag = Validators(url=feed.url, etag='"something-else"')
    assert fetch(http, feed, stale_tag).outcome == "ok"


def test_validators_of_another_url_are_not_sent(server: FeedServer, http: httpx.Client, listed: Path) -> None:
    feed = feed_for(server, "/list.txt", "f")
    r = fetch(http, feed, Validators(url="https://old.example.org/list.txt", etag='"x"', last_modified="y"))
    assert r.outcome == "ok"
    assert "If-None-Match" not in server.requests_for("/list.txt")[0].headers


def test_gzip_content_encoding_is_decoded(server: FeedServer, http: httpx.Client, listed: Path) -> None:
    server.route("/list.txt", gzip=True)
    r = fetch(http, feed_for(server, "/list.txt", "f"), Validators())
    assert r.body == BODY
    assert "gzip" in server.requests_for("/list.txt")[0].headers["Accept-Encoding"]


def test_gzip_body_is_decompressed_under_the_cap(server: FeedServer, http: httpx.Client) -> None:
    server.route("/list.txt.gz", body=gzip.compress(BODY), content_type="application/gzip")
    assert fetch(http, feed_for(server, "/list.txt.gz", "f"), Validators()).body == BODY
    bomb = gzip.compress(b"1.2.3.4\n" * 100_000)
    server.route("/bomb.gz", body=bomb, content_type="application/gzip")
    r = fetch(http, feed_for(server, "/bomb.gz", "f"), Validators(), max_bytes=len(bomb) * 4)
    assert r.outcome == "error" and "expands beyond" in (r.error or "")
    server.route("/cut.gz", body=gzip.compress(BODY)[:-12], content_type="application/gzip")
    assert "truncated" in (fetch(http, feed_for(server, "/cut.gz", "f"), Validators()).error or "")


def test_redirects_are_followed_a_limited_number_of_times(server: FeedServer, http: httpx.Client, listed: Path) -> None:
    server.route("/old.txt", redirect="/list.txt")
    r = fetch(http, feed_for(server, "/old.txt", "f"), Validators())
    assert r.outcome == "ok" and r.body == BODY and (r.final_url or "").endswith("/list.txt")
    for hop in range(5):
        server.route(f"/hop{hop}", redirect=f"/hop{hop + 1}")
    r = fetch(http, feed_for(server, "/hop0", "f"), Validators())
    assert r.outcome == "error" and "more than 3 redirects" in (r.error or "")


def test_redirect_to_the_site_root_is_a_failure(server: FeedServer, http: httpx.Client) -> None:
    server.route("/feed.txt", redirect="/")
    server.route("/", body=b"<html>home</html>", content_type="text/html")
    r = fetch(http, feed_for(server, "/feed.txt", "f"), Validators())
    assert r.outcome == "error" and "site root" in (r.error or "")


def test_https_to_http_downgrade_is_refused() -> None:
    start = httpx.Request("GET", "https://lists.example.org/all.txt")
    final = httpx.Response(200, request=httpx.Request("GET", "http://lists.example.org/all.txt"))
    final.history = [httpx.Response(301, request=start)]
    with pytest.raises(Exception, match="downgrade refused"):
        _check_redirects("https://lists.example.org/all.txt", final)


def test_size_cap(server: FeedServer, http: httpx.Client, listed: Path) -> None:
    r = fetch(http, feed_for(server, "/list.txt", "f"), Validators(), max_bytes=10)
    assert r.outcome == "error" and "cap" in (r.error or "")


@pytest.mark.parametrize(("status", "text"), [(404, "HTTP 404"), (503, "HTTP 503")])
def test_http_errors(server: FeedServer, http: httpx.Client, status: int, text: str) -> None:
    server.route("/x.txt", body=b"nope", status=status)
    r = fetch(http, feed_for(server, "/x.txt", "f"), Validators())
    assert r.outcome == "error" and text in (r.error or "") and r.status_code == status


def test_short_read_is_a_failure(server: FeedServer, http: httpx.Client, listed: Path) -> None:
    server.route("/list.txt", short_read=True)
    r = fetch(http, feed_for(server, "/list.txt", "f"), Validators())
    assert r.outcome == "error" and "download failed" in (r.error or "")


def test_read_timeout(server: FeedServer, listed: Path) -> None:
    server.route("/list.txt", delay=1.0)
    with make_client(connect_timeout=1.0, read_timeout=0.2) as client:
        r = fetch(client, feed_for(server, "/list.txt", "f"), Validators())
    assert r.outcome == "error" and "timed out" in (r.error or "")


def test_file_urls(tmp_path: Path, http: httpx.Client) -> None:
    path = tmp_path / "my list.txt"
    path.write_bytes(BODY)
    feed = FeedConfig(name="f", url=path.as_uri(), category="c2")
    r = fetch(http, feed, Validators())
    assert (r.outcome, r.body) == ("ok", BODY)
    (tmp_path / "l.gz").write_bytes(gzip.compress(BODY))
    assert fetch(http, FeedConfig(name="g", url=(tmp_path / "l.gz").as_uri(), category="c2"), Validators()).body == BODY
    missing = fetch(http, FeedConfig(name="m", url=(tmp_path / "none").as_uri(), category="c2"), Validators())
    assert missing.outcome == "error" and "cannot read" in (missing.error or "")
    assert "cap" in (fetch(http, feed, Validators(), max_bytes=5).error or "")


def test_all_feeds_are_fetched_at_once(server: FeedServer, http: httpx.Client, listed: Path) -> None:
    feeds = []
    for i in range(4):
        server.route(f"/slow{i}.txt", body=BODY, delay=0.5)
        feeds.append(feed_for(server, f"/slow{i}.txt", f"slow-{i}"))
    started = time.monotonic()
    results = fetch_all(http, feeds, {})
    assert time.monotonic() - started < 1.5  # four half-second downloads, concurrently
    assert sorted(results) == [f"slow-{i}" for i in range(4)]
    assert all(r.body == BODY for r in results.values())
    assert fetch_all(http, [], {}) == {}


def test_urls_in_reports_carry_no_credentials_or_tokens(server: FeedServer, http: httpx.Client) -> None:
    assert (
        redact_url("https://user:pw@lists.example.org:8443/all.txt?key=SECRET#x")
        == "https://lists.example.org:8443/all.txt"
    )
    server.route("/private.txt", status=403, body=b"no")
    r = fetch(http, FeedConfig(name="p", url=server.url("/private.txt") + "?token=SECRET", category="c2"), Validators())
    assert "SECRET" not in (r.error or "") and "SECRET" not in (r.final_url or "")

"""Feed configuration: the built-in list, the YAML that replaces or extends it, and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdr_policy.errors import ConfigError
from cdr_policy.feeds.config import BUILTIN_FEEDS, FeedConfig, load_feeds


def test_builtin_feeds_are_the_originals() -> None:
    assert [(f.name, f.url, f.category) for f in BUILTIN_FEEDS] == [
        ("feodo-c2", "https://feodotracker.abuse.ch/downloads/ipblocklist.txt", "c2"),
        ("tor-exit", "https://check.torproject.org/torbulkexitlist", "tor"),
        ("emerging-threats", "https://rules.emergingthreats.net/blockrules/compromised-ips.txt", "compromised"),
        ("blocklist-de", "https://lists.blocklist.de/lists/all.txt", "attacker"),
        ("cinsscore", "https://cinsscore.com/list/ci-badguys.txt", "scanner"),
    ]
    feodo = BUILTIN_FEEDS[0]
    assert feodo.can_be_empty and feodo.format == "abusech"
    assert not any(f.can_be_empty for f in BUILTIN_FEEDS[1:])
    assert all(f.enabled and 1 <= f.ttl_hours <= 72 for f in BUILTIN_FEEDS)


def test_replace_mode_is_the_default() -> None:
    feeds = load_feeds(
        """
feeds:
  - name: local-list
    url: file:///srv/feeds/list.txt
    category: c2
  - name: mirror
    url: http://127.0.0.1:8080/all.txt
    category: attacker
    format: plain
    ttl_hours: 6
    enabled: false
    can_be_empty: true
""",
        allow_file=True,
    )
    assert [f.name for f in feeds] == ["local-list", "mirror"]
    mirror = feeds[1]
    assert (mirror.format, mirror.ttl_hours, mirror.enabled, mirror.can_be_empty) == ("plain", 6, False, True)
    assert feeds[0].format == "auto" and feeds[0].ttl_hours == 48


def test_extend_mode_overrides_builtins_by_name_and_appends_the_rest() -> None:
    feeds = load_feeds(
        """
mode: extend
feeds:
  - {name: tor-exit, enabled: false}
  - {name: spamhaus-drop, url: "https://www.spamhaus.org/drop/drop.txt", category: attacker, format: plain}
  - {name: cinsscore, ttl_hours: 12}
"""
    )
    by_name = {f.name: f for f in feeds}
    assert [f.name for f in feeds] == [f.name for f in BUILTIN_FEEDS] + ["spamhaus-drop"]
    assert not by_name["tor-exit"].enabled and by_name["tor-exit"].url == BUILTIN_FEEDS[1].url
    assert by_name["cinsscore"].ttl_hours == 12 and by_name["cinsscore"].category == "scanner"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("feeds: [", "not valid YAML"),
        ("- a\n- b\n", "mapping with a 'feeds:' list"),
        ("feeds: []\n", "non-empty list"),
        ("feedz: []\n", "unknown top-level key(s) feedz"),
        ("mode: merge\nfeeds: [{name: a, url: 'https://e.org/a', category: c2}]\n", "mode 'merge'"),
        ("feeds: [x]\n", "feeds[0]: expected a mapping"),
        ("feeds: [{name: a, url: 'https://e.org/a'}]\n", "feeds[0] (a): missing required key(s) category"),
        ("feeds: [{name: a, url: 'https://e.org/a', category: c2, urll: x}]\n", "feeds[0] (a): unknown key(s) urll"),
        ("feeds: [{name: a, url: 'https://e.org/a', category: botnet}]\n", "category 'botnet' is not one of"),
        ("feeds: [{name: a, url: 'https://e.org/a', category: c2, format: json}]\n", "format 'json'"),
        ("feeds: [{name: a, url: 'https://e.org/a', category: c2, ttl_hours: 0}]\n", "ttl_hours must be"),
        ("feeds: [{name: a, url: 'https://e.org/a', category: c2, ttl_hours: '6'}]\n", "ttl_hours must be"),
        ("feeds: [{name: a, url: 'https://e.org/a', category: c2, enabled: 'yes'}]\n", "enabled must be true or false"),
        ("feeds: [{name: A_B, url: 'https://e.org/a', category: c2}]\n", "name must be"),
        ("feeds: [{name: cdr, url: 'https://e.org/a', category: c2}]\n", "reserved"),
        ("feeds: [{name: a, url: 'ftp://e.org/a', category: c2}]\n", "must be https://"),
        ("feeds: [{name: a, url: 'https://', category: c2}]\n", "must be https://"),
        ("feeds: [{name: a, url: 'file://host/a', category: c2}]\n", "file:///absolute/path"),
        ("feeds: [{name: a, url: 'file:///etc/passwd', category: c2}]\n", "only from the command line"),
        ("feeds: [{name: a, url: 'http://lists.example.org/a', category: c2}]\n", "allow_http"),
        (
            "feeds: [{name: a, url: 'https://e.org/a', category: c2},"
            " {name: a, url: 'https://e.org/b', category: c2}]\n",
            "appears more than once",
        ),
    ],
)
def test_bad_configuration_is_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_feeds(text, origin="feeds.yaml")


def test_file_urls_only_from_the_command_line() -> None:
    text = "feeds: [{name: env, url: 'file:///var/task/.env', category: c2}]\n"
    with pytest.raises(
        ConfigError, match=r"s3://state/config/feeds.yaml: feeds\[0\] \(env\): file:// URLs are accepted"
    ):
        load_feeds(text, origin="s3://state/config/feeds.yaml")
    assert load_feeds(text, origin="--feeds", allow_file=True)[0].url == "file:///var/task/.env"


def test_the_bucket_configuration_refuses_file_urls(tmp_path: Path) -> None:
    from cdr_policy.documents import feeds_from_store
    from cdr_policy.storage import LocalStore

    store = LocalStore(tmp_path)
    store.put("config/feeds.yaml", b"feeds: [{name: env, url: 'file:///var/task/.env', category: c2}]\n")
    with pytest.raises(ConfigError, match="never from a bucket's configuration"):
        feeds_from_store(store)


def test_the_origin_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^my-feeds.yaml: feeds\[1\] \(b\): unknown key\(s\) colour"):
        load_feeds(
            "feeds:\n  - {name: a, url: 'https://e.org/a', category: c2}\n"
            "  - {name: b, url: 'https://e.org/b', category: c2, colour: red}\n",
            origin="my-feeds.yaml",
        )


def test_plain_http_needs_an_explicit_opt_in_except_on_loopback() -> None:
    FeedConfig(name="a", url="http://localhost:8000/a", category="c2")
    FeedConfig(name="a", url="http://[::1]:8000/a", category="c2")
    FeedConfig(name="a", url="http://cinsscore.com/list/ci-badguys.txt", category="scanner", allow_http=True)
    with pytest.raises(ConfigError, match="tampered"):
        FeedConfig(name="a", url="http://cinsscore.com/list/ci-badguys.txt", category="scanner")


def test_to_dict_round_trips() -> None:
    for feed in BUILTIN_FEEDS:
        assert FeedConfig.from_dict(feed.to_dict()) == feed

"""The plausibility gate, check by check (the end-to-end keep-last-good behaviour is in test_sync)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdr_policy.feeds.config import FeedConfig
from cdr_policy.feeds.gate import GateThresholds, Verdict, check
from cdr_policy.feeds.parse import parse_feed

PLAIN = FeedConfig(name="plain-feed", url="https://example.org/list.txt", category="attacker", format="plain")
FEODO = FeedConfig(name="feodo", url="https://example.org/f.txt", category="c2", format="abusech", can_be_empty=True)


def _ips(n: int, start: int = 1) -> bytes:
    return "".join(f"100.{(i >> 8) & 255}.{i & 255}.{start}\n" for i in range(n)).encode()


def _verdict(
    feed: FeedConfig, body: bytes, content_type: str | None = "text/plain", last: int | None = None
) -> Verdict:
    return check(feed, parse_feed(body, feed.format), content_type=content_type, last_good_count=last)


def test_a_good_list_passes() -> None:
    v = _verdict(PLAIN, _ips(50), last=40)
    assert (v.status, v.check, v.reason, v.passed) == ("ok", None, None, True)


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/xhtml+xml"])
def test_html_content_type_with_a_list_body_is_stale(ctype: str) -> None:
    v = _verdict(PLAIN, _ips(5), content_type=ctype)
    assert (v.status, v.check) == ("stale", "html") and "HTML" in (v.reason or "")


def test_html_body_served_as_text_plain_is_stale() -> None:
    v = _verdict(PLAIN, b"<!doctype html><html><body>moved</body></html>")
    assert (v.status, v.check) == ("stale", "html")


def test_other_content_types_are_refused_but_missing_and_octet_stream_are_fine() -> None:
    assert _verdict(PLAIN, _ips(5), content_type="application/json").check == "content_type"
    assert _verdict(PLAIN, _ips(5), content_type=None).passed
    assert _verdict(PLAIN, _ips(5), content_type="application/octet-stream").passed


def test_empty_body_is_stale_unless_the_feed_can_be_empty() -> None:
    assert (_verdict(PLAIN, b"").status, _verdict(PLAIN, b"").check) == ("stale", "empty")
    assert _verdict(PLAIN, b"\n\n  \n").check == "empty"
    v = _verdict(FEODO, b"")
    assert (v.status, v.passed) == ("empty", True) and "allowed" in (v.reason or "")


def test_feodo_with_zero_entries_and_its_trailer_is_legitimately_empty() -> None:
    body = b"#####\n# abuse.ch Feodo Tracker Botnet C2 IP Blocklist #\n#\n# DstIP\n# END 0 entries"
    assert _verdict(FEODO, body).status == "empty"
    plain_zero = FeedConfig(name="z", url="https://e.org/x", category="c2", format="abusech")
    assert _verdict(plain_zero, body).status == "stale"


def test_truncated_abusech_list(shared_feeds_dir: Path) -> None:
    banner = b"# abuse.ch Feodo Tracker\n# DstIP\n"
    assert _verdict(FEODO, banner + _ips(30)).check == "truncated"  # no trailer
    v = _verdict(FEODO, banner + _ips(30) + b"# END 31 entries")
    assert v.check == "truncated" and "says 31" in (v.reason or "")
    v = _verdict(FEODO, banner + _ips(29) + b"# END 30 entries\n9.9.9.10\n")
    assert v.check == "truncated" and "follows" in (v.reason or "")
    assert _verdict(FEODO, banner + _ips(30) + b"# END 30 entries").passed
    csv = (shared_feeds_dir / "feodo_ipblocklist.csv").read_bytes()
    csv_feed = FeedConfig(name="feodo-csv", url="https://e.org/x.csv", category="c2", format="feodo-csv")
    assert _verdict(csv_feed, csv, content_type="text/csv").passed
    assert _verdict(csv_feed, csv.rsplit(b"\n", 1)[0], content_type="text/csv").check == "truncated"


def test_plain_list_with_a_trailer_is_checked_too() -> None:
    assert _verdict(PLAIN, _ips(10) + b"# END 12 entries\n").check == "truncated"


def test_format_change_is_stale() -> None:
    feed = FeedConfig(name="f", url="https://e.org/x.csv", category="c2", format="feodo-csv")
    v = _verdict(feed, b"# Firstseen,DstIP,DstPort,LastOnline,Malware\n2019-01-01,1.2.3.4,443,2019-01-02,Emotet\n")
    assert (v.check, v.status) == ("format", "stale")


def test_error_ratio_over_the_threshold() -> None:
    junk = b"".join(b"010.0.0.%d\n" % i for i in range(1, 7))
    v = _verdict(PLAIN, _ips(50) + junk)  # 6 of 56 = 10.7 %
    assert v.check == "error_ratio" and "6 of 56" in (v.reason or "")
    assert _verdict(PLAIN, _ips(50) + junk[:20]).passed  # 2 of 52
    loose = check(
        PLAIN,
        parse_feed(_ips(50) + junk),
        content_type="text/plain",
        last_good_count=None,
        thresholds=GateThresholds(max_error_ratio=0.2),
    )
    assert loose.passed


def test_collapse_and_explosion_against_the_last_good_copy() -> None:
    v = _verdict(PLAIN, _ips(40), last=100)
    assert v.check == "collapse" and "from 100 to 40" in (v.reason or "")
    assert _verdict(PLAIN, _ips(50), last=100).passed
    v = _verdict(PLAIN, _ips(501), last=100)
    assert v.check == "explosion" and "from 100 to 501" in (v.reason or "")
    assert _verdict(PLAIN, _ips(500), last=100).passed
    # A small baseline swings freely; a first download has no baseline.
    assert _verdict(PLAIN, _ips(200), last=10).passed
    assert _verdict(PLAIN, _ips(1), last=None).passed

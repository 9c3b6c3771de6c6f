"""Parsers against the real feed samples (``../shared/feeds``) and variants derived from them."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from cdr_policy.feeds import parse as p
from cdr_policy.feeds.parse import parse_feed, parse_token


def _read(shared_feeds_dir: Path, name: str) -> bytes:
    return (shared_feeds_dir / name).read_bytes()


def _addresses(parsed: p.ParsedFeed) -> set[str]:
    out = {str(ipaddress.IPv4Address(v)) for v in parsed.singles[4]}
    out |= {str(ipaddress.IPv6Address(v)) for v in parsed.singles[6]}
    return out


def _file_addresses(data: bytes) -> set[str]:
    return {str(ipaddress.ip_address(line)) for line in data.decode().split() if not line.startswith("#")}


# --- the real samples ----------------------------------------------------------------------------


def test_blocklist_de_counts_mixed_families_and_no_final_newline(shared_feeds_dir: Path) -> None:
    data = _read(shared_feeds_dir, "blocklist_de_all.txt")
    assert not data.endswith(b"\n")  # the quirk under test is really in the sample
    parsed = parse_feed(data, "plain")
    assert (parsed.lines, parsed.count(4), parsed.count(6)) == (25_961, 25_490, 471)
    assert parsed.rejected == [] and parsed.comments == 0 and parsed.blank == 0
    last = data.rsplit(b"\n", 1)[1].decode()
    assert str(ipaddress.ip_address(last)) in _addresses(parsed)  # the unterminated last line counts
    assert _addresses(parsed) == _file_addresses(data)


def test_tor_list_is_unsorted_and_parsed_whole(shared_feeds_dir: Path) -> None:
    data = _read(shared_feeds_dir, "tor_torbulkexitlist.txt")
    parsed = parse_feed(data)
    assert parsed.format == "plain"
    values = list(parsed.singles[4])
    assert len(values) == 1_396 and values != sorted(values)
    assert _addresses(parsed) == _file_addresses(data)


def test_emerging_threats_locale_sorted_list(shared_feeds_dir: Path) -> None:
    data = _read(shared_feeds_dir, "et_compromised-ips.txt")
    parsed = parse_feed(data)
    assert (parsed.lines, parsed.count(4), len(parsed.rejected)) == (539, 539, 0)


def test_feodo_csv_quoted_header_trailer_and_banner(shared_feeds_dir: Path) -> None:
    data = _read(shared_feeds_dir, "feodo_ipblocklist.csv")
    parsed = parse_feed(data)
    assert parsed.format == "feodo-csv"
    assert parsed.count(4) == 28 and parsed.trailer == 28 and parsed.trailer_is_last
    assert parsed.feed_updated == "2024-04-04 07:03:03 UTC"
    assert parsed.format_error is None and parsed.rejected == []
    assert "192.9.135.73" in _addresses(parsed)


# --- quirks derived from the samples -------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda d: d.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(lambda d: b"\xef\xbb\xbf" + d, id="utf8-bom"),
        pytest.param(lambda d: d + b"\n", id="final-newline"),
        pytest.param(lambda d: d.replace(b"\n", b"  \t\n"), id="trailing-whitespace"),
        pytest.param(lambda d: d.replace(b"\n", b"\r"), id="old-mac-cr"),
    ],
)
def test_line_ending_and_whitespace_variants_give_the_same_entries(
    shared_feeds_dir: Path, variant: Callable[[bytes], bytes]
) -> None:
    data = _read(shared_feeds_dir, "blocklist_de_all.txt")
    base = parse_feed(data, "plain")
    changed = parse_feed(variant(data), "plain")
    assert (changed.count(4), changed.count(6), changed.rejected) == (25_490, 471, [])
    assert _addresses(changed) == _addresses(base)


def _abusech_txt(shared_feeds_dir: Path) -> tuple[bytes, int]:
    """The plain-text Feodo list, rebuilt from the real CSV's banner and addresses."""
    csv = _read(shared_feeds_dir, "feodo_ipblocklist.csv").decode()
    banner = [line.replace("(CSV)  ", "       ") for line in csv.splitlines() if line.startswith("#")][:-1]
    ips = sorted(line.split('","')[1] for line in csv.splitlines() if line.startswith('"20'))
    return ("\n".join([*banner, "# DstIP", *ips, f"# END {len(ips)} entries"])).encode(), len(ips)


def test_abusech_banner_column_line_and_trailer(shared_feeds_dir: Path) -> None:
    data, n = _abusech_txt(shared_feeds_dir)
    parsed = parse_feed(data)
    assert parsed.format == "abusech"
    assert (parsed.count(4), parsed.trailer, parsed.trailer_is_last) == (n, n, True)
    assert parsed.comments == len([line for line in data.splitlines() if line.startswith(b"#")])


def test_abusech_missing_and_mismatched_trailer_are_recorded(shared_feeds_dir: Path) -> None:
    data, n = _abusech_txt(shared_feeds_dir)
    cut = data.rsplit(b"\n", 1)[0]  # trailer gone: a truncated download
    missing = parse_feed(cut, "abusech")
    assert missing.trailer is None and missing.count(4) == n
    dropped = b"\n".join(line for i, line in enumerate(data.split(b"\n")) if i != 12)
    mismatched = parse_feed(dropped, "abusech")
    assert mismatched.trailer == n and mismatched.data_lines == n - 1
    appended = parse_feed(data + b"\n1.2.3.4", "abusech")
    assert appended.trailer == n and not appended.trailer_is_last


def test_feodo_csv_pre_2021_layouts_are_refused_not_half_parsed(shared_feeds_dir: Path) -> None:
    data = _read(shared_feeds_dir, "feodo_ipblocklist.csv").decode()
    rows = [line for line in data.splitlines() if line.startswith('"20')]
    # 2019-2021: commented header, unquoted rows (five columns).
    old = "\n".join(
        ["# Feodo Tracker Botnet C2 IP Blocklist", "# Firstseen,DstIP,DstPort,LastOnline,Malware"]
        + [",".join(c.strip('"') for c in row.split(",")[:3] + row.split(",")[4:]) for row in rows]
    )
    commented = parse_feed(old.encode(), "feodo-csv")
    assert commented.format_error and "commented out" in commented.format_error
    assert commented.entries == 0
    # <= 2018: "# Feodo IP Blocklist" banner with a "# START" marker and unquoted rows, no header.
    ancient = "# Feodo IP Blocklist # Generated on 2018-09-06 16:13:34 UTC\n# START\n" + "\n".join(
        row.replace('"', "") for row in rows
    )
    legacy = parse_feed(ancient.encode(), "feodo-csv")
    assert legacy.format_error and "header missing" in legacy.format_error
    assert legacy.entries == 0


def test_feodo_csv_malformed_row_is_rejected(shared_feeds_dir: Path) -> None:
    data = _read(shared_feeds_dir, "feodo_ipblocklist.csv").replace(
        b'"2023-05-23 17:51:44","192.9.135.73","1194"', b'"2023-05-23 17:51:44","192.9.135.73"'
    )
    parsed = parse_feed(data)
    assert parsed.count(4) == 27 and parsed.rejected[0][1] == p.R_CSV_ROW
    assert parsed.data_lines == 28  # the trailer still counts the row


def test_semicolon_and_inline_comments_cidrs_and_blank_lines() -> None:
    body = (
        b"; Spamhaus DROP List 2026/01/01 - (c) 2026 The Spamhaus Project\n"
        b"; Last-Modified: Thu, 01 Jan 2026 00:00:00 GMT\n"
        b"\n"
        b"1.10.16.0/20 ; SBL256894\n"
        b"2.56.192.0/22 ; SBL459831\n"
        b"   \n"
        b"2001:db8:1200::/40 ; SBL1\n"
        b"5.6.7.8   # a host\n"
        b"9.9.9.0/24 junk\n"
    )
    parsed = parse_feed(body)
    assert (parsed.comments, parsed.blank) == (2, 2)
    assert parsed.networks[4].pairs() == [
        (int(ipaddress.IPv4Address("1.10.16.0")), 20),
        (int(ipaddress.IPv4Address("2.56.192.0")), 22),
    ]
    assert parsed.networks[6].pairs() == [(int(ipaddress.IPv6Address("2001:db8:1200::")), 40)]
    assert list(parsed.singles[4]) == [int(ipaddress.IPv4Address("5.6.7.8"))]
    number = body.splitlines().index(b"9.9.9.0/24 junk") + 1
    assert parsed.rejected == [(p.fingerprint(number, "9.9.9.0/24 junk"), p.R_TRAILING)]
    assert parsed.stats()["cidr"] == 3


# --- tokens ----------------------------------------------------------------------------------------


def test_inet_pton_is_strict_on_this_platform() -> None:
    """The fast path relies on inet_pton refusing what inet_aton would reinterpret."""
    for token in ("010.0.0.1", "1.2.3.04", "10.1", "1.2.3.4.", " 1.2.3.4", "0x1.2.3.4", "256.1.1.1"):
        with pytest.raises(OSError):
            socket.inet_pton(socket.AF_INET, token)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("010.0.0.1", p.R_LEADING_ZERO),
        ("1.2.3.04", p.R_LEADING_ZERO),
        ("10.1", p.R_ABBREVIATED),
        ("10", p.R_ABBREVIATED),
        ("1.2.3.4-1.2.3.9", p.R_RANGE),
        ("1.2.3.4-9", p.R_RANGE),
        ("1.2.3.4/24", p.R_HOST_BITS),
        ("2001:db8::1/64", p.R_HOST_BITS),
        ("1.2.3.0/33", p.R_PREFIXLEN),
        ("1.2.3.0/024", p.R_PREFIXLEN),
        ("1.2.3.0/", p.R_PREFIXLEN),
        ("evil.example.com", p.R_HOSTNAME),
        ("bad-host", p.R_HOSTNAME),
        ("fe80::1%eth0", p.R_ZONE),
        ("256.1.2.3", p.R_OCTET),
        ("1.2.3.4.5", p.R_NOT_IP),
        ("<!doctype", p.R_MARKUP),
        ("1.2.3.4:80", p.R_NOT_IP),
        ("::ffff:1.2.3.0/100", p.R_HOST_BITS),  # = 1.2.3.0/4
        ("::ffff:0.0.0.0/90", p.R_NOT_IP),  # wider than the mapped space
    ],
)
def test_ambiguous_tokens_are_rejected_with_their_reason(token: str, reason: str) -> None:
    assert parse_token(token) == reason


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("1.2.3.4", (4, "1.2.3.4", 32)),
        ("0.0.0.0/0", (4, "0.0.0.0", 0)),
        ("1.2.3.0/24", (4, "1.2.3.0", 24)),
        ("2001:0DB8:0000::0001", (6, "2001:db8::1", 128)),
        ("::ffff:198.51.100.7", (4, "198.51.100.7", 32)),
        ("::ffff:198.51.100.0/120", (4, "198.51.100.0", 24)),
    ],
)
def test_valid_tokens_are_canonical_integers(token: str, expected: tuple[int, str, int]) -> None:
    parsed = parse_token(token)
    assert not isinstance(parsed, str), parsed
    version, value, length = parsed
    address = ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
    assert (version, str(address), length) == expected


def test_junk_lines_are_counted_not_guessed() -> None:
    body = b"1.2.3.4\n010.0.0.1\n10.1\n1.2.3.4-1.2.3.9\nevil.example\n5.6.7.8\n"
    parsed = parse_feed(body)
    assert parsed.count(4) == 2 and parsed.data_lines == 6
    assert [r for _, r in parsed.rejected] == [p.R_LEADING_ZERO, p.R_ABBREVIATED, p.R_RANGE, p.R_HOSTNAME]


def test_ipv4_mapped_ipv6_lines_fold_to_ipv4() -> None:
    parsed = parse_feed(b"::ffff:203.0.113.9\n2001:db8::5\n")
    assert list(parsed.singles[4]) == [int(ipaddress.IPv4Address("203.0.113.9"))]
    assert parsed.singles[6] == [int(ipaddress.IPv6Address("2001:db8::5"))]


def test_nul_and_non_utf8_bytes_are_rejected_lines() -> None:
    parsed = parse_feed(b"1.2.3.4\n1.2.3.5\x00\n\xff\xfe1.2.3.6\n")
    assert parsed.count(4) == 1
    assert [r for _, r in parsed.rejected] == [p.R_NUL, p.R_NOT_IP]


# --- HTML and format detection -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"<!doctype html>\n<html><body>moved</body></html>",
        b"\xef\xbb\xbf\n\n   <HTML>\n<head><title>Captive portal</title></head>",
        b"Please log in\n<html><body>portal</body></html>",
        b"<?xml version='1.0'?><html xmlns='http://www.w3.org/1999/xhtml'></html>",
    ],
)
def test_html_pages_are_detected_and_not_parsed(body: bytes) -> None:
    parsed = parse_feed(body)
    assert parsed.html and parsed.entries == 0 and parsed.rejected == []


def test_plain_list_is_not_html(shared_feeds_dir: Path) -> None:
    assert not p.looks_like_html(_read(shared_feeds_dir, "tor_torbulkexitlist.txt"))


def test_tor_exit_addresses_format() -> None:
    body = (
        b"ExitNode 0011BD2485AD45D984EC4159C88FC066E5E3300E\n"
        b"Published 2026-01-01 10:00:00\n"
        b"LastStatus 2026-01-01 11:00:00\n"
        b"ExitAddress 162.247.74.201 2026-01-01 11:02:03\n"
        b"ExitNode 0091174DE56EADE07D3C3E7A7BC0C1B6F5A6D9C4\n"
        b"ExitAddress 2a0b:f4c2::1 2026-01-01 11:03:00\n"
        b"garbage line\n"
    )
    parsed = parse_feed(body)
    assert parsed.format == "tor-exit-addresses"
    assert parsed.count(4) == 1 and parsed.count(6) == 1 and parsed.comments == 4
    number = body.splitlines().index(b"garbage line") + 1
    assert parsed.rejected == [(p.fingerprint(number, "garbage line"), p.R_NOT_IP)]


def test_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown feed format"):
        parse_feed(b"1.2.3.4\n", "json")


def test_empty_body() -> None:
    parsed = parse_feed(b"")
    assert (parsed.lines, parsed.entries, parsed.data_lines) == (0, 0, 0)


def test_a_rejected_line_is_named_by_number_and_fingerprint_never_by_its_text() -> None:
    secret = "QUALYS_PASSWORD=hunter2-do-not-leak"
    lines = ["# my .env", "1.2.3.4", secret, "5.6.7.8", "", "AWS_SECRET=abc def"]
    parsed = parse_feed("\n".join(lines).encode())
    assert parsed.count(4) == 2
    assert parsed.rejected == [
        (p.fingerprint(3, secret), p.R_NOT_IP),
        (p.fingerprint(6, "AWS_SECRET=abc def"), p.R_TRAILING),
    ]
    assert re.fullmatch(r"line 3 sha256:[0-9a-f]{12}", parsed.rejected[0][0])
    assert "hunter2" not in repr(parsed) and "abc" not in repr(parsed.rejected)


def test_line_numbers_survive_the_batched_fast_path() -> None:
    body = "\n".join([f"10.{i >> 8 & 255}.{i & 255}.1" for i in range(5000)] + ["2001:db8::1", "junk"] * 2)
    parsed = parse_feed(body.encode())
    assert [r for r, _ in parsed.rejected] == [p.fingerprint(5002, "junk"), p.fingerprint(5004, "junk")]

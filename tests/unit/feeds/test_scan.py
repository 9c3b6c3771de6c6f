"""The vectorised IPv4 fast path (``feeds/scan.py``) decides exactly what ``inet_pton`` and
``str.splitlines`` decide: the same lines, the same numbers, the same addresses."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdr_policy.feeds import parse, scan
from cdr_policy.feeds.parse import parse_feed
from cdr_policy.feeds.scan import scan_ipv4


def _reference(data: bytes) -> tuple[bytes, list[int], list[str], int]:
    """What the text path sees (after ``parse_feed`` has dropped a BOM): splitlines, then inet_pton
    per line."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    packed, numbers, texts = [], [], []
    for number, line in enumerate(lines, 1):
        try:
            packed.append(socket.inet_pton(socket.AF_INET, line))
        except (OSError, ValueError):
            numbers.append(number)
            texts.append(line)
    return b"".join(packed), numbers, texts, len(lines)


def _check(data: bytes) -> None:
    scanned = scan_ipv4(data)
    expected = _reference(data)
    if scanned is None:  # refused: the text path must really cut the lines differently
        cut_at_lf = data.decode("utf-8", errors="replace").split("\n")
        cut_at_lf = [line.removesuffix("\r") for line in cut_at_lf[:-1]] + [cut_at_lf[-1]] if data else []
        if cut_at_lf and cut_at_lf[-1] == "" and data.endswith(b"\n"):
            cut_at_lf.pop()
        assert data.decode("utf-8", errors="replace").splitlines() != cut_at_lf
        return
    assert (scanned.packed, scanned.numbers, scanned.texts, scanned.lines) == expected


OCTETS = [str(n) for n in range(1000)] + [f"0{n}" for n in range(100)] + ["00", "000", "0000", "1000", ""]


def test_every_octet_text_in_every_position_is_decided_as_inet_pton_does() -> None:
    lines = []
    for position in range(4):
        for octet in OCTETS:
            parts = ["10", "200", "3", "45"]
            parts[position] = octet
            lines.append(".".join(parts))
    _check(("\n".join(lines) + "\n").encode())


@pytest.mark.parametrize(
    "line",
    [
        "1.2.3.4",
        "255.255.255.255",
        "0.0.0.0",
        "111.111.111.111",
        "111.111.111.1111",  # 16 characters
        "1111.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "1..2.3",
        ".1.2.3",
        "1.2.3.",
        "1.2.3.4 ",
        " 1.2.3.4",
        "1.2.3.4\t",
        "1.2.3.4/32",
        "1.2.3.4#",
        "1.2.3.4\x00",
        "1.2.3:4",
        "1.2.3.4a",
        "a1.2.3.4",
        "::ffff:1.2.3.4",
        "1.2.3.4\xa0",
        "1.2.3.\u0664",  # a non-ASCII digit
        "# 1.2.3.4",
        "",
    ],
)
def test_edge_lines_alone_and_among_others(line: str) -> None:
    for body in (line, line + "\n", f"9.9.9.9\n{line}\r\n8.8.4.4", f"{line}\n{line}\r\n{line}"):
        _check(body.encode())


TOKENS = st.one_of(
    st.tuples(*[st.integers(0, 300)] * 4).map(lambda o: ".".join(map(str, o))),
    st.sampled_from(OCTETS).map(lambda o: f"1.{o}.2.3"),
    st.sampled_from(["2001:db8::1", "10.0.0.0/8", "# comment", "; c", "1.2.3.4 # x", "", "  ", "é", "\ufeff"]),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
)
BREAKS = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r", "\x0b", "\x85", "\u2028"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(TOKENS, BREAKS), max_size=60), st.booleans())
def test_random_bodies_match_the_text_path(lines: list[tuple[str, str]], terminated: bool) -> None:
    body = "".join(token + brk for token, brk in lines)
    if not terminated and lines:
        body = body.removesuffix(lines[-1][1])
    _check(body.encode("utf-8", "surrogatepass"))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(TOKENS, st.sampled_from(["\n", "\r\n"])), min_size=1, max_size=80))
def test_many_small_blocks_keep_numbers_and_order(lines: list[tuple[str, str]]) -> None:
    body = "".join(token + brk for token, brk in lines).encode("utf-8", "surrogatepass")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan, "_BLOCK", 16)
        _check(body)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(TOKENS, BREAKS), max_size=60))
def test_parse_feed_is_the_same_through_the_fast_path_and_the_text_path(lines: list[tuple[str, str]]) -> None:
    body = "".join(token + brk for token, brk in lines).encode("utf-8", "surrogatepass")
    fast = parse_feed(body, "plain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(parse, "scan_ipv4", lambda data: None)
        text = parse_feed(body, "plain")
    assert fast == text


def test_a_body_with_other_line_breaks_takes_the_text_path_with_its_line_numbers() -> None:
    body = b"1.2.3.4\nbad\x0bworse\n5.6.7.8\nnope\n"
    assert scan_ipv4(body) is None
    parsed = parse_feed(body, "plain")
    assert list(parsed.singles[4]) == [0x01020304, 0x05060708]
    assert [name.split()[1] for name, _ in parsed.rejected] == ["2", "3", "5"]

"""The vectorised IPv4 fast path (``feeds/scan.py``) decides exactly what ``parse_token`` and
``str.splitlines`` decide: the same lines, the same numbers, the same addresses and CIDRs."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdr_policy.feeds import parse, scan
from cdr_policy.feeds.parse import parse_feed, parse_token
from cdr_policy.feeds.scan import blocks, scan_block


def _reference(block: bytes, first_line: int) -> tuple[list[int], list[tuple[int, int]], list[int], list[str], int]:
    """What the text path sees (after ``parse_feed`` has dropped a BOM): splitlines, then per line
    ``parse_token`` for the lines of digits, dots and slashes."""
    lines = block.decode("utf-8", errors="replace").splitlines()
    addresses, networks, numbers, texts = [], [], [], []
    for number, line in enumerate(lines, first_line + 1):
        parsed = parse_token(line) if line and not set(line) - set("0123456789./") else "not taken"
        if isinstance(parsed, str):
            numbers.append(number)
            texts.append(line)
        elif parsed[2] == 32:
            addresses.append(parsed[1])
        else:
            networks.append((parsed[1], parsed[2]))
    return addresses, networks, numbers, texts, len(lines)


def _uint32(data: bytes) -> list[int]:
    values = array("I")
    values.frombytes(data)
    return list(values)


def _check(data: bytes) -> None:
    """Block by block: the scan's split is the text path's, or the block really has a line break
    that LF does not make (and the scan refused it)."""
    first_line = 0
    for block in blocks(data):
        scanned = scan_block(block, first_line)
        expected = _reference(block, first_line)
        first_line += expected[-1]
        if scanned is None:
            text = block.decode("utf-8", errors="replace")
            assert text.splitlines() != [line.removesuffix("\r") for line in text.split("\n")[:-1]]
            continue
        networks = list(zip(_uint32(scanned.networks), scanned.lengths, strict=True))
        got = (_uint32(scanned.addresses), networks, scanned.numbers, scanned.texts, scanned.lines)
        assert got == expected


OCTETS = [str(n) for n in range(1000)] + [f"0{n}" for n in range(100)] + ["00", "000", "0000", "1000", ""]


def test_every_octet_text_in_every_position_is_decided_as_the_parser_does() -> None:
    lines = []
    for position in range(4):
        for octet in OCTETS:
            parts = ["10", "200", "3", "45"]
            parts[position] = octet
            lines.append(".".join(parts))
            lines.append(".".join(parts) + "/32")
    _check(("\n".join(lines) + "\n").encode())


def test_every_prefix_length_text_is_decided_as_the_parser_does() -> None:
    lengths = [str(n) for n in range(100)] + [f"0{n}" for n in range(10)] + ["", "000", "100", "/"]
    lines = [
        f"{address}/{length}" for address in ("0.0.0.0", "10.0.0.0", "255.255.255.255", "1.2.3.4") for length in lengths
    ]
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
        "1.2.3.0/24",
        "1.2.3.4/24",  # host bits set
        "0.0.0.0/0",
        "255.255.255.255/32",
        "255.255.255.254/31",
        "1.2.3.0/24/24",
        "1.2.3.0//24",
        "1.2.3.0/24 ; SBL1",
        "1.2.3.0/024",
        "1.2.3.0/33",
        "1.2.3.0/",
        "/24",
        "1.2.3/24",
        "10.0.0.0/8\t",
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
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 40)).map(
        lambda a: f"{a[0] >> 24}.{a[0] >> 16 & 255}.{a[0] >> 8 & 255}.{a[0] & 255}/{a[1]}"
    ),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda a: f"{a[0] >> 24}.{a[0] >> 16 & 255}.{a[0] >> 8 & 255}.0/{min(a[1], 24)}"
    ),
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


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(TOKENS, BREAKS), min_size=1, max_size=80))
def test_many_small_blocks_keep_numbers_and_order(lines: list[tuple[str, str]]) -> None:
    """Blocks of a few lines, some of them with other line breaks (those take the text path):
    the numbers run on from block to block, and the result is the text path's."""
    body = "".join(token + brk for token, brk in lines).encode("utf-8", "surrogatepass")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan, "_BLOCK", 16)
        _check(body)
        fast = parse_feed(body, "plain")
        mp.setattr(parse, "scan_block", lambda block, first_line=0: None)
        assert fast == parse_feed(body, "plain")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(TOKENS, BREAKS), max_size=60))
def test_parse_feed_is_the_same_through_the_fast_path_and_the_text_path(lines: list[tuple[str, str]]) -> None:
    body = "".join(token + brk for token, brk in lines).encode("utf-8", "surrogatepass")
    fast = parse_feed(body, "plain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(parse, "scan_block", lambda block, first_line=0: None)
        text = parse_feed(body, "plain")
    assert fast == text


def test_a_body_with_other_line_breaks_takes_the_text_path_with_its_line_numbers() -> None:
    body = b"1.2.3.4\nbad\x0bworse\n5.6.7.8\nnope\n"
    assert scan_block(body) is None
    parsed = parse_feed(body, "plain")
    assert list(parsed.singles[4]) == [0x01020304, 0x05060708]
    assert [name.split()[1] for name, _ in parsed.rejected] == ["2", "3", "5"]

"""A deterministic input file in the feeds' real formats, as one concatenated dump.

Sections imitate the real feeds: an abuse.ch list (``#`` banner, ``# DstIP``,
``# END N entries``, sorted as strings), a blocklist.de dump (IPv4 with IPv6 sorted in among it),
an unsorted Tor-style list, a CRLF section (CINS), a Spamhaus-style CIDR list with ``;``
comments, blank lines, overlap between sections (duplicates), runs of adjacent addresses (so that
aggregation has work), a few never-block entries and a few junk lines that a strict parser must
refuse (leading zeros, ranges, abbreviations, hostnames, HTML).

Two files are written: ``feeds-<n>.txt`` (everything) and ``feeds-<n>.iprange.txt`` (the same minus
the IPv6, junk and never-block lines: iprange 1.0 reads IPv4 only, resolves hostnames through DNS,
reads ``010.0.0.1`` as octal and has no never-block filter, so ``0.0.0.0/0`` would swallow the rest).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

POISON = ("8.8.8.8", "10.0.0.0/8", "0.0.0.0/0", "192.168.1.1", "169.254.169.254", "1.1.1.1")
JUNK = (
    "010.0.0.1",
    "1.2.3.4-1.2.3.9",
    "10.1",
    "evil.example.com",
    "<!doctype html>",
    "256.1.2.3",
    "1.2.3.4/24",
    "fe80::1%eth0",
)
_BANNER = [
    "################################################################",
    "# abuse.ch Feodo Tracker Botnet C2 IP Blocklist (benchmark)    #",
    "# Last updated: 2026-01-01 00:00:00 UTC                        #",
    "#                                                              #",
    "# Generated input for cdr-policy benchmarks.                   #",
    "################################################################",
    "#",
    "# DstIP",
]


@dataclass(frozen=True)
class Generated:
    full: Path
    ipv4_only: Path
    lines: int
    ipv6_lines: int
    junk_lines: int


class _Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.pool: list[int] = []

    def v4(self) -> int:
        r = self.r
        if self.pool and r.random() < 0.15:  # overlap between feeds
            return r.choice(self.pool)
        while True:
            first = r.randrange(1, 224)
            if first not in (10, 127):
                value = (first << 24) | r.getrandbits(24)
                if len(self.pool) < 50_000:
                    self.pool.append(value)
                return value

    def v4_lines(self, count: int) -> list[str]:
        out: list[str] = []
        while len(out) < count:
            if self.r.random() < 0.01:  # a run of adjacent addresses, as scanners in one subnet
                base = self.v4() & ~0xFF
                start = self.r.randrange(0, 200)
                out.extend(_ip4(base + start + i) for i in range(min(self.r.randrange(2, 40), count - len(out))))
            else:
                out.append(_ip4(self.v4()))
        return out

    def v6(self) -> str:
        value = (0x2001 << 112) | (self.r.randrange(0x0200, 0xFFFF) << 96) | self.r.getrandbits(96)
        groups = [f"{(value >> s) & 0xFFFF:x}" for s in range(112, -1, -16)]
        return ":".join(groups)

    def cidr(self) -> str:
        length = self.r.choice((16, 20, 22, 23, 24, 24, 24))
        value = self.v4() & ~((1 << (32 - length)) - 1)
        return f"{_ip4(value)}/{length} ; SBL{self.r.randrange(100000, 999999)}"


def _ip4(v: int) -> str:
    return f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"


def generate(directory: Path, lines: int = 1_000_000, seed: int = 1) -> Generated:
    """Write both input files into ``directory`` (deterministic for a given ``lines`` and ``seed``)."""
    g = _Gen(seed)
    n = lines
    sections: list[tuple[str, list[str]]] = []  # (line ending, lines)
    abusech = sorted(g.v4_lines(n // 10))
    sections.append(("\n", [*_BANNER, *abusech, f"# END {len(abusech)} entries"]))
    v6_count = n * 18 // 1000
    blocklist = sorted(g.v4_lines(n * 45 // 100) + [g.v6() for _ in range(v6_count)])
    sections.append(("\n", blocklist))
    tor = g.v4_lines(n * 15 // 100)
    sections.append(("\n", tor))
    cins = sorted(g.v4_lines(n * 15 // 100), key=lambda s: (int(s.split(".", 1)[0]), s))
    sections.append(("\r\n", cins))
    cidrs = ["; Spamhaus-style DROP list (generated)", *[g.cidr() for _ in range(n // 100)]]
    sections.append(("\n", cidrs))
    used = sum(len(s) for _, s in sections)
    tail = list(POISON) + list(JUNK) * 4 + [""] * 20 + ["# trailing comment"] * 4
    rest = g.v4_lines(max(0, n - used - len(tail)))
    mixed = rest + tail
    g.r.shuffle(mixed)
    sections.append(("\n", mixed))
    directory.mkdir(parents=True, exist_ok=True)
    full = directory / f"feeds-{n}.txt"
    ipv4_only = directory / f"feeds-{n}.iprange.txt"
    total = v6 = junk = 0
    with full.open("w", newline="") as fa, ipv4_only.open("w", newline="") as fb:
        for ending, body in sections:
            for line in body:
                fa.write(line + ending)
                total += 1
                if line in JUNK:
                    junk += 1
                    continue
                if ":" in line:
                    v6 += 1
                    continue
                if line in POISON:
                    continue
                fb.write(line + ending)
    return Generated(full=full, ipv4_only=ipv4_only, lines=total, ipv6_lines=v6, junk_lines=junk)


def generate_addresses(path: Path, count: int, seed: int) -> Path:
    """``count`` distinct public IPv4 addresses, one per line in random order, as the large
    aggregated lists (FireHOL levels, full Tor relay lists) are published: no comments, nothing
    the never-block list refuses, and about one in twenty in runs of adjacent addresses, so that
    aggregation has some work. iprange reads the same file."""
    from cdr_policy.guards import NeverBlock

    guard = NeverBlock()
    r = random.Random(seed)
    chosen: set[int] = set()
    while len(chosen) < count:
        first = r.randrange(1, 224)
        value = (first << 24) | r.getrandbits(24)
        run = r.randrange(2, 16) if r.random() < 0.01 else 1
        for address in range(value, value + run):
            if guard.check_interval(4, address, address, 32) is None:
                chosen.add(address)
    addresses = sorted(chosen)[:count]
    r.shuffle(addresses)
    path.write_text("".join(f"{_ip4(a)}\n" for a in addresses))
    return path


def generate_netset(path: Path, count: int, seed: int) -> Path:
    """``count`` lines in the form of a FireHOL netset (``firehol_level*.netset``, country and
    hosting-provider lists): a ``#`` header, then public CIDRs, mostly /24 and longer, some up to
    /16, single addresses written bare, in random order and overlapping here and there. Nothing the
    never-block list refuses, so that iprange (no filter) reads the same file."""
    from cdr_policy.guards import NeverBlock

    guard = NeverBlock()
    r = random.Random(seed)
    header = ["#", "# firehol-style netset (generated for cdr-policy benchmarks)", "#"]
    lines = list(header)
    while len(lines) < count:
        length = r.choice((16, 18, 20, 22, 23, 24, 24, 24, 24, 25, 26, 27, 28, 29, 30, 32, 32, 32))
        value = ((r.randrange(1, 224) << 24) | r.getrandbits(24)) & ~((1 << (32 - length)) - 1)
        if guard.check_interval(4, value, value | ((1 << (32 - length)) - 1), length) is None:
            lines.append(_ip4(value) if length == 32 else f"{_ip4(value)}/{length}")
    body = lines[len(header) :]
    r.shuffle(body)
    path.write_text("\n".join(header + body) + "\n")
    return path

"""The two Python contenders, each run in its own process by ``benchmarks.__main__``.

``python -m benchmarks.runners ours|collapse INPUT OUTPUT`` reads INPUT, aggregates it and writes
the prefixes to OUTPUT in one binary layout (``write_prefixes``), so that results can be compared
without either side paying for text formatting. A JSON summary goes to stdout.

- ``ours``: ``cdr_policy.feeds`` as FeedSync runs it: ``parse_feed`` (strict), ``ingest`` (the
  never-block guard, then ``collapse``).
- ``collapse``: the textbook version: ``ipaddress.ip_network`` per line (strict, which refuses the
  same ambiguous tokens), the same guard with ``check_network`` per entry, then
  ``ipaddress.collapse_addresses`` per family.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from array import array
from collections.abc import Iterable

# Imports are kept to what each contender needs: the interpreter's start-up is part of its time.
PathLike = str | os.PathLike[str]
_MAGIC = b"PFX1"


def write_prefixes(path: PathLike, rows: dict[int, tuple[Iterable[int], Iterable[int]]]) -> None:
    """Per family: count, networks (IPv4 as uint32, IPv6 as 16 bytes, big-endian), lengths (uint8)."""
    with open(path, "wb") as fh:
        fh.write(_MAGIC)
        for version in (4, 6):
            nets, lengths = rows[version]
            lens = bytes(lengths)
            fh.write(struct.pack(">BI", version, len(lens)))
            if version == 4 and hasattr(nets, "astype"):  # a numpy array (ours)
                fh.write(nets.astype(">u4").tobytes())
            elif version == 4:
                arr = array("I", nets)
                if sys.byteorder == "little":
                    arr.byteswap()
                fh.write(arr.tobytes())
            else:
                fh.write(b"".join(n.to_bytes(16, "big") for n in nets))
            fh.write(lens)


def read_prefixes(path: PathLike) -> set[tuple[int, int, int]]:
    with open(path, "rb") as fh:
        data = fh.read()
    if not data.startswith(_MAGIC):
        raise ValueError(f"{path} is not a prefix file")
    out: set[tuple[int, int, int]] = set()
    pos = len(_MAGIC)
    for _ in (4, 6):
        version, count = struct.unpack_from(">BI", data, pos)
        pos += 5
        width = 4 if version == 4 else 16
        nets = [int.from_bytes(data[pos + i * width : pos + (i + 1) * width], "big") for i in range(count)]
        pos += width * count
        lens = data[pos : pos + count]
        pos += count
        out.update(zip([version] * count, nets, lens, strict=True))
    return out


def read_iprange_output(path: PathLike) -> set[tuple[int, int, int]]:
    import ipaddress

    out = set()
    with open(path) as fh:
        text = fh.read()
    for line in text.split():
        net = ipaddress.ip_network(line)
        out.add((4, int(net.network_address), net.prefixlen))
    return out


def run_ours(src: PathLike, dst: PathLike) -> dict[str, object]:
    from cdr_policy.feeds.aggregate import ingest
    from cdr_policy.feeds.parse import parse_feed
    from cdr_policy.guards import NeverBlock

    with open(src, "rb") as fh:
        parsed = parse_feed(fh.read(), "plain")
    result = ingest(parsed, NeverBlock(), "benchmark", listed=1000)
    write_prefixes(dst, {v: (p.networks, p.lengths) for v, p in result.prefixes.items()})
    return {
        "lines": parsed.lines,
        "entries": parsed.entries,
        "rejected_parse": parsed.rejected_count,
        "rejected_guard": result.refused,
        "prefixes": {str(v): len(p) for v, p in result.prefixes.items()},
    }


def run_collapse(src: PathLike, dst: PathLike) -> dict[str, object]:
    import ipaddress

    from cdr_policy.guards import NeverBlock

    guard = NeverBlock()
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    refused = 0
    with open(src, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            s = line.strip().removeprefix("\ufeff")
            if not s or s[0] in "#;":
                continue
            try:
                net = ipaddress.ip_network(s.split(None, 1)[0], strict=True)
            except ValueError:
                continue
            if guard.check_network(net) is not None:
                refused += 1
                continue
            if isinstance(net, ipaddress.IPv4Network):
                v4.append(net)
            else:
                v6.append(net)
    collapsed: dict[int, list[ipaddress.IPv4Network] | list[ipaddress.IPv6Network]] = {
        4: list(ipaddress.collapse_addresses(v4)),
        6: list(ipaddress.collapse_addresses(v6)),
    }
    write_prefixes(
        dst,
        {v: ([int(n.network_address) for n in c], [n.prefixlen for n in c]) for v, c in collapsed.items()},
    )
    return {"rejected_guard": refused, "prefixes": {str(v): len(c) for v, c in collapsed.items()}}


def main(argv: list[str]) -> int:
    mode, src, dst = argv
    started = time.perf_counter()
    summary = (run_ours if mode == "ours" else run_collapse)(src, dst)
    summary["seconds_in_process"] = round(time.perf_counter() - started, 4)
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("ours", "collapse"):
        print("usage: python -m benchmarks.runners ours|collapse INPUT OUTPUT", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1:]))

"""``cdr-policy hits --policies DIR [--tetragon-export FILE]... [--hubble-export FILE]... [--json]``:
what our objects blocked (or, on an audit channel, would have), per object and destination, with
the feeds, CDR finding ids and categories of the indicator each event hit.

``DIR`` is a ``--output`` folder of ``cdr-policy --once`` or a published bundle folder
(``channels/<channel>/bundles/<digest>/``): its ``provenance.json`` names the objects and where
each of their prefixes, ports and rules came from. Export files are Tetragon's JSON export and
Hubble's flow export, plain or gzip (rotated ones included), one event per line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cdr_policy.bundle import provenance
from cdr_policy.bundle.manifest import VerificationError
from cdr_policy.bundle.provenance import ProvenanceIndex, read_index
from cdr_policy.cli.parser import Parser
from cdr_policy.errors import ConfigError
from cdr_policy.hits.events import CILIUM, TETRAGON
from cdr_policy.hits.files import lines
from cdr_policy.hits.tally import Tally


def load_policies(folder: Path) -> ProvenanceIndex:
    """The provenance index of a folder of our policies (ConfigError saying what to give instead)."""
    path = folder / provenance.PATH
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"--policies {folder}: no {provenance.PATH} there: give a --output folder of cdr-policy --once "
            "or a published bundle folder (channels/<channel>/bundles/<digest>)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"--policies {folder}: cannot read {provenance.PATH} ({exc.strerror})") from exc
    try:
        return read_index(data, str(path))
    except VerificationError as exc:
        raise ConfigError(str(exc)) from exc


def hits_main(argv: list[str]) -> int:
    parser = Parser(
        prog="cdr-policy hits",
        description="Attribute Tetragon and Hubble export events to our objects and to the feeds and findings "
        "behind them.",
    )
    parser.add_argument("--policies", required=True, metavar="DIR", help="a --output folder or a bundle folder")
    parser.add_argument(
        "--tetragon-export", action="append", default=[], metavar="FILE", help="Tetragon JSON export (plain or gzip)"
    )
    parser.add_argument(
        "--hubble-export", action="append", default=[], metavar="FILE", help="Hubble flow export (plain or gzip)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if not args.tetragon_export and not args.hubble_export:
        parser.error("give at least one --tetragon-export or --hubble-export")
    index = load_policies(Path(args.policies))
    tally = Tally()
    for engine, paths in ((TETRAGON, args.tetragon_export), (CILIUM, args.hubble_export)):
        for path in paths:
            for line in lines(Path(path)):
                tally.line(engine, line, index)
    report = {"hits": tally.rows(index), "events": tally.totals.to_dict()}
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for text in report_lines(report):
            print(text)
    return 0


def report_lines(report: dict[str, Any]) -> list[str]:
    out = [f"{'ENGINE':<9} {'ACTION':<9} {'COUNT':>7}  {'OBJECT':<40} {'HIT':<34} PROVENANCE"]
    for r in report["hits"]:
        what = (
            f"{r['address']} in {r['prefix']}"
            if r["prefix"]
            else f"port {r['port']}"
            if r["port"]
            else f"rule {r['rule']}"
        )
        source = "; ".join(
            part
            for part in (
                "feeds " + ",".join(r["feeds"]) if r["feeds"] else "",
                "findings " + ",".join(r["findings"]) if r["findings"] else "",
                "categories " + ",".join(r["categories"]) if r["categories"] else "",
            )
            if part
        )
        out.append(f"{r['engine']:<9} {r['action']:<9} {r['count']:>7}  {r['object']:<40} {what:<34} {source}")
    e = report["events"]
    out.append(
        f"events: {e['read']} read, {e['ours']} ours, {e['unattributed']} unattributed, {e['malformed']} malformed"
    )
    return out

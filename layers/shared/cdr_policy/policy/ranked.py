"""Every IP indicator of a render in one table, merged by value and ranked best evidence first,
as numpy arrays: a million feed prefixes cost a few arrays, not a million Python objects.

Inputs are the per-entry IP indicators (CDR, AbuseIPDB, resolved domains: already merged by value,
provenance and refs kept; ``policy.merge.merge_indicators``) and the compact feed sets
(``models.FeedPrefixes``: one provenance for all their prefixes). Per value, as
``merge_indicators`` does for per-entry sets: the union of the sources, the latest ``last_seen``
and ``expires_at``, the highest score, the category of the CDR detection when there is one, else
the heaviest. Expired sets and entries never get here.

The ranking is ``feeds.ranking``'s order (CDR detection, agreement between sources, reputation
score, category weight, recency, then the value in numeric order, IPv4 first), one ``lexsort``.
With the fleet's hits (``hits.fleet.Fired``: the addresses that fired anywhere), a feed entry
holding an address that fired ranks above those that never fired *within its evidence class*
(the same CDR flag, agreement, score and category weight), ahead of recency; CDR detections are
never reordered by hits (they rank first whatever fired). The rank each row would have had
without the hits is kept (``RankedTable.rank_without_hits``), so the report can say what the
hits changed.

The never-block guards are asked only about the prefixes that could concern them: those broader
than the guard's minimum length and those that overlap a protected range (found with a binary
search over the protected ranges, all at once); everything else is outside every protected range.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from itertools import compress
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from cdr_policy.evidence import category_weight
from cdr_policy.models import FeedPrefixes, Indicator, IndicatorSet, Rejection
from cdr_policy.netprefix import BITS, Prefix, parse_explicit, to_string
from cdr_policy.netprefix.vector import V4, V6, intervals_v4, overlaps
from cdr_policy.timeutil import iso, parse_iso

CDR, THREAT_INTEL = "cdr", "threat-intel"
# How many prefixes of the compact feed sets one render ranks. A render's memory grows by about
# 150 bytes per ranked prefix (Render on moto: 248 MiB in all at 1M, 686 MiB at 3.7M; the download
# cap allows about 4.5M in one feed, and a channel may have several), so this keeps it inside the
# template's 512 MB whatever the feeds hold. The sets are taken strongest evidence first (category
# weight, then the latest), each whole while it fits; of the one that does not, its first prefixes
# in value order (its own ranking order, agreement with other sources aside), and of the rest none.
# What is left out is counted per feed (``Ranking.unranked``) and reported with the capacity budget.
# Render lets go of it as the sets load (``hold_to_room``), so it never holds many sets whole.
MAX_RANKED_FEED_PREFIXES = 2_000_000
# A column of the tables below (its dtype is in ``_DTYPES``).
Column = npt.NDArray[Any]
_LOW64 = (1 << 64) - 1


class Guard(Protocol):
    """What ranking needs of the never-block list (``guards.NeverBlock`` or ``render.GuardChain``)."""

    def check_interval(self, version: int, first: int, last: int, prefixlen: int) -> str | None: ...

    def protected_ranges(self, version: int) -> list[tuple[int, int]]: ...

    def min_prefix_length(self, version: int) -> int: ...


_DTYPES: dict[str, type[np.generic]] = {
    "version": np.uint8,
    "hi": np.uint64,
    "lo": np.uint64,
    "length": np.uint8,
    "source": np.int32,
    "cdr": np.bool_,
    "score": np.int16,
    "weight": np.int16,
    "last_seen": np.int64,
    "expires": np.int64,
    "obj": np.int32,
}


@dataclass
class _Rows:
    """Columns of the long table: one row per (value, source)."""

    version: list[Column]
    hi: list[Column]
    lo: list[Column]
    length: list[Column]
    source: list[Column]
    cdr: list[Column]
    score: list[Column]
    weight: list[Column]
    last_seen: list[Column]
    expires: list[Column]
    obj: list[Column]

    def add(self, n: int, **cols: object) -> None:
        for name, value in cols.items():
            array = np.asarray(value, dtype=_DTYPES[name])
            getattr(self, name).append(np.broadcast_to(array, (n,)) if array.ndim == 0 else array)

    def concat(self, name: str) -> Column:
        """The whole column (one feed's constant columns stay read-only broadcast views)."""
        parts = getattr(self, name)
        if len(parts) == 1:
            return np.asarray(parts[0])
        return np.concatenate(parts) if parts else np.empty(0, dtype=_DTYPES[name])


@dataclass
class RankedTable:
    """Unique IP values in rank order (row 0 is the strongest evidence). ``sources_of`` lists, for
    each (row, source) pair of the merged input, the row and the index into ``sources``."""

    version: Column
    hi: Column
    lo: Column
    length: Column
    cdr: Column
    expires: Column
    obj: Column  # index into ``objects`` (a per-entry indicator) or -1
    pair_row: Column
    pair_source: Column
    sources: list[str]
    objects: list[Indicator]
    fired: Column | None = None  # per row: a feed entry holding an address that fired
    rank_without_hits: Column | None = None  # per row: its rank had nothing fired

    def __len__(self) -> int:
        return len(self.version)

    def group(self, row: int) -> str:
        return CDR if self.cdr[row] else THREAT_INTEL

    def value(self, row: int) -> str:
        version = int(self.version[row])
        network = int(self.hi[row]) << 64 | int(self.lo[row]) if version == 6 else int(self.lo[row])
        return to_string(version, network, int(self.length[row]))

    def take(self, keep: Column) -> RankedTable:
        """The rows where the mask ``keep`` is true, in the same (rank) order: what a promoting
        channel ships of its ranking (``cdr_policy.promotion``). Each row's rank without the hits
        is renumbered among the rows kept."""
        rows = np.flatnonzero(keep)
        new_row = np.full(len(self), -1, dtype=np.int64)
        new_row[rows] = np.arange(len(rows))
        live = keep[self.pair_row]
        without = None
        if self.rank_without_hits is not None:
            without = np.empty(len(rows), dtype=np.int64)
            without[np.argsort(self.rank_without_hits[rows], kind="stable")] = np.arange(len(rows))
        return RankedTable(
            version=self.version[rows],
            hi=self.hi[rows],
            lo=self.lo[rows],
            length=self.length[rows],
            cdr=self.cdr[rows],
            expires=self.expires[rows],
            obj=self.obj[rows],
            pair_row=new_row[self.pair_row[live]],
            pair_source=self.pair_source[live],
            sources=self.sources,
            objects=self.objects,
            fired=None if self.fired is None else self.fired[rows],
            rank_without_hits=without,
        )

    def sources_of(self, rows: Column) -> dict[int, list[str]]:
        """The source names of each of ``rows``."""
        wanted = np.zeros(len(self), dtype=bool)
        wanted[rows] = True
        picked = wanted[self.pair_row]
        out: dict[int, list[str]] = {}
        for row, source in zip(self.pair_row[picked].tolist(), self.pair_source[picked].tolist(), strict=True):
            out.setdefault(row, []).append(self.sources[source])
        return out

    def intervals_v4(self, rows: Column) -> tuple[Column, Column]:
        """``[first, last]`` of the IPv4 rows selected by the mask."""
        mask = rows & (self.version == 4)
        return intervals_v4(self.lo[mask], self.length[mask])

    def prefixes_v6(self, rows: Column) -> list[tuple[int, int]]:
        """``(network, length)`` of the IPv6 rows selected by the mask (Python integers)."""
        picked = rows[self._v6_rows]
        return list(compress(self._v6_prefixes, picked.tolist()))

    @cached_property
    def _v6_rows(self) -> Column:
        return np.flatnonzero(self.version == 6)

    @cached_property
    def _v6_prefixes(self) -> list[tuple[int, int]]:
        rows = self._v6_rows
        his, los, lengths = self.hi[rows].tolist(), self.lo[rows].tolist(), self.length[rows].tolist()
        return [(h << 64 | lo, n) for h, lo, n in zip(his, los, lengths, strict=True)]


@dataclass
class Ranking:
    table: RankedTable
    rejected: list[Rejection]
    unranked: dict[str, int]  # per feed: prefixes over ``MAX_RANKED_FEED_PREFIXES``, never ranked


def rank_ips(
    indicators: Sequence[Indicator],
    feed_sets: Sequence[IndicatorSet],
    *,
    now: datetime,
    guard: Guard,
    fired: tuple[V4, V6] | None = None,
) -> Ranking:
    """Merge, filter through ``guard`` and rank (see the module docstring). ``indicators`` are
    per-entry IP indicators merged by value and already checked by the guard; ``feed_sets`` are the
    compact sets in force (their prefixes are checked here); ``fired``: the addresses that fired in
    the fleet (full-length prefixes, sorted)."""
    rows = _Rows([], [], [], [], [], [], [], [], [], [], [])
    sources: dict[str, int] = {}
    _add_indicators(rows, indicators, sources)
    rejected: list[Rejection] = []
    live = _live(feed_sets, now)
    room = _room(live)
    for name, fp in sorted(live.items()):
        if room[name]:
            _add_feed(rows, fp, sources.setdefault(name, len(sources)), room[name])
    table, pairs = _merge(rows)
    keep = _guard_mask(table, guard, rejected, pairs, list(sources))
    unranked = {name: n for name, fp in sorted(live.items()) if (n := fp.held_back + len(fp) - room[name])}
    hit = _fired_rows(table, fired) if fired is not None else None
    return Ranking(_ranked(table, pairs, keep, list(sources), list(indicators), hit), rejected, unranked)


def _fired_rows(merged: _Merged, fired: tuple[V4, V6]) -> Column:
    """Per merged row: a feed entry (no CDR detection) whose prefix holds an address that fired."""
    v4, v6 = fired
    out = np.zeros(len(merged.version), dtype=bool)
    rows = np.flatnonzero((merged.version == 4) & ~merged.cdr)
    if len(rows) and len(v4):
        addresses = v4.networks.astype(np.int64)
        first, last = intervals_v4(merged.lo[rows], merged.length[rows])
        at = np.searchsorted(addresses, first, side="left")
        inside = at < len(addresses)
        out[rows[inside]] = addresses[at[inside]] <= last[inside]
    if len(v6):
        for row in np.flatnonzero((merged.version == 6) & ~merged.cdr).tolist():
            network = int(merged.hi[row]) << 64 | int(merged.lo[row])
            i = bisect.bisect_left(v6.networks, network)
            end = network | ((1 << (BITS[6] - int(merged.length[row]))) - 1)
            out[row] = i < len(v6) and v6.networks[i] <= end
    return out


def hold_to_room(sets: Sequence[IndicatorSet], *, now: datetime) -> None:
    """Let go of the compact feed prefixes no render at ``now`` ranks, counting them in each set's
    ``held_back``: past each live set's room (``_room``), and all of a disabled or expired set's.
    Called after each set a render loads (``last_good.load_indicator_sets``), it keeps the
    feed prefixes held to ``MAX_RANKED_FEED_PREFIXES`` plus the one set being loaded, however many
    sets there are. Every channel ranks the same live sets (or, without threat intel, none), and
    a room only shrinks as sets are added, so ``rank_ips`` then ranks what it would have ranked
    from the whole sets, and counts the held-back prefixes as unranked."""
    live = _live([s for s in sets if s.status != "disabled"], now)
    room = _room(live)
    for s in sets:
        fp = s.prefixes
        if fp is not None:
            name = s.source.removeprefix("feed:")
            keep = room[name] if live.get(name) is fp else 0
            if keep < len(fp):
                _hold_back(fp, keep)


def _hold_back(fp: FeedPrefixes, keep: int) -> None:
    """Keep the first ``keep`` prefixes (IPv4, then IPv6, each in value order: what ``_add_feed``
    takes), in arrays of their own so that the rest is freed."""
    n4 = min(len(fp.ipv4), keep)
    n6 = keep - n4
    fp.held_back += len(fp) - keep
    fp.ipv4 = V4(fp.ipv4.networks[:n4].copy(), fp.ipv4.lengths[:n4].copy())
    fp.ipv6 = V6(fp.ipv6.networks[:n6], fp.ipv6.lengths[:n6])


def _live(feed_sets: Sequence[IndicatorSet], now: datetime) -> dict[str, FeedPrefixes]:
    """The compact sets in force at ``now`` that have prefixes (held back or not), by feed name."""
    now_s = iso(now)
    return {
        s.source.removeprefix("feed:"): s.prefixes
        for s in feed_sets
        if s.prefixes is not None and s.prefixes.expires_at > now_s and len(s.prefixes) + s.prefixes.held_back
    }


def _room(live: dict[str, FeedPrefixes]) -> dict[str, int]:
    """How many prefixes of each feed set to rank (``MAX_RANKED_FEED_PREFIXES``)."""
    room, left = {}, MAX_RANKED_FEED_PREFIXES
    strongest_first = sorted(live, key=lambda name: (-category_weight(live[name].category), _newest(live[name]), name))
    for name in strongest_first:
        room[name] = min(len(live[name]), left)
        left -= room[name]
    return room


def _newest(fp: FeedPrefixes) -> float:
    return -parse_iso(fp.last_seen).timestamp()


def _add_indicators(rows: _Rows, indicators: Sequence[Indicator], sources: dict[str, int]) -> None:
    """One row per (indicator, source), the columns built as lists and converted once."""
    cols: dict[str, list[int]] = {name: [] for name in _DTYPES}
    for index, indicator in enumerate(indicators):
        prefix, reason = parse_explicit(indicator.value)
        if prefix is None or reason:
            raise ValueError(f"not a canonical prefix: {reason}")
        row = (
            prefix.version,
            prefix.network >> 64,
            prefix.network & _LOW64,
            prefix.length,
            "cdr" in indicator.sources,
            indicator.score or 0,
            category_weight(indicator.category),
            int(parse_iso(indicator.last_seen).timestamp()),
            int(parse_iso(indicator.expires_at).timestamp()),
            index,
        )
        for name in sorted(set(indicator.sources)):
            for column, value in zip(_PER_ROW, row, strict=True):
                cols[column].append(value)
            cols["source"].append(sources.setdefault(name, len(sources)))
    if cols["source"]:
        rows.add(len(cols["source"]), **cols)


_PER_ROW = ("version", "hi", "lo", "length", "cdr", "score", "weight", "last_seen", "expires", "obj")


def _add_feed(rows: _Rows, fp: FeedPrefixes, source: int, limit: int) -> None:
    """The set's first ``limit`` prefixes (IPv4, then IPv6, each in value order)."""
    common = {
        "source": source,
        "cdr": False,
        "score": 0,
        "weight": category_weight(fp.category),
        "last_seen": int(parse_iso(fp.last_seen).timestamp()),
        "expires": int(parse_iso(fp.expires_at).timestamp()),
        "obj": -1,
    }
    n4 = min(len(fp.ipv4), limit)
    if n4:
        rows.add(n4, version=4, hi=0, lo=fp.ipv4.networks[:n4], length=fp.ipv4.lengths[:n4], **common)
    n6 = min(len(fp.ipv6), limit - n4)
    if n6:
        networks = fp.ipv6.networks[:n6]
        rows.add(
            n6,
            version=6,
            hi=[n >> 64 for n in networks],
            lo=[n & _LOW64 for n in networks],
            length=list(fp.ipv6.lengths[:n6]),
            **common,
        )


@dataclass
class _Merged:
    """One row per unique value (value order), with the aggregates the ranking needs."""

    version: Column
    hi: Column
    lo: Column
    length: Column
    cdr: Column
    n_sources: Column
    score: Column
    weight: Column
    last_seen: Column
    expires: Column
    obj: Column


@dataclass
class _Pairs:
    """The distinct (value, source) pairs: the merged row of each and its source."""

    row: Column
    source: Column


def _merge(rows: _Rows) -> tuple[_Merged, _Pairs]:
    cols = {name: rows.concat(name) for name in _DTYPES}
    if not len(cols["version"]):
        none = np.empty(0, dtype=np.int64)
        merged = _Merged(**{n: c for n, c in cols.items() if n != "source"}, n_sources=none)
        return merged, _Pairs(none, cols["source"])
    order = _lexsort([cols["source"], *_value_keys(cols["version"], cols["hi"], cols["lo"], cols["length"])])
    if order is not None:
        cols = {name: col[order] for name, col in cols.items()}
    n = len(cols["version"])
    value_cols = ("version", "hi", "lo", "length")
    new_value = np.zeros(n, dtype=bool)
    new_value[0] = True
    for name in value_cols:
        new_value[1:] |= cols[name][1:] != cols[name][:-1]
    if new_value.all():  # no value listed twice: nothing to merge (one feed, or disjoint sources)
        merged = _Merged(
            **{name: col for name, col in cols.items() if name != "source"},
            n_sources=np.ones(n, dtype=np.int64),
        )
        return merged, _Pairs(np.arange(n), cols["source"])
    distinct = new_value.copy()
    distinct[1:] |= cols["source"][1:] != cols["source"][:-1]
    cols = {name: col[distinct] for name, col in cols.items()}
    new_value = new_value[distinct]
    starts = np.flatnonzero(new_value)
    row_of_pair = np.cumsum(new_value) - 1
    cdr = np.maximum.reduceat(cols["cdr"], starts)
    # The category of a CDR detection when there is one, else the heaviest.
    cdr_weight = np.maximum.reduceat(np.where(cols["cdr"], cols["weight"], -1), starts)
    weight = np.where(cdr, cdr_weight, np.maximum.reduceat(cols["weight"], starts))
    merged = _Merged(
        version=cols["version"][starts],
        hi=cols["hi"][starts],
        lo=cols["lo"][starts],
        length=cols["length"][starts],
        cdr=cdr.astype(bool),
        n_sources=np.diff(np.append(starts, len(new_value))),
        score=np.maximum.reduceat(cols["score"], starts),
        weight=weight.astype(np.int16),
        last_seen=np.maximum.reduceat(cols["last_seen"], starts),
        expires=np.maximum.reduceat(cols["expires"], starts),
        obj=np.maximum.reduceat(cols["obj"], starts),
    )
    return merged, _Pairs(row_of_pair, cols["source"])


def _value_keys(
    version: Column,
    hi: Column,
    lo: Column,
    length: Column,
) -> list[Column]:
    """Sort keys (``np.lexsort`` order: least significant first) for the numeric value order; when
    every value is IPv4, one key: the network and the length side by side in one integer."""
    if len(version) and not hi.any() and bool((version == 4).all()):
        return [lo << np.uint64(8) | length.astype(np.uint64)]
    return [length, lo, hi, version]


def _lexsort(keys: list[Column]) -> Column | None:
    """``np.lexsort(keys)``, without the keys that are the same on every row (they cannot change
    the order); None when the rows are in that order already."""
    n = len(keys[0])
    varying = [k for k in keys if n and np.min(k) != np.max(k)]
    if not varying:
        return None
    if len(varying) == 1:
        key = varying[0]
        return None if bool((key[1:] >= key[:-1]).all()) else np.argsort(key, kind="stable")
    return np.lexsort(varying)


def _guard_mask(merged: _Merged, guard: Guard, rejected: list[Rejection], pairs: _Pairs, sources: list[str]) -> Column:
    """Rows the guard allows; each refused one is reported once, with all its sources."""
    keep = np.ones(len(merged.version), dtype=bool)
    suspects = np.zeros(len(merged.version), dtype=bool)
    for version in (4, 6):
        fam = merged.version == version
        if not fam.any():
            continue
        suspects |= fam & (merged.length < guard.min_prefix_length(version))
        picked = np.flatnonzero(fam)
        suspects[picked[overlaps(*_bounds(merged, picked, version), guard.protected_ranges(version))]] = True
    if not suspects.any():
        return keep
    sources_by_row: dict[int, list[str]] = {}
    suspect_rows = np.flatnonzero(suspects)
    in_suspect = np.isin(pairs.row, suspect_rows)
    for row, source in zip(pairs.row[in_suspect].tolist(), pairs.source[in_suspect].tolist(), strict=True):
        sources_by_row.setdefault(row, []).append(sources[source])
    for row in suspect_rows.tolist():
        version = int(merged.version[row])
        network = int(merged.hi[row]) << 64 | int(merged.lo[row]) if version == 6 else int(merged.lo[row])
        prefix = Prefix(version, network, int(merged.length[row]))
        reason = guard.check_interval(version, prefix.network, prefix.last, prefix.length)
        if reason:
            keep[row] = False
            value = to_string(version, network, prefix.length)
            rejected.append(Rejection(value, ",".join(sorted(sources_by_row.get(row, []))), reason))
    return keep


def _bounds(merged: _Merged, picked: Column, version: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last addresses of the picked rows (object arrays of Python integers for IPv6)."""
    if version == 4:
        return intervals_v4(merged.lo[picked], merged.length[picked])
    bits = BITS[6]
    firsts = [int(merged.hi[i]) << 64 | int(merged.lo[i]) for i in picked.tolist()]
    lasts = [f | ((1 << (bits - int(merged.length[i]))) - 1) for f, i in zip(firsts, picked.tolist(), strict=True)]
    return np.array(firsts, dtype=object), np.array(lasts, dtype=object)


def _ranked(
    merged: _Merged,
    pairs: _Pairs,
    keep: Column,
    sources: list[str],
    objects: list[Indicator],
    fired: Column | None = None,
) -> RankedTable:
    everything = bool(keep.all())
    rows = np.flatnonzero(keep)
    sel: slice | Column = slice(None) if everything else rows

    def keys(hits: Column | None) -> list[Column]:
        evidence = [-merged.weight[sel].astype(np.int32), -merged.score[sel].astype(np.int32)]
        evidence += [-merged.n_sources[sel], ~merged.cdr[sel]]
        value = _value_keys(merged.version[sel], merged.hi[sel], merged.lo[sel], merged.length[sel])
        return [*value, -merged.last_seen[sel], *([] if hits is None else [~hits[sel]]), *evidence]

    ranked = _lexsort(keys(fired))
    order = rows if ranked is None else rows[ranked]
    without: Column | None = None
    if fired is not None and bool(fired[rows].any()):
        plain = _lexsort(keys(None))
        rank_plain = np.empty(len(merged.version), dtype=np.int64)
        rank_plain[rows if plain is None else rows[plain]] = np.arange(len(rows))
        without = rank_plain[order]

    def take(column: Column) -> Column:
        return column if everything and ranked is None else column[order]

    rank_of_row = np.full(len(merged.version), -1, dtype=np.int64)
    rank_of_row[order] = np.arange(len(order))
    pair_rank = rank_of_row[pairs.row]
    live = pair_rank >= 0
    return RankedTable(
        version=take(merged.version),
        hi=take(merged.hi),
        lo=take(merged.lo),
        length=take(merged.length),
        cdr=take(merged.cdr),
        expires=take(merged.expires),
        obj=take(merged.obj),
        pair_row=pair_rank[live],
        pair_source=pairs.source[live],
        sources=sources,
        objects=objects,
        fired=None if fired is None else fired[order],
        rank_without_hits=without,
    )

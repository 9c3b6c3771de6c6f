"""The provenance index of a bundle (``provenance.json``, schema ``provenance-index.schema.json``):
for every prefix, port and behaviour rule the bundle's objects hold, where it came from (the feeds,
the CDR finding ids, the categories) and which objects hold it. Rendered with the policies
(``policy.provenance.build_index``), listed and signed in the manifest like every bundle file, and
read by whatever attributes a Tetragon or Hubble event back to an indicator (``cdr_policy.hits``).

Compact and bounded, whatever the budgets (250,000 prefixes per engine):

- ``classes``: the distinct provenances, each once: ``feeds`` (every source but ``cdr``),
  ``findings`` (CDR finding ids, at most ``MAX_FINDINGS``; ``findings_more`` counts the rest),
  ``categories``, the primary ``category`` (the best-ranked entry's) and ``source`` kind
  (``cdr``, ``feed`` or ``reputation``: the strongest of the sources). At most ``MAX_CLASSES``:
  feed prefixes share their feeds' class, CDR prefixes carry their own finding ids (past the cap,
  the lowest-ranked keep their feeds and categories and count their finding ids in ``findings_more``).
- ``blocklists``: per blocklist group (``cdr``, ``threat-intel``) and prefix list, the sorted,
  aggregated prefixes of the objects (``netprefix.vector`` fields, format ``planes-zlib-v1``),
  the class of each (``classes``: big-endian uint32 per prefix, zlib, base64, format
  ``u32-zlib-v1``, with the digest of the uncompressed bytes), and the objects holding them, each
  with its ``first`` prefix and ``count`` (a Tetragon blocklist is split in parts; a Cilium policy
  holds all of its groups'). Both engines share one list when their budgets cut the same.
- ``ports``: the port indicators (``tcp/4444``) with their class and the objects matching them.
- ``rules``: the behaviour rules with their class and their objects.
- ``detail``: what the channel lets a cluster report of the workloads behind its hits (``off``,
  ``namespace``, ``workload`` or ``pod``).

One typed reader and writer (``ProvenanceIndex.to_bytes`` / ``read_index``): the reader checks
the schema, every payload (size, digest, order), every class reference and object range, and that
an object name is not used twice by one engine; a bad byte refuses the whole index.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from cdr_policy import jsonio, layout
from cdr_policy.bundle.manifest import Manifest, VerificationError
from cdr_policy.netprefix import BITS, to_string
from cdr_policy.netprefix.vector import V4, V6, PackError, from_fields, to_fields
from cdr_policy.schemas import load_checked
from cdr_policy.storage import Store, TooLarge

PATH = layout.PROVENANCE_FILE
SCHEMA = "provenance-index.schema.json"
SCHEMA_VERSION = 1
CLASS_FORMAT = "u32-zlib-v1"
ENGINES = ("tetragon", "cilium")
GROUPS = ("cdr", "threat-intel")
SOURCE_KINDS = ("cdr", "feed", "reputation")
MAX_CLASSES = 16_384
MAX_FINDINGS = 20
# A reader takes no more of an index than this (the largest budgets, with every class full, stay
# well below it).
MAX_INDEX_BYTES = 64 << 20


@dataclass(frozen=True)
class Provenance:
    """One class: where the indicators that share it came from."""

    feeds: tuple[str, ...]
    findings: tuple[str, ...]
    categories: tuple[str, ...]
    category: str
    source: str
    findings_more: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "feeds": list(self.feeds),
            "findings": list(self.findings),
            "findings_more": self.findings_more,
            "categories": list(self.categories),
            "category": self.category,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provenance:
        return cls(
            feeds=tuple(d["feeds"]),
            findings=tuple(d["findings"]),
            categories=tuple(d["categories"]),
            category=d["category"],
            source=d["source"],
            findings_more=d["findings_more"],
        )


@dataclass(frozen=True)
class ObjectRef:
    """An object of the bundle as the engines name it in their events."""

    engine: str
    name: str
    namespace: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "name": self.name, "namespace": self.namespace}


@dataclass(frozen=True)
class Holder:
    """An object holding the prefixes ``[first, first + count)`` of its blocklist."""

    ref: ObjectRef
    first: int
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.ref.to_dict(), "first": self.first, "count": self.count}


@dataclass(frozen=True)
class Blocklist:
    """One blocklist group's sorted, aggregated prefixes (IPv4, then IPv6), each one's class, and
    the objects holding them."""

    group: str
    ipv4: V4
    ipv6: V6
    classes: npt.NDArray[np.uint32]
    holders: tuple[Holder, ...]

    def __len__(self) -> int:
        return len(self.ipv4) + len(self.ipv6)

    def prefix(self, index: int) -> str:
        if index < len(self.ipv4):
            return to_string(4, int(self.ipv4.networks[index]), int(self.ipv4.lengths[index]))
        i = index - len(self.ipv4)
        return to_string(6, self.ipv6.networks[i], self.ipv6.lengths[i])

    def find(self, version: int, address: int) -> int | None:
        """The index of the prefix holding ``address``, or None."""
        if version == 4:
            i = int(np.searchsorted(self._v4_first, address, side="right")) - 1
            return i if i >= 0 and address <= int(self._v4_last[i]) else None
        j = bisect.bisect_right(self.ipv6.networks, address) - 1
        if j < 0:
            return None
        network, length = self.ipv6.networks[j], self.ipv6.lengths[j]
        return len(self.ipv4) + j if address <= network | ((1 << (BITS[6] - length)) - 1) else None

    @cached_property
    def _v4_first(self) -> npt.NDArray[np.int64]:
        return self.ipv4.intervals()[0]

    @cached_property
    def _v4_last(self) -> npt.NDArray[np.int64]:
        return self.ipv4.intervals()[1]


@dataclass(frozen=True)
class Port:
    """A port indicator (``tcp/4444``), its class and the objects that match it."""

    port: str
    klass: int
    objects: tuple[ObjectRef, ...]


@dataclass(frozen=True)
class Rule:
    """A behaviour rule, its class and its objects."""

    rule: str
    klass: int
    objects: tuple[ObjectRef, ...]


@dataclass(frozen=True)
class Held:
    """What one object of the bundle holds: a rule, or a range of a blocklist and ports."""

    rule: Rule | None = None
    blocklist: Blocklist | None = None
    holder: Holder | None = None
    ports: tuple[Port, ...] = ()


_NOTHING = Held()


@dataclass(frozen=True)
class ProvenanceIndex:
    channel: str
    detail: str
    classes: tuple[Provenance, ...]
    blocklists: tuple[Blocklist, ...] = ()
    ports: tuple[Port, ...] = ()
    rules: tuple[Rule, ...] = ()
    _held: dict[tuple[str, str], Held] = field(default_factory=dict, init=False, repr=False, compare=False)
    _reused: list[str] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        held = self._held
        for b in self.blocklists:
            for h in b.holders:
                key = (h.ref.engine, h.ref.name)
                if key in held:
                    self._reused.append(f"{h.ref.engine} object {h.ref.name}")
                held[key] = Held(blocklist=b, holder=h)
        for p in self.ports:
            for ref in p.objects:
                now = held.get((ref.engine, ref.name), _NOTHING)
                held[ref.engine, ref.name] = Held(now.rule, now.blocklist, now.holder, (*now.ports, p))
        for r in self.rules:
            for ref in r.objects:
                if (ref.engine, ref.name) in held:
                    self._reused.append(f"{ref.engine} object {ref.name}")
                held[ref.engine, ref.name] = Held(rule=r)

    def holds(self, engine: str, name: str) -> Held:
        """What the object ``name`` of ``engine`` holds (nothing: not an object of this bundle)."""
        return self._held.get((engine, name), _NOTHING)

    def knows(self, engine: str, name: str) -> bool:
        """Whether ``name`` is an object of ``engine`` in this bundle."""
        return (engine, name) in self._held

    def objects(self) -> set[tuple[str, str]]:
        """Every (engine, name) of the bundle's objects that an event can name."""
        return set(self._held)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "channel": self.channel,
            "detail": self.detail,
            "classes": [c.to_dict() for c in self.classes],
            "blocklists": [
                {
                    "group": b.group,
                    "prefixes": to_fields(b.ipv4, b.ipv6),
                    "classes": _pack_u32(b.classes),
                    "objects": [h.to_dict() for h in b.holders],
                }
                for b in self.blocklists
            ],
            "ports": [
                {"port": p.port, "class": p.klass, "objects": [o.to_dict() for o in p.objects]} for p in self.ports
            ],
            "rules": [
                {"rule": r.rule, "class": r.klass, "objects": [o.to_dict() for o in r.objects]} for r in self.rules
            ],
        }

    def to_bytes(self) -> bytes:
        """The bundle file (canonical JSON: the same index, the same bytes)."""
        return jsonio.dumps(self.to_dict())


def read_index(data: bytes, where: str = PATH) -> ProvenanceIndex:
    """The index in ``data`` after every check (see the module docstring); ``VerificationError``
    (code ``bad_object``) names what is wrong, never the content."""
    if len(data) > MAX_INDEX_BYTES:
        raise _refused(where, f"larger than {MAX_INDEX_BYTES} bytes")
    try:
        doc = load_checked(data, SCHEMA)
    except ValueError as exc:
        raise _refused(where, str(exc)) from exc
    classes = tuple(Provenance.from_dict(c) for c in doc["classes"])
    n_classes = len(classes)
    blocklists = []
    for i, b in enumerate(doc["blocklists"]):
        try:
            ipv4, ipv6 = from_fields(b["prefixes"])
        except PackError as exc:
            raise _refused(where, f"blocklists/{i}/prefixes: {exc}") from exc
        n = len(ipv4) + len(ipv6)
        klass = _unpack_u32(b["classes"], n, f"{where}: blocklists/{i}/classes")
        if n and int(np.max(klass)) >= n_classes:
            raise _refused(where, f"blocklists/{i}/classes names a class that does not exist")
        holders = tuple(Holder(_ref(o), o["first"], o["count"]) for o in b["objects"] if o["first"] + o["count"] <= n)
        if len(holders) != len(b["objects"]):
            raise _refused(where, f"blocklists/{i}/objects: a range goes past the {n} prefixes")
        blocklists.append(Blocklist(b["group"], ipv4, ipv6, klass, holders))
    ports = tuple(Port(p["port"], p["class"], tuple(_ref(o) for o in p["objects"])) for p in doc["ports"])
    rules = tuple(Rule(r["rule"], r["class"], tuple(_ref(o) for o in r["objects"])) for r in doc["rules"])
    if any(p.klass >= n_classes for p in ports) or any(r.klass >= n_classes for r in rules):
        raise _refused(where, "a port or rule names a class that does not exist")
    index = ProvenanceIndex(doc["channel"], doc["detail"], classes, tuple(blocklists), ports, rules)
    _check_names(index, where)
    return index


def load_published(store: Store, manifest: Manifest) -> ProvenanceIndex | None:
    """The index of a published bundle whose manifest is verified already (None: the bundle has
    none, rendered before indexes existed): read no further than its listed size, then checked
    against the listed size and SHA-256 and read (``read_index``). VerificationError or
    StorageError when it cannot be used."""
    entry = next((e for e in manifest.files if e.path == PATH), None)
    if entry is None:
        return None
    key = layout.published_file_key(manifest.channel, manifest.digest, PATH)
    try:
        data = store.get(key, max_bytes=entry.size).data
    except TooLarge as exc:
        raise VerificationError("too_large", f"file mismatch: {PATH} is larger than listed") from exc
    check_listed(manifest, data)
    return read_index(data, key)


def check_listed(manifest: Manifest, data: bytes) -> None:
    """VerificationError unless ``data`` is the index ``manifest`` lists (its size and SHA-256)."""
    entry = next((e for e in manifest.files if e.path == PATH), None)
    if entry is None or len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise VerificationError("file_mismatch", f"file mismatch: {PATH} is not the file the manifest lists")


def _check_names(index: ProvenanceIndex, where: str) -> None:
    """An object holds one range of one blocklist at most, and a rule object nothing else."""
    if index._reused:
        raise _refused(where, f"the {index._reused[0]} is listed for more than one purpose")


def _ref(o: dict[str, Any]) -> ObjectRef:
    return ObjectRef(o["engine"], o["name"], o["namespace"])


def _refused(where: str, why: str) -> VerificationError:
    return VerificationError("bad_object", f"{where}: provenance index refused: {why}")


def _pack_u32(values: npt.NDArray[np.uint32]) -> dict[str, Any]:
    raw = np.asarray(values, dtype=">u4").tobytes()
    return {
        "format": CLASS_FORMAT,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "data": base64.b64encode(zlib.compress(raw, 6)).decode("ascii"),
    }


def _unpack_u32(doc: dict[str, Any], count: int, where: str) -> npt.NDArray[np.uint32]:
    size = 4 * count
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(base64.b64decode(doc["data"], validate=True), size + 1)
    except (binascii.Error, zlib.error) as exc:
        raise VerificationError("bad_object", f"{where}: not base64 zlib data") from exc
    if len(raw) != size or not inflater.eof or inflater.unconsumed_tail:
        raise VerificationError("bad_object", f"{where}: holds other than {count} class numbers")
    if hashlib.sha256(raw).hexdigest() != doc["sha256"]:
        raise VerificationError("bad_object", f"{where}: SHA-256 does not match")
    return np.frombuffer(raw, dtype=">u4").astype(np.uint32)

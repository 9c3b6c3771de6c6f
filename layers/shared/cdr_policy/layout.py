"""Every key and prefix of the two buckets (or of a local state folder), in one place.

The state store (state bucket, or ``--state-dir`` locally) holds what the stages read and write
between runs; the distribution store holds what the agents read. Nothing else in the library spells
a key: it calls the functions below. :data:`STATE_KEYS` and :data:`DIST_KEYS` describe the layout for
``docs/ARCHITECTURE.md`` (a test keeps the page in step) and :data:`WRITE_PREFIXES` names what each
writer may write (a test checks the template's IAM resource prefixes against it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

# -- names that become parts of keys --------------------------------------------------------------
_CHANNEL_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_channel_name(value: object) -> bool:
    """A channel name: a DNS label of at most 32 characters (it is a key segment and a label value)."""
    return isinstance(value, str) and _CHANNEL_NAME.fullmatch(value) is not None


def is_digest(value: object) -> bool:
    """A bundle digest: 64 lowercase hex digits (sha256)."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


# -- prefixes --------------------------------------------------------------------------------------
CONFIG = "config/"
CRDS = "crds/"
APPROVALS = "approvals/"
STATE_CDR = "state/cdr/"
RAW_CDR = "raw/cdr/"
INDICATORS = "indicators/"  # every write below raises an S3 notification to RenderQueue
INDICATORS_CDR = "indicators/cdr/"
INDICATORS_FEEDS = "indicators/feeds/"
INDICATORS_REPUTATION = "indicators/reputation/"
STATE_FEEDS = "state/feeds/"
RAW_FEEDS = "raw/feeds/"
STATE_ABUSEIPDB = "state/abuseipdb/"
BUNDLES = "bundles/"
LAST_GOOD = "last-good/"
RENDERED_CHANNELS = "bundles/channels/"
HITS = "hits/"
CHANNELS = "channels/"
STATUS = "status/"
PROMOTION = "promotion/"

# -- state store: operator documents ---------------------------------------------------------------
CHANNELS_CONFIG = f"{CONFIG}channels.yaml"
FEEDS_CONFIG = f"{CONFIG}feeds.yaml"
CATEGORIES_CONFIG = f"{CONFIG}categories.yaml"


def approval_key(channel: str, digest: str, previous: str | None) -> str:
    """An approver's signed grant of bundle ``digest`` as the replacement of ``previous`` (None: the
    channel has no usable bundle), for a bundle held back by the change budget."""
    return f"{APPROVALS}{channel}/{digest}/{previous or 'none'}.json"


# -- state store: CdrFetch -------------------------------------------------------------------------
CDR_CHECKPOINT = f"{STATE_CDR}checkpoint.json"
CDR_SEEN = f"{STATE_CDR}seen.json"
CDR_LAST_RUN = f"{STATE_CDR}last-run.json"
CDR_RATE = f"{STATE_CDR}rate-limit.json"
CDR_SET = f"{INDICATORS_CDR}current.json"

# -- state folder: the CLI's controller mode (local only) ----------------------------------------
CONTROLLER_STATUS = "state/controller/status.json"


def raw_cdr_page_key(window_start: datetime, page: int) -> str:
    """A raw findings page, gzipped, kept for audit: ``raw/cdr/2025/01/27/20250127T085441.396Z-00001.json.gz``."""
    ws = window_start.astimezone(UTC) if window_start.tzinfo else window_start.replace(tzinfo=UTC)
    stamp = ws.strftime("%Y%m%dT%H%M%S.") + f"{ws.microsecond // 1000:03d}Z"
    return f"{RAW_CDR}{ws:%Y/%m/%d}/{stamp}-{page:05d}.json.gz"


# -- state store: FeedSync -------------------------------------------------------------------------
ABUSEIPDB_CACHE = f"{STATE_ABUSEIPDB}cache.json"


def feed_set_name(key: str) -> str | None:
    """The feed whose set ``key`` is (``indicators/feeds/<name>.json``); None for any other key."""
    name = key[len(INDICATORS_FEEDS) :].removesuffix(".json")
    return name if key.startswith(INDICATORS_FEEDS) and key == feed_set_key(name) and "/" not in name else None


def feed_set_key(name: str) -> str:
    return f"{INDICATORS_FEEDS}{name}.json"


def reputation_set_key(name: str) -> str:
    return f"{INDICATORS_REPUTATION}{name}.json"


def feed_state_key(name: str) -> str:
    return f"{STATE_FEEDS}{name}.json"


def feed_last_good_key(name: str) -> str:
    return f"{RAW_FEEDS}{name}/last-good"


# -- state store: Render ---------------------------------------------------------------------------
def bundle_file_key(digest: str, path: str) -> str:
    """A rendered file (state store) or a published one (distribution store)."""
    return f"{BUNDLES}{digest}/{path}"


# The provenance index's path in every bundle (``bundle.provenance``), beside the policy files.
PROVENANCE_FILE = "provenance.json"


# Render's report of a bundle (what was kept, dropped and why), beside its files: not a policy object.
REPORT_FILE = "report.json"
# The unsigned manifest's path in a rendered bundle: no bundle file may take it.
BUNDLE_MANIFEST_FILE = "bundle.json"
# A promoting channel's decisions (Render's), beside its bundle's files: not one of them.
PROMOTION_DECISIONS_FILE = "promotion.json"


def promotion_decisions_key(digest: str) -> str:
    """A promoting channel's decisions, written by Render beside its bundle."""
    return bundle_file_key(digest, PROMOTION_DECISIONS_FILE)


def bundle_manifest_key(digest: str) -> str:
    """The unsigned manifest Render writes beside a bundle's files, last."""
    return bundle_file_key(digest, BUNDLE_MANIFEST_FILE)


def rendered_digest(key: str) -> str | None:
    """The digest whose unsigned manifest ``key`` is (``bundles/<digest>/bundle.json``); None for any
    other key."""
    digest = key[len(BUNDLES) :].partition("/")[0]
    return digest if is_digest(digest) and key == bundle_manifest_key(digest) else None


def latest_render_key(channel: str) -> str:
    """The channel's latest rendered digest: Publish skips requests for older ones."""
    return f"{RENDERED_CHANNELS}{channel}.json"


LAST_GOOD_INDEX = f"{LAST_GOOD}index.json"


def last_good_set_key(set_key: str) -> str:
    """Render's last good copy of an indicator set (``last-good/indicators/…``), never under
    ``indicators/``: it raises no notification and is not read as a set of its own."""
    return f"{LAST_GOOD}{set_key}"


# -- state store: HitsRollup -----------------------------------------------------------------------
FLEET_HITS = f"{HITS}fleet.json"


# -- distribution store ----------------------------------------------------------------------------
def channel_prefix(channel: str) -> str:
    """Everything a channel's clusters read: its manifest, history and bundle files. A cluster's
    read grant is this prefix (``deploy/consumer/template.yaml``), so nothing of another channel is
    readable with it."""
    return f"{CHANNELS}{channel}/"


def published_file_key(channel: str, digest: str, path: str) -> str:
    """A published bundle file, under its channel's prefix."""
    return f"{channel_prefix(channel)}bundles/{digest}/{path}"


def channel_manifest_key(channel: str) -> str:
    """The signed manifest a channel's agents poll (written last)."""
    return f"{channel_prefix(channel)}manifest.json"


def history_prefix(channel: str) -> str:
    return f"{channel_prefix(channel)}history/"


def history_key(channel: str, created_at: str, digest: str) -> str:
    return f"{history_prefix(channel)}{created_at}-{digest}.json"


def history_entry(channel: str, key: str) -> tuple[str, str] | None:
    """``(created_at, digest)`` of the channel's history entry ``key``; None for any other key. Keys of
    one channel sort by ``created_at``, then digest."""
    created_at, _, digest = key[len(history_prefix(channel)) :].removesuffix(".json").rpartition("-")
    if created_at and is_digest(digest) and key == history_key(channel, created_at, digest):
        return created_at, digest
    return None


def status_key(cluster_id: str) -> str:
    return f"{STATUS}{cluster_id}.json"


def status_cluster(key: str) -> str | None:
    """The cluster whose status ``key`` is (``status/<cluster_id>.json``); None for any other key."""
    cluster = key[len(STATUS) :].removesuffix(".json")
    return cluster if cluster and "/" not in cluster and key == status_key(cluster) else None


def promotion_report_key(channel: str) -> str:
    """What Publish found of a promoting channel's decisions, for ``cdr-policy channel evidence``."""
    return f"{PROMOTION}{channel}.json"


# -- the layout as a table -------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyFamily:
    pattern: str
    writer: str
    content: str


STATE_KEYS: tuple[KeyFamily, ...] = (
    KeyFamily(CHANNELS_CONFIG, "operator", "`channels:` list of channel settings; defaults if absent"),
    KeyFamily(FEEDS_CONFIG, "operator", "feed list (`feeds:`), replaces (or with `mode: extend` extends) the built-in"),
    KeyFamily(CATEGORIES_CONFIG, "operator", "category mapping replacing the shipped one"),
    KeyFamily(f"{CRDS}…", "operator", "CRD YAML files of the target clusters (schema checks in Render and Publish)"),
    KeyFamily(
        approval_key("<channel>", "<digest>", "<previous-digest>"),
        "approver",
        "signed grant of a held bundle as the replacement of the one the channel ships; used once "
        "(Publish deletes it when it ships); writable only by the approver role",
    ),
    KeyFamily(CDR_CHECKPOINT, "CdrFetch", "last fully stored window end"),
    KeyFamily(CDR_SEEN, "CdrFetch", "uuids already merged (bounded by the look-back), commit marker"),
    KeyFamily(CDR_LAST_RUN, "CdrFetch", "the last run's summary (`cdr-run.schema.json`)"),
    KeyFamily(
        CDR_RATE,
        "CdrFetch",
        "times of the Qualys requests of the last hour, and until when the gateway asked to wait (request budget)",
    ),
    KeyFamily(f"{RAW_CDR}<yyyy>/<mm>/<dd>/<window-start>-<page>.json.gz", "CdrFetch", "raw findings pages (audit)"),
    KeyFamily(CDR_SET, "CdrFetch", "indicator set `source: cdr` (entries + behaviours), merged with TTL"),
    KeyFamily(feed_state_key("<name>"), "FeedSync", "ETag / Last-Modified, last good count, last status"),
    KeyFamily(feed_last_good_key("<name>"), "FeedSync", "last good body (kept when a download fails the gate)"),
    KeyFamily(feed_set_key("<name>"), "FeedSync", "indicator set `source: feed:<name>`"),
    KeyFamily(ABUSEIPDB_CACHE, "FeedSync", "per-IP reputation cache with TTL"),
    KeyFamily(reputation_set_key("abuseipdb"), "FeedSync", "indicator set `source: abuseipdb`"),
    KeyFamily(
        bundle_file_key("<digest>", "…"),
        "Render",
        "policy files, `report.json`, a promoting channel's `promotion.json` (its decisions), then `bundle.json` last",
    ),
    KeyFamily(latest_render_key("<channel>"), "Render", "the channel's latest rendered digest"),
    KeyFamily(
        last_good_set_key(f"{INDICATORS}…"),
        "Render",
        "last good copy of each indicator set (the bytes that last read back whole), used while the set is unreadable",
    ),
    KeyFamily(
        LAST_GOOD_INDEX, "Render", "SHA-256 and copy time of each last good copy; since when a set is unreadable"
    ),
    KeyFamily(
        FLEET_HITS,
        "HitsRollup",
        "what fired in the fleet (addresses, rules, ports; `fleet-hits.schema.json`), from the clusters' "
        "statuses checked against their channels' bundles; Render ranks with it",
    ),
    KeyFamily(
        CONTROLLER_STATUS,
        "`cdr-policy` controller mode (local state folder only)",
        "health after every run: last run, last good run, failures in a row (`controller-status.schema.json`)",
    ),
)

DIST_KEYS: tuple[KeyFamily, ...] = (
    KeyFamily(
        published_file_key("<channel>", "<digest>", "<file>"),
        "Publish",
        "policy files (copied first), under the channel so that a cluster reads only its channel",
    ),
    KeyFamily(
        channel_manifest_key("<channel>"),
        "Publish",
        "signed manifest, after the files; conditional on the one it replaces (`If-Match` / `If-None-Match: *`)",
    ),
    KeyFamily(
        history_key("<channel>", "<created_at>", "<digest>"),
        "Publish",
        "every manifest published, written after the channel manifest (rollback)",
    ),
    KeyFamily(
        promotion_report_key("<channel>"),
        "Publish",
        "a promoting channel's pending changes, each with its decision (promote, wait, hold), reasons and "
        "evidence, as Publish last verified them (`promotion.schema.json`; `cdr-policy channel evidence`); "
        "no cluster reads it",
    ),
    KeyFamily(
        status_key("<cluster-id>"),
        "agent",
        "agent status (with the node readers' hits), writable only by that cluster's role (`deploy/cluster-access`)",
    ),
)

# What each writer may write: (store, prefixes). The template's IAM statements grant exactly these.
WRITE_PREFIXES: dict[str, tuple[str, tuple[str, ...]]] = {
    "CdrFetch": ("state", (RAW_CDR, STATE_CDR, INDICATORS_CDR)),
    "FeedSync": ("state", (RAW_FEEDS, STATE_FEEDS, INDICATORS_FEEDS, STATE_ABUSEIPDB, INDICATORS_REPUTATION)),
    "Render": ("state", (BUNDLES, LAST_GOOD)),
    "Publish": ("dist", (CHANNELS, PROMOTION)),
    "HitsRollup": ("state", (HITS,)),
    "agent": ("dist", (STATUS,)),
    "approver": ("state", (APPROVALS,)),
}


def markdown_table(families: tuple[KeyFamily, ...]) -> str:
    """The layout as the Markdown table ``docs/ARCHITECTURE.md`` shows."""
    rows = ["| Key | Written by | Content |", "|---|---|---|"]
    rows += [f"| `{f.pattern}` | {f.writer} | {f.content} |" for f in families]
    return "\n".join(rows)

"""Where bundles and channel manifests live in the state and distribution stores."""

from __future__ import annotations

BUNDLES = "bundles"
CHANNELS = "channels"
STATUS = "status"


def bundle_manifest_key(digest: str) -> str:
    """The unsigned manifest Render writes beside a bundle's files (state store)."""
    return f"{BUNDLES}/{digest}/bundle.json"


def latest_render_key(channel: str) -> str:
    """The channel's latest rendered digest (state store): Publish skips requests for older ones."""
    return f"{BUNDLES}/channels/{channel}.json"


def bundle_file_key(digest: str, path: str) -> str:
    return f"{BUNDLES}/{digest}/{path}"


def channel_manifest_key(channel: str) -> str:
    """The signed manifest a channel's agents poll (distribution store, written last)."""
    return f"{CHANNELS}/{channel}/manifest.json"


def history_prefix(channel: str) -> str:
    return f"{CHANNELS}/{channel}/history/"


def history_key(channel: str, created_at: str, digest: str) -> str:
    return f"{history_prefix(channel)}{created_at}-{digest}.json"


def status_key(cluster_id: str) -> str:
    return f"{STATUS}/{cluster_id}.json"

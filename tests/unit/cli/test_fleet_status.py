"""``fleet status`` lists what each cluster itself reported, and nothing planted beside it."""

from __future__ import annotations

from datetime import UTC, datetime

from cdr_policy import jsonio, layout
from cdr_policy.cli.fleet import MAX_STATUS_BYTES, fleet_status
from cdr_policy.storage import open_store

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def status(cluster: str, channel: str = "prod") -> bytes:
    return jsonio.dumps(
        {
            "cluster_id": cluster,
            "channel": channel,
            "applied_digest": "ab" * 32,
            "applied_at": "2026-12-04T11:00:00Z",
            "last_poll": {"at": "2026-12-04T11:59:00Z", "result": "unchanged", "detail": ""},
            "apply_errors": [],
        }
    )


def test_every_cluster_is_listed_and_nothing_planted(tmp_path):
    dist = open_store(str(tmp_path))
    for i in range(40):  # more than the readers working at once
        dist.put(layout.status_key(f"c{i:02d}"), status(f"c{i:02d}"))
    dist.put(layout.status_key("victim"), status("intruder"))  # a document under another cluster's key
    dist.put(layout.status_key("huge"), status("huge") + b" " * MAX_STATUS_BYTES)  # not an agent's
    dist.put(layout.status_key("garbled"), b"<html>")

    rows = fleet_status(dist, now=NOW)

    assert [r["cluster_id"] for r in rows] == [f"c{i:02d}" for i in range(40)]
    assert rows[0]["applied_age_s"] == 3600 and rows[0]["behind"] is True  # prod ships nothing here

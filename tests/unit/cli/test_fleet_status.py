"""``fleet status`` and ``channel list`` list what each cluster and channel itself wrote, and nothing
planted beside it: one nested, oversized or mistyped document is skipped and named by its key (never
by its content), the others are shown (issue 20 point 5, the fleet-command half)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cdr_policy import jsonio, layout
from cdr_policy.bundle.signing import LocalSigner
from cdr_policy.cli import main
from cdr_policy.cli.fleet import MAX_STATUS_BYTES, FleetStatusRow, fleet_status
from cdr_policy.stages.publish import publish_bundle
from cdr_policy.storage import LocalStore, open_store
from cdr_policy.timeutil import utcnow
from tests.unit.bundle.conftest import key_pair, signer  # noqa: F401 (shared fixtures)
from tests.unit.bundle.factory import ips, network_bundle, render

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SECRET = "hunter2-planted"
NESTED = b"[" * 100_000 + b"]" * 100_000  # 200 kB of brackets


def status(cluster: str, channel: str = "prod", **fields: object) -> dict[str, object]:
    """A status document as an agent writes it (``agent-status.schema.json``)."""
    return {
        "schema_version": 1,
        "cluster_id": cluster,
        "channel": channel,
        "agent_version": "0.1.0",
        "applier": "directory /x",
        "applied_digest": "ab" * 32,
        "applied_generation": 3,
        "applied_at": "2026-12-04T11:00:00Z",
        "applied_expires_at": "2026-12-07T11:00:00Z",
        "last_poll": {"at": "2026-12-04T11:59:00Z", "result": "unchanged", "detail": "manifest unchanged (ETag)"},
        "verification": {"ok": True, "code": None, "reason": None, "digest": "ab" * 32, "at": "2026-12-04T11:00:00Z"},
        "objects": {"applied": 17, "deleted": 0},
        "apply_errors": [],
        "drift": None,
        **fields,
    }


PLANTED = {
    "nested": NESTED,
    "huge": jsonio.dumps(status("huge")) + b" " * MAX_STATUS_BYTES,
    "garbled": f"<html>{SECRET}".encode(),
    "yesterday": jsonio.dumps(status("yesterday", applied_at="yesterday", channel=SECRET)),
    "poll-list": jsonio.dumps(status("poll-list", last_poll=[SECRET])),
    "errors-number": jsonio.dumps(status("errors-number", apply_errors=7)),
    "bad-channel": jsonio.dumps(status("bad-channel", channel="../../" + SECRET)),
    "victim": jsonio.dumps(status("intruder")),  # a document under another cluster's key
    "not-a-dict": b"[1, 2, 3]",
}


def test_every_cluster_is_listed_and_every_planted_document_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dist = open_store(str(tmp_path))
    for i in range(40):  # more than the readers working at once
        dist.put(layout.status_key(f"c{i:02d}"), jsonio.dumps(status(f"c{i:02d}")))
    for key, data in PLANTED.items():
        dist.put(layout.status_key(key), data)

    rows = fleet_status(dist, now=NOW)

    assert [r.cluster_id for r in rows] == [f"c{i:02d}" for i in range(40)]
    assert rows[0].applied_age_s == 3600 and rows[0].behind is True  # prod ships nothing here
    err = capsys.readouterr().err
    for key in PLANTED:
        assert f"cdr-policy: warning: skipped status/{key}.json: " in err
    assert SECRET not in err and "[[[" not in err


def test_fleet_status_through_the_cli_shows_the_others(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dist = LocalStore(tmp_path / "dist")
    dist.put(layout.status_key("good"), jsonio.dumps(status("good")))
    for key, data in PLANTED.items():
        dist.put(layout.status_key(key), data)

    assert main(["fleet", "status", f"--dist={dist.root}"], {}) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].startswith("good ") and len(out.splitlines()) == 2
    assert len(err.splitlines()) == len(PLANTED) and "Traceback" not in err and SECRET not in out + err

    assert main(["fleet", "status", f"--dist={dist.root}", "--json"], {}) == 0
    rows = [FleetStatusRow.from_json(r) for r in json.loads(capsys.readouterr().out)]
    assert [r.cluster_id for r in rows] == ["good"]


@pytest.fixture
def shipped(tmp_path: Path, signer: LocalSigner) -> tuple[LocalStore, LocalStore]:  # noqa: F811
    """A distribution folder where channel prod ships a signed bundle."""
    state, dist = LocalStore(tmp_path / "state"), LocalStore(tmp_path / "dist")
    digest = render(state, network_bundle(ips(0, 10)), created=utcnow())
    publish_bundle(state, dist, channel="prod", digest=digest, signer=signer, now=utcnow(), change_budget_percent=50)
    return state, dist


@pytest.mark.parametrize(
    "planted",
    [
        NESTED,
        jsonio.dumps({"schema_version": 1, "channel": "staging", "created_at": "yesterday", "digest": SECRET}),
        b"\xff\xfe" + SECRET.encode(),
        b"{}" + b" " * (2 << 20),  # larger than any manifest
    ],
    ids=["nested", "mistyped", "not-utf8", "oversized"],
)
def test_channel_list_skips_a_malformed_manifest_and_shows_the_others(
    shipped: tuple[LocalStore, LocalStore], planted: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    _, dist = shipped
    dist.put(layout.channel_manifest_key("staging"), planted)

    assert main(["channel", "list", f"--dist={dist.root}"], {}) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["prod"]
    assert err.startswith("cdr-policy: warning: skipped channels/staging/manifest.json: not a valid manifest (")
    assert SECRET not in err and "Traceback" not in err

    assert main(["channel", "show", "staging", f"--dist={dist.root}"], {}) == 1
    err = capsys.readouterr().err
    assert err.startswith("cdr-policy: error: ") and "channels/staging/manifest.json is not a valid manifest" in err
    assert SECRET not in err


def test_publish_to_survives_planted_documents_in_the_distribution_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A nested, mistyped or oversized history entry, status or manifest beside the channel's:
    ``publish --to`` goes on (the planted entries are not ours: skipped)."""
    state, dist = LocalStore(tmp_path / "state"), tmp_path / "dist"
    assert main(["keygen", f"--out={tmp_path / 'keys'}"], {}) == 0
    publish = ["publish", f"--to={dist}", f"--key={tmp_path / 'keys/bundle-signing.pem'}", "--channel=prod"]
    publish.append(f"--state-dir={state.root}")

    def rendered(files: dict[str, bytes]) -> None:  # as Render leaves it: the bundle, then the pointer
        digest = render(state, files, created=utcnow())
        state.put(layout.latest_render_key("prod"), jsonio.dumps({"digest": digest}))

    rendered(network_bundle(ips(0, 10)))
    assert main(publish, {}) == 0
    history = dist / layout.history_prefix("prod")
    (history / f"9999-12-31T00:00:00Z-{'ab' * 32}.json").write_bytes(NESTED)
    (history / f"9999-12-31T00:00:01Z-{'cd' * 32}.json").write_bytes(jsonio.dumps({"generation": "yesterday"}))
    (dist / "status").mkdir()
    (dist / layout.status_key("x")).write_bytes(NESTED)
    (dist / "channels/staging").mkdir()
    (dist / layout.channel_manifest_key("staging")).write_bytes(NESTED)
    rendered(network_bundle(ips(0, 11)))
    capsys.readouterr()

    assert main(publish, {}) == 0
    out, err = capsys.readouterr()
    assert out.startswith("published: channel prod") and "Traceback" not in err
    assert json.loads((dist / layout.channel_manifest_key("prod")).read_text())["generation"] == 2

"""The Render stage on a local state store: what it writes, in which order, what it asks Publish to
do, and how it renders on through an unreadable indicator set (its last good copy)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cdr_policy import jsonio, layout
from cdr_policy.guards import NeverBlock
from cdr_policy.lambda_events import PublishRequest
from cdr_policy.last_good import MAX_UNREADABLE_DAYS
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.stages.render import PublishPort, RenderedChannel, run_render
from cdr_policy.storage import LocalStore
from cdr_policy.timeutil import iso
from fakes.stores import RecordingStore
from tests.unit.policy.factories import NOW, behaviour, cdr_set, compact, indicator

CHANNELS = [ChannelSettings(name="staging"), ChannelSettings(name="prod", action="Sigkill")]


@pytest.fixture
def state(tmp_path: Path) -> RecordingStore:
    store = RecordingStore(LocalStore(tmp_path))
    cdr = cdr_set([indicator("45.33.32.0/24")], [behaviour("container_escape")])
    store.put(layout.CDR_SET, jsonio.dumps_pretty(cdr.to_dict()))
    store.puts.clear()
    return store


def render(state: RecordingStore, publish: PublishPort | None = None, at: datetime = NOW) -> list[RenderedChannel]:
    rendered: list[RenderedChannel] = []
    summaries = run_render(
        state, channels=CHANNELS, now=at, guard=NeverBlock(), crds=None, publish=publish, each=rendered.append
    )
    assert summaries == [r.summary() for r in rendered]
    return rendered


def test_each_channel_gets_a_whole_bundle_written_pointer_last(state: RecordingStore) -> None:
    requests: list[PublishRequest] = []
    rendered = render(state, requests.append)

    assert [r.channel.name for r in rendered] == ["staging", "prod"] and all(r.changed for r in rendered)
    assert requests == [PublishRequest(r.channel.name, r.bundle.digest) for r in rendered]
    for r in rendered:
        keys = [k for k in state.puts if r.bundle.digest in k or k == layout.latest_render_key(r.channel.name)]
        assert keys[-3:] == [
            layout.bundle_file_key(r.bundle.digest, "report.json"),
            layout.bundle_manifest_key(r.bundle.digest),
            layout.latest_render_key(r.channel.name),
        ]
        assert set(keys[:-3]) == {layout.bundle_file_key(r.bundle.digest, p) for p in r.bundle.files}
        pointer = jsonio.loads(state.get(layout.latest_render_key(r.channel.name)).data)
        assert pointer["digest"] == r.bundle.digest
        assert r.summary().to_json() == {"channel": r.channel.name, "digest": r.bundle.digest, "changed": True}


def test_the_same_inputs_write_nothing_again_but_still_ask_for_a_publish(state: RecordingStore) -> None:
    first = render(state)
    state.puts.clear()
    requests: list[PublishRequest] = []
    again = render(state, requests.append)
    assert state.puts == [] and not any(r.changed for r in again)
    assert [r.bundle.digest for r in again] == [r.bundle.digest for r in first] and len(requests) == 2


def _feeds(state: RecordingStore, *names: str) -> None:
    from cdr_policy.feeds.persist import dump_set

    for name in names:
        state.put(layout.feed_set_key(name), dump_set(compact(name, ["185.220.0.0/24", "2a0b:f4c0::/32"], name)))


def test_an_unreadable_set_is_rendered_from_its_last_good_copy(state: RecordingStore) -> None:
    _feeds(state, "tor-exit", "feodo")
    good = render(state)
    key = layout.feed_set_key("tor-exit")
    copy = state.get(layout.last_good_set_key(key)).data
    assert copy == state.get(key).data  # the bytes that read back whole
    state.put(key, state.get(key).data[:-40])  # truncated by 40 bytes
    state.puts.clear()
    later = NOW + timedelta(hours=40)
    again = render(state, at=later)
    assert [r.bundle.digest for r in again] != []
    for before, after in zip(good, again, strict=True):  # the same policies, from the copy
        assert after.bundle.files == before.bundle.files and not after.changed
        [bad] = after.report.unreadable_sets
        assert bad["key"] == key and "is not JSON" in bad["error"]
        assert bad["kept"] == {"copied_at": iso(NOW), "sha256": hashlib.sha256(copy).hexdigest()}
        assert after.report.feeds["tor-exit"].entries == 2
    # the report beside the (unchanged) bundle says so; nothing else but the index was written
    assert sorted(state.puts) == sorted(
        [layout.LAST_GOOD_INDEX] + [layout.bundle_file_key(r.bundle.digest, "report.json") for r in again]
    )
    index = jsonio.loads(state.get(layout.LAST_GOOD_INDEX).data)["sets"]
    assert index[key]["unreadable_since"] == iso(later)


def test_a_set_unreadable_for_too_long_or_without_a_good_copy_is_left_out_and_named(state: RecordingStore) -> None:
    _feeds(state, "tor-exit")
    render(state)
    key = layout.feed_set_key("tor-exit")
    state.put(key, b"{ not json")
    render(state)  # the first render that finds it unreadable starts the clock
    after = NOW + timedelta(days=MAX_UNREADABLE_DAYS, minutes=1)
    [staging, _] = render(state, at=after)
    assert staging.report.unreadable_sets == [
        {"key": key, "error": staging.report.unreadable_sets[0]["error"], "kept": None}
    ]
    assert "tor-exit" not in staging.report.feeds
    never_good = layout.feed_set_key("new-feed")
    state.put(never_good, b"\x00" * 10)
    [staging, _] = render(state)
    assert {u["key"]: u["kept"] for u in staging.report.unreadable_sets}[never_good] is None


def test_a_tampered_copy_is_never_used(state: RecordingStore) -> None:
    _feeds(state, "tor-exit")
    render(state)
    key = layout.feed_set_key("tor-exit")
    state.put(layout.last_good_set_key(key), state.get(key).data.replace(b'"feed:tor-exit"', b'"feed:tor-exit" '))
    state.put(key, b"{}")
    [staging, _] = render(state)
    assert staging.report.unreadable_sets[0]["kept"] is None


def test_a_set_that_recovers_clears_the_report(state: RecordingStore) -> None:
    _feeds(state, "tor-exit")
    render(state)
    key = layout.feed_set_key("tor-exit")
    good = state.get(key).data
    state.put(key, good[:-40])
    render(state)
    state.put(key, good)
    state.puts.clear()
    recovered = render(state)
    assert all(not r.report.unreadable_sets for r in recovered)
    assert layout.LAST_GOOD_INDEX in state.puts  # recovery is recorded, and the reports rewritten
    assert "unreadable_since" not in jsonio.loads(state.get(layout.LAST_GOOD_INDEX).data)["sets"][key]


def test_feed_sets_past_the_ranking_cap_are_held_back_as_they_load(
    state: RecordingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for 3 feed prefixes, the c2 set ranks whole and the tor set by its first prefix; the
    report counts the rest per feed, with every set's full size, and the stored sets are untouched."""
    from cdr_policy.feeds.persist import dump_set
    from cdr_policy.policy import ranked

    monkeypatch.setattr(ranked, "MAX_RANKED_FEED_PREFIXES", 3)
    sets = [
        compact("tor", ["185.220.0.0/24", "185.220.1.0/24", "2a0b:f4c0::/32"], "tor"),
        compact("c2", ["91.92.93.94/32", "91.92.93.96/32"], "c2"),
    ]
    stored = {layout.feed_set_key(s.source.removeprefix("feed:")): dump_set(s) for s in sets}
    for key, data in stored.items():
        state.put(key, data)
    report = render(state)[0].report
    assert report.left_out_unranked == {"tor": 2}
    assert {name: feed.entries for name, feed in report.feeds.items()} == {"c2": 2, "tor": 3}
    assert all(state.get(key).data == data for key, data in stored.items())
    # the last good copies are the sets as stored, never what the render held of them
    assert all(state.get(layout.last_good_set_key(key)).data == data for key, data in stored.items())


def test_a_render_holds_one_channel_at_a_time(state: RecordingStore) -> None:
    """When a channel's render is handed out, nothing of the previous channel's is held any more
    (its policies and bundle are what grows with the budgets)."""
    import gc
    import weakref

    earlier: list[weakref.ref[object]] = []

    def each(rendered: RenderedChannel) -> None:
        gc.collect()
        assert [ref() for ref in earlier] == [None] * len(earlier)
        earlier.extend([weakref.ref(rendered), weakref.ref(rendered.bundle), weakref.ref(rendered.policies[0])])

    summaries = run_render(state, channels=CHANNELS, now=NOW, guard=NeverBlock(), crds=None, publish=None, each=each)
    assert [s.channel for s in summaries] == ["staging", "prod"] and len(earlier) == 6

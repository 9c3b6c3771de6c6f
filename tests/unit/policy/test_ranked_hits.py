"""Feedback from the fleet into the ranking: a feed entry holding an address that fired anywhere
ranks above those that never fired within its evidence class when a budget cuts; the report says
what that changed; CDR detections are never dropped for lack of hits; a stronger class still wins."""

from __future__ import annotations

import numpy as np

from cdr_policy.hits.fleet import Fired
from cdr_policy.netprefix.vector import V4, V6
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.policy.render import RenderResult
from tests.unit.policy.factories import cdr_set, feed_set, indicator, render


def _fired(*addresses: str) -> Fired:
    nets = sorted(int.from_bytes(bytes(int(x) for x in a.split(".")), "big") for a in addresses)
    return Fired(
        since="2026-01-03T16:00:00Z",
        until="2026-01-10T16:00:00Z",
        clusters=2,
        hits=len(addresses),
        refused=0,
        v4=V4(np.array(nets, dtype=np.uint32), np.full(len(nets), 32, dtype=np.uint8)),
        v6=V6([], b""),
        rules=(),
        ports=(),
    )


def _kept(result: RenderResult) -> set[str]:
    """The prefixes of every Cilium CIDR group the render made."""
    return {p for f in result.files if f.kind == "CiliumCIDRGroup" for p in f.obj["spec"]["externalCIDRs"]}


FEEDS = [feed_set("feodo", ["45.1.0.1/32", "45.2.0.1/32", "45.3.0.1/32", "45.4.0.1/32"], category="c2")]
BUDGET = ChannelSettings(name="prod", tetragon_max_prefixes=2, cilium_max_prefixes=2)


def test_an_entry_that_fired_ranks_first_in_its_evidence_class() -> None:
    plain = render(FEEDS, BUDGET)
    assert _kept(plain) == {"45.1.0.1/32", "45.2.0.1/32"}  # value order breaks the tie
    assert plain.report["hits"] is None
    fed = render(FEEDS, BUDGET, fired=_fired("45.4.0.1", "8.8.8.8"))
    assert _kept(fed) == {"45.1.0.1/32", "45.4.0.1/32"}
    assert fed.report["hits"] == {
        "since": "2026-01-03T16:00:00Z",
        "until": "2026-01-10T16:00:00Z",
        "fired": 1,
        "rank_changes": 4,  # 45.4 moved from fourth to first, each of the three others down one
    }
    assert fed.report["budget"]["tetragon"]["kept_by_hits"] == 1
    assert fed.report["budget"]["cilium"]["kept_by_hits"] == 1


def test_an_address_inside_an_aggregated_entry_makes_the_entry_fire() -> None:
    sets = [feed_set("feodo", ["45.1.0.0/24", "45.9.0.0/24"], category="c2")]
    one = ChannelSettings(name="prod", tetragon_max_prefixes=1, cilium_max_prefixes=1)
    assert _kept(render(sets, one, fired=_fired("45.9.0.77"))) == {"45.9.0.0/24"}


def test_cdr_detections_are_never_dropped_for_lack_of_hits() -> None:
    sets = [cdr_set([indicator("46.1.0.1/32"), indicator("46.2.0.1/32")]), *FEEDS]
    result = render(sets, BUDGET, fired=_fired("45.1.0.1", "45.2.0.1", "45.3.0.1", "45.4.0.1"))
    assert _kept(result) == {"46.1.0.1/32", "46.2.0.1/32"}
    assert result.report["budget"]["cilium"]["kept_by_hits"] == 0


def test_a_stronger_evidence_class_still_ranks_first() -> None:
    sets = [
        feed_set("feodo", ["45.1.0.1/32"], category="c2"),
        feed_set("tor", ["45.8.0.1/32"], category="tor"),
    ]
    one = ChannelSettings(name="prod", tetragon_max_prefixes=1, cilium_max_prefixes=1)
    assert _kept(render(sets, one, fired=_fired("45.8.0.1"))) == {"45.1.0.1/32"}

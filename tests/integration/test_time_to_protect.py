"""``make bench``'s time to protect (g) with a few agents: the stack deployed with ``Profile=fast``, the
real handlers run from its own schedule rule and queues, a detection at the fake gateway reaching every
agent. The fetch schedule runs 12x faster than deployed (every 5 s). The 1,000-agent figures are
``make bench``'s; this checks what must hold at any size."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import protect

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_detection_reaches_every_agent_through_the_stacks_own_triggers(tmp_path: Path) -> None:
    config = protect.ProtectConfig(agents=6, trials=1, processes=2, profiles=("fast",), tick_s=5.0, startup_s=1.0)
    lines: list[str] = []

    result = protect.run(tmp_path, config, say=lines.append)

    fast = result["profiles"]["fast"]
    # as deployed with Profile=fast: CdrFetch every minute, windows of 1 s, agents polling every 10 s
    assert (fast["schedule_s"], fast["render_window_s"], fast["publish_window_s"]) == (60, 1, 1)
    assert (fast["compression"], fast["poll_interval_s"]) == (12, 10)
    (trial,) = fast["trials"]
    stages, protected = trial["stages"], trial["protected_s"]
    assert 0 <= stages["wait"] <= fast["schedule_s"]  # the schedule's wait, scaled back to the deployed period
    assert stages["render"] >= fast["render_window_s"] and stages["publish"] >= fast["publish_window_s"]
    # every agent polls within its interval and jitter (1.1 intervals) of the publish, plus its apply
    assert 0 < stages["distribution"] <= 1.1 * fast["poll_interval_s"] + 10
    upstream = sum(stages[s] for s in ("wait", "fetch", "render", "publish"))
    assert upstream < protected["50"] <= protected["99"] <= protected["100"]
    assert protected["100"] == pytest.approx(upstream + stages["distribution"], abs=1.0)
    assert 1 <= fast["qualys"]["findings_requests"] and fast["qualys"]["per_hour"] <= fast["qualys"]["limit_per_hour"]

    figure, rate = protect.rows(result)
    assert "`fast` profile" in figure[1] and re.fullmatch(r"p50 \d+\.\d s / p99 \d+\.\d s", figure[2])
    assert "12x faster" in figure[3] and figure[4] == "p99 <= 90 s"
    assert rate[5] is True
    assert any("fast trial 1/1" in line for line in lines)

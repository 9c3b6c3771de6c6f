"""Every object ``cdr-policy --once`` emits, for each action, with and without ``--threat-intel``,
for channels targeting Cilium 1.16, 1.17 and 1.18, passes ``cdr-policy validate`` against
``../shared/crds`` (all of it, and the CRDs of the targeted Cilium version alone). The gateway and
the feeds are the loopback fakes (``tests/integration/conftest.py``); without ``../shared`` the tests are skipped (the
``crds_dir`` fixture says where it looked)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fakes.feeds import DEMO_FEEDS_DIR, FeedServer, demo_feeds_yaml
from tests.integration.support import objects, run

ACTIONS = ("Post", "Sigkill", "Override")
CILIUM = ("1.16", "1.17", "1.18")
GROUP_API = {"1.17": "cilium.io/v2alpha1", "1.18": "cilium.io/v2"}


@pytest.fixture(scope="module")
def feeds() -> Iterator[FeedServer]:
    with FeedServer(root=DEMO_FEEDS_DIR) as server:
        yield server


def target_crds(crds_dir: Path, cilium: str, folder: Path) -> Path:
    """A CRD folder holding only what a cluster on ``cilium`` serves: Tetragon's CRDs plus Cilium
    v1.16.5's (1.16) or main's (1.17 serves the CiliumCIDRGroup as v2alpha1, which main still has)."""
    folder.mkdir()
    cilium_dir = crds_dir / ("cilium-v1.16.5" if cilium == "1.16" else "cilium-main")
    for crd in [*crds_dir.glob("tetragon_*.yaml"), *cilium_dir.glob("*.yaml")]:
        (folder / f"{crd.parent.name}-{crd.name}").symlink_to(crd)
    return folder


def render_once(
    env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    feeds: FeedServer,
    *,
    action: str,
    threat_intel: bool,
    cilium: str,
    kernel: dict[str, bool] | None = None,
) -> Path:
    channel: dict[str, Any] = {"name": "prod", "cilium_version": cilium}
    if kernel is not None:
        channel["kernel"] = kernel
    channel_file = tmp_path / "channel.yaml"
    channel_file.write_text(yaml.safe_dump({"channels": [channel]}))
    out_dir = tmp_path / "out"
    argv = ["--once", f"--action={action}", f"--channel={channel_file}", f"--output={out_dir}"]
    if threat_intel:
        feed_file = tmp_path / "feeds.yaml"
        feed_file.write_text(demo_feeds_yaml(feeds.url("/")))
        argv += ["--threat-intel", f"--feeds={feed_file}"]
    code, out, err = run(argv, env, capsys)
    assert code == 0, err + out
    return out_dir


def validate(out_dir: Path, crds: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["validate", str(out_dir), "--crds", str(crds), "--json"], env, capsys)
    report = json.loads(out)
    errors = [
        (f["path"], o["name"], p)
        for f in report["files"]
        for o in f["objects"]
        for p in o["problems"]
        if p["severity"] == "error"
    ]
    assert code == 0 and errors == [], errors
    assert report["objects"] == len(list(out_dir.glob("*.yaml")))


@pytest.mark.parametrize("cilium", CILIUM)
@pytest.mark.parametrize("threat_intel", [False, True], ids=["cdr-only", "threat-intel"])
@pytest.mark.parametrize("action", ACTIONS)
def test_every_emitted_object_validates(
    env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    crds_dir: Path,
    feeds: FeedServer,
    action: str,
    threat_intel: bool,
    cilium: str,
) -> None:
    out_dir = render_once(env, tmp_path, capsys, feeds, action=action, threat_intel=threat_intel, cilium=cilium)
    validate(out_dir, crds_dir, env, capsys)
    validate(out_dir, target_crds(crds_dir, cilium, tmp_path / "crds"), env, capsys)

    files = objects(out_dir)
    assert files, "something was emitted"
    assert ("threat-intel-blocklist.yaml" in files) is threat_intel
    groups = [o for o in files.values() if o["kind"] == "CiliumCIDRGroup"]
    if cilium == "1.16":
        assert groups == [], "before 1.17: plain CIDRs in the policy"
    else:
        assert groups and {g["apiVersion"] for g in groups} == {GROUP_API[cilium]}
    for obj in files.values():
        if obj["kind"].startswith("Cilium"):
            assert obj["metadata"]["annotations"]["cdr-policy.io/cilium-version"] == cilium
        if obj["kind"] != "TracingPolicy":
            continue
        mode = {o["name"]: o["value"] for o in obj["spec"]["options"]}["policy-mode"]
        for kp in obj["spec"]["kprobes"]:
            acts = {a["action"] for s in kp["selectors"] for a in s["matchActions"]}
            if action == "Post":
                assert acts == {"Post"} and mode == "monitor"
            if kp["syscall"]:
                assert "Override" not in acts, "no kernel.override_helper declared"


def test_an_override_channel_that_declares_the_helper_validates(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], crds_dir: Path, feeds: FeedServer
) -> None:
    out_dir = render_once(
        env,
        tmp_path,
        capsys,
        feeds,
        action="Override",
        threat_intel=False,
        cilium="1.18",
        kernel={"override_helper": True},
    )
    validate(out_dir, crds_dir, env, capsys)
    overridden = [
        (name, kp["call"])
        for name, obj in objects(out_dir).items()
        if obj["kind"] == "TracingPolicy"
        for kp in obj["spec"]["kprobes"]
        if kp["syscall"] and any(a["action"] == "Override" for s in kp["selectors"] for a in s["matchActions"])
    ]
    assert overridden, "Override reaches syscall hooks once declared"
    for name, _ in overridden:
        annotations = objects(out_dir)[name]["metadata"]["annotations"]
        assert annotations["cdr-policy.io/kernel-override-helper"] == "true"

"""The one list of names evidence may never kill cluster-wide, held to the images users run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cdr_policy.policy.binaries import (
    COMMON_PROGRAM,
    KERNEL_THREAD_NAME,
    NEVER_ON_EVIDENCE,
    NOT_A_NAME,
    refuse_cluster_wide,
    refuse_on_evidence,
)
from cdr_policy.policy.channel import ChannelSettings
from cdr_policy.rules import RULES

from .factories import behaviour, cdr_set, render

DATA = yaml.safe_load((Path(__file__).parent / "data" / "images.yaml").read_text())
IMAGE_BINARIES = sorted({(image, name) for image, names in DATA["images"].items() for name in names})


@pytest.mark.parametrize(("image", "name"), IMAGE_BINARIES)
def test_the_main_binaries_of_the_images_users_run_are_never_killed_cluster_wide(image: str, name: str) -> None:
    assert refuse_cluster_wide(name) is not None, f"{image}: {name}"
    assert refuse_cluster_wide(f"/usr/local/bin/{name}") is not None  # a processPath
    assert refuse_cluster_wide(f"/{name}") is not None  # a Postfix value


@pytest.mark.parametrize("name", DATA["kernel"])
def test_kernel_thread_names_are_never_killed_cluster_wide(name: str) -> None:
    assert refuse_cluster_wide(name) == KERNEL_THREAD_NAME


def test_the_reasons_say_which_list_refused() -> None:
    assert refuse_cluster_wide("nginx") == COMMON_PROGRAM
    assert refuse_cluster_wide("php-fpm8.2") == COMMON_PROGRAM  # versions are dropped
    assert refuse_cluster_wide("Redis-Server") == COMMON_PROGRAM  # so is case
    assert refuse_cluster_wide("bash") == NEVER_ON_EVIDENCE
    assert refuse_cluster_wide("python3.11") == NEVER_ON_EVIDENCE
    assert refuse_cluster_wide("kworker/0:1") == NOT_A_NAME  # as ps shows it: never a bare name
    assert refuse_cluster_wide("nmap -sS 10.0.0.0/8") == NOT_A_NAME
    # Refused everywhere on evidence: only the spared names; servers may be scoped to a workload.
    assert refuse_on_evidence("bash") == NEVER_ON_EVIDENCE
    assert refuse_on_evidence("nginx") is None and refuse_on_evidence("kworker") is None


def test_miner_names_that_look_like_kernel_threads_are_still_killed() -> None:
    # kinsing drops its miner as "kdevtmpfsi": a near miss of the kernel thread "kdevtmpfs"
    for name in ("kdevtmpfsi", "kinsing", "xmrig", "t-rex", "zgrab2", "mkfs.ext4"):
        assert refuse_cluster_wide(name) is None, name


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_name_a_rule_kills_by_itself_passes_the_list(rule: str) -> None:
    """The list judges what a policy kills everywhere; the names our rules block by themselves are
    meant to be killed everywhere (program starts of a caller-restricted selector, the webshell's
    shells under a web server, are judged with their caller: not here)."""
    channel = ChannelSettings(name="prod", action="Sigkill")
    [policy] = [f.obj for f in render([cdr_set(behaviours=[behaviour(rule)])], channel).files]
    for hook in policy["spec"]["kprobes"]:
        if hook["call"] != "security_bprm_check":
            continue
        for sel in hook["selectors"]:
            if "matchBinaries" in sel:
                continue
            for m in sel["matchArgs"]:
                if m["operator"] == "Postfix":
                    refused = {v: refuse_cluster_wide(v) for v in m["values"] if refuse_cluster_wide(v)}
                    assert refused == {}, rule

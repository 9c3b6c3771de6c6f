"""Admission on real renders and on the shapes an adversarial review signed (issue 20, points 1-4):
everything our compiler emits is admitted, every hostile shape refused with a named reason, and no
refusal quotes the object."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from cdr_policy.admission import Admission, protection
from cdr_policy.bundle.assemble import assemble
from cdr_policy.bundle.loader import Bundle
from cdr_policy.bundle.manifest import Settings, build_manifest
from cdr_policy.policy.behaviours import CATALOGUE
from cdr_policy.policy.channel import Action, ChannelSettings, KernelCapabilities
from tests.unit.policy.factories import NOW, behaviour, cdr_set, compact, indicator, render

from .hostile import CASES, files_of, rendered

ADMISSION = Admission(protection(where="the test"))


def bundle_of(files: dict[str, bytes], settings: Settings) -> Bundle:
    manifest = build_manifest(
        files,
        channel="prod",
        settings=settings,
        counts={},
        created_at="2026-01-10T16:00:00Z",
        expires_at="2026-01-13T16:00:00Z",
        source_digest="ab" * 32,
    )
    return Bundle(manifest, files)


def variants() -> Iterator[ChannelSettings]:
    """Channels across every setting that changes what the compilers emit."""
    actions: tuple[Action, ...] = ("Post", "Sigkill", "Override")
    for n, (action, hook, namespaces, labels, ports, helper) in enumerate(
        itertools.product(
            actions,
            ("tcp_connect", "security_socket_connect"),
            ((), ("payments", "web")),
            ({}, {"app": "checkout"}),
            (False, True),
            (False, True),
        )
    ):
        yield ChannelSettings(
            name=f"c{n}",
            action=action,
            tetragon_network_hook=hook,
            namespaces=namespaces,
            pod_labels=labels,
            deny_ports_to_world=ports,
            cilium_version=("1.16", "1.17", "1.18")[n % 3],
            kernel=KernelCapabilities(override_helper=helper),
            promoted_rules=("container_escape",) if helper else (),
        )


def test_everything_the_compilers_emit_is_admitted() -> None:
    """Every rule of the catalogue (with evidence names), CDR and feed blocklists of both families,
    ports, on every kind of channel: the grammar is exactly as wide as the compilers."""
    sets = [
        cdr_set(
            [
                indicator("45.33.32.0/24"),
                indicator("2a00:1450:4001::/48"),
                indicator("tcp/4444", kind="port"),
                indicator("udp/5353", kind="port"),
            ],
            [behaviour(rule, ["xmrig-proxy", "evil.sh"]) for rule in CATALOGUE],
        ),
        compact("tor-exit", [f"185.220.{i}.0/24" for i in range(50)] + ["2001:67c:e60::/48"]),
    ]
    checked = 0
    for channel in variants():
        rendered = render(sets, channel)
        bundle = assemble(rendered.files, channel, now=NOW, index=rendered.provenance)
        verdict = ADMISSION.judge(bundle)
        assert verdict.admitted, (channel, verdict.lines())
        checked += len(bundle.objects)
    assert checked > 96 * 30


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_shape_of_the_review_is_refused(case: str) -> None:
    objects, settings = rendered()
    hostile = CASES[case](objects)
    verdict = ADMISSION.judge(bundle_of(files_of(hostile), settings))
    assert not verdict.admitted
    assert verdict.lines()


def test_the_review_render_itself_is_admitted() -> None:
    objects, settings = rendered()
    assert ADMISSION.judge(bundle_of(files_of(objects), settings)).admitted


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("group selected by labels", "cidrGroupSelector"),
        ("reference outside the bundle", "names a CIDR group that is not in the bundle"),
        ("unreferenced group everything", "a CIDR group no policy of the bundle denies"),
        ("referenced group with private ranges", "blocks a protected range: inside never-block range: private"),
        ("daddr private not in", "operator"),
        ("daddr private for named callers", "blocks a protected range"),
        ("exec prefix slash", "values our catalogue never writes for security_bprm_check argument 0"),
        ("exec kills a shell", "kills a program in every pod for every caller: shell"),
        ("exec namespaced in kube system", "never a system namespace"),
        ("deny world https", "denies tcp/443 to every destination: never-block port: HTTPS"),
        ("tetragon kills https and dns", "never-block port"),
        ("allow only policy", "missing enableDefaultDeny, egressDeny"),
    ],
)
def test_each_refusal_names_its_reason(case: str, expected: str) -> None:
    objects, settings = rendered()
    text = "\n".join(ADMISSION.judge(bundle_of(files_of(CASES[case](objects)), settings)).lines())
    if expected == "cidrGroupSelector":
        assert "entries are all cidrGroupRef or all cidr, nothing else" in text
    elif expected == "operator":
        assert "matchBinaries[0].operator: must be 'Postfix'" in text
    else:
        assert expected in text


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_refusal_quotes_what_it_refuses(case: str) -> None:
    objects, settings = rendered()
    lines = ADMISSION.judge(bundle_of(files_of(CASES[case](objects)), settings)).lines()
    for quoted in ("10.0.0.0/8", "8.8.8.8", "/nonexistent", "kube-dns-and-apiserver", "DoesNotExist", "anything"):
        assert not any(quoted in line for line in lines)


def test_the_metadata_service_is_admitted_for_named_callers_only() -> None:
    objects, settings = rendered()
    [kprobe] = next(o for o in objects if o["metadata"]["labels"].get("cdr-policy.io/rule") == "cloud_credentials")[
        "spec"
    ]["kprobes"]
    assert kprobe["selectors"][0]["matchBinaries"]  # the render's own: curl, wget, ... to the IMDS
    assert ADMISSION.judge(bundle_of(files_of(objects), settings)).admitted
    kprobe["selectors"][0].pop("matchBinaries")
    lines = ADMISSION.judge(bundle_of(files_of(objects), settings)).lines()
    assert any("blocks a protected range: inside never-block range: link-local" in line for line in lines)


def test_protected_ranges_and_ports_of_the_channel_or_cluster_are_refused() -> None:
    objects, settings = rendered()
    bundle = bundle_of(files_of(objects), settings)
    own = Admission(protection(["45.33.0.0/16"], ["tcp/4444"], where="this cluster"))
    lines = own.judge(bundle).lines()
    assert any("protected range of this cluster" in line for line in lines)
    assert any(
        "denies tcp/4444 to every destination: a port this channel or cluster protects" in line for line in lines
    )

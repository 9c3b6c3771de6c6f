"""The roles template.yaml gives the functions are exact: every grant a function has is one it needs.

A grant is an entry of a function's ``Policies`` (a SAM policy template) or one statement of an entry's
``Statement`` list. For each, template.yaml without that one grant is deployed as a stack of its own on a
moto server that checks every request against IAM, and the demo's flow runs through the stack's own event
sources (schedules, S3 notifications, event source mappings) up to the function that holds the grant: the
functions before it succeed, and it fails with AccessDenied. Every statement of the template carries a
``# Used by:`` comment naming the path that uses it; a grant the demo's flow does not use (a condition
it does not meet, AbuseIPDB's secret; an approval, which only a held bundle needs) says "Not in the demo
flow" there, names the path that does use it, and is the only kind left out of the removals.
``make demo`` itself, without kms:Sign: tests/integration/test_demo.py.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cdr_policy.timeutil import utcnow
from demo.runner import (
    CHANNELS,
    FINDINGS,
    PipelineResult,
    create_qualys_secret,
    demo_agents,
    onboard_cluster,
    quiet_logs,
    upload_config,
)
from fakes.aws import MotoServer, moto_server
from fakes.feeds import DEMO_FEEDS_DIR, FeedServer
from fakes.lambda_runtime import LambdaService
from fakes.qualys import FakeQualysGateway
from fakes.stack import TEMPLATE, deploy, load_template

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:No application metrics:UserWarning"),
]

# The demo's flow: each function's event sources in this order (the ones before a function feed it), and
# between Publish and HitsRollup the clusters' agents, whose statuses HitsRollup sums.
AGENTS = "the clusters' agents"
FLOW = ("CdrFetchFunction", "FeedSyncFunction", "RenderFunction", "PublishFunction", AGENTS, "HitsRollupFunction")


@dataclass(frozen=True)
class Grant:
    function: str  # logical id
    index: int  # position in the function's Policies
    sid: str | None  # a statement of the entry's Statement list; None: the whole entry (a policy template)
    name: str

    def __str__(self) -> str:
        return f"{self.function}:{self.name}"


def grants(template: dict[str, Any]) -> list[Grant]:
    """Every unconditional grant of every function, in template order."""
    found = []
    for logical, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        for index, entry in enumerate(resource["Properties"].get("Policies", [])):
            if "Fn::If" in entry:
                continue  # conditional: its comment says where it is used (the Used-by test)
            if "Statement" in entry:
                found += [Grant(logical, index, s["Sid"], s["Sid"]) for s in entry["Statement"]]
            else:
                ((policy, arguments),) = entry.items()
                found.append(Grant(logical, index, None, f"{policy}({_target(arguments)})"))
    return found


def _target(arguments: dict[str, Any]) -> str:
    """What a policy template is about: the resource or parameter its one argument names."""
    (value,) = arguments.values()
    names = re.findall(r'"Ref": "(\w+)"|"Fn::GetAtt": \["(\w+)"|\$\{(\w+)\}', json.dumps(value))
    name: str = next(n for match in names for n in match if n and not n.startswith("AWS"))
    return name


def without(template: dict[str, Any], grant: Grant) -> dict[str, Any]:
    changed = copy.deepcopy(template)
    policies = changed["Resources"][grant.function]["Properties"]["Policies"]
    if grant.sid is None:
        del policies[grant.index]
    else:
        statements = policies[grant.index]["Statement"]
        statements[:] = [s for s in statements if s["Sid"] != grant.sid]
        if not statements:
            del policies[grant.index]
    return changed


def used_by(lines: list[str], number: int) -> str:
    """The ``# Used by:`` comment in the block of comment lines right above line ``number``."""
    block: list[str] = []
    while number > 0 and lines[number - 1].lstrip().startswith("#"):
        number -= 1
        block.insert(0, lines[number].strip().lstrip("# "))
    text = " ".join(block)
    return text[text.index("Used by:") :] if "Used by:" in text else ""


def comments(text: str) -> dict[tuple[str, int, str | None], str]:
    """(function, index in its Policies, Sid or None) -> the ``# Used by:`` comment above that grant."""
    lines = text.splitlines()
    found: dict[tuple[str, int, str | None], str] = {}
    function, index, policies_indent = "", -1, None
    for number, line in enumerate(lines):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if re.fullmatch(r"  \w+:", line):
            function, index, policies_indent = line.strip()[:-1], -1, None
        elif stripped.startswith("Policies:"):
            policies_indent = indent
        elif policies_indent is not None and stripped and not stripped.startswith("#"):
            if indent <= policies_indent:
                policies_indent = None
            elif indent == policies_indent + 2 and stripped.startswith("- "):
                index += 1
                found[(function, index, None)] = used_by(lines, number)
            elif stripped.startswith("- Sid: "):
                found[(function, index, stripped[len("- Sid: ") :])] = used_by(lines, number)
    return found


def in_the_demo_flow(grant: Grant) -> bool:
    return "not in the demo flow" not in COMMENTS[(grant.function, grant.index, grant.sid)].lower()


TEMPLATE_DATA = load_template(TEMPLATE)
COMMENTS = comments(TEMPLATE.read_text())
ALL_GRANTS = grants(TEMPLATE_DATA)
GRANTS = [g for g in ALL_GRANTS if in_the_demo_flow(g)]
_environments = itertools.count()


@dataclass
class World:
    server: MotoServer
    gateway: FakeQualysGateway
    feeds: FeedServer


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with moto_server() as server:
        create_qualys_secret(server, TEMPLATE_DATA["Parameters"]["QualysSecretName"]["Default"])
        with (
            FakeQualysGateway(FINDINGS, rebase_to=utcnow(), tls=server.tls.server_context()) as gateway,
            FeedServer(root=DEMO_FEEDS_DIR) as feeds,
        ):
            yield World(server, gateway, feeds)


def test_every_function_holds_grants_and_the_flow_covers_every_function() -> None:
    assert {g.function for g in GRANTS} == set(FLOW) - {AGENTS}
    assert len(GRANTS) >= 17
    left_out = [g for g in ALL_GRANTS if not in_the_demo_flow(g)]
    for grant in left_out:  # the path that does use it, named after the marker
        comment = COMMENTS[(grant.function, grant.index, grant.sid)]
        assert re.search(r"not in the demo flow: .{10,}", comment, re.I), (str(grant), comment)
    assert len(left_out) <= 2, "grants the demo's flow does not prove needed: prove them there instead"


@pytest.mark.parametrize("grant", GRANTS, ids=str)
def test_without_one_grant_its_function_fails_with_access_denied(grant: Grant, world: World, tmp_path: Path) -> None:
    template = tmp_path / "template.json"
    template.write_text(json.dumps(without(TEMPLATE_DATA, grant)))
    environment = f"roles{next(_environments)}"
    parameters = {"Environment": environment, "QualysGatewayUrl": world.gateway.url}
    stack = deploy(world.server, name=f"cdr-policy-{environment}", template=template, parameters=parameters)
    upload_config(stack, world.feeds, None)
    lambdas = LambdaService(stack, tmp_path / "lambda.log")
    for step in FLOW[: FLOW.index(grant.function)]:
        if step == AGENTS:
            result = PipelineResult(stack, lambdas, tmp_path, clusters=_clusters(stack))
            with quiet_logs(tmp_path / "agents.log"):
                polls = [agent.sync_once().to_json()["last_poll"]["result"] for agent in demo_agents(result).values()]
            assert polls == ["applied"] * len(CHANNELS), polls
            continue
        before = lambdas.trigger(step)
        assert before and all(i.ok for i in before), (step, [i.error for i in before])
    invocations = lambdas.trigger(grant.function)
    failures = [i for i in invocations if not i.ok]
    assert failures, f"{grant.function} succeeded without {grant.name}: the grant is not needed"
    assert re.search(r"AccessDenied", failures[0].error or ""), failures[0].error


def _clusters(stack: Any) -> dict[str, Any]:
    environment = stack.parameters["Environment"]
    return {c["name"]: onboard_cluster(stack, f"{environment}-{c['name']}", c["name"]) for c in CHANNELS}


def statement_starts(text: str) -> dict[int, str]:
    """Line number -> the statement or Policies entry that starts there: every ``- Sid:`` line, and every
    entry of a ``Policies:`` list but a ``Statement`` list or a role's inline policy (whose statements
    have Sids)."""
    lines = text.splitlines()
    starts = {}
    policies_indent = None
    for number, line in enumerate(lines):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if stripped.startswith("Policies:"):
            policies_indent = indent
            continue
        if policies_indent is not None and stripped and not stripped.startswith("#") and indent <= policies_indent:
            policies_indent = None
        if stripped.startswith("- Sid: "):
            starts[number] = stripped[len("- Sid: ") :]
        elif policies_indent is not None and stripped.startswith("- ") and indent == policies_indent + 2:
            # a Statement list, or a role's inline policy (PolicyName): their statements are checked by Sid
            if not stripped.startswith(("- Statement:", "- PolicyName:")):
                starts[number] = stripped[2:].rstrip(":")
    return starts


def test_every_statement_names_the_path_that_uses_it() -> None:
    text = TEMPLATE.read_text()
    lines = text.splitlines()
    starts = statement_starts(text)
    # What the parser found is what the template holds: every Policies entry and every statement (by Sid).
    entries = [
        entry
        for resource in TEMPLATE_DATA["Resources"].values()
        if resource["Type"] == "AWS::Serverless::Function"
        for entry in resource["Properties"].get("Policies", [])
    ]
    statements: list[dict[str, Any]] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("Statement"), list):
                statements.extend(s for s in node["Statement"] if isinstance(s, dict))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(TEMPLATE_DATA["Resources"])
    assert all("Sid" in s for s in statements), "every statement has a Sid (the comment check finds it by it)"
    assert len(starts) == len(entries) - sum("Statement" in e for e in entries) + len(statements)
    missing = [name for number, name in starts.items() if len(used_by(lines, number)) < len("Used by: ") + 20]
    assert missing == [], "statements without a '# Used by:' comment naming the path that uses them"


def test_the_removal_is_what_the_check_sees() -> None:
    """A grant removed is gone from the template CloudFormation receives, and nothing else is."""
    grant = next(g for g in GRANTS if g.sid == "SignManifests")
    changed = without(TEMPLATE_DATA, grant)
    assert "kms:Sign" not in json.dumps(changed["Resources"]["PublishFunction"]["Properties"]["Policies"])
    assert len(grants(changed)) == len(ALL_GRANTS) - 1
    whole = next(g for g in GRANTS if g.sid is None and g.function == "RenderFunction" and "SQS" in g.name)
    assert len(grants(without(TEMPLATE_DATA, whole))) == len(ALL_GRANTS) - 1

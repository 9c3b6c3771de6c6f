"""The whole path at one million addresses, parts (b) to (e) of ``make bench``; each contender runs
in its own process (``benchmarks.measure``), all in one run, so that ratios compare like with like.

(b) ``cdr-policy --once --threat-intel --feeds`` (the CLI a new user runs) with one feed of a
    million addresses, minus the same run with a thousand-address feed (start-up, imports, the
    CDR fetch: what does not grow with the feed), against FireHOL ``iprange`` on the same file;
    ``--repeat`` interleaved rounds, medians (a difference of two noisy times needs them).
    Both runs use a fresh state directory, the repository's fake Qualys gateway and a loopback
    feed server (``demo``); the million-address output is checked: policies written, the budget
    respected, the left-out entries reported.
(c) The four handlers of the stack deployed from template.yaml on a moto server (``fakes.stack``,
    as ``make demo``, without IAM checks; each with its deployed environment and role; CdrFetch against
    the fake Qualys gateway) with the same feed and the upstream CRDs (when ``../shared/crds`` is there:
    the schema checks run too), each in a process that sees only the built layer (``build_layer``):
    wall time and peak RSS of each, the size of the stored feed set, and the modules each imported.
(d) The cold import of each handler module and of the modules its invocations in (c) imported,
    against a bare Powertools handler (Logger, Tracer, Metrics), in the same layer: median of
    ``IMPORT_RUNS`` interleaved processes; then the same without the layer's bytecode. Beside each,
    its floor: the bare handler plus every module the handler and its first call imported but the
    library's own (boto3, PyYAML, numpy, Powertools' batch utility ...), what the handler would cost
    if our code took no time at all.
(e) A sync agent's unchanged poll of the published channel: HTTP requests and response body bytes;
    and an agent's peak memory applying the bundle of the largest budgets a channel may have (the
    second channel, ``LARGEST``), against its pod limit.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.generate import generate_addresses
from benchmarks.measure import LAMBDA_PYTHON, REPO, Run, lambda_env, measure, python_env
from cdr_policy import layout
from cdr_policy.bundle.signing import KmsSigner
from cdr_policy.policy.channel import MAX_BUDGET_PREFIXES
from cdr_policy.report import RunReport

FEED = "big"
IMPORT_RUNS = 5
SOURCE_ONLY_RUNS = 3
HANDLERS = ("cdr_fetch", "feed_sync", "render", "publish")
# The library's modules and the handler modules (``cdr_policy_function_<name>``); (d)'s floor is the rest.
OURS = "cdr_policy"
CHANNEL: dict[str, Any] = {"name": "prod", "action": "Sigkill", "cilium_version": "1.18"}  # of channels.yaml
# A second channel with the largest budgets a channel may have: its bundle is the largest the agent
# can be sent (part (e)'s memory), and Render and Publish handle it beside the first.
LARGEST: dict[str, Any] = {
    **CHANNEL,
    "name": "largest",
    "tetragon_max_prefixes": MAX_BUDGET_PREFIXES,
    "cilium_max_prefixes": MAX_BUDGET_PREFIXES,
}
CRDS = Path(os.environ.get("CDR_SHARED_DIR", REPO.parent / "shared")) / "crds"
# template.yaml's MemorySize per function: the budget each meets with a one-million-address feed.
MEMORY_MB = {"cdr_fetch": 512, "feed_sync": 512, "render": 512, "publish": 512}
# deploy/agent/deployment.yaml's memory limit of the sync agent's pod.
AGENT_LIMIT_MIB = 512

TARGETS = {
    "cli_ratio": 2.0,
    "handler_s": 60.0,
    "handler_mib": 512.0,
    "stored_mb": 10.0,
    "import_ratio": 1.5,
    "poll_requests": 1,
    "poll_body_bytes": 0,
}
# One line of the results table: (part, measure, ours, reference, target, met).
Row = tuple[str, str, str, str, str, bool | None]


def run(work: Path, addresses: int, seed: int, iprange: str | None, repeat: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    print(f"generating a feed of {addresses:,} addresses (and one of 1,000) ...", flush=True)
    big = generate_addresses(work / f"addresses-{addresses}.txt", addresses, seed)
    small = generate_addresses(work / "addresses-1000.txt", 1000, seed + 1)
    result: dict[str, Any] = {"addresses": addresses}
    result["cli"] = _cli(work, big, small, iprange, repeat)
    result["repeat"] = repeat
    layer = build_layer(work)
    result["handlers"], result["agent"] = _handlers(work, big, layer)
    result["imports"] = _imports(work, layer)
    return result


# -- (b) ---------------------------------------------------------------------------------------


def _cli(work: Path, big: Path, small: Path, iprange: str | None, repeat: int) -> dict[str, Any]:
    """``repeat`` interleaved rounds of the small run, the big run and iprange; medians."""
    from cdr_policy.timeutil import utcnow
    from demo.runner import FINDINGS
    from fakes.feeds import FeedServer
    from fakes.qualys import DEMO_PASSWORD, DEMO_USERNAME, FakeQualysGateway

    runs: dict[str, list[dict[str, Any]]] = {"small": [], "big": [], "iprange": []}
    with FakeQualysGateway(FINDINGS, rebase_to=utcnow()) as gateway, FeedServer(root=work) as server:
        env = {
            **python_env(),
            "QUALYS_USERNAME": DEMO_USERNAME,
            "QUALYS_PASSWORD": DEMO_PASSWORD,
            "QUALYS_GATEWAY_URL": gateway.url,
            "XDG_CACHE_HOME": str(work / "cache"),
        }
        for round_ in range(repeat):
            print(f"(b) round {round_ + 1}/{repeat}: cdr-policy with the small feed, the big one, iprange", flush=True)
            for label, feed in (("small", small), ("big", big)):
                run_dir = work / f"cli-{label}"
                shutil.rmtree(run_dir, ignore_errors=True)  # a fresh state directory every time
                run_dir.mkdir()
                feeds = run_dir / "feeds.yaml"
                entry = {"name": FEED, "url": server.url(f"/{feed.name}"), "category": "attacker"}
                feeds.write_text(yaml.safe_dump({"feeds": [entry]}))
                cmd = [
                    sys.executable,
                    "-m",
                    "cdr_policy.cli",
                    "--once",
                    "--threat-intel",
                    f"--feeds={feeds}",
                    f"--output={run_dir / 'out'}",
                    f"--state-dir={run_dir / 'state'}",
                ]
                run = measure(cmd, run_dir / "stdout.txt", env)
                runs[label].append({"wall_s": run.wall_s, "maxrss_kib": run.maxrss_kib, **_cli_output(run_dir / "out")})
            if iprange:
                run = measure([iprange, str(big)], work / "iprange-big.txt")
                runs["iprange"].append({"wall_s": run.wall_s, "maxrss_kib": run.maxrss_kib})
    return {label: _median_run(r) for label, r in runs.items() if r}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The last run's facts with the median wall time and the highest peak RSS."""
    return {
        **runs[-1],
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "maxrss_kib": max(r["maxrss_kib"] for r in runs),
    }


def _cli_output(folder: Path) -> dict[str, Any]:
    """What the run wrote: policies, the budget report and the left-out count."""
    report = RunReport.from_json(json.loads((folder / layout.REPORT_FILE).read_text()))
    return {
        "policies": len(list(folder.glob("*.yaml"))),
        "within_budget": all(b.used <= b.limit for b in report.budget.values()),
        "used": {engine: b.used for engine, b in report.budget.items()},
        "left_out": report.left_out_total,
        "feed_entries": report.feeds[FEED].entries,
    }


# -- (c) and (e) -------------------------------------------------------------------------------


LOGICAL = {"cdr_fetch": "CdrFetchFunction", "feed_sync": "FeedSyncFunction", "render": "RenderFunction"}
LOGICAL["publish"] = "PublishFunction"


def _handlers(work: Path, big: Path, layer: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from cdr_policy.timeutil import utcnow
    from demo.runner import FINDINGS, create_qualys_secret, onboard_cluster
    from fakes.aws import moto_server
    from fakes.feeds import FeedServer
    from fakes.lambda_runtime import LambdaService
    from fakes.qualys import FakeQualysGateway
    from fakes.stack import deploy

    results: dict[str, Any] = {}
    with (
        moto_server(enforce_iam=False) as server,
        FeedServer(root=work) as feeds_server,
        FakeQualysGateway(FINDINGS, rebase_to=utcnow(), tls=server.tls.server_context()) as gateway,
    ):
        # template.yaml deployed as make demo deploys it (fakes.stack), without IAM checks
        create_qualys_secret(server, "cdr-policy/qualys")
        parameters = {"Environment": "bench", "QualysGatewayUrl": gateway.url}
        stack = deploy(server, name="cdr-policy-bench", parameters=parameters)
        lambdas = LambdaService(stack, work / "lambda.log")
        s3 = stack.client("s3")
        bucket = stack.state_bucket
        s3.put_object(Bucket=bucket, Key="config/channels.yaml", Body=yaml.safe_dump({"channels": [CHANNEL, LARGEST]}))
        feeds = {"feeds": [{"name": FEED, "url": feeds_server.url(f"/{big.name}"), "category": "attacker"}]}
        s3.put_object(Bucket=bucket, Key="config/feeds.yaml", Body=yaml.safe_dump(feeds))
        crds = sorted(p for p in CRDS.rglob("*.yaml") if "examples" not in p.parts) if CRDS.is_dir() else []
        for path in crds:
            s3.put_object(Bucket=bucket, Key=f"crds/{path.relative_to(CRDS).as_posix()}", Body=path.read_bytes())
        for name in HANDLERS:
            print(f"(c) {name} handler on the moto server ...", flush=True)
            results[name] = handler_step(work, layer, lambdas, name)
            first_call = results[name].pop("first_call_modules")
            (work / f"first-call-{name}.json").write_text(json.dumps(first_call))
            results[name]["first_call_modules"] = len(first_call)
            # the handler's dependencies: every module it and its first call imported but the library's
            dependencies = [m for m in results[name].pop("handler_modules") + first_call if not m.startswith(OURS)]
            (work / f"floor-{name}.json").write_text(json.dumps(dependencies))
        results["stored_feed_set_bytes"] = s3.head_object(Bucket=bucket, Key=f"indicators/feeds/{FEED}.json")[
            "ContentLength"
        ]
        results["crds"] = len(crds)
        # The agents of two clusters (deploy/cluster-access), with the public key their operator exported.
        public_key = work / "signing-public.pem"
        public_key.write_text(KmsSigner(stack.client("kms"), stack.signing_key_arn).public_key_pem())
        agent: dict[str, Any] = {}
        for channel, key in ((CHANNEL["name"], "unchanged"), (LARGEST["name"], "largest")):
            cluster = onboard_cluster(stack, f"bench-{channel}", channel)
            credentials = {k.upper(): v for k, v in cluster.session.items()}
            env = {**python_env(), **server.env, **credentials, "DIST_BUCKET": stack.dist_bucket}
            env["SIGNING_PUBLIC_KEY"] = str(public_key)
            print(f"(e) sync agent of channel {channel} ...", flush=True)
            agent[key] = _step(["agent", channel], work, env)
    largest = agent.pop("largest")
    return results, {**agent.pop("unchanged"), "largest": largest}


def handler_step(work: Path, layer: Path, lambdas: Any, name: str) -> dict[str, Any]:
    """Handler ``name`` in a process of its own, with the layer as Lambda sees it and the function's
    deployed environment (``lambdas``: the stack's ``LambdaService``), draining its event source's queue."""
    logical = LOGICAL[name]
    env = {**lambda_env(layer), **lambdas.environment(logical)}
    env["EVENT_SOURCE_QUEUE_URL"] = lambdas.stack.outputs.get(f"{logical.removesuffix('Function')}QueueUrl", "")
    return _step(["handler", name], work, env, LAMBDA_PYTHON)


def _step(
    args: list[str], work: Path, env: dict[str, str], python: Sequence[str] = (sys.executable,)
) -> dict[str, Any]:
    """``python -m benchmarks.steps STEP SUMMARY ARGS...``: its wall time, peak RSS and summary."""
    summary = work / f"{args[0]}-{args[1]}.json"
    cmd = [*python, "-m", "benchmarks.steps", args[0], str(summary), *args[1:]]
    run: Run = measure(cmd, work / "step.log", env)
    return {"wall_s": run.wall_s, "maxrss_kib": run.maxrss_kib, **json.loads(summary.read_text())}


# -- (d) ---------------------------------------------------------------------------------------


def build_layer(work: Path) -> Path:
    """The SharedLayer as ``sam build`` makes it (``layers/shared/Makefile``), for this interpreter:
    its ``python/`` folder, Lambda's ``/opt/python``."""
    print("building the SharedLayer as sam build does (layers/shared/Makefile) ...", flush=True)
    shutil.rmtree(work / "layer", ignore_errors=True)
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-s",
            "-C",
            str(REPO / "layers" / "shared"),
            "build-SharedLayer",
            f"ARTIFACTS_DIR={work / 'layer'}",
            f"PYTHON={sys.executable}",
        ],
        check=True,
    )
    return work / "layer" / "python"


def _imports(work: Path, layer: Path) -> dict[str, Any]:
    """Median cold imports with the layer's bytecode (``IMPORT_RUNS`` rounds), then without it
    (``SOURCE_ONLY_RUNS`` rounds: the layer as sam's python3.12 builder makes it)."""
    env = {
        **lambda_env(layer),
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "cdr-policy",
        "POWERTOOLS_METRICS_NAMESPACE": "CdrPolicy",
    }
    source_only = work / "layer-source-only" / "python"
    shutil.rmtree(source_only.parent, ignore_errors=True)
    shutil.copytree(layer, source_only, ignore=shutil.ignore_patterns("__pycache__"))
    source_env = {**env, **lambda_env(source_only), "PYTHONDONTWRITEBYTECODE": "1"}
    out = {"bytecode": _import_rounds(work, env, IMPORT_RUNS, "with the layer's bytecode")}
    out["source_only"] = _import_rounds(work, source_env, SOURCE_ONLY_RUNS, "without bytecode")
    return out


def _import_rounds(work: Path, env: dict[str, str], rounds: int, label: str) -> dict[str, Any]:
    commands = {"bare": ["import", "bare"]}
    for name in HANDLERS:
        commands[name] = ["import", name, str(work / f"first-call-{name}.json")]
        commands[f"floor-{name}"] = ["import", "floor", str(work / f"floor-{name}.json")]
    names = tuple(commands)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_ in range(rounds):  # interleaved, so that a busy minute weighs on all alike
        print(f"(d) cold imports {label}, round {round_ + 1}/{rounds} ...", flush=True)
        for name in names:
            runs[name].append(_step(commands[name], work, env, LAMBDA_PYTHON))
    out = {}
    for name in names:
        out[name] = {
            "import_s": statistics.median(r["import_s"] for r in runs[name]),
            "process_s": statistics.median(r["wall_s"] for r in runs[name]),
            "maxrss_kib": max(r["maxrss_kib"] for r in runs[name]),
            "numpy": runs[name][0]["numpy"],
            "not_in_layer": runs[name][0].get("not_in_layer", []),
        }
    return out


# -- the table ---------------------------------------------------------------------------------


def rows(r: dict[str, Any]) -> list[Row]:
    """``(part, measure, ours, reference, target, met)`` per line of the results table."""
    out: list[Row] = []
    cli = r["cli"]
    grown = cli["big"]["wall_s"] - cli["small"]["wall_s"]
    ipr = cli.get("iprange")
    ratio = grown / ipr["wall_s"] if ipr else None
    out.append(
        (
            "(b)",
            f"CLI, {r['addresses']:,}-address feed minus 1,000-address feed (wall, median of {r['repeat']})",
            f"{cli['big']['wall_s']:.2f} - {cli['small']['wall_s']:.2f} = {grown:.2f} s",
            f"iprange {ipr['wall_s']:.2f} s" if ipr else "iprange not installed",
            f"<= {TARGETS['cli_ratio']:g}x",
            None if ratio is None else ratio <= TARGETS["cli_ratio"],
        )
    )
    if ratio is not None:
        out[-1] = (*out[-1][:3], f"{out[-1][3]} (**{ratio:.2f}x**)", *out[-1][4:])
    big = cli["big"]
    out.append(
        (
            "(b)",
            "CLI output: policies / budget used / left out (reported)",
            f"{big['policies']} files / {big['used']['tetragon']:,} + {big['used']['cilium']:,} / {big['left_out']:,}",
            f"peak RSS {big['maxrss_kib'] / 1024:.0f} MiB (iprange {ipr['maxrss_kib'] / 1024:.0f} MiB)"
            if ipr
            else f"peak RSS {big['maxrss_kib'] / 1024:.0f} MiB",
            "within budget",
            bool(big["within_budget"]),
        )
    )
    handlers = r["handlers"]
    for name in HANDLERS:
        h = handlers[name]
        mib = h["maxrss_kib"] / 1024
        target = f"< {TARGETS['handler_s']:g} s, < {TARGETS['handler_mib']:g} MiB"
        met = h["wall_s"] < TARGETS["handler_s"] and mib < TARGETS["handler_mib"]
        out.append(
            (
                "(c)",
                f"{name} handler on moto (MemorySize {MEMORY_MB[name]} MB)",
                f"{h['wall_s']:.2f} s, {mib:.0f} MiB",
                f"handler {h['handler_s']:.2f} s after a {h['import_s']:.2f} s import",
                target if name != "publish" else f"< {MEMORY_MB[name]} MiB",
                met if name != "publish" else mib < MEMORY_MB[name],
            )
        )
    stored = handlers["stored_feed_set_bytes"] / 1e6
    out.append(
        (
            "(c)",
            "stored feed set (indicators/feeds/<name>.json)",
            f"{stored:.2f} MB",
            f"{big['feed_entries']:,} prefixes",
            f"< {TARGETS['stored_mb']:g} MB",
            stored < TARGETS["stored_mb"],
        )
    )
    imports = r["imports"]["bytecode"]
    bare = imports["bare"]["import_s"]
    for name in HANDLERS:
        i = imports[name]
        ratio = i["import_s"] / bare
        floor = imports[f"floor-{name}"]["import_s"]
        out.append(
            (
                "(d)",
                f"cold import of {name} and of the {handlers[name]['first_call_modules']} modules its first call"
                " imports" + (" (numpy among them)" if i["numpy"] else ""),
                f"{i['import_s'] * 1000:.0f} ms",
                f"bare Powertools handler {bare * 1000:.0f} ms (**{ratio:.2f}x**); "
                f"its dependencies alone {floor * 1000:.0f} ms ({floor / bare:.2f}x)",
                f"<= {TARGETS['import_ratio']:g}x",
                ratio <= TARGETS["import_ratio"],
            )
        )
    source = r["imports"]["source_only"]
    out.append(
        (
            "(d)",
            "the same without the layer's bytecode (as sam's python3.12 builder made the layer)",
            " / ".join(f"{source[name]['import_s'] * 1000:.0f}" for name in HANDLERS) + " ms",
            f"bare Powertools handler {source['bare']['import_s'] * 1000:.0f} ms",
            "-",
            None,
        )
    )
    agent = r["agent"]
    out.append(
        (
            "(e)",
            "agent poll, nothing changed: manifest requests / body bytes",
            f"{agent['poll_requests']} / {agent['poll_body_bytes']}",
            f"all requests of the poll: {agent['requests']} (status rewritten only when new, or every 10 min)",
            "1 / 0",
            agent["poll_requests"] == TARGETS["poll_requests"] and agent["poll_body_bytes"] == 0,
        )
    )
    for run, what in ((agent, "the default budgets"), (agent["largest"], "the largest budgets a channel may have")):
        mib = run["maxrss_kib"] / 1024
        out.append(
            (
                "(e)",
                f"agent applying the bundle of {what} (first poll): peak RSS",
                f"{mib:.0f} MiB",
                f"{run['files']} files, {run['bundle_bytes'] / 1e6:.1f} MB",
                f"< {AGENT_LIMIT_MIB} MiB (pod limit)",
                mib < AGENT_LIMIT_MIB,
            )
        )
    return out


def table(rows: list[Row]) -> list[str]:
    """The results table's Markdown lines (the fleet's part (f) has the same columns)."""
    lines = ["| Part | Measure | Ours | Reference | Target | Met |", "|---|---|---|---|---|---|"]
    for part, what, ours, ref, target, met in rows:
        mark = {True: "yes", False: "**no**", None: "-"}[met]
        lines.append(f"| {part} | {what} | {ours} | {ref} | {target} | {mark} |")
    return lines


def render_markdown(r: dict[str, Any]) -> str:
    return "\n".join([f"# The whole path at {r['addresses']:,} addresses", "", *table(rows(r)), ""])

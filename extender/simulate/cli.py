"""``priority-extender simulate``: compare policies on a scenario; ``simulate capture``: write a
scenario from a live cluster.

``add_parser(subparsers.add_parser)`` registers the command on the main parser;
``run(namespace)`` runs it and returns the exit status (0 done, 1 invalid input or a failed
capture).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from extender.policy import LoadedPolicy, PolicyError, load_file, parse_duration
from extender.simulate.engine import RunResult, Simulation
from extender.simulate.results import summarize, summary_table, tier_table
from extender.simulate.scenario import ScenarioError, load_scenario
from extender.simulate.workload import build_workload

DEFAULT_SEED = 1


def add_parser(add: Callable[..., argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``simulate`` (and ``simulate capture``) through the CLI's ``subparsers.add_parser``."""
    p = add(
        "simulate",
        help="replay a workload against a cluster model and compare policies",
        description=(
            "Replay a scenario (cluster, hidden load, workload tiers, metrics lag) with "
            "kube-scheduler's placement model, once without the extender (the baseline) and once "
            "per policy with the extender's real decision code in the loop, and compare."
        ),
    )
    p.add_argument("--scenario", metavar="FILE", help="scenario YAML (see config/scenarios/)")
    p.add_argument(
        "--policy",
        metavar="FILE",
        action="append",
        default=[],
        help="a policy to compare (repeat for several); the first one's ceilings judge the "
        "baseline",
    )
    p.add_argument("--out", metavar="DIR", help="write report.md, PNG plots and results.json")
    p.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="random seed (default %(default)s)"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    sub = p.add_subparsers(dest="simulate_command", metavar="{capture}")
    c = sub.add_parser(
        "capture",
        help="write a scenario from a live cluster (API and Prometheus)",
        description=(
            "Nodes and running pods from the Kubernetes API, node utilization from Prometheus; "
            "arrival rates per priority class from pods created within --window."
        ),
    )
    c.add_argument("--kubeconfig", metavar="FILE", help="default: $KUBECONFIG or ~/.kube/config")
    c.add_argument("--context", help="kubeconfig context (default: the current one)")
    c.add_argument("--prometheus", metavar="URL", required=True, help="Prometheus base URL")
    c.add_argument(
        "--cpu-query",
        default="node:cpu_utilization:ratio",
        help="PromQL returning 0..1 cpu utilization per node (default %(default)s)",
    )
    c.add_argument(
        "--memory-query",
        default="node:memory_utilization:ratio",
        help="PromQL returning 0..1 memory utilization per node (default %(default)s)",
    )
    c.add_argument(
        "--node-label", default="node", help="label carrying the node name (default %(default)s)"
    )
    c.add_argument(
        "--window", default="1h", help="arrival rates from pods created this recently (1h)"
    )
    c.add_argument("--duration", default="1h", help="the scenario's duration (default 1h)")
    c.add_argument("--timeout", default="30s", help="per request (default 30s)")
    c.add_argument(
        "--out", dest="capture_out", metavar="FILE", default="scenario.yaml", help="output file"
    )
    return p


class Progress:
    """A one-line progress bar on a stream; updates only when the shown percentage changes."""

    WIDTH = 30

    def __init__(self, stream: TextIO, runs: int) -> None:
        self.stream = stream
        self.runs = runs
        self.shown = (-1, -1)

    def update(self, run: int, label: str, fraction: float) -> None:
        pct = min(int(fraction * 100), 100)
        if (run, pct) == self.shown:
            return
        self.shown = (run, pct)
        filled = pct * self.WIDTH // 100
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\r[{run + 1}/{self.runs}] {bar} {pct:3d}% {label[:40]:<40}")
        self.stream.flush()

    def done(self) -> None:
        self.stream.write("\r" + " " * (self.WIDTH + 60) + "\r")
        self.stream.flush()


def _labels(paths: Sequence[str]) -> list[str]:
    """Run labels: file names, or the paths where two names collide."""
    names = [Path(p).name for p in paths]
    return [
        n if names.count(n) == 1 and n != "baseline" else p
        for n, p in zip(names, paths, strict=True)
    ]


def command_line(ns: argparse.Namespace) -> str:
    words = ["priority-extender", "simulate", "--scenario", ns.scenario]
    for p in ns.policy:
        words += ["--policy", p]
    words += ["--seed", str(ns.seed)]
    if ns.out:
        words += ["--out", ns.out]
    return shlex.join(words)


def plots_available() -> bool:
    """matplotlib is an optional extra (``priority-extender[simulate]``): the server never
    needs it, and its image does not carry it."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def simulate(
    ns: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if not ns.scenario or not ns.policy:
        print("error: simulate needs --scenario FILE and at least one --policy FILE", file=stderr)
        return 2
    if ns.out and not plots_available():
        print(
            "error: --out draws plots, which need matplotlib: "
            "pip install 'priority-extender[simulate]' (the tables print without --out)",
            file=stderr,
        )
        return 1
    try:
        scenario = load_scenario(ns.scenario)
    except ScenarioError as exc:
        for line in exc.issues:
            print(line, file=stderr)
        print(f"{exc.filename}: {len(exc.issues)} error(s)", file=stderr)
        return 1
    policies: list[LoadedPolicy] = []
    failed = False
    for path in ns.policy:
        try:
            policies.append(load_file(path))
        except PolicyError as exc:
            failed = True
            for line in exc.issues:
                print(line, file=stderr)
    if failed:
        return 1
    sc = scenario.document
    workload = build_workload(sc, ns.seed)
    show = ns.progress if ns.progress is not None else stderr.isatty()
    labels = ["baseline", *_labels(ns.policy)]
    bar = Progress(stderr, len(labels)) if show else None
    runs: list[RunResult] = []
    for k, (label, policy) in enumerate(zip(labels, [None, *policies], strict=True)):

        def tick(fraction: float, k: int = k, label: str = label) -> None:
            if bar is not None:
                bar.update(k, label, fraction)

        sim = Simulation(
            sc,
            workload,
            ns.seed,
            policy,
            ceilings_from=policies[0],
            label=label,
            progress=tick if bar is not None else None,
        )
        runs.append(sim.run())
    if bar is not None:
        bar.done()
    summaries = [summarize(r) for r in runs]
    print(f"{scenario.name}: {len(workload.nodes)} nodes, seed {ns.seed}\n", file=stdout)
    print(summary_table(summaries), file=stdout)
    print(file=stdout)
    print(tier_table(summaries), file=stdout)
    if ns.out:
        # matplotlib loads in a quarter of a second: only for the commands that draw.
        from extender.simulate.report import write_report  # noqa: PLC0415

        path = write_report(
            Path(ns.out), sc, command_line(ns), ns.seed, runs, summaries, scenario.name
        )
        print(f"\nreport: {path}", file=stdout)
    return 0


def capture(
    ns: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    # kubernetes.aio and its models load only for the command that talks to a cluster.
    from extender.simulate.capture import CaptureError, capture_scenario  # noqa: PLC0415

    try:
        window = float(parse_duration(ns.window))
        duration = float(parse_duration(ns.duration))
        timeout = float(parse_duration(ns.timeout))
    except ValueError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    try:
        text = asyncio.run(
            capture_scenario(
                kubeconfig=ns.kubeconfig,
                context=ns.context,
                prometheus=ns.prometheus,
                cpu_query=ns.cpu_query,
                memory_query=ns.memory_query,
                node_label=ns.node_label,
                window_s=window,
                duration_s=duration,
                timeout_s=timeout,
            )
        )
    except CaptureError as exc:
        print(f"error: capture failed: {exc}", file=stderr)
        return 1
    Path(ns.capture_out).write_text(text)
    print(f"wrote {ns.capture_out}", file=stdout)
    return 0


def run(ns: argparse.Namespace) -> int:
    """Run ``simulate`` or ``simulate capture`` from parsed arguments."""
    if getattr(ns, "simulate_command", None) == "capture":
        return capture(ns)
    # The extender in the loop logs its decisions as a server would (a floor applied, a pod
    # rejected everywhere): thousands of lines per run. The report counts what matters.
    decisions = logging.getLogger("extender.verbs")
    decisions.addHandler(logging.NullHandler())
    decisions.propagate = False
    return simulate(ns)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m extender.simulate``: the same command without the main CLI around it."""
    parser = argparse.ArgumentParser(prog="priority-extender")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub.add_parser)
    return run(parser.parse_args(argv))

"""The scheduler-level benchmark: the real kube-scheduler v1.28.7, stock and with the extender.

    .venv/bin/python -m benchmarks.bench_scheduler                  # full: several minutes
    .venv/bin/python -m benchmarks.bench_scheduler --quick          # tiny sizes (the smoke test)
    .venv/bin/python -m benchmarks.bench_scheduler --update-results # also into RESULTS.md
    .venv/bin/python -m benchmarks.bench_scheduler --client-qps 0   # the shipped rate limit

It starts the end-to-end test bed of ``tests/e2e`` (etcd, kube-apiserver, kube-scheduler, a real
Prometheus scraping the node_exporter emulation through the project's recording rules, and the
extender as its own process; ``scripts/setup.sh --test`` installs the binaries, ``KUBE_ASSETS``
overrides them) and measures two things:

**Throughput.** kube-scheduler drains a backlog of ``--pods`` pods (500) on ``--nodes`` nodes
(200, each with live samples in Prometheus, a tenth of them above the pods' tier ceiling) with
``config/scheduler-config.yaml`` as shipped (names only, weight 5, the preempt verb, httpTimeout
1 s), changed only where a test cluster needs it: ``clientConnection.kubeconfig`` (the admin
kubeconfig), ``leaderElect: false``, the extender's ``urlPrefix`` (or no extender: stock), and the
client rate limit (``scheduler_bed.CLIENT_QPS`` says why). The backlog: kube-scheduler is stopped
with SIGSTOP, the pods are created, and the clock starts at SIGCONT and stops when a watch has
seen the last pod bound. Stock, floor and extender runs are interleaved in rounds (the order
reversed every other round; ``--pairs`` sets how many), each with a freshly started
kube-scheduler, the same extender process running throughout (so its background work, watching
the pods and refreshing metrics, costs the same in every arm: its CPU during the stock runs is
that background). The floor arm calls ``benchmarks/floor_extender.py`` instead: the same HTTP
server, no deciding, so floor/stock is the most any extender could get here. Reported per run and
as medians: pods/s, the ratios floor/stock and extender/stock (issue 15's target: median >=
0.85), kube-scheduler's own
``scheduler_scheduling_attempt_duration_seconds`` p50/p99 (its histogram, delta over the run;
an attempt includes its binding call) and ``scheduler_scheduling_algorithm_duration_seconds``
p50/p99 (filter and score, extender calls included), the extender's CPU per scheduled pod
(utime + stime from ``/proc``) and its RSS at the end.

**Placement quality.** A scenario of the project's own (:data:`GROUPS`): nodes that are hot by
live load but empty by requests (the emulation's hidden load), and a burst of pods per tier of
``config/policy.yaml`` (PriorityClasses ``batch``, ``standard``, ``production``, ``critical``),
lowest tier first. Each bound pod's real usage enters the ground truth as a container's would
(``scheduler_bed.UsageModel``). Stock against the extender, per tier: the share of pods bound
on a node above the tier's ceiling by the ground truth at the bind instant, the most pods bound on
one node within 15 s, and the pods left pending at the end.

Output: markdown tables printed and written to ``--out`` (default ``benchmarks/results/
scheduler.md``, an ignored folder); ``--update-results`` also replaces the section between the
markers below in ``benchmarks/RESULTS.md`` (appended if absent), leaving the rest untouched.
Figures move between runs on a small shared machine: compare the arms within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes.client.rest import ApiException

from benchmarks.scheduler_bed import (
    CLIENT_QPS,
    RAMP_S,
    START_DELAY_S,
    BindWatch,
    PodUsage,
    UsageModel,
    cpu_seconds,
    extender_histogram,
    histogram_delta,
    histogram_quantile,
    kubelet_paused,
    pod_manifest,
    profile_name,
    rss_bytes,
    scheduler_histogram,
    shipped_scheduler_config,
)
from tests.e2e import assets
from tests.e2e.harness import Scenario, Session, ceilings
from tests.e2e.kube import quantity_cores, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "scheduler.md"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- scheduler-benchmark:begin -->", "<!-- scheduler-benchmark:end -->"

CREATE_THREADS = 8
"""Parallel pod creations: the ``kubernetes`` client's connection pool holds 10 connections on
2 cores (5 per core), and more threads only contend for the GIL."""
DRAIN_S = 300.0
"""Bound on a drain: 500 pods at the slowest rate seen (about 130 pods/s) take 4 s; the bound only
turns a stuck scheduler into an error that says so."""
METRICS_S = 30.0
"""kube-scheduler counts an attempt right after its binding call returns, within milliseconds
of the watch seeing the pod bound."""
QUIET_S, QUIET_CPU = 0.5, 0.05
"""Before SIGCONT the extender must have been nearly idle (under 5% of a core over 0.5 s):
done with the creations it watched, so that its CPU over the run is the run's."""
QUIET_DEADLINE_S = 20.0
"""How long to wait for that quiet; past it the run starts anyway (the extender refreshes its
metrics every second, which is background in both arms)."""
CLEAN_S = 60.0
"""Deleting 500 pods with grace 0 takes a second or two."""
BURST_WINDOW_S = 15.0
"""The "most pods bound on one node within" window: metrics lag a binding by 5-30 s (container
start, scrape, rule evaluation), and a node that takes many pods in that time is being piled on
before anyone can see it."""
SETTLE_S = 60.0
"""Bound on waiting for each burst's pods to be either bound or Unschedulable."""
NODE_CORES, NODE_MEMORY_GIB = 8, 32
ALGORITHM = "scheduler_scheduling_algorithm_duration_seconds"
"""kube-scheduler's histogram of the scheduling algorithm alone (filter and score, extenders
included): where the extender's latency shows, without the binding that the attempt includes."""


@dataclass(frozen=True)
class Plan:
    pairs: int
    pods: int
    nodes: int
    burst: int
    """Pods per tier in the placement scenario."""
    groups: int
    """Index into each :data:`GROUPS` entry's counts: 0 full, 1 quick."""
    gap_s: float
    """Cluster time between two bursts, so that the earlier ones' usage is ramping in."""
    final_s: float
    """After the last burst: time for retries before pending pods are counted."""
    client_qps: int = CLIENT_QPS
    profile: Path | None = None
    """Record py-spy over each extender drain into this folder (collapsed stacks, one file each)."""
    """kube-scheduler's client qps (burst twice that); 0: the shipped defaults (50/100)."""


FULL = Plan(pairs=3, pods=500, nodes=200, burst=16, groups=0, gap_s=15.0, final_s=15.0)
QUICK = Plan(pairs=1, pods=20, nodes=10, burst=3, groups=1, gap_s=0.0, final_s=0.0)

# The placement scenario's nodes: (name, (count full, count quick), cpu, memory, cores, GiB).
# Ceilings of config/policy.yaml, cpu/memory: batch 0.60/0.75, standard 0.75/0.85,
# production 0.85/0.90, system-critical 0.97/0.97. The hot nodes are the largest and empty by
# requests, so kube-scheduler alone scores them best (least allocated).
GROUPS: tuple[tuple[str, tuple[int, int], float, float, int, int], ...] = (
    ("blazing", (2, 1), 0.90, 0.30, 16, 64),  # above production's cpu ceiling, below critical's
    ("hot", (3, 1), 0.78, 0.30, 16, 64),  # above batch and standard, below production
    ("memhot", (1, 1), 0.20, 0.88, 16, 64),  # memory above batch and standard
    ("cool", (6, 3), 0.25, 0.30, 8, 32),  # room for every tier
)
BURSTS: tuple[tuple[str, str], ...] = (
    ("batch", "batch"),
    ("standard", "standard"),
    ("production", "production"),
    ("system-critical", "critical"),
)
"""(tier, PriorityClass) of each burst, lowest tier first: the low tiers fill what they may use,
the high ones come when that load is ramping in."""
PLACEMENT_CPU, PLACEMENT_MEMORY = "500m", "1Gi"
RAMPED_S = START_DELAY_S + RAMP_S
"""When a pod's usage has fully ramped in: the ground truth then holds it and its neighbours
bound just before or after it, the load its tier's ceiling was meant to keep it from."""


# --- the machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def loadavg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


# --- throughput --------------------------------------------------------------------------------


@dataclass
class Run:
    pair: int
    arm: str
    """``stock``, ``floor`` (benchmarks/floor_extender.py in the extender's place) or
    ``extender``."""
    pods: int
    bound: int
    seconds: float
    p50_ms: float
    p99_ms: float
    algo_p50_ms: float
    algo_p99_ms: float
    attempts: int
    extender_cpu_s: float
    load1: float
    handle_p50_ms: tuple[float, float] = (math.nan, math.nan)
    """The extender's own p50 handling time of (filter, prioritize), body read to reply built
    (its ``priority_extender_request_duration_seconds``); NaN in the other arms."""

    @property
    def rate(self) -> float:
        return self.pods / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_pod(self) -> float:
        return 1000.0 * self.extender_cpu_s / self.pods


def create_pods(session: Session, namespace: str, manifests: Sequence[dict[str, Any]]) -> None:
    core = session.core
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(lambda m: core.create_namespaced_pod(namespace, m), manifests))


def wait_quiet(pid: int) -> None:
    """Until the process used under QUIET_CPU of a core over QUIET_S (or QUIET_DEADLINE_S)."""
    deadline = time.monotonic() + QUIET_DEADLINE_S
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(QUIET_S)
        if cpu_seconds(pid) - before < QUIET_CPU * QUIET_S:
            return


def delete_pods(session: Session, namespace: str) -> None:
    core = session.core
    with contextlib.suppress(ApiException):
        core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    wait_for(
        f"the pods of {namespace} deleted",
        lambda: not core.list_namespaced_pod(namespace, limit=1).items,
        lambda: "",
        CLEAN_S,
    )


def start_profile(folder: Path | None, name: str, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``pid`` into ``folder/name.txt`` (collapsed stacks, GIL holder only), or
    None when no folder was asked for."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    argv = [str(spy), "record", "--pid", str(pid), "--rate", "250", "--gil", "--nonblocking"]
    argv += ["--format", "raw"]
    argv += ["--output", str(folder / f"{name}.txt")]
    log = (folder / f"{name}.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    time.sleep(1.0)  # py-spy attaches before the drain starts
    return proc


def stop_profile(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def throughput_run(
    session: Session,
    sc: Scenario,
    pair: int,
    arm: str,
    pods: int,
    qps: int = CLIENT_QPS,
    floor: FloorExtender | None = None,
    profile: Path | None = None,
) -> Run:
    """One drain. The CPU column is the extender's process, or the floor's in the floor arm."""
    cp, ext = session.cp, session.ext
    assert ext.proc is not None
    url = {"extender": ext.url_prefix, "floor": floor.url if floor else None}.get(arm)
    if arm == "floor" and url is None:
        raise ValueError("the floor arm needs a running floor extender")
    cpu_pid = floor.proc.pid if arm == "floor" and floor is not None else ext.proc.pid
    cfg = shipped_scheduler_config(cp.kubeconfig, url, qps=qps, burst=2 * qps)
    sched = cp.start_scheduler(cfg)
    before = cp.scheduler_metrics()
    algo_before = scheduler_histogram(cp, ALGORITHM)
    verbs = ("filter", "prioritize")
    own_before = [extender_histogram(ext.admin_url, v) for v in verbs]
    names = [f"{arm}-{pair}-{i:04d}" for i in range(pods)]
    manifests = [
        pod_manifest(n, sc.id, profile_name(cfg), priority_class=None, cpu="100m", memory="128Mi")
        for n in names
    ]
    watch = BindWatch(cp, sc.namespace).start()
    spy: subprocess.Popen[bytes] | None = None
    try:
        sched.signal(signal.SIGSTOP)
        try:
            create_pods(session, sc.namespace, manifests)
            wait_quiet(ext.proc.pid)
            load1 = os.getloadavg()[0]
            spy = (
                start_profile(profile, f"{arm}-{pair}", ext.proc.pid) if arm == "extender" else None
            )
            cpu0 = cpu_seconds(cpu_pid)
            t0 = time.time()
            sched.signal(signal.SIGCONT)
            wait_for(
                f"{pods} pods bound ({arm})",
                lambda: watch.count(names) == pods,
                lambda: f"{watch.count(names)} bound; {sc.describe(names[:5])}",
                DRAIN_S,
            )
            cpu1 = cpu_seconds(cpu_pid)
        finally:
            sched.signal(signal.SIGCONT)  # never leave it stopped, whatever failed
            stop_profile(spy)
        t1 = max(stamp for _node, stamp in (watch.bound[n] for n in names))
        scheduled0 = before.attempts.get("scheduled", 0.0)
        wait_for(
            "kube-scheduler to count the attempts",
            lambda: cp.scheduler_metrics().attempts.get("scheduled", 0.0) - scheduled0 >= pods,
            lambda: str(cp.scheduler_metrics().attempts),
            METRICS_S,
        )
        after = cp.scheduler_metrics()
        algo = histogram_delta(scheduler_histogram(cp, ALGORITHM), algo_before)
        own = [
            histogram_delta(extender_histogram(ext.admin_url, v), b)
            for v, b in zip(verbs, own_before, strict=True)
        ]
    finally:
        watch.stop()
        delete_pods(session, sc.namespace)
    buckets = histogram_delta(after.duration_buckets, before.duration_buckets)
    return Run(
        pair,
        arm,
        pods,
        watch.count(names),
        t1 - t0,
        1000.0 * histogram_quantile(0.5, buckets),
        1000.0 * histogram_quantile(0.99, buckets),
        1000.0 * histogram_quantile(0.5, algo),
        1000.0 * histogram_quantile(0.99, algo),
        int(after.duration_count - before.duration_count),
        cpu1 - cpu0,
        load1,
        (
            (1000.0 * histogram_quantile(0.5, own[0]), 1000.0 * histogram_quantile(0.5, own[1]))
            if arm == "extender"
            else (math.nan, math.nan)
        ),
    )


@dataclass
class Throughput:
    runs: list[Run]
    rss: int
    nodes: int
    names_per_call: int


class FloorExtender:
    """``benchmarks/floor_extender.py`` as a process on a free loopback port."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("floor_extender.py")), "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("floor extender listening on "):
            self.close()
            raise RuntimeError(f"the floor extender did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[-1])}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


ARMS = ("stock", "floor", "extender")


def throughput(session: Session, plan: Plan, log: Callable[[str], None] = print) -> Throughput:
    """``plan.pairs`` interleaved rounds of stock, floor and extender drains of ``plan.pods`` on
    ``plan.nodes`` (the order reversed every other round)."""
    session.ext.ensure(session.policy())
    sc = Scenario(session, "bench-throughput")
    runs: list[Run] = []
    floor = FloorExtender()
    try:
        # A tenth of the nodes above the standard tier's ceiling (0.75), the rest spread over
        # 0.10-0.60: the extender rejects some and scores the rest, as on a real cluster.
        specs = []
        for i in range(plan.nodes):
            cpu = 0.80 if i % 10 == 0 else 0.10 + 0.5 * ((i * 37) % 100) / 100
            specs.append((f"n{i:03d}", {"cpu": cpu, "memory": 0.2 + 0.3 * ((i * 53) % 100) / 100}))
        for _suffix, kw in specs:
            kw.update(cores=NODE_CORES, memory_gib=NODE_MEMORY_GIB)
        sc.create_nodes(specs)
        sc.wait_extender_sees()
        log(f"throughput: {plan.nodes} nodes seen by the extender")
        with kubelet_paused(session):
            for pair in range(1, plan.pairs + 1):
                order = ARMS if pair % 2 else ARMS[::-1]
                for arm in order:
                    run = throughput_run(
                        session,
                        sc,
                        pair,
                        arm,
                        plan.pods,
                        plan.client_qps,
                        floor=floor,
                        profile=plan.profile,
                    )
                    log(
                        f"  pair {pair} {arm}: {run.rate:.0f} pods/s, "
                        f"p50 {run.p50_ms:.1f} ms, cpu {run.cpu_ms_per_pod:.2f} ms/pod"
                    )
                    runs.append(run)
        assert session.ext.proc is not None
        rss = rss_bytes(session.ext.proc.pid)
    finally:
        floor.close()
        session.cp.stop_scheduler()
        sc.cleanup()
    # percentageOfNodesToScore's adaptive default: 50 - nodes/125 percent, at least 100 nodes.
    names = min(plan.nodes, max(100, plan.nodes * max(5, 50 - plan.nodes // 125) // 100))
    return Throughput(runs, rss, plan.nodes, names)


# --- placement quality -------------------------------------------------------------------------


@dataclass
class TierResult:
    tier: str
    ceiling: dict[str, float]
    pods: int
    bound: int
    above: int
    above_ramped: int | None
    """Bound on a node that was above the ceiling RAMPED_S after the binding (the pod's own
    usage and its neighbours' in by then); None if that instant had not come for every pod."""
    most_in_window: int
    most_where: str
    """The scenario's name of that node (its group and index, e.g. ``cool-2``)."""
    nodes_used: int
    pending: int


@dataclass
class Placement:
    arm: str
    tiers: list[TierResult]
    reasons: list[str] = field(default_factory=list)
    """A FailedScheduling message of each tier with pending pods."""


def most_in_window(stamps: dict[str, list[float]], window: float) -> tuple[int, str]:
    """The most pods bound on one node within ``window`` seconds, and that node ("" if none)."""
    best, where = 0, ""
    for node, unsorted in sorted(stamps.items()):
        times = sorted(unsorted)
        lo = 0
        for hi, t in enumerate(times):
            while t - times[lo] > window:
                lo += 1
            if hi - lo + 1 > best:
                best, where = hi - lo + 1, node
    return best, where


def placement_run(session: Session, plan: Plan, arm: str) -> Placement:
    policy = session.policy()
    limits = ceilings(policy)
    sc = Scenario(session, f"bench-placement-{arm}")
    usage = UsageModel(session.exporter)
    cores: dict[str, tuple[float, float]] = {}  # node -> (cores, memory GiB)
    requests: dict[str, tuple[float, float]] = {}
    tier_of: dict[str, str] = {}

    def on_bound(name: str, node: str, stamp: float) -> None:
        if node in cores and name in requests:
            c, gib = cores[node]
            cpu, mem = requests[name]
            usage.bound(PodUsage(node, stamp, cpu / c, mem / gib))

    watch = BindWatch(session.cp, sc.namespace, on_bound=on_bound)
    try:
        specs = []
        for group, counts, cpu, mem, c, gib in GROUPS:
            for i in range(counts[plan.groups]):
                specs.append((f"{group}-{i}", {"cpu": cpu, "memory": mem, "cores": c,
                                               "memory_gib": gib}))  # fmt: skip
        for name, kw in zip(sc.create_nodes(specs), (kw for _, kw in specs), strict=True):
            cores[name] = (kw["cores"], kw["memory_gib"])
            usage.node(name, kw["cpu"], kw["memory"])
        sc.wait_extender_sees()
        cfg = shipped_scheduler_config(
            session.cp.kubeconfig, session.ext.url_prefix if arm == "extender" else None
        )
        session.cp.start_scheduler(cfg)
        watch.start()
        usage.start()
        all_names: list[str] = []
        last = time.time()
        for k, (tier, klass) in enumerate(BURSTS):
            if k:
                time.sleep(max(0.0, last + plan.gap_s - time.time()))  # cluster time passing
            names = [f"{klass}-{i:02d}" for i in range(plan.burst)]
            for n in names:
                requests[n] = (quantity_cores(PLACEMENT_CPU), 1.0)  # cores, GiB (1Gi)
                tier_of[n] = tier
            create_pods(
                session,
                sc.namespace,
                [
                    pod_manifest(
                        n,
                        sc.id,
                        profile_name(cfg),
                        priority_class=klass,
                        cpu=PLACEMENT_CPU,
                        memory=PLACEMENT_MEMORY,
                    )
                    for n in names
                ],
            )
            all_names += names
            sc.wait_settled(names, SETTLE_S)
            last = time.time()
        time.sleep(plan.final_s)  # retries of pending pods, as cluster time passes
        bindings = sc.bindings(all_names)
        results = []
        reasons = []
        for tier, klass in BURSTS:
            names = [n for n in all_names if tier_of[n] == tier]
            above, later, unknown = 0, 0, 0
            now = time.time()
            per_node: dict[str, list[float]] = defaultdict(list)
            for n in names:
                seen = watch.get(n)
                if seen is None:
                    continue
                node, stamp = seen
                per_node[node].append(stamp)
                truth = session.exporter.truth_at(node, stamp)
                if any(getattr(truth, sig) > lim for sig, lim in limits[tier].items()):
                    above += 1
                ramped = stamp + RAMPED_S
                if ramped > now:
                    unknown += 1  # not that long ago yet
                    continue
                truth = session.exporter.truth_at(node, ramped)
                if any(getattr(truth, sig) > lim for sig, lim in limits[tier].items()):
                    later += 1
            most, where = most_in_window(per_node, BURST_WINDOW_S)
            pending = [n for n in names if not bindings.get(n)]
            if pending:
                got = sc.unschedulable(pending[0])
                reasons.append(f"{arm} {klass}: {got[1] if got else 'no condition yet'}")
            results.append(
                TierResult(
                    tier,
                    limits[tier],
                    len(names),
                    len(names) - len(pending),
                    above,
                    None if unknown else later,
                    most,
                    where.removeprefix(f"{sc.id}-"),
                    len(per_node),
                    len(pending),
                )
            )
        return Placement(arm, results, reasons)
    finally:
        watch.stop()
        usage.stop()
        session.cp.stop_scheduler()
        sc.cleanup()


def placement(session: Session, plan: Plan, log: Callable[[str], None] = print) -> list[Placement]:
    session.ext.ensure(session.policy())
    out = []
    for arm in ("stock", "extender"):
        p = placement_run(session, plan, arm)
        log(f"placement {arm}: " + ", ".join(f"{t.tier} {t.above}/{t.bound}" for t in p.tiers))
        out.append(p)
    return out


# --- tables ------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def throughput_tables(t: Throughput) -> str:
    lines = [
        "| pair | arm | pods | bound | drain s | pods/s | attempt p50 ms | attempt p99 ms "
        "| algorithm p50 ms | algorithm p99 ms | extender CPU ms/pod | load1 at start |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in t.runs:
        lines.append(
            f"| {r.pair} | {r.arm} | {r.pods} | {r.bound} | {r.seconds:.2f} | {r.rate:.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.algo_p50_ms:.2f} | {r.algo_p99_ms:.2f} "
            f"| {r.cpu_ms_per_pod:.3f} | {r.load1:.2f} |"
        )
    stock = [r for r in t.runs if r.arm == "stock"]
    floor = [r for r in t.runs if r.arm == "floor"]
    ext = [r for r in t.runs if r.arm == "extender"]

    def ratios(arm: list[Run]) -> list[float]:
        return [a.rate / s.rate for s in stock for a in arm if a.pair == s.pair and s.rate > 0]

    def med(arm: list[Run], key: Callable[[Run], float]) -> str:
        return f"{_median([key(r) for r in arm]):.2f}" if arm else "-"

    ms, mf, me = (_median([r.rate for r in arm]) for arm in (stock, floor, ext))
    floor_ratio = f"{mf / ms:.2f}" if floor and ms else "-"
    lines += [
        "",
        "| median over the rounds | stock | floor | with extender | floor / stock "
        "| extender / stock |",
        "|---|---:|---:|---:|---:|---:|",
        f"| pods/s | {ms:.0f} | {mf:.0f} | {me:.0f} | {floor_ratio} "
        f"| **{me / ms:.2f}** (target >= 0.85) |",
        f"| per-round ratios | | | | {', '.join(f'{x:.2f}' for x in ratios(floor))} "
        f"| {', '.join(f'{x:.2f}' for x in ratios(ext))} |",
        f"| attempt p50 ms | {med(stock, lambda r: r.p50_ms)} | {med(floor, lambda r: r.p50_ms)}"
        f" | {med(ext, lambda r: r.p50_ms)} | | |",
        f"| attempt p99 ms | {med(stock, lambda r: r.p99_ms)} | {med(floor, lambda r: r.p99_ms)}"
        f" | {med(ext, lambda r: r.p99_ms)} | | |",
        f"| algorithm p50 ms | {med(stock, lambda r: r.algo_p50_ms)} "
        f"| {med(floor, lambda r: r.algo_p50_ms)} | {med(ext, lambda r: r.algo_p50_ms)} | | |",
        f"| algorithm p99 ms | {med(stock, lambda r: r.algo_p99_ms)} "
        f"| {med(floor, lambda r: r.algo_p99_ms)} | {med(ext, lambda r: r.algo_p99_ms)} | | |",
        f"| CPU ms/pod (extender; floor's own in the floor arm) "
        f"| {_median([r.cpu_ms_per_pod for r in stock]):.3f} (background) "
        f"| {_median([r.cpu_ms_per_pod for r in floor]):.3f} "
        f"| {_median([r.cpu_ms_per_pod for r in ext]):.3f} | | |",
        f"| extender's own handling p50 ms (filter / prioritize) | | "
        f"| {_median([r.handle_p50_ms[0] for r in ext]):.3f} / "
        f"{_median([r.handle_p50_ms[1] for r in ext]):.3f} | | |",
        f"| extender RSS at the end | | | {t.rss / 2**20:.0f} MB | | |",
    ]
    return "\n".join(lines)


def placement_table(results: list[Placement]) -> str:
    lines = [
        "| arm | tier | ceiling cpu/mem | pods | bound | above ceiling at bind "
        f"| share above | above {RAMPED_S:.0f} s after bind "
        f"| most on one node in {BURST_WINDOW_S:.0f} s | nodes used | pending at end |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in results:
        for t in p.tiers:
            share = f"{100.0 * t.above / t.bound:.0f}%" if t.bound else "-"
            ramped = "-" if t.above_ramped is None else str(t.above_ramped)
            ceiling = f"{t.ceiling.get('cpu', 0):.2f}/{t.ceiling.get('memory', 0):.2f}"
            lines.append(
                f"| {p.arm} | {t.tier} | {ceiling} | {t.pods} | {t.bound} | {t.above} | {share} "
                f"| {ramped} "
                f"| {t.most_in_window} ({t.most_where or '-'}) | {t.nodes_used} | {t.pending} |"
            )
    reasons = [r for p in results for r in p.reasons]
    if reasons:
        lines += ["", "Why pods were left pending (one FailedScheduling message a tier):", ""]
        lines += [f"- {r}" for r in reasons]
    return "\n".join(lines)


def nodes_table(plan: Plan) -> str:
    lines = [
        "| nodes | count | cpu | memory | cores | memory GiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for group, counts, cpu, mem, c, gib in GROUPS:
        lines.append(f"| {group} | {counts[plan.groups]} | {cpu:.2f} | {mem:.2f} | {c} | {gib} |")
    return "\n".join(lines)


def report(
    plan: Plan,
    command: str,
    t: Throughput | None,
    places: list[Placement] | None,
    machine: dict[str, str],
    elapsed: float,
) -> str:
    from benchmarks import scheduler_bed as bed

    out = [
        "## Scheduler-level benchmark (real kube-scheduler)",
        "",
        f"Machine: {machine['model']}, {machine['cores']} cores, {machine['memory']}; Linux "
        f"{platform.release()}; Python {platform.python_version()}; kube-scheduler "
        f"{assets.KUBE_VERSION}. Run {machine['date']} in {elapsed:.0f} s "
        f"(`{command}`). "
        f"Load average before: {machine['load_before']}; after: {machine['load_after']}. "
        "The machine is shared with other agents running tests at the same time: absolute "
        "figures move with their load; the rounds are interleaved (order alternating) so that "
        "the ratios compare like with like.",
    ]
    if t is not None:
        limit = (
            f"the client rate limit raised to qps {plan.client_qps}/burst {2 * plan.client_qps} "
            "(the shipped defaults, 50/100, cap both arms at about 50 bindings/s)"
            if plan.client_qps
            else "the shipped client rate limit (kube-scheduler's defaults: qps 50, burst 100)"
        )
        out += [
            "",
            f"### Throughput: a backlog of {plan.pods} pods on {t.nodes} nodes",
            "",
            "`config/scheduler-config.yaml` as shipped (names only, weight 5, preemptVerb, "
            "httpTimeout 1s, profile `priority-scheduler`) with the admin kubeconfig, "
            f"`leaderElect: false`, {limit}, and no `extenders` for stock. "
            "kube-scheduler stopped (SIGSTOP) "
            "while the pods are created, timed from SIGCONT to the last pod seen bound. Every "
            "node has live samples in Prometheus; a tenth are above the pods' tier ceiling. "
            f"kube-scheduler searches {t.names_per_call} nodes a pod "
            "(percentageOfNodesToScore's default), so each filter call carries that many names. "
            "Attempt p50/p99: kube-scheduler's `scheduler_scheduling_attempt_duration_seconds` "
            "(delta over the run, interpolated within its exponential buckets); an attempt "
            "runs from the start of its scheduling cycle to the end of its binding call, and the "
            "bindings run in parallel with the next cycles: stock's are long because hundreds of "
            "bindings queue at the apiserver at once, the extender's shorter because its slower "
            "cycles let fewer pile up. Algorithm p50/p99: `scheduler_scheduling_algorithm_"
            "duration_seconds`, the filter and score part of the cycle (extender calls included),"
            " where the extender's cost shows. Extender CPU: "
            "utime+stime of its process over the run / pods; in the stock runs it is called by "
            "no one, so that column is its background (watching the pods, metrics refresh). "
            "The floor arm puts `benchmarks/floor_extender.py` in the extender's place: the same "
            "HTTP/1.1 server as the extender's scheduler port, keeping every node with score 0 "
            "and deciding nothing, so floor / stock is what two extender calls a pod cost "
            "kube-scheduler on this machine before any deciding (its CPU column is its own). "
            "The extender's own handling time (its request-duration histogram, body read to "
            "reply built) against the algorithm time shows how much of a cycle is spent in "
            "the extender and how much in getting there and back.",
            "",
            throughput_tables(t),
        ]
    if places is not None:
        out += [
            "",
            "### Placement quality: hidden load, one burst per tier",
            "",
            f"Nodes empty by requests, with emulated live load (the hot ones largest, so "
            f"request-based scores prefer them). {plan.burst} pods a tier ({PLACEMENT_CPU} cpu, "
            f"{PLACEMENT_MEMORY}), created at once, tier after tier (batch, standard, production, "
            f"critical) {plan.gap_s:.0f} s apart; each bound pod's usage ({bed.USAGE_FACTOR} x "
            f"requests) enters the ground truth {bed.START_DELAY_S:.0f} s after binding, ramping "
            f'in over {bed.RAMP_S:.0f} s. "Above ceiling": the node\'s ground truth at the bind '
            "instant (as the watch saw it) was above the pod's tier ceiling in cpu or memory; "
            f'"above {RAMPED_S:.0f} s after bind": the same, once the usage of the pod and of '
            'those bound with it had ramped in (what the ceiling is for; "-" when that '
            "instant had not come at the end of the run). "
            f"Pending: not bound {plan.final_s:.0f} s after the last burst settled.",
            "",
            nodes_table(plan),
            "",
            placement_table(places),
        ]
    return "\n".join(out) + "\n"


def update_results(section: str, path: Path = RESULTS) -> None:
    """Replace the marked section of ``path`` (append markers and section if absent)."""
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block + "\n"
    path.write_text(text)


# --- entry points ------------------------------------------------------------------------------


def machine_now() -> dict[str, str]:
    return {
        "model": cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": f"{memory_gib():.0f} GiB",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": loadavg(),
        "load_after": "",
    }


def run(
    session: Session,
    plan: Plan,
    *,
    do_throughput: bool = True,
    do_placement: bool = True,
    command: str = "python -m benchmarks.bench_scheduler",
    log: Callable[[str], None] = print,
) -> tuple[str, Throughput | None, list[Placement] | None]:
    """Both parts on a running session; returns the markdown and the raw results."""
    machine = machine_now()
    start = time.monotonic()
    t = throughput(session, plan, log) if do_throughput else None
    places = placement(session, plan, log) if do_placement else None
    machine["load_after"] = loadavg()
    return report(plan, command, t, places, machine, time.monotonic() - start), t, places


@contextlib.contextmanager
def _session(keep: Path | None) -> Iterator[Session]:
    with contextlib.ExitStack() as stack:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            folder = keep
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sched-")))
        yield stack.enter_context(Session.running(folder))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 pair, 20 pods, 10 nodes")
    parser.add_argument("--pairs", type=int, help="interleaved rounds of stock, floor and extender")
    parser.add_argument("--pods", type=int, help="pods in the backlog")
    parser.add_argument("--nodes", type=int, help="nodes for the throughput runs")
    parser.add_argument(
        "--client-qps",
        type=int,
        help=f"kube-scheduler's client qps, burst twice that (default {CLIENT_QPS}; 0: shipped)",
    )
    parser.add_argument("--only", choices=("throughput", "placement"), help="one part only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to write")
    parser.add_argument(
        "--update-results", action="store_true", help=f"also replace the section in {RESULTS}"
    )
    parser.add_argument("--keep", type=Path, help="keep the test bed's files (logs) here")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record py-spy (GIL holder, collapsed stacks) over each extender drain here",
    )
    ns = parser.parse_args(argv)
    plan = QUICK if ns.quick else FULL
    overrides = {
        k: getattr(ns, k) for k in ("pairs", "pods", "nodes") if getattr(ns, k) is not None
    }
    if any(v < 1 for v in overrides.values()):
        print("error: --pairs, --pods and --nodes must be at least 1", file=sys.stderr)
        return 2
    if ns.client_qps is not None:
        if ns.client_qps < 0:
            print("error: --client-qps must be 0 (the shipped defaults) or more", file=sys.stderr)
            return 2
        overrides["client_qps"] = ns.client_qps
    if ns.profile is not None:
        overrides["profile"] = ns.profile
    if overrides:
        plan = Plan(**{**plan.__dict__, **overrides})
    why = assets.missing()
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    with _session(ns.keep) as session:
        text, _, _ = run(
            session,
            plan,
            do_throughput=ns.only in (None, "throughput"),
            do_placement=ns.only in (None, "placement"),
            command=" ".join(["python -m benchmarks.bench_scheduler", *(argv or sys.argv[1:])]),
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    print(text)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(text)
    print(f"written to {ns.out}", file=sys.stderr)
    if ns.update_results:
        update_results(text)
        print(f"section replaced in {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

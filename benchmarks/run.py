"""The benchmark suite: what the extender costs per pod, against a floor, at cluster scale.

    .venv/bin/python -m benchmarks.run                 # full suite, a few minutes
    .venv/bin/python -m benchmarks.run --quick         # tiny sizes, seconds (the smoke test)
    .venv/bin/python -m benchmarks.run --out FILE      # default benchmarks/RESULTS.md

HTTP figures are end to end over loopback, as kube-scheduler calls: the extender runs as its own
process (static source with the cluster's nodes, so names-only requests are answered from its
node table), the client sends one request at a time on a keep-alive connection (concurrency 1)
or eight at once (concurrency 8). The floor is a bare aiohttp handler in its own process that
reads the same body and returns a prebuilt reply of the same size, measured in the same run and
interleaved with the extender, so every ratio compares like with like on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks.objects import (
    ROOT,
    names_body,
    node_name,
    node_object,
    nodes_body,
    write_static_cluster,
)

JSON = {"Content-Type": "application/json"}
#: Bodies above this size get two warm-up calls instead of dozens.
LARGE_BODY = 8 << 20
#: Calls measured per row at the least, even past the time budget, so a percentile means something.
MIN_SAMPLES = 16


@dataclass(frozen=True)
class Plan:
    names_sizes: tuple[int, ...]
    full_sizes: tuple[int, ...]
    cluster: int
    budget_s: float
    """Time spent measuring one row (extender and floor together)."""
    max_requests: int
    cpu_pods: int
    core_sizes: tuple[int, ...]


FULL = Plan(
    (100, 500, 1000, 5000, 15000),
    (100, 500, 1000, 5000),
    15000,
    6.0,
    3000,
    2000,
    (100, 500, 1000, 5000, 15000),
)
QUICK = Plan((10, 50), (10,), 100, 0.3, 40, 200, (10, 100))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> str:
    cpu = "unknown cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}; Linux {platform.release()}; "
        f"Python {platform.python_version()}"
    )


@contextlib.contextmanager
def process(
    args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``args`` running in ``cwd`` (this environment, plus ``env``), stopped on leaving."""
    extra = {"PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, **extra})
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def wait_up(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as r:
                if r.status in (200, 404, 405):
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> bytes:
    async with session.post(url, data=body, headers=JSON) as r:
        reply = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}: {reply[:200]!r}")
        return reply


async def timed(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    start = time.perf_counter()
    await post(session, url, body)
    return time.perf_counter() - start


@dataclass
class Row:
    mode: str
    verb: str
    nodes: int
    concurrency: int
    request_kb: float
    reply_kb: float
    p50: float
    p99: float
    rps: float
    floor_p50: float
    floor_p99: float
    floor_rps: float


async def measure_pair(
    session: aiohttp.ClientSession,
    ext_url: str,
    floor_url: str,
    body: bytes,
    concurrency: int,
    plan: Plan,
) -> tuple[list[float], float, list[float], float]:
    """Latencies and throughput of the extender and the floor, alternating in slices."""
    ext_t: list[float] = []
    floor_t: list[float] = []
    busy = {"ext": 0.0, "floor": 0.0}
    # Large bodies (full Node lists of thousands of nodes) take a second each: fewer warm-ups,
    # and at least MIN_SAMPLES measured whatever the time budget says.
    warm = 2 if len(body) > LARGE_BODY else max(3, min(50, plan.max_requests // 20))
    for url in (ext_url, floor_url):
        for _ in range(warm):
            await timed(session, url, body)

    async def burst(url: str, out: list[float], key: str, n: int) -> None:
        async def worker() -> None:
            for _ in range(n):
                out.append(await timed(session, url, body))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        busy[key] += time.perf_counter() - start

    per_slice = max(1, 20 // concurrency)
    deadline = time.monotonic() + plan.budget_s
    while (time.monotonic() < deadline or len(ext_t) < MIN_SAMPLES) and len(
        ext_t
    ) < plan.max_requests:
        await burst(ext_url, ext_t, "ext", per_slice)
        await burst(floor_url, floor_t, "floor", per_slice)
    return ext_t, len(ext_t) / busy["ext"], floor_t, len(floor_t) / busy["floor"]


@contextlib.asynccontextmanager
async def extender(policy: Path, max_bytes: int) -> AsyncIterator[tuple[str, int]]:
    port, admin = free_port(), free_port()
    args = [
        sys.executable,
        "-m",
        "extender",
        "serve",
        "--policy",
        str(policy),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--admin-host",
        "127.0.0.1",
        "--admin-port",
        str(admin),
        "--log-level",
        "warning",
        "--kubernetes",
        "off",
        "--max-request-bytes",
        str(max_bytes),
        # Eight full-node lists of 5,000 nodes at once (concurrency 8) are 8 x 66 MB: above the
        # default in-flight budget (256 MiB, sized for the Deployment's 1 GiB limit), which
        # sheds them with a 503 by design. kube-scheduler sends one at a time; the benchmark
        # raises the budget to measure the rows anyway.
        "--max-body-bytes-in-flight",
        str(max(max_bytes * 9, 256 << 20)),  # never below the default budget
        # ... and eight 66 MB bodies sent at once share the link: each arrives at an eighth of
        # the rate the body deadline assumes (64 MiB/s). The benchmark measures throughput, not
        # stalled callers.
        "--body-timeout",
        "30",
    ]
    with process(args) as proc:
        async with aiohttp.ClientSession() as s:
            await wait_up(s, f"http://127.0.0.1:{admin}/readyz", proc)
        yield f"http://127.0.0.1:{port}", proc.pid


async def http_suite(
    plan: Plan, tmp: Path, log: Callable[[str], None]
) -> tuple[list[Row], dict[str, float]]:
    policy = write_static_cluster(tmp, plan.cluster)
    rng = random.Random(7)
    bodies: dict[tuple[str, int], bytes] = {}
    for n in plan.names_sizes:
        bodies["names", n] = names_body([node_name(i) for i in rng.sample(range(plan.cluster), n)])
    node_rng = random.Random(11)
    objects = [node_object(i, node_rng) for i in range(max(plan.full_sizes, default=0))]
    for n in plan.full_sizes:
        bodies["full", n] = nodes_body(objects[:n])
    del objects
    rows: list[Row] = []
    extra: dict[str, float] = {}
    max_bytes = max(len(b) for b in bodies.values()) * 2
    async with extender(policy, max_bytes) as (base, pid):
        connector = aiohttp.TCPConnector(limit=8)
        async with aiohttp.ClientSession(connector=connector) as session:
            extra["rss_mb_idle"] = rss_mb(pid)
            replies: dict[str, bytes] = {}
            for (mode, n), body in bodies.items():
                for verb in ("filter", "prioritize"):
                    replies[f"{verb}-{mode}-{n}"] = await post(session, f"{base}/{verb}", body)
            # A scheduled pod's pair of calls: kube-scheduler sends prioritize the names filter
            # kept (the feasible nodes), encoded as filter's reply carries them.
            pod_n = 500 if ("names", 500) in bodies else max(plan.names_sizes)
            pod_filter = bodies["names", pod_n]
            kept = json.loads(replies[f"filter-names-{pod_n}"])["NodeNames"]
            pod_prioritize = names_body(kept)
            replies[f"prioritize-kept-{pod_n}"] = await post(
                session, f"{base}/prioritize", pod_prioritize
            )
            files = []
            for key, reply in replies.items():
                path = tmp / f"{key}.json"
                path.write_bytes(reply)
                files.append(str(path))
            floor_port = free_port()
            with process(
                [
                    sys.executable,
                    str(ROOT / "benchmarks" / "floor_server.py"),
                    str(floor_port),
                    *files,
                ]
            ) as floor:
                floor_base = f"http://127.0.0.1:{floor_port}"
                await wait_up(session, floor_base + "/", floor)
                for (mode, n), body in bodies.items():
                    for verb in ("filter", "prioritize"):
                        for conc in (1, 8):
                            key = f"{verb}-{mode}-{n}"
                            log(f"  {mode} {verb} {n} nodes, concurrency {conc}")
                            e, e_rps, f, f_rps = await measure_pair(
                                session, f"{base}/{verb}", f"{floor_base}/{key}", body, conc, plan
                            )
                            rows.append(
                                Row(
                                    mode,
                                    verb,
                                    n,
                                    conc,
                                    len(body) / 1024,
                                    len(replies[key]) / 1024,
                                    pct(e, 0.5) * 1e3,
                                    pct(e, 0.99) * 1e3,
                                    e_rps,
                                    pct(f, 0.5) * 1e3,
                                    pct(f, 0.99) * 1e3,
                                    f_rps,
                                )
                            )
                # CPU per scheduled pod: filter then prioritize at 500 names (or the largest
                # quick size), one pod at a time, measured from each server's own /proc stats.
                raw_port = free_port()
                raw_argv = [sys.executable, str(ROOT / "benchmarks" / "floor_extender.py")]
                with process([*raw_argv, str(raw_port)]) as raw:
                    raw_base = f"http://127.0.0.1:{raw_port}"
                    await wait_up(session, raw_base + "/", raw)
                    arms = {
                        "extender": (pid, f"{base}/filter", f"{base}/prioritize"),
                        "floor": (
                            floor.pid,
                            f"{floor_base}/filter-names-{pod_n}",
                            f"{floor_base}/prioritize-kept-{pod_n}",
                        ),
                        "raw_floor": (raw.pid, f"{raw_base}/filter", f"{raw_base}/prioritize"),
                    }
                    bodies_pair = (pod_filter, pod_prioritize)
                    cpu = await cpu_per_pod(session, arms, bodies_pair, plan.cpu_pods)
                for arm, ms in cpu.items():
                    extra[f"cpu_ms_per_pod_{arm}"] = ms
                extra["cpu_ms_per_pod"] = cpu["extender"]
                extra["cpu_kept_nodes"] = len(kept)
                extra["cpu_pod_nodes"] = pod_n
                extra["rss_mb_after"] = rss_mb(pid)
    return rows, extra


#: Interleaved rounds of the CPU-per-pod measurement (its median is reported).
CPU_ROUNDS = 3


async def cpu_per_pod(
    session: aiohttp.ClientSession,
    arms: dict[str, tuple[int, str, str]],
    bodies: tuple[bytes, bytes],
    pods: int,
) -> dict[str, float]:
    """CPU milliseconds per pod (filter then prioritize, one pod at a time, with ``bodies``)
    of each arm's process (pid, filter URL, prioritize URL), the arms interleaved over
    ``CPU_ROUNDS`` rounds (order alternating), the median round of each."""
    filter_body, prioritize_body = bodies
    per: dict[str, list[float]] = {arm: [] for arm in arms}
    order = list(arms)
    for round_ in range(CPU_ROUNDS):
        for arm in order if round_ % 2 == 0 else order[::-1]:
            arm_pid, filter_url, prioritize_url = arms[arm]
            before = cpu_seconds(arm_pid)
            for _ in range(pods):
                await post(session, filter_url, filter_body)
                await post(session, prioritize_url, prioritize_body)
            per[arm].append((cpu_seconds(arm_pid) - before) / pods * 1e3)
    return {arm: statistics.median(values) for arm, values in per.items()}


def core_suite(plan: Plan, tmp: Path) -> dict[str, list[tuple[int, float, float]]]:
    """In-process: the decision over N names, and building a snapshot of N nodes."""
    from extender.core import Candidates, NodeInfo, Sample, build_snapshot, evaluate
    from extender.policy import load_file
    from extender.wire import decode_args

    policy = load_file(write_static_cluster(tmp, max(plan.core_sizes)))
    rules = policy.rules
    now = time.time()
    rng = random.Random(3)
    size = max(plan.core_sizes)
    nodes = [NodeInfo(node_name(i), 15.89, 58 * 2**30, 4.0, 16 * 2**30) for i in range(size)]
    samples = {
        node_name(i): {
            "cpu": Sample(rng.random(), now - 5),
            "memory": Sample(rng.random(), now - 5),
        }
        for i in range(size)
    }
    out: dict[str, list[tuple[int, float, float]]] = {"decide": [], "snapshot": []}
    for n in plan.core_sizes:
        snap = build_snapshot(
            nodes[:n],
            {k: samples[k] for k in list(samples)[:n]},
            [],
            signals=rules.signals,
            source_ok_at=now,
            window_s=90,
            now=now,
        )
        body = names_body([node_name(i) for i in rng.sample(range(n), n)])
        reps = max(5, min(2000, 200_000 // n))
        times = []
        for _ in range(reps):
            args = decode_args(body)  # fresh strings each time, as from the wire
            start = time.perf_counter()
            evaluate(args.pod, Candidates(args.candidates.names), snap, rules, now)
            times.append(time.perf_counter() - start)
        out["decide"].append((n, pct(times, 0.5) * 1e3, pct(times, 0.99) * 1e3))
        times = []
        for _ in range(max(3, min(50, 50_000 // n))):
            start = time.perf_counter()
            build_snapshot(
                nodes[:n],
                {k: samples[k] for k in list(samples)[:n]},
                [],
                signals=rules.signals,
                source_ok_at=now,
                window_s=90,
                now=now,
            )
            times.append(time.perf_counter() - start)
        out["snapshot"].append((n, pct(times, 0.5) * 1e3, max(times) * 1e3))
    return out


def report(
    plan: Plan,
    rows: list[Row],
    extra: dict[str, float],
    core: dict[str, list[tuple[int, float, float]]],
    elapsed: float,
) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine()}. Suite run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"in {elapsed:.0f} s (`python -m benchmarks.run`).",
        "",
        "Latency is per call, end to end over loopback HTTP with keep-alive. *Floor* is a bare "
        "aiohttp handler that reads the same body and returns a prebuilt reply of the same size, "
        "measured in the same run, interleaved. Ratios are extender / floor.",
        "",
    ]
    for mode, title in (
        ("names", "Names only (`nodeCacheCapable: true`)"),
        ("full", "Full Node objects (`nodeCacheCapable: false`), ~13 KB a node"),
    ):
        sel = [r for r in rows if r.mode == mode]
        if not sel:
            continue
        lines += [
            f"## {title}",
            "",
            "| verb | nodes | conc. | request | reply | p50 ms | p99 ms | req/s "
            "| floor p50 | floor p99 | floor req/s | p50 ratio | p99 ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sel:
            lines.append(
                f"| {r.verb} | {r.nodes:,} | {r.concurrency} | {_kb(r.request_kb)} "
                f"| {_kb(r.reply_kb)} | {r.p50:.3f} | {r.p99:.3f} | {r.rps:,.0f} "
                f"| {r.floor_p50:.3f} | {r.floor_p99:.3f} | {r.floor_rps:,.0f} "
                f"| {r.p50 / r.floor_p50:.2f}x | {r.p99 / r.floor_p99:.2f}x |"
            )
        lines.append("")
    cpu = extra["cpu_ms_per_pod"]
    floor_cpu, raw_cpu = extra["cpu_ms_per_pod_floor"], extra["cpu_ms_per_pod_raw_floor"]
    # /proc counts CPU in clock ticks (10 ms): a tiny run can measure zero.
    rate = f"{1000 / cpu:,.0f}" if cpu > 0 else "(too few pods to measure)"

    def times(floor: float) -> str:
        return f"{cpu / floor:.2f}x" if floor > 0 else "n/a"

    lines += [
        "## CPU per scheduled pod",
        "",
        f"Filter at {int(extra['cpu_pod_nodes']):,} names, then prioritize with the "
        f"{int(extra['cpu_kept_nodes']):,} it kept (as kube-scheduler sends them), "
        "one pod at a time, "
        f"{plan.cpu_pods:,} pods per round, {CPU_ROUNDS} rounds interleaved with the floors "
        "(median round), from each server process's own CPU counters. *Floor* is the suite's "
        "floor server above (aiohttp); *raw floor* is `benchmarks/floor_extender.py`, the "
        "extender's own HTTP stack (httptools on an asyncio Protocol, uvloop) deciding nothing.",
        "",
        "| server | CPU ms per pod | extender / this |",
        "|---|---:|---:|",
        f"| extender | {cpu:.3f} | |",
        f"| floor (aiohttp) | {floor_cpu:.3f} | {times(floor_cpu)} |",
        f"| raw floor | {raw_cpu:.3f} | {times(raw_cpu)} |",
        "",
        f"So one core sustains about **{rate} pods/s** before the extender becomes the bottleneck.",
        "",
        f"Extender resident memory: {extra['rss_mb_idle']:.0f} MB with {plan.cluster:,} nodes "
        f"known, {extra['rss_mb_after']:.0f} MB after the run.",
        "",
        "## Core only (in-process, no HTTP)",
        "",
        "`evaluate()` over N candidate names decoded fresh from JSON (name lookup included), and "
        "`build_snapshot()` of N nodes with two signals (what every metrics refresh costs).",
        "",
        "| nodes | decide p50 ms | decide p99 ms | snapshot build p50 ms | snapshot build max ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for (n, d50, d99), (_, s50, smax) in zip(core["decide"], core["snapshot"], strict=True):
        lines.append(f"| {n:,} | {d50:.3f} | {d99:.3f} | {s50:.2f} | {smax:.2f} |")
    lines.append("")
    return "\n".join(lines)


def _kb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB" if kb >= 1024 else f"{kb:.0f} KB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="priority-extender benchmark suite")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "RESULTS.md"),
        help="where the report goes (default: the ignored benchmarks/results/); regenerate the "
        "committed report with --out benchmarks/RESULTS.md",
    )
    ns = parser.parse_args(argv)
    plan = QUICK if ns.quick else FULL
    start = time.monotonic()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        tmp = Path(folder)
        log("HTTP suite")
        rows, extra = asyncio.run(http_suite(plan, tmp, log))
        gc.collect()
        log("core suite")
        core = core_suite(plan, tmp)
    text = report(plan, rows, extra, core, time.monotonic() - start)
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + kept_sections(out))
    print(text)
    return 0


#: Sections of the report file that other benchmarks write (bench_scheduler.py,
#: bench_pod_usage.py), kept when this suite rewrites the rest.
KEPT_SECTIONS = ("scheduler-benchmark", "pod-usage-benchmark")


def kept_sections(path: Path) -> str:
    """The marked sections of ``path`` (``<!-- NAME:begin -->`` .. ``<!-- NAME:end -->``)."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    out = []
    for name in KEPT_SECTIONS:
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin in old and end in old:
            out.append("\n" + old[old.index(begin) : old.index(end) + len(end)] + "\n")
    return "".join(out)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "statistics"]

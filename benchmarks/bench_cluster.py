"""The cluster cache at scale: memory, first sync, and decision latency while a relist runs.

    .venv/bin/python benchmarks/bench_cluster.py [--nodes 5000] [--pods 150000] [--names 500]

Three processes, as in production: the fake API server (``tests/fake_apiserver.py``, serving
realistic ~4 KB Pod JSON with managedFields, 500 a page) stands in for kube-apiserver; this
process runs the extender's store, cluster source (the real ``kubernetes.aio`` client) and
scheduler port; a client process plays kube-scheduler, sending ``filter`` then ``prioritize``
for one pod at a time over a keep-alive connection, with ``--names`` random node names
(``nodeCacheCapable: true``), and timing each call.

Measured: resident memory (``/proc/self/status``) before the cache starts, after the first full
sync and at its peak; time to the first node list and to the first full sync; and the latency of
both verbs while quiet and while a relist of every pod runs (the server ends the pod watch with a
410, as after an etcd compaction). Also event-loop lag (sampled every millisecond, with the CPU
the loop spent in that time) and the garbage collector's pauses. The extender is pinned to one
core and the fake server and client to the others, as a real API server and kube-scheduler run
elsewhere. Figures move between runs on a small shared machine: compare phases within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from kubernetes.aio import client as k8s
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))

from extender.cluster import ClusterSettings, ClusterSource, cluster_source  # noqa: E402
from extender.core import Sample  # noqa: E402
from extender.policy import embedded_default  # noqa: E402
from extender.server.app import Extender, ServerSettings  # noqa: E402
from extender.server.metrics import Metrics  # noqa: E402
from extender.store import SnapshotStore  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "kube-scheduler" / "filter-nodecache-true.json"
#: Seconds of quiet measurement before the relist, and after it before stopping.
QUIET_S = 8.0


#: The CPUs this benchmark may use, read before :func:`pin` narrows them.
CPUS = sorted(os.sched_getaffinity(0))


def _others_cpus(pid: int) -> None:
    """Keep a child off the extender's core (see :func:`pin`)."""
    if len(CPUS) > 1:
        os.sched_setaffinity(pid, set(CPUS[1:]))


def pin() -> str:
    """The extender gets a core of its own, the fake API server and the client share the rest:
    in production neither runs beside the extender, and on a small machine their CPU use would
    otherwise show up as extender latency."""
    if len(CPUS) < 2:
        return "not pinned (1 CPU)"
    os.sched_setaffinity(0, {CPUS[0]})
    return f"extender pinned to CPU {CPUS[0]}, API server and client on {CPUS[1:]}"


TAIL_S = 1.0

CLIENT = r"""
import http.client, json, os, sys, time
port, bodies_path, stop_path, out_path = sys.argv[1:]
bodies = json.load(open(bodies_path))
conn = http.client.HTTPConnection("127.0.0.1", int(port))
rows = []
i = 0
while not os.path.exists(stop_path):
    body = bodies[i % len(bodies)].encode()
    i += 1
    for verb in ("filter", "prioritize"):
        t0 = time.time()
        s = time.perf_counter()
        conn.request("POST", "/" + verb, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        rows.append((verb, t0, (time.perf_counter() - s) * 1000))
json.dump(rows, open(out_path, "w"))
"""


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def until(condition: Callable[[], bool], limit: float = 600.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


class LagMonitor:
    """Worst overshoot of a 1 ms sleep: how long the event loop was held, and of that how much
    was this thread's CPU (work on the loop) rather than waiting for a core (other processes)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []

    async def run(self) -> None:
        while True:
            start, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.001)
            wall = (time.perf_counter() - start - 0.001) * 1000
            self.samples.append((time.time(), wall, (time.thread_time() - cpu) * 1000))

    def percentiles(self, t0: float, t1: float) -> str:
        inside = [w for t, w, _ in self.samples if t0 <= t <= t1]
        return f"p50 {pct(inside, 0.5):.2f}, p99 {pct(inside, 0.99):.2f}"

    def worst(self, t0: float, t1: float) -> tuple[float, float]:
        """(worst wall overshoot, worst CPU held) in ms between t0 and t1."""
        inside = [(w, c) for t, w, c in self.samples if t0 <= t <= t1]
        return max((w for w, _ in inside), default=float("nan")), max(
            (c for _, c in inside), default=float("nan")
        )


class GcPauses:
    """Every cyclic garbage collection: (end time, generation, ms)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, int, float]] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            ms = (time.perf_counter() - self._start) * 1000
            self.pauses.append((time.time(), info["generation"], ms))

    def worst(self, t0: float, t1: float) -> str:
        inside = [(ms, g) for t, g, ms in self.pauses if t0 <= t <= t1]
        if not inside:
            return "none"
        ms, g = max(inside)
        return f"{ms:.1f} (gen {g}, {len(inside)} runs)"


def start_fake(nodes: int, pods: int) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "tests.fake_apiserver"]
    command += ["--nodes", str(nodes), "--pods", str(pods)]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    _others_cpus(proc.pid)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"fake API server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def request_bodies(nodes: int, names: int, count: int = 50) -> list[str]:
    pod = json.loads(FIXTURE.read_text())["Pod"]
    rng = random.Random(42)
    all_names = [f"node-{i:05d}" for i in range(nodes)]
    return [
        json.dumps({"Pod": pod, "Nodes": None, "NodeNames": rng.sample(all_names, names)})
        for _ in range(count)
    ]


async def main(ns: argparse.Namespace) -> None:
    gc.collect()
    rss_start, _ = rss_mb()
    print(f"starting the fake API server with {ns.nodes} nodes, {ns.pods} pods ...", flush=True)
    fake, url = start_fake(ns.nodes, ns.pods)
    pinning = pin()
    gcp = GcPauses()
    lag = LagMonitor()
    lag_task = asyncio.create_task(lag.run())
    source: ClusterSource | None = None
    ext: Extender | None = None
    try:
        store = SnapshotStore(embedded_default())
        now = time.time()
        rng = random.Random(1)
        store.set_samples(
            {
                f"node-{i:05d}": {
                    "cpu": Sample(rng.uniform(0.05, 0.9), now),
                    "memory": Sample(rng.uniform(0.2, 0.7), now),
                }
                for i in range(ns.nodes)
            },
            ok_at=now + 3600,  # the live source counts as up for the whole run
        )
        gc.collect()
        rss_before, _ = rss_mb()
        t0 = time.perf_counter()
        settings = ClusterSettings(page_size=ns.page_size, slice_items=ns.slice_items)
        source = cluster_source(store, k8s.Configuration(host=url), settings)
        source.start()
        await until(lambda: source is not None and source.cache.nodes_listed)
        t_nodes = time.perf_counter() - t0
        await until(lambda: source is not None and source.synced)
        t_sync = time.perf_counter() - t0
        await until(lambda: source is not None and source.pods.watches >= 1)
        gc.collect()
        rss_synced, peak_synced = rss_mb()
        print(f"synced in {t_sync:.1f}s; rss {rss_synced:.0f} MB", flush=True)

        ext = Extender(store, Metrics(CollectorRegistry()), ServerSettings())
        port = await ext.port.start("127.0.0.1", 0)

        with tempfile.TemporaryDirectory() as tmp:
            bodies = Path(tmp) / "bodies.json"
            bodies.write_text(json.dumps(request_bodies(ns.nodes, ns.names)))
            stop, out = Path(tmp) / "stop", Path(tmp) / "out.json"
            client = subprocess.Popen(
                [sys.executable, "-c", CLIENT, str(port), str(bodies), str(stop), str(out)],
            )
            _others_cpus(client.pid)
            await asyncio.sleep(1.0)  # warm-up, not measured
            quiet_from = time.time()
            await asyncio.sleep(QUIET_S)
            rss_quiet, _ = rss_mb()
            relist_from = time.time()
            lists = source.pods.lists
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{url}/fake/expire?resource=pods") as resp,
            ):
                assert resp.status == 200
            await until(lambda: source is not None and source.pods.lists > lists)
            relist_to = time.time()
            _, peak_relist = rss_mb()
            await asyncio.sleep(TAIL_S)
            stop.touch()
            await asyncio.to_thread(client.wait)
            rows = json.loads(out.read_text())
        gc.collect()
        rss_after, peak = rss_mb()
    finally:
        lag_task.cancel()
        if source is not None:
            for task in source.tasks:
                task.cancel()
            await asyncio.gather(*source.tasks, return_exceptions=True)
        if ext is not None:
            await ext.port.stop(1.0)
        fake.kill()
        fake.wait()

    def lat(verb: str, t0: float, t1: float) -> list[float]:
        return [ms for v, t, ms in rows if v == verb and t0 <= t <= t1]

    relist_s = relist_to - relist_from
    cache_mb = rss_synced - rss_before
    print()
    print(
        f"{ns.nodes:,} nodes, {ns.pods:,} pods (~4 KB JSON each), {ns.names} names a request, "
        f"pages of {ns.page_size}, slices of {ns.slice_items}; {pinning}; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| RSS at start (interpreter + imports) | {rss_start:.0f} MB |")
    print(f"| RSS before the cache starts (store, samples) | {rss_before:.0f} MB |")
    print(f"| RSS after the first full sync | {rss_synced:.0f} MB |")
    print(f"| RSS after the quiet phase (HTTP serving, decision log) | {rss_quiet:.0f} MB |")
    print(f"| RSS after a full relist | {rss_after:.0f} MB |")
    print(f"| peak RSS (sync, relist and all) | {max(peak, peak_relist, peak_synced):.0f} MB |")
    per_pod = cache_mb * 2**20 / ns.pods
    print(f"| cache growth / pod (RSS delta over the sync ÷ pods) | {per_pod:.0f} B |")
    print(f"| time to first node list | {t_nodes:.2f} s |")
    rate = ns.pods / t_sync
    print(f"| time to first full sync (nodes + pods) | {t_sync:.2f} s ({rate:,.0f} pods/s) |")
    print(f"| relist of every pod (410 → list → watch) | {relist_s:.2f} s |")
    print()
    print(
        "| verb | phase | calls | p50 ms | p99 ms | max ms "
        "| worst loop lag ms (CPU on loop) | worst GC pause ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for verb in ("filter", "prioritize"):
        quiet = lat(verb, quiet_from, relist_from)
        during = lat(verb, relist_from, relist_to)
        for phase, values, t0, t1 in (
            ("quiet", quiet, quiet_from, relist_from),
            ("relist", during, relist_from, relist_to),
        ):
            wall, cpu = lag.worst(t0, t1)
            print(
                f"| {verb} | {phase} | {len(values)} | {pct(values, 0.5):.2f} | "
                f"{pct(values, 0.99):.2f} | {max(values, default=float('nan')):.2f} | "
                f"{wall:.1f} ({cpu:.1f}) | {gcp.worst(t0, t1)} |"
            )
        ratios.append(
            (verb, pct(during, 0.5) / pct(quiet, 0.5), pct(during, 0.99) / pct(quiet, 0.99))
        )
    print()
    print(
        f"loop lag (1 ms sleep overshoot), quiet: {lag.percentiles(quiet_from, relist_from)} ms; "
        f"relist: {lag.percentiles(relist_from, relist_to)} ms"
    )
    for verb, p50, p99 in ratios:
        print(f"{verb}: relist / quiet = {p50:.2f}x at p50, {p99:.2f}x at p99")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--pods", type=int, default=150000)
    p.add_argument("--names", type=int, default=500)
    p.add_argument("--page-size", type=int, default=ClusterSettings().page_size)
    p.add_argument("--slice-items", type=int, default=ClusterSettings().slice_items)
    asyncio.run(main(p.parse_args()))

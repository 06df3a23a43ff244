"""One Prometheus refresh at 5,000 nodes: query time, parse time, and how long the loop blocks.

    .venv/bin/python benchmarks/bench_prometheus_refresh.py [--nodes 5000] [--rounds 30]

A loopback server in its own process (so that its work does not run on the measured event loop)
answers the two default queries with prebuilt instant vectors shaped like a recording rule's
answer: ``__name__`` and an EKS-style node name per series, a millisecond timestamp, a 17-digit
value. The extender side is the real :class:`PrometheusSource` writing into a real store. While
refreshes run, a ticker task wakes every :data:`TICK_S` and records how late it wakes: the
longest lateness is the longest time the loop could not serve a scheduling request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))

CPU = "node:cpu_utilization:ratio"
MEM = "node:memory_utilization:ratio"
TICK_S = 0.0005
"""Ticker period: well under the millisecond a scheduling request takes, so any block longer
than that shows up."""
WARMUP = 3
"""Refreshes before measuring: connection pool, allocator and code paths warm."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vector_body(query: str, nodes: int, seed: int) -> bytes:
    rng = random.Random(seed)
    now = round(time.time(), 3)
    result = [
        {
            "metric": {
                "__name__": query,
                "node": f"ip-10-{i // 65536}-{i // 256 % 256}-{i % 256}.eu-west-1.compute.internal",
            },
            "value": [now, repr(rng.random())],
        }
        for i in range(nodes)
    ]
    doc = {"status": "success", "data": {"resultType": "vector", "result": result}}
    return json.dumps(doc, separators=(",", ":")).encode()


def serve(port: int, nodes: int) -> None:
    """The loopback Prometheus: prebuilt bodies, no work per request beyond the write."""
    from aiohttp import web

    bodies = {CPU: vector_body(CPU, nodes, 1), MEM: vector_body(MEM, nodes, 2)}

    async def query(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.query["query"]], content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Ticker:
    """Records the longest lateness of a periodic wake-up on the running loop.

    The wake-up pending when :meth:`stop` is called counts too: the refresh may have blocked the
    loop right until it returned, and that tick never got to run.
    """

    def __init__(self) -> None:
        self.worst = 0.0
        self._since = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self._since = time.perf_counter()
            await asyncio.sleep(TICK_S)
            self.worst = max(self.worst, time.perf_counter() - self._since - TICK_S)

    def start(self) -> None:
        self.worst = 0.0
        self._since = time.perf_counter()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> float:
        assert self._task is not None
        self.worst = max(self.worst, time.perf_counter() - self._since - TICK_S)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.worst


def ms(values: list[float]) -> tuple[str, str]:
    return f"{statistics.median(values) * 1e3:.2f}", f"{max(values) * 1e3:.2f}"


async def measure(url: str, nodes: int, rounds: int) -> list[tuple[str, list[float]]]:
    from prometheus_client import CollectorRegistry

    from extender.policy import API_VERSION, load_text
    from extender.sources.prometheus import PrometheusSource, PrometheusSourceMetrics, parse_vector
    from extender.store import SnapshotStore

    policy = load_text(
        json.dumps(
            {
                "apiVersion": API_VERSION,
                "kind": "PriorityPolicy",
                "metrics": {"source": "prometheus", "prometheus": {"url": url}},
                "tiers": [{"name": "all"}],
            }
        ),
        "bench-policy.yaml",
    )
    store = SnapshotStore(policy)
    source = PrometheusSource(store, PrometheusSourceMetrics(CollectorRegistry()))
    prom = policy.document.metrics.prometheus
    query_url = url + "/api/v1/query"
    ticker = Ticker()
    refresh_s: list[float] = []
    blocked_s: list[float] = []
    query_s: list[float] = []
    parse_s: list[float] = []
    swap_s: list[float] = []
    session: aiohttp.ClientSession | None = None
    try:
        for i in range(WARMUP + rounds):
            ticker.start()
            t0 = time.perf_counter()
            ok = await source.refresh()
            took = time.perf_counter() - t0
            worst = await ticker.stop()
            if not ok or len(store.current.snapshot.names) != nodes:
                raise SystemExit(f"refresh failed: {source.results}")
            if i >= WARMUP:
                refresh_s.append(took)
                blocked_s.append(worst)

        # The parts of one query, measured apart: the same request the source sends (an
        # instant query, Prometheus' own evaluation time, no redirects), then the source's
        # public parser and the store's swap.
        session = aiohttp.ClientSession(trust_env=False)
        params = {"query": CPU, "timeout": f"{prom.timeout:g}"}
        for i in range(WARMUP + rounds):
            t0 = time.perf_counter()
            async with session.get(query_url, params=params, allow_redirects=False) as resp:
                body = await resp.read()
            t1 = time.perf_counter()
            vec = parse_vector(body)
            t2 = time.perf_counter()
            assert len(vec.samples) == nodes
            merged = {n: {"cpu": s, "memory": s} for n, s in vec.samples.items()}
            t3 = time.perf_counter()
            store.set_samples(merged, time.time())
            t4 = time.perf_counter()
            if i >= WARMUP:
                query_s.append(t1 - t0)
                parse_s.append(t2 - t1)
                swap_s.append(t4 - t3)
    finally:
        await source.close()
        if session is not None:
            await session.close()
    return [
        ("refresh, both queries in parallel, end to end", refresh_s),
        ("longest event-loop block during a refresh", blocked_s),
        ("one query: HTTP request and body read", query_s),
        ("one answer: msgspec decode + per-sample checks", parse_s),
        ("snapshot swap: store.set_samples (build_snapshot)", swap_s),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.nodes)
        return

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--nodes", str(args.nodes)]
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("loopback server did not start") from None
                time.sleep(0.05)
        size = len(vector_body(CPU, args.nodes, 1))
        rows = asyncio.run(measure(f"http://127.0.0.1:{port}", args.nodes, args.rounds))
    finally:
        server.terminate()
        server.wait(10)

    print(
        f"Prometheus refresh, {args.nodes:,} nodes x 2 signals, {size / 1e6:.2f} MB per answer, "
        f"{args.rounds} rounds; Python {platform.python_version()}, {platform.machine()}"
    )
    print()
    print("| step | median ms | max ms |")
    print("|---|---|---|")
    for name, values in rows:
        median, worst = ms(values)
        print(f"| {name} | {median} | {worst} |")


if __name__ == "__main__":
    main()

"""Per-call latency of `prioritize` and `filter` over loopback HTTP, against a floor.

    .venv/bin/python benchmarks/bench_http.py [--requests 2000] [--nodes 500,5000]

The extender runs as its own process on the static source with 5,000 generated nodes (a third
of them hot), the way kube-scheduler calls it: one request at a time on a keep-alive connection
(concurrency 1), names only (``nodeCacheCapable: true``). The floor is a bare aiohttp handler in
its own process that reads the same body and returns a prebuilt reply of the same size. Both are
measured in the same run, interleaved, so the ratio holds on a noisy shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path

import aiohttp

ROOT = Path(__file__).parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "kube-scheduler" / "filter-nodecache-true.json"
CLUSTER_NODES = 5000
#: Requests before measuring, so both servers have warmed up their code paths and allocators.
WARMUP = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_cluster(folder: Path) -> Path:
    """A static metrics file and a policy that reads it; returns the policy path."""
    rng = random.Random(42)
    lines = ["nodes:"]
    for i in range(CLUSTER_NODES):
        hot = i % 3 == 0
        cpu = rng.uniform(0.65, 0.95) if hot else rng.uniform(0.05, 0.5)
        mem = rng.uniform(0.2, 0.7)
        lines.append(
            f"  node-{i:05d}: {{cpu: {cpu:.3f}, memory: {mem:.3f}, "
            "allocatable: {cpu: '16', memory: 64Gi}, requested: {cpu: '4', memory: 16Gi}}"
        )
    (folder / "metrics.yaml").write_text("\n".join(lines) + "\n")
    policy = (ROOT / "config" / "policy-static.yaml").read_text()
    policy = policy.replace("file: static-metrics.yaml", f"file: {folder / 'metrics.yaml'}")
    policy = policy.replace("refreshInterval: 15s", "refreshInterval: 1h")
    path = folder / "policy.yaml"
    path.write_text(policy)
    return path


def body_for(n: int) -> bytes:
    args = json.loads(FIXTURE.read_bytes())
    names = [f"node-{i:05d}" for i in random.Random(n).sample(range(CLUSTER_NODES), n)]
    args["NodeNames"] = names
    return json.dumps(args).encode()


async def wait_up(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as r:
                if r.status in (200, 404, 405):
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def timed(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    start = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
    return time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(requests: int, sizes: list[int]) -> list[dict[str, object]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    policy = write_cluster(tmp)
    port, admin, floor_port = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ext = subprocess.Popen(
        [sys.executable, "-m", "extender", "serve", "--policy", str(policy), "--host", "127.0.0.1",
         "--port", str(port), "--admin-host", "127.0.0.1", "--admin-port", str(admin),
         "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    floor: subprocess.Popen[bytes] | None = None
    rows: list[dict[str, object]] = []
    try:
        conn = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=conn) as session:
            await wait_up(session, f"http://127.0.0.1:{admin}/readyz")
            bodies = {}
            reply_files = []
            for verb in ("prioritize", "filter"):
                for n in sizes:
                    body = body_for(n)
                    url = f"http://127.0.0.1:{port}/{verb}"
                    headers = {"Content-Type": "application/json"}
                    async with session.post(url, data=body, headers=headers) as r:
                        reply = await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"{url}: HTTP {r.status}: {reply[:200]!r}")
                    name = f"{verb}-{n}"
                    (tmp / f"{name}.json").write_bytes(reply)
                    reply_files.append(str(tmp / f"{name}.json"))
                    bodies[name] = (verb, n, body, len(reply))
            floor = subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / "floor_server.py"), str(floor_port),
                 *reply_files],
                env=env,
            )  # fmt: skip
            await wait_up(session, f"http://127.0.0.1:{floor_port}/")
            for name, (verb, n, body, reply_size) in bodies.items():
                ext_url = f"http://127.0.0.1:{port}/{verb}"
                floor_url = f"http://127.0.0.1:{floor_port}/{name}"
                for _ in range(WARMUP):
                    await timed(session, ext_url, body)
                    await timed(session, floor_url, body)
                ext_t: list[float] = []
                floor_t: list[float] = []
                for _ in range(requests):  # interleaved: both see the same machine noise
                    ext_t.append(await timed(session, ext_url, body))
                    floor_t.append(await timed(session, floor_url, body))
                rows.append(
                    {
                        "verb": verb,
                        "nodes": n,
                        "request_kb": len(body) / 1024,
                        "reply_kb": reply_size / 1024,
                        "ext_p50": pct(ext_t, 0.5) * 1e3,
                        "ext_p99": pct(ext_t, 0.99) * 1e3,
                        "ext_rps": 1 / statistics.fmean(ext_t),
                        "floor_p50": pct(floor_t, 0.5) * 1e3,
                        "floor_p99": pct(floor_t, 0.99) * 1e3,
                        "ratio_p50": pct(ext_t, 0.5) / pct(floor_t, 0.5),
                        "ratio_p99": pct(ext_t, 0.99) / pct(floor_t, 0.99),
                    }
                )
    finally:
        for proc in (ext, floor):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--nodes", default="500,5000")
    ns = parser.parse_args()
    sizes = [int(x) for x in ns.nodes.split(",")]
    rows = asyncio.run(measure(ns.requests, sizes))
    print(
        f"\nLoopback HTTP, concurrency 1, keep-alive, names only; {ns.requests} requests each; "
        f"Python {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}\n"
    )
    print(
        "| verb | nodes | request | reply | p50 ms | p99 ms | req/s | floor p50 ms "
        "| floor p99 ms | p50 ratio | p99 ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['verb']} | {r['nodes']:,} | {r['request_kb']:.0f} KB | {r['reply_kb']:.0f} KB "
            f"| {r['ext_p50']:.3f} | {r['ext_p99']:.3f} | {r['ext_rps']:,.0f} "
            f"| {r['floor_p50']:.3f} | {r['floor_p99']:.3f} "
            f"| {r['ratio_p50']:.2f}x | {r['ratio_p99']:.2f}x |"
        )


if __name__ == "__main__":
    main()

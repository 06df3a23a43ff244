"""Faults while requests flow: each case checks the reply contract during the fault, that no
request waits on the fault, recovery after it clears, and the metric or log line reporting it.

Prometheus is played by a scripted loopback server (the real one cannot be made to hang or go
down on cue); the extender runs whole, through ``running()``, on real sockets. Latency during a
fault is recorded and checked only against a generous hang detector, never as a performance
claim: these machines are shared and noisy.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from extender.core import NodeInfo, Sample
from extender.policy import API_VERSION, embedded_default, load_text
from extender.server.app import ServerSettings
from extender.server.run import running
from tests.builders import fixture_bytes

#: A request that takes this long is hung, not slow: the extender answers in milliseconds.
HANG_S = 5.0
NAMES = [f"node-{i:03d}" for i in range(20)]
BODY = json.loads(fixture_bytes("filter-nodecache-true.json"))
BODY["NodeNames"] = NAMES
BODY_BYTES = json.dumps(BODY).encode()
JSON = {"Content-Type": "application/json"}


def vector(values: dict[str, float], ts: float) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {"node": n}, "value": [ts, str(v)]} for n, v in values.items()],
        },
    }


class Prom:
    """A Prometheus that can be healthy, down (503), or hanging, switched by the test."""

    def __init__(self) -> None:
        self.mode = "up"
        self.cpu = dict.fromkeys(NAMES, 0.2) | {"node-000": 0.95}
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        if self.mode == "down":
            return web.json_response({"status": "error", "error": "unavailable"}, status=503)
        if self.mode == "hang":
            await self.release.wait()
        return web.json_response(vector(self.cpu, time.time()))


def policy(url: str, max_age: str = "2s") -> Any:
    doc = {
        "apiVersion": API_VERSION,
        "kind": "PriorityPolicy",
        "metrics": {
            "source": "prometheus",
            "signals": {"cpu": "cpu_query"},
            "maxAge": max_age,
            "prometheus": {"url": url, "refreshInterval": "1s", "timeout": "1s"},
        },
        "tiers": [{"name": "batch", "match": {"maxPriority": 100}, "filter": {"cpu": 0.6}}],
    }
    return load_text(yaml.safe_dump(doc), "p.yaml")


SETTINGS = ServerSettings(host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0)


async def filter_call(session: aiohttp.ClientSession, port: int) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    async with asyncio.timeout(HANG_S):
        async with session.post(
            f"http://127.0.0.1:{port}/filter", data=BODY_BYTES, headers=JSON
        ) as r:
            assert r.status == 200
            reply = await r.json()
    return time.perf_counter() - start, reply


async def metric(session: aiohttp.ClientSession, port: int, line: str) -> bool:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        return line in await r.text()


@pytest.fixture
async def prom(aiohttp_server):
    p = Prom()
    app = web.Application()
    app.router.add_get("/api/v1/query", p.handle)
    server = await aiohttp_server(app)
    p.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    yield p
    p.release.set()


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("fault", ["down", "hang"])
async def test_prometheus_fault_mid_run(prom, fault, caplog):
    """Live data, then Prometheus goes down (or hangs): the last snapshot serves until maxAge,
    then the request-based fallback; no request waits on Prometheus; recovery is automatic."""
    async with running(policy(prom.url), SETTINGS, CollectorRegistry()) as state:
        port, admin = state.ports["scheduler"], state.ports["admin"]
        async with aiohttp.ClientSession() as s:
            _, reply = await filter_call(s, port)
            assert reply["FailedAndUnresolvableNodes"] == {
                "node-000": "cpu load above batch tier ceiling"
            }
            prom.mode = fault
            latencies = []
            # during the fault: answers keep coming; first from the last snapshot, then fallback
            while not await metric(s, admin, "priority_extender_fallback_active 1.0"):
                latency, reply = await filter_call(s, port)
                latencies.append(latency)
                assert reply["Error"] == ""
                await asyncio.sleep(0.05)
            latency, reply = await filter_call(s, port)
            assert reply["FailedAndUnresolvableNodes"] == {}  # fallback rejects nothing for load
            assert len(reply["NodeNames"]) == 20
            assert max(latencies) < HANG_S
            # recovery
            prom.mode = "up"
            prom.release.set()
            await _until(lambda: metric(s, admin, "priority_extender_fallback_active 0.0"))
            _, reply = await filter_call(s, port)
            assert reply["FailedAndUnresolvableNodes"] == {
                "node-000": "cpu load above batch tier ceiling"
            }


async def test_prometheus_down_at_startup(prom):
    prom.mode = "down"
    async with (
        running(policy(prom.url), SETTINGS, CollectorRegistry()) as state,
        aiohttp.ClientSession() as s,
    ):
        _, reply = await filter_call(s, state.ports["scheduler"])
        assert reply["FailedAndUnresolvableNodes"] == {}  # no live data: fallback
        async with s.get(f"http://127.0.0.1:{state.ports['admin']}/readyz") as r:
            assert r.status == 200  # readiness does not depend on Prometheus
        prom.mode = "up"
        await _until(
            lambda: metric(s, state.ports["admin"], "priority_extender_fallback_active 0.0")
        )
        _, reply = await filter_call(s, state.ports["scheduler"])
        assert "node-000" in reply["FailedAndUnresolvableNodes"]


async def test_event_loop_never_blocks_while_prometheus_hangs(prom):
    prom.mode = "hang"
    async with running(policy(prom.url), SETTINGS, CollectorRegistry()):
        gaps = []
        last = time.perf_counter()
        for _ in range(60):  # ~3 s across several 1 s refresh attempts and their timeouts
            await asyncio.sleep(0.05)
            now = time.perf_counter()
            gaps.append(now - last - 0.05)
            last = now
        assert max(gaps) < 1.0  # a blocked loop would stall for a whole query timeout


async def test_no_torn_reads_while_snapshots_and_policies_swap():
    """A thread swaps between an all-hot and an all-cool world (snapshot and policy together)
    while requests flow; every reply must come wholly from one world."""
    policy_low = embedded_default()
    text = (policy_low.base_dir / "policy.yaml").read_text()  # type: ignore[operator]
    policy_high = load_text(
        text.replace("cpu: 0.60", "cpu: 0.99"), "high.yaml", policy_low.base_dir
    )
    nodes = [NodeInfo(n, 4.0, 16 * 2**30) for n in NAMES]
    async with running(policy_low, SETTINGS, CollectorRegistry()) as state:
        store = state.extender.store
        stop = threading.Event()
        swapped = threading.Event()  # until the first swap, the store holds the demo world

        def swapper() -> None:
            rng = random.Random(1)
            while not stop.is_set():
                hot = rng.random() < 0.5
                now = time.time()
                value = 0.95 if hot else 0.05
                samples = {
                    n: {"cpu": Sample(value, now), "memory": Sample(0.1, now)} for n in NAMES
                }
                store.set_policy(policy_low if hot else policy_high)
                store.set_static(nodes, samples, now)
                swapped.set()

        thread = threading.Thread(target=swapper)
        thread.start()
        try:
            assert await asyncio.to_thread(swapped.wait, HANG_S)
            seen = set()
            async with aiohttp.ClientSession() as s:
                for _ in range(200):
                    _, reply = await filter_call(s, state.ports["scheduler"])
                    kept = len(reply["NodeNames"])
                    assert kept in (0, 20), f"torn read: {kept} of 20 kept"
                    seen.add(kept)
        finally:
            stop.set()
            thread.join()
        assert seen == {0, 20}  # both worlds were observed


async def test_caller_disconnecting_mid_body():
    settings = ServerSettings(host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0)
    async with running(embedded_default(), settings, CollectorRegistry()) as state:
        port = state.ports["scheduler"]
        for _ in range(5):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n" + BODY_BYTES[:500]
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        async with aiohttp.ClientSession() as s:
            await _until(
                lambda: metric(
                    s,
                    state.ports["admin"],
                    'priority_extender_requests_total{outcome="abandoned",verb="filter"} 5.0',
                )
            )
            _, reply = await filter_call(s, port)  # and business as usual
            assert reply["Error"] == ""

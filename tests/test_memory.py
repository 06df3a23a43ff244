"""Memory given back after large requests (extender/server/memory.py)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from extender.policy import embedded_default
from extender.server.memory import Trimmer, glibc_malloc_trim
from extender.server.run import running
from tests.support import loopback_settings, until

JSON = {"Content-Type": "application/json"}


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_one_trim_per_burst_and_none_while_a_large_request_is_in_flight():
    done: list[int] = []
    busy = [False]
    trimmer = Trimmer(lambda: busy[0], delay=0.02, trim=lambda: done.append(1) or 0)
    trimmer.large_done()
    trimmer.large_done()  # the same burst: the timer starts again, one trim
    await until(lambda: trimmer.trims == 1)
    await asyncio.sleep(0.1)
    assert done == [1]

    busy[0] = True
    trimmer.large_done()
    await asyncio.sleep(0.1)  # due several times over, but a large request is in flight
    assert trimmer.trims == 1
    busy[0] = False
    await until(lambda: trimmer.trims == 2)
    trimmer.cancel()


async def test_a_failing_trim_is_logged_and_the_next_burst_trims_again(caplog):
    calls: list[int] = []

    def trim() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("no")
        return 1

    trimmer = Trimmer(lambda: False, delay=0.01, trim=trim)
    trimmer.large_done()
    await until(lambda: "malloc_trim failed" in caplog.text)
    trimmer.large_done()
    await until(lambda: trimmer.trims == 1)
    assert len(calls) == 2


@pytest.mark.skipif(glibc_malloc_trim() is None, reason="no glibc malloc_trim on this system")
def test_malloc_trim_returns_freed_heap_memory():
    # Freed blocks the heap cannot give back from its top (a live block above each hole), in
    # a worker thread's arena as a large decision's are: resident until trimmed.
    trim = glibc_malloc_trim()
    assert trim is not None
    held: list[bytes] = []

    def churn() -> None:
        blocks = [
            b"\x01" * 60_000 for _ in range(3_000)
        ]  # 180 MB written, below the mmap threshold
        held.extend(blocks[9::10])
        del blocks

    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    before = _rss_bytes()
    trim()
    after = _rss_bytes()
    assert before - after > 100 << 20, (before, after)
    assert len(held) == 300


async def test_the_scheduler_port_trims_after_a_large_request(tmp_path):
    settings = loopback_settings(kubernetes="off", offload_bytes=1 << 10)
    async with running(embedded_default(), settings, CollectorRegistry()) as state:
        port = state.extender.port
        assert port.trimmer.available
        names = [f"node-{i}" for i in range(200)]
        body = json.dumps({"Pod": {"metadata": {"name": "p"}}, "NodeNames": names}).encode()
        assert len(body) > settings.offload_bytes
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{state.ports['scheduler']}/filter"
            async with session.post(url, data=body, headers=JSON) as resp:
                assert resp.status == 200
            await until(lambda: port.trimmer.trims == 1)
            small = json.dumps({"Pod": {"metadata": {"name": "p"}}, "NodeNames": []}).encode()
            async with session.post(url, data=small, headers=JSON) as resp:
                assert resp.status == 200
        await asyncio.sleep(0.1)
        assert port.trimmer.trims == 1  # a small request is not a reason to trim

"""Fixtures every test may use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from extender.server.app import Extender

SchedulerClient = Callable[[Extender], Awaitable[aiohttp.ClientSession]]


@pytest.fixture
async def scheduler_client() -> AsyncIterator[SchedulerClient]:
    """``await scheduler_client(ext)``: the extender's scheduler port listening on 127.0.0.1
    (a free port), and an aiohttp session whose relative URLs go to it; both closed after the
    test. The scheduler port is not an aiohttp application, so ``aiohttp_client`` cannot
    serve it."""
    opened: list[tuple[Extender, aiohttp.ClientSession]] = []

    async def start(ext: Extender) -> aiohttp.ClientSession:
        port = await ext.port.start("127.0.0.1", 0)
        session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")
        opened.append((ext, session))
        return session

    yield start
    for ext, session in opened:
        await session.close()
        await ext.port.stop(1.0)

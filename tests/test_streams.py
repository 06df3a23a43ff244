"""Whole bodies over real loopback sockets, even when they arrive in pieces."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from extender.wire.streams import read_at_most

BODY = b'{"status": {"authenticated": true, "user": {"username": "' + b"x" * 5000 + b'"}}}'


@pytest.fixture
async def slow_server(aiohttp_server):
    """Sends BODY in 100-byte pieces with a pause between them (what a loaded API server's
    answer looks like to a reader that takes the first piece for the whole)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(0, len(BODY), 100):
            await resp.write(BODY[i : i + 100])
            await asyncio.sleep(0.001)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    return await aiohttp_server(app)


async def test_a_body_in_pieces_is_read_whole(slow_server):
    async with aiohttp.ClientSession() as session, session.get(slow_server.make_url("/")) as resp:
        body, over = await read_at_most(resp.content, 1 << 20)
    assert body == BODY
    assert over is False


async def test_past_the_limit_is_flagged_and_cut_at_it(slow_server):
    async with aiohttp.ClientSession() as session, session.get(slow_server.make_url("/")) as resp:
        body, over = await read_at_most(resp.content, 1234)
    assert over is True
    assert body == BODY[:1234]


async def test_exactly_the_limit_is_not_over(slow_server):
    async with aiohttp.ClientSession() as session, session.get(slow_server.make_url("/")) as resp:
        body, over = await read_at_most(resp.content, len(BODY))
    assert (body, over) == (BODY, False)

"""The scheduler port's own HTTP/1.1 server, over real loopback sockets.

What kube-scheduler's Go client and the usual tools do on a connection: keep it alive, pipeline,
send ``Expect: 100-continue`` (curl does for bodies over 1 KiB), stream a chunked body, speak
HTTP/1.0; and what the server does with what it does not serve. The limits (deadlines, budgets,
compression, stalls) are in ``tests/reliability/test_hostile_http.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from extender.server.app import Extender
from tests.builders import fixture_bytes
from tests.support import make_extender

BODY = fixture_bytes("filter-nodecache-true-20nodes.json")


def _request(path: str = "/filter", body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (path.encode(), len(body), extra)
    ) + body


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Extender, int]]:
    ext = await make_extender()
    port = await ext.port.start("127.0.0.1", 0)
    yield ext, port
    await ext.port.stop(1.0)


def _count(ext: Extender, verb: str, outcome: str) -> float:
    value = ext.metrics.registry.get_sample_value(
        "priority_extender_requests_total", {"verb": verb, "outcome": outcome}
    )
    return value or 0.0


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(served):
    ext, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Three requests in one write: filter, prioritize, filter again; answered in that order.
    writer.write(_request("/filter") + _request("/prioritize") + _request("/filter"))
    got = [await _response(reader) for _ in range(3)]
    assert [status for status, _, _ in got] == [200, 200, 200]
    assert "NodeNames" in json.loads(got[0][2])
    assert isinstance(json.loads(got[1][2]), list)  # prioritize answers a HostPriorityList
    assert json.loads(got[2][2]) == json.loads(got[0][2])
    # the same connection still serves
    writer.write(_request("/filter"))
    assert (await _response(reader))[0] == 200
    await _close(writer)
    assert _count(ext, "filter", "ok") == 3
    assert _count(ext, "prioritize", "ok") == 1
    assert ext.port.inflight == 0
    assert ext.body_bytes_in_flight == 0


async def test_expect_100_continue_gets_its_interim_answer_before_the_body(served):
    _ext, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = _request(extra=b"Expect: 100-continue\r\n")[: -len(BODY)]
    writer.write(head)
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(BODY)
    status, _, body = await _response(reader)
    assert status == 200
    assert json.loads(body)["Error"] == ""
    await _close(writer)


async def test_a_chunked_body_is_read_whole(served):
    _ext, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    half = len(BODY) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:half], BODY[half:]))
    writer.write(b"POST /filter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    writer.write(b"0\r\n\r\n")
    status, _, body = await _response(reader)
    assert status == 200
    assert json.loads(body)["Error"] == ""
    await _close(writer)


async def test_http_1_0_and_connection_close_end_the_connection_after_the_answer(served):
    _ext, port = served
    for request in (
        _request().replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        _request(extra=b"Connection: close\r\n"),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        status, headers, _ = await _response(reader)
        assert status == 200
        assert headers.get("connection") == "close"
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        await _close(writer)


@pytest.mark.parametrize(
    ("request_bytes", "status", "words"),
    [
        (b"GET /filter HTTP/1.1\r\nHost: x\r\n\r\n", 405, "take POST"),
        (_request("/bind"), 404, "Not Found: POST /bind"),
        (b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400, "Bad Request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "Bad Request"),  # TLS to HTTP
    ],
    ids=["wrong-method", "unknown-path", "bad-length", "tls-hello"],
)
async def test_what_it_does_not_serve_is_a_json_error_and_a_closed_connection(
    served, request_bytes, status, words
):
    _ext, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes)
    got, headers, body = await asyncio.wait_for(_response(reader), 10)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert words in json.loads(body)["Error"]
    if status == 405:
        assert headers["allow"] == "POST"
    assert await asyncio.wait_for(reader.read(), 10) == b""
    await _close(writer)


async def test_an_idle_connection_is_closed_after_the_idle_timeout():
    ext = await make_extender(idle_timeout=0.2)
    port = await ext.port.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request())
        assert (await _response(reader))[0] == 200
        # Nothing more is sent: the server closes the connection on its own.
        assert await asyncio.wait_for(reader.read(), 10) == b""
        await _close(writer)
        # A connection stuck in its headers is closed too.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /filter HTTP/1.1\r\nHost: x\r\n")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        await _close(writer)
        assert ext.port.connections == set() or all(
            c.transport is None or c.transport.is_closing() for c in ext.port.connections
        )
    finally:
        await ext.port.stop(1.0)


async def test_stop_lets_the_request_in_flight_finish_and_closes_idle_connections():
    ext = await make_extender()
    port = await ext.port.start("127.0.0.1", 0)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request()[:-10])  # a body still arriving when the stop begins
    async with asyncio.timeout(10):
        while ext.port.inflight != 1:
            await asyncio.sleep(0.01)
    stopping = asyncio.create_task(ext.port.stop(5.0))
    await asyncio.sleep(0.05)
    writer.write(BODY[-10:])
    status, _, _ = await _response(reader)
    assert status == 200
    await stopping
    assert await asyncio.wait_for(idle_reader.read(), 10) == b""
    with pytest.raises(ConnectionRefusedError):  # no longer listening
        await asyncio.open_connection("127.0.0.1", port)
    await _close(writer)
    await _close(idle_writer)

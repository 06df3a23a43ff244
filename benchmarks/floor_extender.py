"""The floor extender: the least a scheduler extender can do and still answer kube-scheduler.

It speaks the same HTTP/1.1 as the extender's scheduler port (httptools on an asyncio
``Protocol``, one write per answer, on uvloop where it is installed, as the extender's
``--event-loop auto``) and does no deciding: filter keeps every node it is sent
(the ``NodeNames`` bytes echoed), prioritize gives each a score of 0, preempt agrees with every
candidate. Put in kube-scheduler's path in place of the extender (``bench_scheduler.py``'s
``floor`` arm), it measures what two extender calls per pod cost the scheduler on this machine
before any deciding: the throughput no extender can beat here.

    python benchmarks/floor_extender.py [PORT]     # prints "floor extender listening on PORT"
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import cast

import httptools
import msgspec

_NULL = msgspec.Raw(b"null")


class _Names(msgspec.Struct):
    NodeNames: msgspec.Raw = _NULL


class _Victims(msgspec.Struct):
    NodeNameToMetaVictims: msgspec.Raw = _NULL


_NAMES = msgspec.json.Decoder(_Names)
_LIST = msgspec.json.Decoder(list[str])
_VICTIMS = msgspec.json.Decoder(_Victims)


def answer(path: bytes, body: bytes) -> bytes:
    """The reply body for one verb."""
    if path.endswith(b"/filter"):
        names = bytes(_NAMES.decode(body).NodeNames)
        return b'{"NodeNames":%s,"FailedNodes":{},"Error":""}' % names
    if path.endswith(b"/prioritize"):
        raw = bytes(_NAMES.decode(body).NodeNames)
        hosts = _LIST.decode(raw) if raw != b"null" else []
        return msgspec.json.encode([{"Host": h, "Score": 0} for h in hosts])
    if path.endswith(b"/preempt"):
        victims = bytes(_VICTIMS.decode(body).NodeNameToMetaVictims)
        return b'{"NodeNameToMetaVictims":%s}' % (victims if victims != b"null" else b"{}")
    return b'{"Error":"unknown verb"}'


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not registered as an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.chunks = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        try:
            reply = answer(self.url, b"".join(self.chunks))
            status = b"200 OK"
        except msgspec.DecodeError as exc:
            reply = msgspec.json.encode({"Error": str(exc)})
            status = b"400 Bad Request"
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (status, len(reply))
            + reply
        )


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Conn, "127.0.0.1", port)
    print(f"floor extender listening on {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the extender serves on by default (``--event-loop auto``): uvloop where
    it is installed, so that the floor pays for its I/O what the extender pays."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory()) as r:
        r.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0))

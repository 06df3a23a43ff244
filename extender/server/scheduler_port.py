"""The scheduler port: a small HTTP/1.1 server for the verbs, on an asyncio ``Protocol``.

kube-scheduler calls ``filter`` and ``prioritize`` one after the other inside every scheduling
cycle, so every microsecond spent here is the scheduler's. aiohttp (which still serves the admin
port) spends about 200 µs of CPU per request on its own machinery: a task per request, a stream
reader, a response object, a payload writer. This server parses with ``httptools`` (llhttp, the
parser Node.js uses; aiohttp's own C parser is the same llhttp) and decides a small request in
the parser's callback, with no task and no await, then answers with one ``write``: about 60 µs
per request on the same machine (``benchmarks/run.py``'s HTTP rows; the issue "Stay out of
kube-scheduler's way").

What it enforces, each the same as before (the limits are documented on
:class:`~extender.server.app.ServerSettings`):

* admission from the headers alone, before a slot or a byte is spent: ``Content-Encoding``
  (415; a body is read as sent, never inflated), ``Content-Type`` (415), the declared size (413),
  the in-flight body bytes (503) and the in-flight requests (503, ``Retry-After: 1``);
* the body deadline (``body_timeout`` plus the size over ``body_min_rate``; then 408 and the
  connection closed), the size limit and the byte budget while the body streams in;
* the idle deadline: a connection that goes ``idle_timeout`` without a complete request head
  (an idle keep-alive connection, or one still sending its headers) is closed;
* a body of ``offload_bytes`` or more is decided in a worker thread, one at a time, so the loop
  keeps answering;
* anything the parser refuses (a method ``FOO``, a broken header), an unknown path (404) and a
  wrong method (405, ``Allow: POST``) answer a JSON body naming the problem, like every other
  error, and the connection is closed when a body was left unread.

A request is answered in order on its connection (HTTP/1.1 pipelining is allowed and kept in
order); a caller that disconnects before the decision is counted ``abandoned`` and not decided.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from extender.server.admin import content_encoding_problem
from extender.server.memory import Trimmer
from extender.wire import encode_error

if TYPE_CHECKING:
    from extender.server.app import Extender

log = logging.getLogger(__name__)

JSON = "application/json"

#: Replies at most this large are sent with their head in one write (one syscall, one packet on
#: loopback); larger ones in two, so a 77 MB full-node reply is never copied to prepend 100 bytes.
_JOIN_BYTES = 64 << 10

_VERBS = ("filter", "prioritize", "preempt")


def _status_line(status: int) -> bytes:
    reason = HTTPStatus(status).phrase.encode() if status != 499 else b"Client Closed Request"
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: " % (
        status,
        reason,
    )


#: The head of a reply up to its length, for each status the port answers with (others are
#: made when first needed): an enum lookup per reply was 2% of a small call.
_STATUS_LINES: dict[int, bytes] = {
    s: _status_line(s) for s in (200, 400, 404, 405, 408, 413, 415, 499, 500, 503)
}


def _head(status: int, length: int, extra: bytes = b"") -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = _status_line(status)
    return b"%s%d\r\n%s\r\n" % (line, length, extra)


@dataclass(slots=True)
class Refusal:
    """A request answered without deciding: status, message and the outcome label."""

    status: int
    message: str
    outcome: str = "bad_request"


class SchedulerPort:
    """The scheduler-port server: its connections, its admission state, its listening socket."""

    def __init__(self, ext: Extender) -> None:
        self.ext = ext
        prefix = ext.settings.url_prefix.rstrip("/")
        self.routes: dict[bytes, str] = {f"{prefix}/{v}".encode(): v for v in _VERBS}
        self.inflight = 0
        """Requests admitted and not yet answered (their bodies being read or decided)."""
        self.full_since: float | None = None
        """``time.monotonic()`` since which every slot has been taken, None while one is free."""
        self.body_bytes = 0
        """Request body bytes held right now (being read, decided or written back)."""
        self.offload = asyncio.Semaphore(1)
        self.offloaded = 0
        """Large requests being decided in a worker thread or waiting for it."""
        self.trimmer = Trimmer(lambda: self.offloaded > 0)
        """Gives memory back to the OS after each burst of large requests."""
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        metrics = ext.metrics
        # The labelled children, looked up once: ``labels()`` takes a lock and builds a key on
        # every call, a few microseconds each, three times per request.
        self._counts: dict[tuple[str, str], Any] = {}
        self.latency = {v: metrics.latency.labels(v) for v in _VERBS}
        self.sizes = {v: metrics.request_bytes.labels(v) for v in _VERBS}

    def count(self, verb: str, outcome: str) -> None:
        """``priority_extender_requests_total{verb, outcome}`` += 1."""
        child = self._counts.get((verb, outcome))
        if child is None:
            child = self._counts[verb, outcome] = self.ext.metrics.requests.labels(verb, outcome)
        child.inc()

    # --- admission bookkeeping ---------------------------------------------------------------

    def admit(self) -> None:
        self.inflight += 1
        if self.inflight >= self.ext.settings.max_inflight and self.full_since is None:
            self.full_since = time.monotonic()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight < self.ext.settings.max_inflight:
            self.full_since = None

    def budget(self, declared: int | None) -> int:
        """The in-flight body bytes a request may fill up to: all of them for a small declared
        body, all but the small-request headroom for a large or chunked one."""
        s = self.ext.settings
        if declared is not None and declared < s.offload_bytes:
            return s.max_body_bytes_in_flight
        return s.max_body_bytes_in_flight - s.small_headroom

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str, port: int, ssl: object | None = None) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self),
            host,
            port,
            ssl=ssl,  # type: ignore[arg-type]
            reuse_address=True,
        )
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def stop(self, timeout: float) -> None:
        """Stop listening, let requests in flight finish within ``timeout``, then close every
        connection."""
        if self._server is not None:
            self._server.close()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.inflight > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.close()
        self.trimmer.cancel()  # after the last large request, which may have set it
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class Connection(asyncio.Protocol):
    """One scheduler-port connection: parses requests and answers them in order."""

    def __init__(self, port: SchedulerPort) -> None:
        self.port = port
        self.ext = port.ext
        self.settings = port.ext.settings
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closing = False
        """No more requests on this connection: answer what is decided, then close."""
        self.idle: asyncio.TimerHandle | None = None
        self.last_active = 0.0
        """Loop time of the connection's last answer (or its opening): idle since then."""
        self.busy = False
        """A request is being decided in a worker thread (later ones wait in ``backlog``)."""
        self.backlog: deque[_Request] = deque()
        self.request: _Request | None = None
        """The request being received (from its head until its body is complete)."""
        self.writing_paused = False
        self.draining: list[_Request] = []
        """Requests answered whose reply still sits in the write buffer (their bytes held)."""
        self._url = b""
        self._headers: dict[bytes, bytes] = {}

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not registered as an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)
        self.port.connections.add(self)
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        self.idle = loop.call_at(self.last_active + self.settings.idle_timeout, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.port.connections.discard(self)
        self._cancel_idle()
        if self.request is not None:  # cut mid-body: nobody to answer
            req, self.request = self.request, None
            req.cancel_deadline()
            self.port.count(req.verb, "abandoned")
            log.info("%s: caller disconnected while sending the body", req.verb)
            req.release()
        while self.backlog:
            self.backlog.popleft().release()
        for req in self.draining:
            req.release()
        self.draining.clear()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
            if self.request is not None:  # a body still to come: now it has a deadline
                self.request.keep_deadline()
        except httptools.HttpParserUpgrade:
            self._refuse_raw(400, "Bad Request: protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if self.closing:
                return  # a callback refused the request and already answered
            detail = " ".join(str(exc).split())[:200] or type(exc).__name__
            if isinstance(exc, httptools.HttpParserInvalidMethodError):
                detail = f"invalid HTTP method ({detail})"
            self._refuse_raw(400, f"Bad Request: {detail}")
            log.warning("rejected a malformed HTTP request: %s", detail)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        for req in self.draining:
            req.release()
        self.draining.clear()
        if not self.busy:
            self._next()

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key in _WANTED:
            # A repeated header (two Content-Encodings) joins with a comma, as HTTP says.
            old = self._headers.get(key)
            self._headers[key] = value if old is None else old + b"," + value

    def on_headers_complete(self) -> None:
        method = self.parser.get_method()
        path = self._url.split(b"?", 1)[0]
        verb = self.port.routes.get(path)
        if verb is None:
            text = f"Not Found: {method.decode('latin-1')} {path.decode('latin-1')}"
            self._refuse_raw(404, text)
            raise _Stop
        if method != b"POST":
            text = (
                f"Method Not Allowed: {method.decode('latin-1')} {path.decode('latin-1')} "
                "(the extender verbs take POST)"
            )
            self._refuse_raw(405, text, b"Allow: POST\r\n")
            raise _Stop
        refused = self._admission(verb)
        if refused is not None:
            self._refuse(verb, refused)
            raise _Stop
        declared = self._declared()
        self.port.admit()
        req = _Request(self, verb, declared)
        self.request = req
        if self._headers.get(b"expect", b"").lower() == b"100-continue":
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        req = self.request
        if req is None:
            return
        limit = self.settings.max_request_bytes
        if req.bytes + len(body) > limit:
            self._cut(req, Refusal(413, _too_large(None, limit), "too_large"))
            raise _Stop
        budget = self.port.budget(req.declared)
        if self.port.body_bytes + len(body) > budget:
            self._cut(
                req,
                Refusal(
                    503, _over_budget(self.port.body_bytes, req.bytes + len(body), budget),
                    "overloaded",
                ),
            )  # fmt: skip
            raise _Stop
        req.add(body)

    def on_message_complete(self) -> None:
        req = self.request
        if req is None:
            return
        self.request = None
        req.cancel_deadline()
        req.keep_alive = self.parser.should_keep_alive()
        if not req.keep_alive:
            self.closing = True
        self.backlog.append(req)
        if not self.busy and not self.writing_paused:
            self._next()

    # --- deciding and answering --------------------------------------------------------------

    def _next(self) -> None:
        """Answer the requests received, in order, until one goes to a worker thread."""
        while self.backlog and not self.busy and not self.writing_paused:
            req = self.backlog.popleft()
            body = req.body()
            self.port.sizes[req.verb].observe(len(body))
            if self.transport is None or self.transport.is_closing():
                self.port.count(req.verb, "abandoned")
                log.info("%s: caller disconnected before the decision; dropped", req.verb)
                req.release()
                continue
            if len(body) >= self.settings.offload_bytes:
                self.busy = True
                self.port.offloaded += 1
                self.transport.pause_reading()
                asyncio.get_running_loop().create_task(self._offloaded(req, body))
                return
            try:
                reply = self.ext.verbs.call(req.verb, body)
            except Exception:  # Verbs.call fails open; this is a bug of ours
                log.exception("internal error deciding %s", req.verb)
                self._answer(req, 500, encode_error("internal error"), "fail_open", b"")
                continue
            self._answer(req, reply.status, reply.body, reply.outcome)
        if self.closing and not self.backlog and not self.busy and self.transport is not None:
            self.transport.close()

    async def _offloaded(self, req: _Request, body: bytes) -> None:
        try:
            async with self.port.offload:
                reply = await asyncio.to_thread(self.ext.verbs.call, req.verb, body)
        except Exception:
            log.exception("internal error deciding %s", req.verb)
            self._answer(req, 500, encode_error("internal error"), "fail_open", b"")
        else:
            if self.transport is None or self.transport.is_closing():
                self.port.count(req.verb, "abandoned")
                log.info("%s: caller disconnected during the decision", req.verb)
                req.release()
            else:
                self._answer(req, reply.status, reply.body, reply.outcome)
        finally:
            self.busy = False
            self.port.offloaded -= 1
            self.port.trimmer.large_done()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._next()

    def _answer(
        self, req: _Request, status: int, body: bytes, outcome: str, extra: bytes = b""
    ) -> None:
        self.port.count(req.verb, outcome)
        if status == 200:
            self.port.latency[req.verb].observe(time.perf_counter() - req.started)
        close = self.closing and not self.backlog
        self._write(status, body, extra + (b"Connection: close\r\n" if close else b""))
        req.leave()
        if self.writing_paused:
            self.draining.append(req)  # its bytes stay counted until the reply is sent
        else:
            req.release()
        self.last_active = asyncio.get_running_loop().time()

    def _write(self, status: int, body: bytes, extra: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        head = _head(status, len(body), extra)
        if len(body) <= _JOIN_BYTES:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)

    # --- refusals ----------------------------------------------------------------------------

    def _declared(self) -> int | None:
        raw = self._headers.get(b"content-length")
        return int(raw) if raw is not None and raw.isdigit() else None

    def _admission(self, verb: str) -> Refusal | None:
        """What refuses a request from its head alone, before any slot or byte is spent."""
        encoding = self._headers.get(b"content-encoding")
        if encoding is not None:
            refused = content_encoding_problem(
                CIMultiDictProxy(CIMultiDict({"Content-Encoding": encoding.decode("latin-1")}))
            )
            if refused is not None:
                return Refusal(415, refused)
        ctype = self._headers.get(b"content-type", JSON.encode()).split(b";")[0]
        ctype = ctype.strip().lower()
        if ctype not in (JSON.encode(), b"", b"text/json"):
            return Refusal(
                415, f"unsupported Content-Type {ctype.decode('latin-1')!r}: send {JSON}"
            )
        s = self.settings
        length = self._declared()
        if length is not None and length > s.max_request_bytes:
            return Refusal(413, _too_large(length, s.max_request_bytes), "too_large")
        budget = self.port.budget(length)
        if length is not None and self.port.body_bytes + length > budget:
            return Refusal(503, _over_budget(self.port.body_bytes, length, budget), "overloaded")
        if self.port.inflight >= s.max_inflight:
            return Refusal(
                503,
                f"overloaded: {self.port.inflight} requests in flight "
                f"(limit {s.max_inflight}); retry",
                "overloaded",
            )
        return None

    def _refuse(self, verb: str, refusal: Refusal) -> None:
        """Answer a refused verb request and close: its body is left unread."""
        self.port.count(verb, refusal.outcome)
        log.warning("%s: rejected request: %s", verb, refusal.message)
        extra = b"Retry-After: 1\r\n" if refusal.status == 503 else b""
        self._refuse_raw(refusal.status, refusal.message, extra)

    def _refuse_raw(self, status: int, message: str, extra: bytes = b"") -> None:
        self.closing = True
        self._write(status, encode_error(message), extra + b"Connection: close\r\n")
        if not self.busy and not self.backlog and self.transport is not None:
            self.transport.close()

    def _cut(self, req: _Request, refusal: Refusal) -> None:
        """Refuse a request whose body is still arriving (too large, over budget, too slow)."""
        self.request = None
        req.cancel_deadline()
        req.leave()
        req.release()
        self._refuse(req.verb, refusal)

    def body_timed_out(self, req: _Request) -> None:
        if self.request is not req:
            return
        took = asyncio.get_running_loop().time() - req.loop_start
        s = self.settings
        self._cut(
            req,
            Refusal(
                408,
                f"request body not received within {took:.1f} s ({req.bytes} bytes arrived; "
                f"the deadline is {s.body_timeout} s plus the size at "
                f"{s.body_min_rate / 2**20:.0f} MiB/s); the connection is closed",
                "timeout",
            ),
        )

    # --- timers ------------------------------------------------------------------------------

    def _idle_check(self) -> None:
        """The connection's one timer. A connection with nothing received, decided or being
        answered for ``idle_timeout`` (idle keep-alive, or stuck in its headers) is closed;
        otherwise the timer is set again for when it could be. One timer per connection, moved
        only when it fires, rather than a timer armed and cancelled on every request."""
        self.idle = None
        if self.closing:
            return
        loop = asyncio.get_running_loop()
        timeout = self.settings.idle_timeout
        if self.request is not None or self.backlog or self.busy:
            self.idle = loop.call_at(loop.time() + timeout, self._idle_check)
        elif loop.time() - self.last_active >= timeout:
            self.close()
        else:
            self.idle = loop.call_at(self.last_active + timeout, self._idle_check)

    def _cancel_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


_WANTED = frozenset({b"content-length", b"content-type", b"content-encoding", b"expect"})


class _Stop(Exception):
    """Raised from a parser callback to stop parsing a connection that has been answered."""


class _Request:
    """One admitted request: its verb, its body chunks, the bytes it holds, its deadline."""

    __slots__ = (
        "bytes",
        "chunks",
        "conn",
        "deadline",
        "declared",
        "keep_alive",
        "left",
        "loop_start",
        "started",
        "verb",
    )

    def __init__(self, conn: Connection, verb: str, declared: int | None) -> None:
        self.conn = conn
        self.verb = verb
        self.declared = declared
        self.chunks: list[bytes] = []
        self.bytes = 0
        self.started = time.perf_counter()
        self.loop_start = asyncio.get_running_loop().time()
        self.deadline: asyncio.TimerHandle | None = None
        self.keep_alive = True
        self.left = False

    def _at(self) -> float:
        s = self.conn.settings
        return (
            self.loop_start + s.body_timeout + max(self.declared or 0, self.bytes) / s.body_min_rate
        )

    def keep_deadline(self) -> None:
        """Arm the body deadline, or move it out as the body grows past its declared size.
        Called once per read that leaves the body incomplete; a body that arrives with its
        head (every small call) never needs a timer."""
        at = self._at()
        if self.deadline is not None:
            if at <= self.deadline.when():
                return
            self.deadline.cancel()
        self.deadline = asyncio.get_running_loop().call_at(at, self.conn.body_timed_out, self)

    def cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.bytes += len(chunk)
        self.conn.port.body_bytes += len(chunk)

    def body(self) -> bytes:
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        joined = b"".join(chunks)
        self.chunks = [joined]
        return joined

    def leave(self) -> None:
        """Give the request slot back (once)."""
        if not self.left:
            self.left = True
            self.conn.port.leave()

    def release(self) -> None:
        """Give back the slot and every body byte held."""
        self.leave()
        self.conn.port.body_bytes -= self.bytes
        self.bytes = 0
        self.chunks = []


def _over_budget(held: int, more: int, budget: int) -> str:
    return (
        f"overloaded: request bodies in flight hold {held} bytes; {more} more would pass the "
        f"limit of {budget} (max_body_bytes_in_flight); retry"
    )


def _too_large(size: int | None, limit: int) -> str:
    got = f" ({size} bytes)" if size is not None else ""
    return (
        f"request body too large{got}: the limit is {limit} bytes; raise --max-request-bytes, "
        "or set nodeCacheCapable: true so kube-scheduler sends node names only"
    )


__all__ = ["Connection", "Refusal", "SchedulerPort"]

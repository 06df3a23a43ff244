"""List+watch of one resource, as client-go's reflector does it, over raw response bytes.

The loop: list everything in pages, apply it (objects the list no longer has are removed), then
watch from the list's resourceVersion, applying each event and remembering the resourceVersion
of the last one (bookmarks included). Then:

* the stream ends (the server's ``timeoutSeconds``) → watch again from the last resourceVersion;
* no line for ``read_timeout_s`` (a stuck stream) → the same, counted as a stall;
* "410 Gone" (an ERROR event with a 410 Status, or HTTP 410: the resourceVersion is older than
  the server's history) → list again;
* any other failure (connection refused or dropped, HTTP error, malformed response) → wait,
  exponentially longer with jitter while failures repeat, then watch from the last
  resourceVersion, or list again if no list has completed yet.

While any of this happens the cache keeps serving what it has; :attr:`Reflector.confirmed_at`
says when it was last known to be current.

The requests go through the ``kubernetes`` package's asyncio client (``kubernetes.aio``) in its
``*_without_preload_content`` form, which hands back the aiohttp response unread: bytes are
decoded by :mod:`extender.cluster.decode`, never into the client's model objects.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, TypeVar

import aiohttp

from extender.cluster.cache import Sink
from extender.cluster.decode import DecodeError, decode_bookmark, decode_event, decode_list
from extender.cluster.decode import decode_status as _decode_status
from extender.cluster.settings import ClusterSettings
from extender.errors import ClusterError
from extender.wire.streams import read_at_most

log = logging.getLogger(__name__)

R = TypeVar("R")

ListCall = Callable[..., Awaitable[aiohttp.ClientResponse]]
"""A ``kubernetes.aio`` ``list_*_without_preload_content`` method (keyword arguments only)."""

#: Largest error body read from a failed request, for its message.
MAX_ERROR_BODY = 64 << 10
#: Keys checked against a finished list between two yields (~0.5 ms of set lookups).
KEY_STEP = 10_000
#: A watch that ends sooner than this without an event counts as a failure (backoff applies).
QUICK_END_S = 1.0

WatchOutcome = Literal["events", "ended", "stalled"]
"""How a watch finished: it delivered events, or ended (the server closed it), or stalled."""


class ApiError(ClusterError):
    """The API answered with an error status (HTTP or an ERROR event)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status = status


class Gone(ApiError):
    """410: the resourceVersion or continue token is too old: list again."""

    def __init__(self, message: str) -> None:
        super().__init__(410, message)


class StreamError(ClusterError):
    """The response is not what the API sends (malformed JSON, a bad event, a broken stream)."""


class _RelistRequested(Exception):
    """Internal: :meth:`Reflector.request_relist` was called while watching."""


#: Loop turns given away at each yield. A request that arrives during a slice of work needs a
#: few turns to finish (its bytes are read, its task is started, it runs): with one turn, each
#: of those steps would wait for another slice.
YIELD_TURNS = 6


async def _yield() -> None:
    for _ in range(YIELD_TURNS):
        await asyncio.sleep(0)


class Reflector(Generic[R]):
    """Keeps one resource of the cache current; :meth:`run` never returns until cancelled."""

    def __init__(
        self,
        resource: str,
        call: ListCall,
        sink: Sink[R],
        settings: ClusterSettings,
        *,
        field_selector: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.resource = resource
        self.call = call
        self.sink = sink
        self.settings = settings
        self.field_selector = field_selector
        self.clock = clock
        self.sleep = sleep
        """Waits between retries (a test seam: record the delays, skip the waiting)."""
        self.rng = rng if rng is not None else random.Random()
        self.resource_version = ""
        """Where the next watch resumes; empty until a list completes, and after a 410."""
        self.listed_at: float | None = None
        """When the last full list completed."""
        self.confirmed_at: float | None = None
        """When the cache was last known current: a list completed, a watch was established, or
        an event or bookmark arrived."""
        self.lists = 0
        self.watches = 0
        self.events = 0
        self.stalls = 0
        self.errors = 0
        self.last_error: str | None = None
        self._relist = False
        self._response: aiohttp.ClientResponse | None = None

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if not self.resource_version or self._relist:
                    self._relist = False
                    await self.list_all()
                    failures = 0
                started = time.monotonic()
                outcome = await self.watch()
                if outcome == "events":
                    failures = 0
                if outcome != "ended" or time.monotonic() - started >= QUICK_END_S:
                    continue
                # Ended at once with nothing: something between us and the API server cuts
                # streams. Back off rather than reconnect in a tight loop.
                self._failed(StreamError("watch ended as soon as it started"))
            except Gone as exc:
                log.info("%s: %s; listing again", self.resource, exc)
                self.resource_version = ""
                if failures == 0:  # relist at once, unless the last attempt ended the same way
                    failures = 1
                    continue
                self._failed(exc)
            except _RelistRequested:
                log.info("%s: listing again (requested)", self.resource)
                continue
            except (ClusterError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._failed(exc)
            except Exception as exc:  # a bug must not end the cache: log it in full, retry
                self._failed(exc, unexpected=True)
            delay = self.backoff(failures)
            failures += 1
            log.debug("%s: retrying in %.2fs", self.resource, delay)
            await self.sleep(delay)

    def _failed(self, exc: BaseException, unexpected: bool = False) -> None:
        """Count and remember a failure; log it when it differs from the previous one."""
        self.errors += 1
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if text != self.last_error:
            if unexpected:
                log.error("%s: unexpected error in list/watch", self.resource, exc_info=exc)
            else:
                log.warning("%s: list/watch failed, serving from cache: %s", self.resource, text)
        self.last_error = text

    def backoff(self, failures: int) -> float:
        """Delay before the next attempt after ``failures`` consecutive failures before this one:
        exponential up to the cap, then "equal jitter" (a uniform draw from its upper half), so
        that many replicas failing together do not retry together."""
        s = self.settings
        base = min(s.backoff_max_s, s.backoff_initial_s * s.backoff_factor**failures)
        return base / 2 + self.rng.random() * base / 2

    def request_relist(self) -> None:
        """List again now (an open watch is closed); used when records must be rebuilt."""
        self._relist = True
        if self._response is not None:
            self._response.close()

    def _confirm(self) -> None:
        self.confirmed_at = self.clock()
        self.last_error = None

    # --- list -----------------------------------------------------------------------------------

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        if resp.status == 200:
            return await resp.read()
        raise await _error(resp)

    async def list_all(self) -> None:
        """One full list in pages; objects absent from it leave the cache."""
        s = self.settings
        # A dict of strings, not a set: CPython leaves dicts of untracked objects out of the
        # cyclic GC, which would otherwise walk all 150,000 keys at every young collection.
        seen: dict[str, None] = {}
        # What this list changes happened at some moment since the cache was last known
        # current: a pod it finds gone or finished is stamped as gone since then.
        since = self.confirmed_at
        token = ""
        while True:
            kwargs: dict[str, Any] = {"limit": s.page_size, "_request_timeout": s.list_timeout_s}
            if token:
                kwargs["_continue"] = token
            if self.field_selector:
                kwargs["field_selector"] = self.field_selector
            resp = await self.call(**kwargs)
            try:
                body = await self._read(resp)
            finally:
                resp.release()
            try:
                page = decode_list(body)
            except DecodeError as exc:
                raise StreamError(str(exc)) from None
            del body  # the items are views into it; it goes with them
            await _yield()
            items = page.items
            for start in range(0, len(items), s.slice_items):
                for raw in items[start : start + s.slice_items]:
                    try:
                        key, _, record = self.sink.decode(raw)
                    except DecodeError as exc:
                        log.warning("%s: skipped in list: %s", self.resource, exc)
                        continue
                    seen[key] = None
                    self.sink.put(key, record, since)
                await _yield()
            token = page.continue_token
            if not token:
                break
        # Objects the list did not return are gone. One set difference over 150,000 keys would
        # hold the loop for ~15 ms: compare in steps instead.
        keys = list(self.sink.keys())  # ~1 ms; a copy that the yields below cannot change
        stale: list[str] = []
        for start in range(0, len(keys), KEY_STEP):
            stale += [k for k in keys[start : start + KEY_STEP] if k not in seen]
            await _yield()
        listed = len(seen)
        del keys, seen
        for start in range(0, len(stale), s.slice_items):
            for key in stale[start : start + s.slice_items]:
                self.sink.put(key, None, since)
            await _yield()
        self.resource_version = page.resource_version
        self.lists += 1
        self.listed_at = self.clock()
        self._confirm()
        self.sink.listed()
        log.info(
            "%s: listed %d at resourceVersion %s", self.resource, listed, self.resource_version
        )

    # --- watch ----------------------------------------------------------------------------------

    async def watch(self) -> WatchOutcome:
        """Watch from :attr:`resource_version` until the stream ends or stalls: "events" if it
        delivered any, else how it finished. Errors raise."""
        s = self.settings
        timeout = self.rng.randrange(s.watch_timeout_s, 2 * s.watch_timeout_s)
        kwargs: dict[str, Any] = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "resource_version": self.resource_version,
            "timeout_seconds": timeout,
            "_request_timeout": float(timeout + s.watch_margin_s),
        }
        if self.field_selector:
            kwargs["field_selector"] = self.field_selector
        resp = await self.call(**kwargs)
        delivered = False

        def outcome(
            otherwise: Literal["ended", "stalled"],
        ) -> Literal["events", "ended", "stalled"]:
            return "events" if delivered else otherwise

        try:
            if resp.status != 200:
                raise await _error(resp)
            self.watches += 1
            self._confirm()
            content = resp.content
            handled = 0
            self._response = resp
            loop = asyncio.get_running_loop()
            # One deadline for the whole stream, moved on as lines arrive: at most every eighth
            # of the read timeout, not once a line (a timer per line was a fifth of the watch's
            # cost in a burst). The stream is stalled after at least read_timeout_s of silence.
            slack = s.read_timeout_s / 8
            renew_at = loop.time() + slack
            try:
                async with asyncio.timeout_at(loop.time() + s.read_timeout_s + slack) as quiet:
                    while True:
                        if self._relist:  # requested before the stream was open, or between
                            raise _RelistRequested()
                        try:
                            line = await content.readline()
                        except aiohttp.ClientError:
                            if self._relist:  # request_relist() closed the stream
                                raise _RelistRequested() from None
                            raise
                        now = loop.time()
                        if now >= renew_at:
                            quiet.reschedule(now + s.read_timeout_s + slack)
                            renew_at = now + slack
                        if not line:
                            return outcome("ended")  # the server ended it (timeoutSeconds)
                        if line.isspace():
                            continue
                        self._event(line)
                        delivered = True
                        handled += 1
                        if handled % s.slice_items == 0:
                            # A readline that finds its line buffered does not yield: yield
                            # here, or a burst of buffered events would hold the loop for its
                            # whole length.
                            await _yield()
            except TimeoutError:
                self.stalls += 1
                log.info(
                    "%s: watch silent for %.0fs, resuming from %s",
                    self.resource,
                    s.read_timeout_s,
                    self.resource_version,
                )
                return outcome("stalled")
        finally:
            self._response = None
            resp.close()

    def _event(self, line: bytes) -> None:
        try:
            event = decode_event(line)
        except DecodeError as exc:
            raise StreamError(str(exc)) from None
        kind = event.type
        rv = ""
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            try:
                key, rv, record = self.sink.decode(event.object)
            except DecodeError as exc:
                log.warning("%s: skipped %s event: %s", self.resource, kind, exc)
                return
            self.sink.put(key, None if kind == "DELETED" else record)
        elif kind == "BOOKMARK":
            try:
                rv = decode_bookmark(event.object)
            except DecodeError as exc:
                raise StreamError(str(exc)) from None
        elif kind == "ERROR":
            status = _decode_status(event.object)
            code = status.code if status is not None else 0
            message = status.message if status is not None else bytes(event.object)[:200].decode()
            if code == 410:
                raise Gone(message)
            raise ApiError(code, message)
        else:
            log.warning("%s: ignored watch event of unknown type %r", self.resource, kind)
        self.events += 1
        if rv:
            self.resource_version = rv
        self._confirm()


async def _error(resp: aiohttp.ClientResponse) -> ApiError:
    """The error a non-200 response stands for, with the API's own message when it gave one."""
    try:
        body, _cut = await read_at_most(resp.content, MAX_ERROR_BODY)
    except (aiohttp.ClientError, TimeoutError):
        body = b""
    status = _decode_status(body) if body else None
    message = status.message if status is not None and status.message else resp.reason or ""
    if resp.status == 410:
        return Gone(message)
    return ApiError(resp.status, message)

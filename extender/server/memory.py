"""Giving memory back after large requests.

A full-Node request of 5,000 nodes is a 50 MB body, decided in a worker thread: its bytes and
the objects decoded from it are freed when it is answered, but glibc's allocator keeps much of
what it freed (in each thread's arena) for the next allocation, so the process's resident size
stays near its peak long after the burst. :class:`Trimmer` asks glibc to return free memory
(``malloc_trim(0)``) once large requests stop: a second after the last one ends with none in
flight, once per burst, in a worker thread (a trim walks every arena: milliseconds on a large
heap, never on the event loop). Where there is no glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds without a large request in flight before memory is trimmed.
TRIM_DELAY_S = 1.0


def glibc_malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


class Trimmer:
    """Trims once after each burst of large requests (see the module's docstring)."""

    def __init__(
        self,
        busy: Callable[[], bool],
        delay: float = TRIM_DELAY_S,
        trim: Callable[[], int] | None = None,
    ) -> None:
        self._busy = busy
        """Whether a large request is in flight now (then the trim waits)."""
        self._delay = delay
        self._trim = trim if trim is not None else glibc_malloc_trim()
        self._timer: asyncio.TimerHandle | None = None
        self._running = False
        self.trims = 0
        """Trims done (tests and the benchmarks read it)."""

    @property
    def available(self) -> bool:
        return self._trim is not None

    def large_done(self) -> None:
        """A large request was answered: trim once none has been in flight for the delay."""
        if self._trim is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._delay, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._busy() or self._running:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self._due)
            return
        self._running = True
        asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        trim = self._trim
        assert trim is not None
        try:
            await asyncio.to_thread(trim)
            self.trims += 1
        except Exception:  # a trim is an optimisation: never a reason to fail
            log.exception("malloc_trim failed")
        finally:
            self._running = False

    def cancel(self) -> None:
        """Stop a pending trim (the server is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

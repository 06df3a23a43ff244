"""Policy hot reload: watch the policy file's directory, validate, then swap; never go down.

A ConfigMap volume is updated by the kubelet writing a new timestamped directory and swapping
the ``..data`` symlink, so the file's own inode never changes: watching the file alone misses
updates. The directory is watched (inotify through ``watchfiles``) and, as a safety net for
filesystems without events, the file's content hash is checked every ``interval`` seconds.

A new policy is parsed and validated off the event loop before it is swapped in. On any error
the last good policy stays in force: every issue is logged with its line and column, the error
is counted, and ``priority_extender_policy_reload_failing`` is 1 until a good file appears. A bad
edit never makes the extender unready.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles

from extender.policy import LoadedPolicy, PolicyError, load_file
from extender.policy.loader import MAX_POLICY_BYTES
from extender.server.metrics import Metrics
from extender.store import SnapshotStore

log = logging.getLogger(__name__)

#: Safety-net check period. Kubelet propagates ConfigMap changes within about a minute anyway;
#: a 10 s poll of one small file costs nothing.
DEFAULT_INTERVAL_S = 10.0
#: Events within this window are handled as one change (the kubelet's swap is several).
DEBOUNCE_MS = 200

OnReload = Callable[[LoadedPolicy, LoadedPolicy], Awaitable[None]]


def _digest(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            return hashlib.sha256(fh.read(MAX_POLICY_BYTES + 1)).hexdigest()
    except OSError:
        return None


class PolicyReloader:
    def __init__(
        self,
        path: Path,
        store: SnapshotStore,
        metrics: Metrics,
        on_reload: OnReload | None = None,
        interval: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.store = store
        self.metrics = metrics
        self.on_reload = on_reload
        self.interval = interval
        self.clock = clock
        self._failed_digest: str | None = None
        self._lock = asyncio.Lock()
        metrics.last_reload.set(clock())

    async def check(self) -> str:
        """Reload if the file changed: ``success``, ``error`` or ``unchanged``."""
        async with self._lock:  # the watcher and the poll never reload at the same time
            digest = await asyncio.to_thread(_digest, self.path)
            current = self.store.policy
            if digest is not None and digest == current.sha256:
                if self._failed_digest is not None:
                    log.info("policy file is back to the policy in force: %s", self.path)
                    self._failed_digest = None
                    self.metrics.reload_failing.set(0)
                return "unchanged"
            if digest is not None and digest == self._failed_digest:
                return "unchanged"  # the same bad file: already reported
            try:
                new = await asyncio.to_thread(load_file, self.path)
            except PolicyError as exc:
                self._failed_digest = digest or "unreadable"
                self.metrics.reloads.labels("error").inc()
                self.metrics.reload_failing.set(1)
                log.error(
                    "policy reload failed, keeping the policy in force (%s, sha256 %s): "
                    "%d problem(s)",
                    current.source,
                    current.sha256[:12],
                    len(exc.issues),
                    extra={"issues": exc.issues},
                )
                for issue in exc.issues:
                    log.error("policy: %s", issue)
                return "error"
            self._failed_digest = None
            self.store.set_policy(new)
            self.metrics.reloads.labels("success").inc()
            self.metrics.reload_failing.set(0)
            self.metrics.last_reload.set(self.clock())
            log.info(
                "policy reloaded from %s (sha256 %s, tiers: %s)",
                new.source,
                new.sha256[:12],
                ", ".join(t.name for t in new.rules.tiers),
            )
        if self.on_reload is not None:
            await self.on_reload(current, new)
        return "success"

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def _watch(self, stop: asyncio.Event) -> None:
        folder = self.path.parent
        try:
            async for _ in watchfiles.awatch(
                folder,
                stop_event=stop,
                debounce=DEBOUNCE_MS,
                recursive=False,
                watch_filter=None,
            ):
                await self.check()
        except (OSError, RuntimeError) as exc:
            log.warning(
                "cannot watch %s (%s); relying on the %.0f s content check",
                folder,
                exc,
                self.interval,
            )

    async def run(self) -> None:
        """Watch and poll until cancelled."""
        stop = asyncio.Event()
        poll = asyncio.create_task(self._poll())
        try:
            await self._watch(stop)
            await poll  # the watcher ended by itself: keep polling
        finally:
            stop.set()
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll

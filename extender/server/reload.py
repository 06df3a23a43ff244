"""Policy hot reload: watch the policy file's directory, validate, then swap; never go down.

A ConfigMap volume is updated by the kubelet writing a new timestamped directory and swapping
the ``..data`` symlink, so the file's own inode never changes: watching the file alone misses
updates. The directory is watched (inotify through ``watchfiles``), but only events on the policy
file's own name and on ``..data`` count (:class:`PolicyFilter`): whatever else lives there (a log
file, an editor's swap file, the timestamped directories) never triggers a check (a busy file
still wakes the watcher once per debounce window, to no effect), and changes are
logged at debug only (watchfiles' own info line per change is silenced), so a log file in the
same directory cannot feed the watcher with its own lines. As a safety net for
filesystems without events, the file's content hash is checked every ``interval`` seconds. When
the directory is deleted or replaced, the watch is armed again on the new one (a deleted
directory is looked for every :data:`DIR_RECHECK_S`), with one warning while it is missing and
one line when it is watched again.

A new policy is parsed and validated off the event loop before it is swapped in. On any error
the last good policy stays in force: every issue is logged with its line and column, the error
is counted, and ``priority_extender_policy_reload_failing`` is 1 until a good file appears. A bad
edit never makes the extender unready. Whatever the file holds (a FIFO, a device, a document
nested 500 levels deep) and whatever goes wrong while loading it, the failure is a counted
policy error with a place, logged once per distinct content, and neither the watcher nor the
periodic check ever stops.

With a state directory, every policy that loads is also kept there
(:func:`extender.policy.loader.save_last_good`), so a restart while the file is invalid starts
from it: that start is reported here as a failed reload, exactly as if the bad edit had arrived
while running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles

from extender.policy import LoadedPolicy, PolicyError, load_file
from extender.policy.loader import MAX_POLICY_BYTES, save_last_good
from extender.policy.yamlpos import read_regular
from extender.server.metrics import Metrics
from extender.store import SnapshotStore

log = logging.getLogger(__name__)

#: Safety-net check period. Kubelet propagates ConfigMap changes within about a minute anyway;
#: a 10 s poll of one small file costs nothing.
DEFAULT_INTERVAL_S = 10.0
#: Events within this window are handled as one change (the kubelet's swap is several).
DEBOUNCE_MS = 200
#: How often the watcher checks that its directory is still the one it armed on (one ``stat``),
#: and looks for it while it is missing: a recreated directory is watched again within a second
#: instead of waiting for the content check.
DIR_RECHECK_S = 1.0

#: The symlink a ConfigMap volume swaps to publish an update (kubelet's atomic writer).
CONFIGMAP_DATA = "..data"

OnReload = Callable[[LoadedPolicy, LoadedPolicy], Awaitable[None]]


class PolicyFilter:
    """A watchfiles ``watch_filter``: the events that can change the policy. The file's name
    (an edit, or an editor's rename over it), ``..data`` (a ConfigMap update) and the directory
    itself (its deletion, after which the watch is armed again)."""

    def __init__(self, path: Path) -> None:
        self.folder = str(path.parent)
        self.names = frozenset({path.name, CONFIGMAP_DATA})

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return path == self.folder or os.path.basename(path) in self.names


def quiet_watchfiles() -> None:
    """watchfiles logs every batch of changes at info (``N changes detected``) and, at debug,
    every batch it filtered out: with a log file in the watched directory, each line would be
    a change that writes another line. Only its warnings are kept; the watcher logs the changes
    that count itself, at debug."""
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


def file_digest(path: Path) -> str:
    """The file's sha256, or ``unreadable: <reason>`` (one key per distinct failure, so the
    same missing or non-regular file is reported once). Never blocks on a FIFO or device."""
    try:
        return hashlib.sha256(read_regular(path, MAX_POLICY_BYTES)).hexdigest()
    except OSError as exc:
        return f"unreadable: {type(exc).__name__}: {exc.strerror or exc}"


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the directory, or None when it is not there."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class PolicyReloader:
    def __init__(
        self,
        path: Path,
        store: SnapshotStore,
        metrics: Metrics,
        on_reload: OnReload | None = None,
        interval: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.time,
        state_dir: Path | None = None,
        digest: Callable[[Path], str] = file_digest,
        watch: bool = True,
    ) -> None:
        """``digest`` (the content check) and ``watch`` (off: the periodic check alone) are
        seams for tests."""
        self.path = path
        self.store = store
        self.metrics = metrics
        self.on_reload = on_reload
        self.interval = interval
        self.clock = clock
        self.state_dir = state_dir
        self.digest = digest
        self.watch = watch
        self.watching = asyncio.Event()
        """Set once the directory watch has delivered anything: from then on edits are seen."""
        self._failed_digest: str | None = None
        self._lock = asyncio.Lock()
        metrics.last_reload.set(clock())
        if store.policy.origin == "last-good":
            # Started from the kept copy because the file was invalid: that is a failed reload.
            metrics.reloads.labels("error").inc()
            metrics.reload_failing.set(1)

    async def check(self) -> str:
        """Reload if the file changed: ``success``, ``error`` or ``unchanged``. Never raises
        (except for cancellation): a failure of any kind is a counted error."""
        try:
            return await self._check()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not a policy problem (those are handled in _check): a bug here or in a metrics
            # source restart. Logged with its traceback; the next change is tried afresh.
            self.metrics.reloads.labels("error").inc()
            log.exception("policy reload of %s failed unexpectedly; will retry", self.path)
            return "error"

    async def _check(self) -> str:
        async with self._lock:  # the watcher and the poll never reload at the same time
            digest = await asyncio.to_thread(self.digest, self.path)
            current = self.store.policy
            if digest == current.sha256:
                if self._failed_digest is not None or current.origin == "last-good":
                    log.info("policy file is back to the policy in force: %s", self.path)
                    self._failed_digest = None
                    self.metrics.reload_failing.set(0)
                    if current.origin != "file":
                        self.store.set_policy(dataclasses.replace(current, origin="file"))
                return "unchanged"
            if digest == self._failed_digest:
                return "unchanged"  # the same bad file: already reported
            try:
                new = await asyncio.to_thread(load_file, self.path)
            except PolicyError as exc:
                self._failed(digest, current, exc.issues)
                return "error"
            except Exception as exc:  # a loader bug on some input: still a policy error
                log.error("policy %s could not be loaded", self.path, exc_info=exc)
                issue = f"{self.path}:0:0: (file): cannot be loaded: {type(exc).__name__}: {exc}"
                self._failed(digest, current, [issue])
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
            await self.keep(new)
        if self.on_reload is not None:
            await self.on_reload(current, new)
        return "success"

    def _failed(self, digest: str, current: LoadedPolicy, issues: list[str]) -> None:
        self._failed_digest = digest
        self.metrics.reloads.labels("error").inc()
        self.metrics.reload_failing.set(1)
        log.error(
            "policy reload failed, keeping the policy in force (%s, sha256 %s): %d problem(s)",
            current.source,
            current.sha256[:12],
            len(issues),
            extra={"issues": issues},
        )
        for issue in issues:
            log.error("policy: %s", issue)

    async def keep(self, policy: LoadedPolicy) -> None:
        """Save ``policy`` as the last good one, when there is a state directory. A failure is
        a warning: the policy in force does not depend on it."""
        if self.state_dir is None or policy.origin != "file":
            return
        try:
            saved = await asyncio.to_thread(save_last_good, self.state_dir, policy)
        except OSError as exc:
            log.warning(
                "cannot keep the last good policy in %s (%s): a restart while the file is "
                "invalid will not start",
                self.state_dir,
                exc.strerror or exc,
            )
            return
        log.debug("last good policy kept in %s", saved)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def _watch(self, stop: asyncio.Event) -> None:
        """Watch the directory until ``stop``; re-armed whenever the directory is deleted or
        replaced, and never ended by an error."""
        folder = self.path.parent
        quiet_watchfiles()
        relevant = PolicyFilter(self.path)
        missing = False
        failing: str | None = None
        while not stop.is_set():
            armed = _identity(folder)
            if armed is None:
                if not missing:
                    log.warning(
                        "policy directory %s is missing: not watched until it comes back "
                        "(the policy in force stays)",
                        folder,
                    )
                    missing = True
                await asyncio.sleep(DIR_RECHECK_S)
                continue
            if missing:
                log.info("policy directory %s is back: watching it again", folder)
                missing = False
                await self.check()  # it may have come back with a new policy
            watch = watchfiles.awatch(
                folder,
                stop_event=stop,
                debounce=DEBOUNCE_MS,
                recursive=False,
                # Filtered below, not by watchfiles: it yields nothing for a batch it filtered
                # out, and a busy log file beside the policy would then starve the directory
                # re-check (and the first `watching`) that each yield gives time for.
                watch_filter=None,
                rust_timeout=int(DIR_RECHECK_S * 1000),
                yield_on_timeout=True,  # an empty set every DIR_RECHECK_S: time to stat
            )
            try:
                async with contextlib.aclosing(watch) as events:  # the inotify watch is closed
                    async for changes in events:
                        # Something (changes, or the first idle tick) came through the watch:
                        # it is armed. Tests wait on this instead of sleeping.
                        self.watching.set()
                        failing = None
                        gone = any(p == str(folder) for _, p in changes)
                        if gone or _identity(folder) != armed:
                            break  # deleted or replaced: arm again on what is there now
                        counted = {(c, p) for c, p in changes if relevant(c, p)}
                        if counted:
                            log.debug("policy directory changed: %s", sorted(counted))
                            await self.check()
            except Exception as exc:  # inotify limits, a watcher bug: never the end of watching
                if failing != str(exc):
                    failing = str(exc)
                    log.warning(
                        "cannot watch %s (%s); relying on the %.0f s content check, and trying "
                        "again then",
                        folder,
                        exc,
                        self.interval,
                    )
                await asyncio.sleep(self.interval)
            else:
                if _identity(folder) != armed:
                    await self.check()  # what changed with the directory is not missed

    async def run(self) -> None:
        """Watch and poll until cancelled."""
        await self.keep(self.store.policy)
        if self.store.policy.origin == "last-good":
            self._failed_digest = await asyncio.to_thread(self.digest, self.path)
        stop = asyncio.Event()
        poll = asyncio.create_task(self._poll())
        try:
            if self.watch:
                await self._watch(stop)
            await poll
        finally:
            stop.set()
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll

"""The policy watcher follows only the policy file and the ConfigMap's ``..data`` swap, and logs
changes at debug: a file in the same directory that grows all the time (a log file) triggers no
reload check and no info line. Real inotify on a real directory; the appender is a real thread
writing a real file."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from extender.policy import load_file
from extender.server.metrics import Metrics
from extender.server.reload import PolicyReloader, file_digest
from extender.store import SnapshotStore
from tests.support import ROOT, until

#: Upper bound on a watched edit reaching the store; generous for a loaded 2-core machine.
RELOAD_WAIT_S = 20.0
#: Pause between appended lines: ~100 lines/s, ten times what fed the old watcher.
APPEND_EVERY_S = 0.01


class Appender:
    """A thread appending lines to ``path`` until stopped, as a log file in the same directory
    would be. ``lines`` counts what it wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.path.open("a") as fh:
            while not self.stop.wait(APPEND_EVERY_S):
                fh.write(f"line {self.lines}\n")
                fh.flush()
                self.lines += 1

    def __enter__(self) -> Appender:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _replace(path: Path, text: str) -> None:
    """An edit as editors and `kubectl cp` make it: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_a_growing_file_beside_the_policy_triggers_no_check_and_no_info_line(
    tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    policy = tmp_path / "policy.yaml"
    text = (ROOT / "config/policy-static.yaml").read_text()
    text = text.replace("file: static-metrics.yaml", f"file: {ROOT / 'config/static-metrics.yaml'}")
    policy.write_text(text)
    store = SnapshotStore(load_file(policy))
    checks: list[Path] = []

    def digest(path: Path) -> str:
        checks.append(path)
        return file_digest(path)

    # the content poll is out of the way: every check here comes from the watcher
    reloader = PolicyReloader(
        policy, store, Metrics(CollectorRegistry()), interval=3600, digest=digest
    )
    task = asyncio.create_task(reloader.run())
    try:
        with Appender(tmp_path / "extender.log") as log_file:
            await asyncio.wait_for(reloader.watching.wait(), RELOAD_WAIT_S)
            # two real edits while the log file grows: each is one check, the appends none.
            # The watcher handles events in order, so once an edit is in force every append
            # before it has been seen (and ignored).
            for old, new in (("cpu: 0.85", "cpu: 0.80"), ("cpu: 0.80", "cpu: 0.75")):
                first = log_file.lines
                text = text.replace(old, new, 1)
                _replace(policy, text)
                await until(lambda t=text: store.policy.text == t, RELOAD_WAIT_S)
                await until(lambda f=first: log_file.lines > f + 20, RELOAD_WAIT_S)
            assert log_file.lines > 40
        assert checks == [policy, policy]
        watchfiles_info = [
            r
            for r in caplog.records
            if r.name.startswith("watchfiles") and r.levelno >= logging.INFO
        ]
        assert watchfiles_info == []
        reloads = [r.getMessage() for r in caplog.records if "policy reloaded" in r.getMessage()]
        assert len(reloads) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_changes_are_logged_at_debug_only(tmp_path):
    from extender.server.reload import PolicyFilter, quiet_watchfiles

    quiet_watchfiles()
    assert not logging.getLogger("watchfiles.main").isEnabledFor(logging.INFO)
    keep = PolicyFilter(tmp_path / "policy.yaml")
    from watchfiles import Change

    assert keep(Change.modified, str(tmp_path / "policy.yaml"))
    assert keep(Change.added, str(tmp_path / "..data"))
    assert keep(Change.deleted, str(tmp_path))
    assert not keep(Change.modified, str(tmp_path / "extender.log"))
    assert not keep(Change.added, str(tmp_path / "..2026_11_27_0001"))
    assert not keep(Change.added, str(tmp_path / ".policy.yaml.swp"))

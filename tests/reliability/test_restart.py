"""The extender killed (SIGKILL, no cleanup) and started again on the same ports.

The time to readiness and to the first answer is measured and printed (``-s`` shows it), not
asserted: a start-up on a loaded CI machine can take seconds. What is asserted: the new process
binds the same ports, turns ready, and answers correctly; nothing from the old one is needed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

from tests.builders import fixture_bytes
from tests.test_cli import ROOT, _wait_ready, free_port


def start(port: int, admin: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "extender", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--admin-host", "127.0.0.1", "--admin-port", str(admin), "--kubernetes", "off"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def first_answer(port: int) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/filter",
        data=fixture_bytes("filter-nodecache-true-20nodes.json"),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        reply: dict[str, object] = json.loads(r.read())
        return reply


def test_killed_and_restarted():
    port, admin = free_port(), free_port()
    proc = start(port, admin)
    try:
        _wait_ready(admin, proc)
        before = first_answer(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        t0 = time.monotonic()
        proc = start(port, admin)
        _wait_ready(admin, proc)
        ready = time.monotonic() - t0
        after = first_answer(port)
        answered = time.monotonic() - t0
        print(f"\nrestart after SIGKILL: ready in {ready:.2f} s, first answer in {answered:.2f} s")
        assert after == before  # same policy, same static data: the same decision
    finally:
        proc.kill()
        proc.wait(timeout=10)

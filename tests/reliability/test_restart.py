"""The extender killed (SIGKILL, no cleanup) and started again on the same ports.

The time to readiness and to the first answer is measured and printed (``-s`` shows it), not
asserted: a start-up on a loaded CI machine can take seconds. What is asserted: the new process
binds the same ports (the first one picked them: port 0), turns ready, and answers correctly;
nothing from the old one is needed.
"""

from __future__ import annotations

import signal
import time

from tests.builders import fixture_bytes
from tests.support import ServeProcess

BODY = fixture_bytes("filter-nodecache-true-20nodes.json")


def test_killed_and_restarted():
    with ServeProcess("--kubernetes", "off") as first:
        before = first.post("filter", BODY)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        t0 = time.monotonic()
        ports = ("--port", str(first.port), "--admin-port", str(first.admin))
        with ServeProcess("--kubernetes", "off", *ports) as second:
            ready = time.monotonic() - t0
            assert (second.port, second.admin) == (first.port, first.admin)
            after = second.post("filter", BODY)
            answered = time.monotonic() - t0
    print(f"\nrestart after SIGKILL: ready in {ready:.2f} s, first answer in {answered:.2f} s")
    assert after == before  # same policy, same static data: the same decision

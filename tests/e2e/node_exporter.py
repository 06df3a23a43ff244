"""A node_exporter emulation for the end-to-end tests: one loopback HTTP server for every node.

A stand-in, because no real node_exporter can be told what load to report. It serves ``/metrics``
in the text format with, per registered node (``node`` label; scrape with ``honor_labels: true``):

* ``node_cpu_seconds_total{cpu="N",mode="idle"|"user",node=...}``: counters that grow at
  ``1 - u`` (idle) and ``u`` (user) seconds per second per core, for the node's utilization
  ``u``. The counters integrate over time: a change of ``u`` changes their slope, never their
  value, so ``rate()`` moves to the new level over its window as it would on a real node.
* ``node_memory_MemTotal_bytes`` / ``node_memory_MemAvailable_bytes``: gauges.

Every sample carries an explicit timestamp (the instant its value was computed), so ``rate()``
of a constant utilization is exact whatever the scrape jitter.

A node's series must look as if it had been running at its first load for longer than the rules'
``rate(...[2m])`` window: Prometheus divides the increase by the whole range, so a series that is
only ``d`` seconds old reads ``d/120`` of its true rate. For its first :data:`BACKFILL_SCRAPES`
scrapes, a node's counters are therefore served with :data:`BACKFILL_S` seconds of history (one
sample every :data:`BACKFILL_STEP_S`, before the current one; a sample Prometheus already has is
dropped by it as a duplicate), so the recorded utilization equals the chosen level from the first
evaluation on. Only :data:`EXPOSED_CORES` cpu series are served per node: every core has the same
utilization here, so more series would change nothing but the scrape size.

The emulated ground truth is kept as a history of (time, cpu, memory) steps per node:
:meth:`NodeExporter.truth` is a node's utilization now, :meth:`NodeExporter.truth_at` what it
was at time ``t``, for assertions such as "no pod bound on a node above its tier's ceiling".
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GiB = 2**30
COUNTER_START_S = 100_000.0
"""Seconds of uptime the counters have when a node is added: far from zero, so that ``rate()``
never extrapolates a series' start towards zero (it would for a counter that starts at 0)."""
BACKFILL_S = 130.0
"""History served for a new node: the 2m rate window plus margin for the evaluation lag."""
BACKFILL_STEP_S = 1.0
"""Spacing of the history samples: the scrape interval. rate() extrapolates to the window's
start only when the first sample in it is within 1.1 average spacings of it; with sparser history
than live samples it would not, and would read a constant load a few percent off."""
BACKFILL_SCRAPES = 2
"""Scrapes that carry a new node's history: one would do, two survive a failed scrape."""
EXPOSED_CORES = 2
"""cpu series served per node (see the module doc)."""


@dataclass(frozen=True, slots=True)
class Load:
    """A node's utilization: busy fraction of its cores, and memory in use."""

    cpu: float
    memory: float


@dataclass
class _Node:
    cores: int
    mem_total: float
    added: float
    history_t: list[float] = field(default_factory=list)
    """Start of each load segment (epoch seconds); the first is ``added``."""
    history: list[Load] = field(default_factory=list)
    idle_start: list[float] = field(default_factory=list)
    """Idle seconds per core accumulated at the start of each segment."""
    served: int = 0

    @property
    def load(self) -> Load:
        return self.history[-1]

    def idle(self, t: float) -> float:
        """Idle seconds per core at ``t``; before ``added`` the first load extends backwards."""
        i = max(bisect.bisect_right(self.history_t, t) - 1, 0)
        return self.idle_start[i] + (t - self.history_t[i]) * (1.0 - self.history[i].cpu)

    def uptime(self, t: float) -> float:
        return COUNTER_START_S + (t - self.added)

    def append(self, t: float, load: Load) -> None:
        self.idle_start.append(self.idle(t))
        self.history_t.append(t)
        self.history.append(load)


class NodeExporter:
    """The emulation; :meth:`start` serves it on a free loopback port."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._nodes: dict[str, _Node] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.scrapes = 0

    # --- state ------------------------------------------------------------------------------

    def add(
        self,
        name: str,
        cpu: float,
        memory: float,
        *,
        cores: int = 8,
        mem_total: float = 32 * GiB,
        backfill: bool = True,
    ) -> None:
        """Register a node at the given utilization (its counters start now). ``backfill``
        False serves no history: the node looks as a node that has just joined does."""
        now = self.clock()
        with self._lock:
            self._nodes[name] = _Node(
                cores, mem_total, now, [now], [Load(cpu, memory)], [COUNTER_START_S * (1.0 - cpu)]
            )
            if not backfill:
                self._nodes[name].served = BACKFILL_SCRAPES

    def set(self, name: str, cpu: float | None = None, memory: float | None = None) -> None:
        """Change a node's utilization from now on, keeping its counters continuous."""
        now = self.clock()
        with self._lock:
            n = self._nodes[name]
            old = n.load
            n.append(
                now, Load(old.cpu if cpu is None else cpu, old.memory if memory is None else memory)
            )

    def add_load(self, name: str, cpu: float = 0.0, memory: float = 0.0) -> Load:
        """Raise (or lower) a node's utilization by the given fractions; returns the load before."""
        with self._lock:
            before = self._nodes[name].load
        self.set(name, before.cpu + cpu, before.memory + memory)
        return before

    def remove(self, *names: str) -> None:
        """Stop serving these nodes (their series go stale in Prometheus)."""
        with self._lock:
            for name in names:
                self._nodes.pop(name, None)

    def nodes(self) -> list[str]:
        with self._lock:
            return list(self._nodes)

    def truth(self, name: str) -> Load:
        with self._lock:
            return self._nodes[name].load

    def truth_at(self, name: str, t: float) -> Load:
        """The node's utilization at time ``t`` (its first load for earlier times)."""
        with self._lock:
            n = self._nodes[name]
            i = bisect.bisect_right(n.history_t, t) - 1
            return n.history[max(i, 0)]

    # --- exposition -------------------------------------------------------------------------

    def render(self) -> str:
        now = self.clock()
        ms = int(now * 1000)
        ms / 1000.0  # the value is computed for exactly the timestamp it is served with
        cpu_lines: list[str] = []
        mem_total: list[str] = []
        mem_avail: list[str] = []
        with self._lock:
            for name, n in self._nodes.items():
                stamps = [ms]
                if n.served < BACKFILL_SCRAPES:
                    n.served += 1
                    first = n.added - BACKFILL_S
                    steps = int(BACKFILL_S // BACKFILL_STEP_S) + 1
                    history = [int((first + k * BACKFILL_STEP_S) * 1000) for k in range(steps)]
                    stamps = [h for h in history if h < ms - 500] + stamps
                for core in range(min(n.cores, EXPOSED_CORES)):
                    for mode in ("idle", "user"):
                        series = (
                            f'node_cpu_seconds_total{{cpu="{core}",mode="{mode}",node="{name}"}}'
                        )
                        for stamp in stamps:
                            at = stamp / 1000.0
                            idle = n.idle(at)
                            value = idle if mode == "idle" else n.uptime(at) - idle
                            cpu_lines.append(f"{series} {value!r} {stamp}")
                mem_total.append(
                    f'node_memory_MemTotal_bytes{{node="{name}"}} {n.mem_total!r} {ms}'
                )
                avail = n.mem_total * (1.0 - n.load.memory)
                mem_avail.append(f'node_memory_MemAvailable_bytes{{node="{name}"}} {avail!r} {ms}')
        return "\n".join(
            [
                "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.",
                "# TYPE node_cpu_seconds_total counter",
                *cpu_lines,
                "# HELP node_memory_MemTotal_bytes Memory information field MemTotal_bytes.",
                "# TYPE node_memory_MemTotal_bytes gauge",
                *mem_total,
                "# HELP node_memory_MemAvailable_bytes Memory information field MemAvailable_bytes.",
                "# TYPE node_memory_MemAvailable_bytes gauge",
                *mem_avail,
                "",
            ]
        )

    # --- server -----------------------------------------------------------------------------

    def start(self) -> NodeExporter:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render().encode()
                exporter.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line a second per scrape would drown the test output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="node-exporter", daemon=True
        )
        self._thread.start()
        return self

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

"""A real Prometheus server for tests: backfilled node_exporter data and our recording rules.

:func:`running_prometheus` writes node_exporter-style series for synthetic nodes as OpenMetrics
text (counters and gauges with a ``node`` label, one sample every :data:`STEP_S` seconds over the
last :data:`SPAN_S` seconds), backfills them with ``promtool tsdb create-blocks-from openmetrics``,
starts ``prometheus`` on a free loopback port with ``config/prometheus-rules.yaml`` loaded
(evaluated every second instead of every 15), waits for ``/-/ready`` and then for both recording
rules to have a value for every node, and kills the process on exit.

Why the values are exact: a cpu counter grows linearly, ``(t - origin) × idle fraction``, so
``rate()`` over any window of it is exactly the idle fraction, extrapolation included, as long as
the rule is evaluated within 1.1 sample intervals (33 s) of the last sample, which start-up keeps
well inside. The expected value of every node is therefore known to float precision.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent
RULES = ROOT / "config" / "prometheus-rules.yaml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

STEP_S = 30
"""Seconds between backfilled samples: two scrape intervals of 15 s; rate()'s 2m window holds
four, and the rule may run up to 33 s (1.1 steps) after the last sample and stay exact."""
SPAN_S = 300
"""Backfilled history: the 2m rate window plus margin, and inside the 5m lookback."""
COUNTER_ORIGIN_S = 10_000
"""Counters count from this long before the history starts, so they never extrapolate to zero."""
READY_TIMEOUT_S = 30.0
"""Bound on start-up and on the first rule evaluations (both take about a second locally)."""
STOP_TIMEOUT_S = 10.0
"""Grace for SIGTERM before SIGKILL at teardown."""
GiB = 2**30

#: No proxy from the environment for loopback polling.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """One synthetic node: the busy fraction of each core and its memory."""

    name: str
    busy: tuple[float, ...]
    mem_total: float
    mem_available: float

    @property
    def cpu(self) -> float:
        """What ``node:cpu_utilization:ratio`` computes: 1 - average idle rate per core."""
        idle = [1.0 - b for b in self.busy]
        return 1.0 - sum(idle) / len(idle)

    @property
    def memory(self) -> float:
        return 1.0 - self.mem_available / self.mem_total


def synthetic_nodes(count: int, hot: set[int] | None = None) -> list[NodeLoad]:
    """``count`` nodes with varied loads; indexes in ``hot`` run cpu at 0.9 and memory at 0.88."""
    hot = hot or set()
    nodes = []
    for i in range(count):
        total = float((16 + 16 * (i % 4)) * GiB)
        if i in hot:
            busy = (0.92, 0.88)
            avail = total * 0.12
        else:
            base = 0.05 + (i % 37) / 100.0  # 0.05 .. 0.41
            busy = (base, base + 0.04)
            avail = total * (0.9 - (i % 23) / 50.0)  # memory 0.10 .. 0.54
        nodes.append(NodeLoad(f"node-{i:05d}", busy, total, avail))
    return nodes


def openmetrics(nodes: Sequence[NodeLoad], end: int) -> str:
    """node_exporter-style series for ``nodes`` with samples up to ``end`` (epoch seconds)."""
    start = end - SPAN_S
    origin = start - COUNTER_ORIGIN_S
    stamps = range(start, end + 1, STEP_S)
    out = [
        "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.",
        "# TYPE node_cpu_seconds_total counter",
    ]
    for n in nodes:
        for cpu, busy in enumerate(n.busy):
            for mode, share in (("idle", 1.0 - busy), ("user", busy)):
                labels = f'cpu="{cpu}",mode="{mode}",node="{n.name}"'
                out.extend(
                    f"node_cpu_seconds_total{{{labels}}} {(t - origin) * share!r} {t}"
                    for t in stamps
                )
    for metric, attr in (
        ("node_memory_MemTotal_bytes", "mem_total"),
        ("node_memory_MemAvailable_bytes", "mem_available"),
    ):
        out.append(f"# HELP {metric} Memory information field.")
        out.append(f"# TYPE {metric} gauge")
        for n in nodes:
            value = getattr(n, attr)
            out.extend(f'{metric}{{node="{n.name}"}} {value!r} {t}' for t in stamps)
    out.append("# EOF")
    return "\n".join(out) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    nodes: list[NodeLoad]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def get(self, path: str, **params: str) -> tuple[int, bytes]:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with _OPENER.open(url, timeout=5) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def query(self, promql: str) -> list[dict[str, object]]:
        status, body = self.get("/api/v1/query", query=promql)
        if status != 200:
            raise AssertionError(f"query {promql!r}: HTTP {status}: {body[:300]!r}")
        result: list[dict[str, object]] = json.loads(body)["data"]["result"]
        return result


def _wait(what: str, server: PrometheusServer, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"prometheus exited ({server.process.returncode}) {what}:\n" + server.log_tail()
            )
        try:
            if check():
                return
        except (OSError, ValueError, KeyError):
            pass  # not listening yet, or not answering yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"prometheus not {what} within {timeout:g}s:\n" + server.log_tail())
        time.sleep(0.1)


def binaries_missing() -> str | None:
    """Why a real Prometheus cannot run here, or None."""
    for path in (PROMETHEUS, PROMTOOL):
        if not Path(path).is_file():
            return f"{path} not installed (scripts/setup.sh --test installs Debian's prometheus)"
    return None


@contextlib.contextmanager
def running_prometheus(folder: Path, nodes: list[NodeLoad]) -> Iterator[PrometheusServer]:
    """Backfill ``nodes``, start Prometheus with our rules, yield when every rule has data."""
    data = folder / "data"
    data.mkdir()
    om = folder / "nodes.om"
    om.write_text(openmetrics(nodes, int(time.time())))
    subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    om.unlink()

    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"  # the same expressions, evaluated without a 15 s wait
    (folder / "rules.yaml").write_text(yaml.safe_dump(rules))
    (folder / "prometheus.yml").write_text(
        yaml.safe_dump({"global": {"evaluation_interval": "1s"}, "rule_files": ["rules.yaml"]})
    )

    url, process, log_path = start_prometheus(folder, data)
    server = PrometheusServer(url, process, log_path, nodes)
    try:
        _wait("ready", server, lambda: server.get("/-/ready")[0] == 200, READY_TIMEOUT_S)
        for record in ("node:cpu_utilization:ratio", "node:memory_utilization:ratio"):
            _wait(
                f"evaluating {record} for {len(nodes)} nodes",
                server,
                lambda r=record: len(server.query(r)) == len(nodes),
                READY_TIMEOUT_S,
            )
        yield server
    finally:
        stop_prometheus(process)


def start_prometheus(folder: Path, data: Path) -> tuple[str, subprocess.Popen[bytes], Path]:
    """``prometheus`` on ``folder/prometheus.yml`` and the TSDB in ``data``, logging to
    ``folder/prometheus.log``: its URL, the process and the log's path."""
    port = free_port()  # Prometheus cannot report a port it picked itself
    log_path = folder / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    return f"http://127.0.0.1:{port}", process, log_path


def stop_prometheus(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL after :data:`STOP_TIMEOUT_S`."""
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

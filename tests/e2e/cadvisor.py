"""cAdvisor-shaped series for a real Prometheus, backfilled with promtool: per-pod usage tests.

The kubelet's ``/metrics/cadvisor`` exports, per container, ``container_cpu_usage_seconds_total``
(a counter of cpu seconds) and ``container_memory_working_set_bytes`` (a gauge), labelled with
``namespace``, ``pod``, ``container`` (and ``id``, ``image``, ``name``). Besides the containers it
exports the pause container (``container="POD"`` on runtimes that report it) and the cgroup
aggregates (``container=""``: the pod's own cgroup, which already sums its containers, and the
node's slices with ``pod=""``). :func:`openmetrics` writes all of those for a set of
:class:`PodLoad` s, with the pause and aggregate series at values that would be obvious in a
wrong sum, and :func:`running_prometheus` backfills them (with node_exporter series from
``tests/prometheus_server.py``, so the node signals have data too) into a real Prometheus that
evaluates ``config/prometheus-rules.yaml`` every second.

Values are exact for the same reason as the node series': a counter growing linearly at ``c``
cores reads ``rate() == c`` over any window that holds two of its samples.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests import prometheus_server as real

GiB = 2**30
STEP_S = real.STEP_S
SPAN_S = real.SPAN_S
COUNTER_ORIGIN_S = real.COUNTER_ORIGIN_S
PAUSE_CORES = 7.0
"""The pause container's rate: absurd on purpose, so that counting it shows."""
PAUSE_BYTES = 5.0 * GiB
POD_RULES = ("pod:container_cpu_usage:rate", "pod:container_memory_working_set:bytes")


@dataclass(frozen=True, slots=True)
class PodLoad:
    """One pod's containers: (name, cores, working-set bytes) each."""

    namespace: str
    name: str
    containers: tuple[tuple[str, float, float], ...]
    duplicate_scrape: bool = False
    """Its kubelet is scraped by two jobs: every container series twice, ``job`` apart."""

    @property
    def cpu(self) -> float:
        return sum(c for _, c, _ in self.containers)

    @property
    def memory(self) -> float:
        return sum(m for _, _, m in self.containers)


def openmetrics(pods: Sequence[PodLoad], end: int, *, node_text: str = "") -> str:
    """cAdvisor-style series for ``pods`` up to ``end``; ``node_text`` (OpenMetrics without its
    ``# EOF``) is put first."""
    start = end - SPAN_S
    origin = start - COUNTER_ORIGIN_S
    stamps = range(start, end + 1, STEP_S)
    cpu_lines = [
        "# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed.",
        "# TYPE container_cpu_usage_seconds_total counter",
    ]
    mem_lines = [
        "# HELP container_memory_working_set_bytes Current working set.",
        "# TYPE container_memory_working_set_bytes gauge",
    ]

    def series(labels: str, cores: float, memory: float) -> None:
        cpu_lines.extend(
            f"container_cpu_usage_seconds_total{{{labels}}} {(t - origin) * cores!r} {t}"
            for t in stamps
        )
        mem_lines.extend(
            f"container_memory_working_set_bytes{{{labels}}} {memory!r} {t}" for t in stamps
        )

    for p in pods:
        base = f'namespace="{p.namespace}",pod="{p.name}"'
        jobs = ("kubelet", "kubelet-copy") if p.duplicate_scrape else ("kubelet",)
        for job in jobs:
            for container, cores, memory in p.containers:
                series(f'container="{container}",cpu="total",job="{job}",{base}', cores, memory)
        series(f'container="POD",cpu="total",job="kubelet",{base}', PAUSE_CORES, PAUSE_BYTES)
        series(f'container="",cpu="total",job="kubelet",{base}', p.cpu, p.memory)  # pod cgroup
    series('container="",cpu="total",id="/kubepods",job="kubelet",namespace="",pod=""', 50.0, 1e12)
    body = [node_text.rstrip("\n")] if node_text else []
    return "\n".join([*body, *cpu_lines, *mem_lines, "# EOF"]) + "\n"


@contextlib.contextmanager
def running_prometheus(
    folder: Path, pods: Sequence[PodLoad], nodes: Sequence[real.NodeLoad] = ()
) -> Iterator[real.PrometheusServer]:
    """Backfill ``pods`` (and ``nodes``), start Prometheus with our rules, yield once the pod
    rules have a value for every pod (and the node rules for every node)."""
    data = folder / "data"
    data.mkdir()
    om = folder / "series.om"
    end = int(time.time())
    node_text = real.openmetrics(nodes, end).replace("# EOF\n", "") if nodes else ""
    om.write_text(openmetrics(pods, end, node_text=node_text))
    subprocess.run(
        [real.PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    om.unlink()
    rules = yaml.safe_load(real.RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
    (folder / "rules.yaml").write_text(yaml.safe_dump(rules))
    (folder / "prometheus.yml").write_text(
        yaml.safe_dump({"global": {"evaluation_interval": "1s"}, "rule_files": ["rules.yaml"]})
    )
    url, process, log_path = real.start_prometheus(folder, data)
    server = real.PrometheusServer(url, process, log_path, list(nodes))
    try:
        wants = {r: len(pods) for r in POD_RULES}
        if nodes:
            wants |= {
                "node:cpu_utilization:ratio": len(nodes),
                "node:memory_utilization:ratio": len(nodes),
            }
        deadline = time.monotonic() + real.READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError("prometheus exited:\n" + server.log_tail())
            try:
                if server.get("/-/ready")[0] == 200 and all(
                    len(server.query(r)) == n for r, n in wants.items()
                ):
                    break
            except (OSError, ValueError, KeyError, AssertionError):
                pass  # not listening, or not answering yet
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus rules not evaluated in time:\n" + server.log_tail())
            time.sleep(0.1)
        yield server
    finally:
        real.stop_prometheus(process)

"""Adapters of the end-to-end harness (``tests/e2e``) for the scheduler-level benchmark.

The harness starts the real control plane, Prometheus, the node_exporter emulation and the
extender; this module adds what a benchmark needs on top of it, without changing it:

* :func:`shipped_scheduler_config`: ``config/scheduler-config.yaml`` as shipped, with only the
  kubeconfig, leader election, the extender's ``urlPrefix`` (or no extender: stock) and the client
  rate limits changed (see :data:`CLIENT_QPS`).
* :class:`BindWatch`: a raw HTTP watch of one namespace's pods that stamps the instant each pod
  is first seen bound. Raw JSON (``json.loads`` per event, ~30 µs) instead of the ``kubernetes``
  client's models (~0.7 ms per pod), so the stamps do not lag behind a burst of 500 bindings
  and the watcher does not take CPU from the processes being measured.
* :func:`kubelet_paused`: the session's stand-in kubelet stopped for a while (it deserialises
  every pod event of every namespace with the client's models, which during a 500-pod drain is
  about half a second of CPU on a 2-core machine), then a fresh one started with the same
  callbacks.
* :class:`UsageModel`: bound pods' real usage added to the emulated ground truth, ramping in as a
  container's would (nothing for :data:`START_DELAY_S`, then linearly over :data:`RAMP_S` up to
  requests × :data:`USAGE_FACTOR`), so that a scenario's "load at the bind instant" includes
  the pods bound before.
* :func:`cpu_seconds`, :func:`rss_bytes`: a process's CPU (utime + stime) and resident memory
  from ``/proc``; :func:`scheduler_histogram`: any of kube-scheduler's histograms;
  :func:`histogram_quantile`: a quantile of a cumulative histogram, interpolated
  within its bucket as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import kube
from tests.e2e.controlplane import SHIPPED_SCHEDULER_CONFIG, ControlPlane
from tests.e2e.harness import Session
from tests.e2e.kube import Kubelet
from tests.e2e.node_exporter import NodeExporter
from tests.e2e.procs import http_get, https_context

CLIENT_QPS, CLIENT_BURST = 500, 1000
"""kube-scheduler's API client rate limit in the benchmark (the harness's values). The shipped
configuration leaves it at the defaults, 50 requests/s with bursts of 100: one binding per pod,
so a 500-pod backlog would be drained at about 50 pods/s by the rate limiter whatever the
scheduler and the extender cost, and the stock/extender ratio would measure nothing."""
WATCH_TIMEOUT_S = 30
"""Server-side timeout of :class:`BindWatch`'s watch; it is renewed at once."""
START_DELAY_S = 2.0
"""Seconds between a pod's binding and its first cpu use: image already present, container
created and started (no runtime here; a typical pause-to-running time on a warm node)."""
RAMP_S = 10.0
"""Seconds over which a started container's usage rises to its steady level (JIT warm-up,
caches filling, traffic shifted onto a new replica)."""
USAGE_FACTOR = 0.8
"""Steady usage as a fraction of requests: requests are usually sized with some headroom."""
USAGE_TICK_S = 0.5
"""How often :class:`UsageModel` updates the emulated load: twice a scrape interval (1 s)."""

_NO_PROXY = urllib.request.ProxyHandler({})


def shipped_scheduler_config(
    kubeconfig: Path, url_prefix: str | None, *, qps: int = CLIENT_QPS, burst: int = CLIENT_BURST
) -> dict[str, Any]:
    """``config/scheduler-config.yaml`` with ``clientConnection.kubeconfig``, ``leaderElect:
    false``, the client rate limits (``qps`` 0: the shipped defaults) and the extender's
    ``urlPrefix`` changed; without ``url_prefix`` the extender list is empty (stock)."""
    doc: dict[str, Any] = yaml.safe_load(SHIPPED_SCHEDULER_CONFIG.read_text())
    doc["clientConnection"]["kubeconfig"] = str(kubeconfig)
    if qps:
        doc["clientConnection"].update(qps=qps, burst=burst)
    doc["leaderElection"]["leaderElect"] = False
    if url_prefix is None:
        doc["extenders"] = []
    else:
        doc["extenders"][0]["urlPrefix"] = url_prefix
    return doc


def profile_name(cfg: dict[str, Any]) -> str:
    """The scheduler name of the configuration's (single) profile: what the pods ask for."""
    return str(cfg["profiles"][0]["schedulerName"])


def pod_manifest(
    name: str,
    test_id: str,
    scheduler_name: str,
    *,
    priority_class: str | None,
    cpu: str,
    memory: str,
) -> dict[str, Any]:
    """The harness's pod (nodeSelector on the scenario's nodes) for another scheduler profile."""
    manifest = kube.pod_manifest(
        name, test_id, priority_class=priority_class, cpu=cpu, memory=memory
    )
    manifest["spec"]["schedulerName"] = scheduler_name
    return manifest


# --- the bind watch ------------------------------------------------------------------------------


@dataclass
class BindWatch:
    """Stamps (``time.time()``) the first event that shows each pod of ``namespace`` bound."""

    cp: ControlPlane
    namespace: str
    bound: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Pod name -> (node, epoch seconds first seen bound)."""
    errors: list[str] = field(default_factory=list)
    on_bound: Callable[[str, str, float], None] | None = None
    """Called (in the watch thread) with pod name, node and stamp, once per pod."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _open(self, query: dict[str, str], timeout: float) -> Any:
        ctx = https_context(self.cp.pki.ca_crt, self.cp.pki.admin_crt, self.cp.pki.admin_key)
        opener = urllib.request.build_opener(_NO_PROXY, urllib.request.HTTPSHandler(context=ctx))
        url = f"{self.cp.url}/api/v1/namespaces/{self.namespace}/pods?"
        return opener.open(url + urllib.parse.urlencode(query), timeout=timeout)

    def start(self) -> BindWatch:
        with self._open({"limit": "1"}, 30) as resp:
            rv = json.loads(resp.read())["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, args=(rv,), name="bind-watch")
        self._thread.daemon = True
        self._thread.start()
        return self

    def _run(self, rv: str) -> None:
        while not self._stop.is_set():
            query = {
                "watch": "1",
                "resourceVersion": rv,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(WATCH_TIMEOUT_S),
            }
            try:
                with self._open(query, WATCH_TIMEOUT_S + 10) as resp:
                    for line in resp:
                        if self._stop.is_set():
                            return
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            self.errors.append(f"watch: {obj.get('message')}")
                            return
                        rv = obj["metadata"]["resourceVersion"]
                        node = (obj.get("spec") or {}).get("nodeName")
                        name = obj["metadata"].get("name", "")
                        if node and event["type"] in ("ADDED", "MODIFIED"):
                            now = time.time()
                            with self._lock:
                                first = name not in self.bound
                                self.bound.setdefault(name, (node, now))
                            if first and self.on_bound is not None:
                                self.on_bound(name, node, now)
            except Exception as exc:  # a cut stream: resume from the last resourceVersion
                if not self._stop.is_set():
                    self.errors.append(f"watch: {exc!r}")
                    self._stop.wait(0.2)

    def count(self, names: Sequence[str]) -> int:
        with self._lock:
            return sum(1 for n in names if n in self.bound)

    def get(self, name: str) -> tuple[str, float] | None:
        with self._lock:
            return self.bound.get(name)

    def stop(self) -> None:
        self._stop.set()


# --- the stand-in kubelet, paused --------------------------------------------------------------


@contextlib.contextmanager
def kubelet_paused(session: Session) -> Iterator[None]:
    """The session's stand-in kubelet stopped inside the block, a new one with the same callbacks
    after it (its thread, blocked in a watch read, ends at that watch's server-side timeout)."""
    old = session.kubelet
    if old is None:
        yield
        return
    old.stop()
    session.kubelet = None
    try:
        yield
    finally:
        session.kubelet = Kubelet(session.cp.kubeconfig, old.on_bound, old.on_gone).start()


# --- usage of bound pods in the ground truth ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodUsage:
    """What a bound pod adds to its node once running: fractions of the node's cores and memory."""

    node: str
    bound_at: float
    cpu: float
    memory: float


def ramp(dt: float) -> float:
    """Fraction of its steady usage that a pod bound ``dt`` seconds ago uses."""
    return min(max((dt - START_DELAY_S) / RAMP_S, 0.0), 1.0)


class UsageModel:
    """Adds each bound pod's usage to its node's emulated load as it ramps in (see the module
    doc); a node's load is its base (its own daemons, "hidden" from requests) plus its pods'."""

    def __init__(self, exporter: NodeExporter) -> None:
        self.exporter = exporter
        self.base: dict[str, tuple[float, float]] = {}
        self.pods: list[PodUsage] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-model", daemon=True)

    def node(self, name: str, cpu: float, memory: float) -> None:
        with self._lock:
            self.base[name] = (cpu, memory)

    def bound(self, usage: PodUsage) -> None:
        with self._lock:
            self.pods.append(usage)

    def start(self) -> UsageModel:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def loads(self, now: float) -> dict[str, tuple[float, float]]:
        with self._lock:
            out = dict(self.base)
            for p in self.pods:
                f = ramp(now - p.bound_at)
                if f > 0 and p.node in out:
                    cpu, mem = out[p.node]
                    out[p.node] = (cpu + f * p.cpu, mem + f * p.memory)
        return out

    def _run(self) -> None:
        last: dict[str, tuple[float, float]] = {}
        while not self._stop.wait(USAGE_TICK_S):
            for node, (raw_cpu, raw_mem) in self.loads(time.time()).items():
                cpu, mem = min(raw_cpu, 1.0), min(raw_mem, 1.0)  # never busier than full
                if last.get(node) != (cpu, mem) and node in self.exporter.nodes():
                    self.exporter.set(node, cpu=cpu, memory=mem)
                    last[node] = (cpu, mem)


# --- /proc and histograms ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (``/proc/<pid>/stat`` fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def scheduler_histogram(cp: ControlPlane, family: str) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` buckets of one of kube-scheduler's histograms, summed over its
    labels (the harness's :meth:`ControlPlane.scheduler_metrics` parses only the attempts)."""
    status, body = http_get(
        f"https://127.0.0.1:{cp.scheduler_port}/metrics",
        context=https_context(None, cp.pki.admin_crt, cp.pki.admin_key),
    )
    if status != 200:
        raise RuntimeError(f"kube-scheduler /metrics: HTTP {status}: {body[:300]!r}")
    buckets: dict[float, float] = {}
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name == family:
            for sample in fam.samples:
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
    return sorted(buckets.items())


def extender_histogram(admin_url: str, verb: str) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` buckets of the extender's own handling time for ``verb``
    (``priority_extender_request_duration_seconds``: body read to reply built)."""
    status, body = http_get(admin_url + "/metrics")
    if status != 200:
        raise RuntimeError(f"extender /metrics: HTTP {status}: {body[:300]!r}")
    buckets: dict[float, float] = {}
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name == "priority_extender_request_duration_seconds":
            for sample in fam.samples:
                if sample.name.endswith("_bucket") and sample.labels.get("verb") == verb:
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
    return sorted(buckets.items())


def histogram_delta(
    after: list[tuple[float, float]], before: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Cumulative buckets ``after - before`` (same bounds; ``before`` may be empty)."""
    prior = dict(before)
    return [(le, count - prior.get(le, 0.0)) for le, count in after]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The ``q`` quantile of cumulative ``(le, count)`` buckets, NaN without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # above the highest finite bound: that bound, as Prometheus does
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le

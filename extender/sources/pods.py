"""Per-pod usage samples, common to every per-pod source: settings, checks, matching, publication.

A per-pod source (Prometheus' cAdvisor recording rules, metrics-server's ``PodMetrics``) decodes
its answer into four parallel columns per resource -- namespaces, pod names, values, sample
timestamps -- and hands them to :func:`check_pods`, which checks every sample as node samples
are checked (a finite value in range, a positive timestamp, no older than ``maxAge``, one sample
per pod) and matches the rest to the cluster cache's bound pods by namespace and name
(:meth:`~extender.sources.base.ClusterView.match_pods`). Samples of no bound pod are counted as
``unknown``, never stored.

:class:`PodUsageKeeper` keeps each resource's last good answer, as node sources keep each
signal's: a query that fails leaves the previous samples, which age by their own timestamps and
drop out of the table after ``maxAge``. After every refresh it rebuilds the table against the
pods bound *now* (a deleted pod stops matching at once) and hands it to the store with
``set_pod_usage``. With per-pod data switched off it publishes nothing, or, once, an empty table
when it had published one: with no per-pod data the behaviour is exactly the node-level one.

Everything here is vectorised (numpy over the columns): a refresh of 150,000 pods must not cost
a Python loop per pod (see ``benchmarks/bench_pod_usage.py``).

**Off the event loop.** A 150,000-pod answer is tens of megabytes; decoding, checking, matching
and building its table takes a few hundred milliseconds, while kube-scheduler's filter and
prioritize calls, answered on the same loop, must take well under a millisecond. So the sources
run all of that in a worker thread (:func:`asyncio.to_thread`): only the fetch, the metrics and
the store's swap stay on the loop. The thread still shares the GIL, which a C call holds until it
returns, so no single call may be long: :func:`split_array` cuts the answer's big array into
:data:`CHUNK_BYTES` pieces that are decoded one by one (the loop gets the GIL between any two).
The cluster cache is read from the thread without a lock; ``extender/cluster/cache.py`` says
why that is safe.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge

from extender.core.podusage import (
    FloatArray,
    PodSamples,
    empty_pod_usage,
    no_pod_samples,
)
from extender.policy.model import MetricsSettings
from extender.sources.base import ClusterView
from extender.store import SnapshotStore

log = logging.getLogger(__name__)

RESOURCES = ("cpu", "memory")
"""The per-pod resources, in the row order of :class:`~extender.core.podusage.PodUsage`."""

MAX_POD_CPU_CORES = 1024.0
"""The largest cpu sample believed, in cores: the biggest machines sold have under 1,000
hardware threads, so a pod above this is a wrong query (millicores, a counter without rate())."""
MAX_POD_MEMORY_BYTES = float(64 << 40)
"""The largest memory sample believed: 64 TiB, above the largest machines (about 24 TiB)."""
MAX_VALUE = (MAX_POD_CPU_CORES, MAX_POD_MEMORY_BYTES)

DEFAULT_CPU_QUERY = "pod:container_cpu_usage:rate"
"""The recording rule of ``config/prometheus-rules.yaml`` for cores per pod."""
DEFAULT_MEMORY_QUERY = "pod:container_memory_working_set:bytes"
"""The recording rule of ``config/prometheus-rules.yaml`` for working-set bytes per pod."""

CHUNK_BYTES = 256 << 10
"""Size of the pieces a big answer's array is decoded in: msgspec decodes about 400 MB/s here
(typed, strings and floats made), so a piece holds the GIL for under a millisecond, and the
event loop, which needs it for every request, waits at most that long (plus the interpreter's
switch interval, 5 ms, while the worker runs Python code). Smaller pieces only add calls: one
of 256 KiB is ~1,500 Prometheus series."""

Body = bytes | bytearray | mmap.mmap
"""A per-pod answer in memory: ``bytes``, or the buffer :func:`assemble` made of its chunks."""

POD_MAX_RESPONSE_BYTES = 128 << 20
"""Largest per-pod answer read: a pod series is about 170 bytes (``__name__``, namespace, pod,
timestamp, value), so 150,000 pods are 26 MB and this leaves five times that; the node queries'
``maxResponseBytes`` (16 MB by default) is sized for nodes, not pods."""

#: The ``reason`` label of rejected per-pod samples.
REASONS = (
    "missing_label",
    "bad_value",
    "bad_timestamp",
    "nan",
    "infinite",
    "out_of_range",
    "stale",
    "duplicate",
)

#: The ``result`` label of per-pod queries: ``ok`` (samples stored, perhaps none matched),
#: ``empty`` (no series at all), ``failed`` (the query or its answer was unusable).
RESULTS = ("ok", "empty", "failed")


@dataclass(frozen=True, slots=True)
class PodSwitch:
    """Whether a source reads per-pod usage, and (Prometheus) with which queries."""

    enabled: bool = False
    cpu_query: str = DEFAULT_CPU_QUERY
    memory_query: str = DEFAULT_MEMORY_QUERY
    max_response_bytes: int = POD_MAX_RESPONSE_BYTES

    def queries(self) -> dict[str, str]:
        return {"cpu": self.cpu_query, "memory": self.memory_query}


def pod_switch(metrics: MetricsSettings, source: str) -> PodSwitch:
    """The per-pod settings of ``source`` (``prometheus`` or ``metrics-server``).

    Read with defaults, so that a policy model without them means "off": ``metrics.<source>.pods``
    (``metrics.prometheus.pods`` / ``metrics.metricsServer.pods``), else ``metrics.pods``, with
    fields ``enabled`` (false), ``cpuQuery``, ``memoryQuery`` and ``maxResponseBytes``.
    """
    section = metrics.prometheus if source == "prometheus" else metrics.metricsServer
    pods: Any = getattr(section, "pods", None)
    if pods is None:
        pods = getattr(metrics, "pods", None)
    if pods is None:
        return PodSwitch()
    return PodSwitch(
        enabled=bool(getattr(pods, "enabled", False)),
        cpu_query=str(getattr(pods, "cpuQuery", None) or DEFAULT_CPU_QUERY),
        memory_query=str(getattr(pods, "memoryQuery", None) or DEFAULT_MEMORY_QUERY),
        max_response_bytes=int(getattr(pods, "maxResponseBytes", None) or POD_MAX_RESPONSE_BYTES),
    )


class PodUsageMetrics:
    """Per-pod sources' metrics, labelled by source and resource (bounded sets, never pods)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queries = Counter(
            "priority_extender_pod_usage_queries",
            "Per-pod usage reads by source, resource and result (ok, empty, failed).",
            ["source", "resource", "result"],
            registry=registry,
        )
        self.series = Gauge(
            "priority_extender_pod_usage_series",
            "Per-pod samples in the last answer, usable or not.",
            ["source", "resource"],
            registry=registry,
        )
        self.rejected = Counter(
            "priority_extender_pod_usage_rejected_samples",
            "Per-pod samples dropped by the checks, by source, resource and reason.",
            ["source", "resource", "reason"],
            registry=registry,
        )
        self.unknown = Counter(
            "priority_extender_pod_usage_unknown_samples",
            "Per-pod samples that matched no bound, running pod of the cluster cache.",
            ["source", "resource"],
            registry=registry,
        )
        self.pods = Gauge(
            "priority_extender_pod_usage_pods",
            "Pods in the last per-pod usage table handed to the store.",
            ["source"],
            registry=registry,
        )
        self._known: set[str] = set()

    def source(self, name: str) -> None:
        """Create every label combination of a source, so that zeros are visible."""
        if name in self._known:
            return
        self._known.add(name)
        for resource in RESOURCES:
            for result in RESULTS:
                self.queries.labels(name, resource, result)
            for reason in REASONS:
                self.rejected.labels(name, resource, reason)
            self.unknown.labels(name, resource)
            self.series.labels(name, resource)
        self.pods.labels(name)


@dataclass(slots=True)
class CheckedPods:
    """One resource's answer after the checks and the match."""

    samples: PodSamples
    series: int
    """Samples in the answer, usable or not."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Reason (one of :data:`REASONS`) to the number of samples rejected for it."""
    unknown: int = 0
    """Valid samples of no bound pod of the cache."""


def check_pods(
    cluster: ClusterView,
    namespaces: Sequence[str],
    names: Sequence[str],
    values: FloatArray,
    timestamps: FloatArray,
    *,
    resource: str,
    oldest: float,
    bad_value: npt.NDArray[np.bool_] | None = None,
) -> CheckedPods:
    """Check every sample of one resource and match the good ones to the cluster cache.

    ``bad_value`` marks samples whose value was not a number at all (their ``values`` entry is
    ignored). A pod that appears twice is dropped with every one of its samples, as a node is.
    """
    n = len(names)
    ok = np.ones(n, dtype=bool)
    rejected: dict[str, int] = {}

    def count(mask: npt.NDArray[np.bool_], reason: str) -> None:
        hit = mask & ok
        k = int(hit.sum())
        if k:
            rejected[reason] = rejected.get(reason, 0) + k
            ok[hit] = False

    if "" in namespaces or "" in names:
        missing = np.fromiter(
            (not ns or not name for ns, name in zip(namespaces, names, strict=True)),
            dtype=bool,
            count=n,
        )
        count(missing, "missing_label")
    if bad_value is not None:
        count(bad_value, "bad_value")
    with np.errstate(invalid="ignore"):
        count(~(timestamps > 0) | ~np.isfinite(timestamps), "bad_timestamp")
        count(np.isnan(values), "nan")
        count(np.isinf(values), "infinite")
        high = MAX_VALUE[RESOURCES.index(resource)]
        count((values < 0) | (values > high), "out_of_range")
        count(timestamps < oldest, "stale")

    refs = cluster.match_pods(namespaces, names)
    slots = refs.slots
    known = slots >= 0
    unknown = int((ok & ~known).sum())
    ok &= known
    if n:
        # Every sample of a pod that appears twice, valid or not: neither deserves more trust.
        seen = np.bincount(slots[known], minlength=1)
        count(known & (seen[np.maximum(slots, 0)] > 1), "duplicate")
    return CheckedPods(
        samples=PodSamples(
            slots=slots[ok],
            generations=refs.generations[ok],
            values=values[ok],
            timestamps=timestamps[ok],
        ),
        series=n,
        rejected=rejected,
        unknown=unknown,
    )


def assemble(chunks: Sequence[bytes]) -> Body:
    """One buffer of a body read in chunks (run it in the worker thread). The event loop only
    collects the chunks: joining 25 MB there is one copy that holds it for 5-20 ms, and so is
    growing a ``bytearray`` (its realloc copies everything now and then). Here the chunks are
    copied one at a time into an anonymous memory map (no zeroing pass: the kernel hands out
    zero pages on first touch), each copy a few hundred kilobytes, the GIL free in between."""
    if len(chunks) == 1:
        return chunks[0]
    total = sum(map(len, chunks))
    if not total:
        return b""
    buf = mmap.mmap(-1, total)
    at = 0
    for chunk in chunks:
        buf[at : at + len(chunk)] = chunk
        at += len(chunk)
    return buf


def split_array(
    body: Body,
    key: bytes,
    element: bytes,
    slot_of: Callable[[bytes], bytes | None],
    size: int = CHUNK_BYTES,
) -> list[tuple[int, int]] | None:
    """The array at ``key`` (e.g. ``b'"result":'``) of a JSON ``body`` cut into spans of about
    ``size`` bytes of whole elements, in order (:func:`array_pieces` makes each a JSON array);
    None when the body is not laid out so (then decode it whole: same answer, only slower).

    Exact, whatever the body holds. The array is taken to run from the first ``key`` to the
    last ``}]``, and is proven to be that key's value: the body with that span replaced by a
    random token string must decode, with ``slot_of`` (the caller's envelope decoder, returning
    the raw JSON it read where the array belongs, or None), to exactly the token. The array is
    cut only just before ``element`` (``b'{"metric":'``), preceded by ``},``: in valid JSON that
    ``"`` opens a string, so the ``},{`` before it is structure, not text; and a cut at a
    nested level leaves pieces that do not decode, which the caller treats as "decode whole".
    So when every piece decodes, their elements are the array's, in order.
    """
    at = body.find(key)
    if at < 0:
        return None
    start = at + len(key)
    end = body.rfind(b"}]") + 1  # the array's closing bracket
    if body[start : start + 1] != b"[" or end <= start:
        return None
    token = b'"' + secrets.token_hex(16).encode() + b'"'
    if slot_of(bytes(body[:start]) + token + bytes(body[end + 1 :])) != token:
        return None
    cut_at = b"}," + element
    spans = []
    cur = start + 1
    while True:
        cut = body.find(cut_at, cur + size, end) if cur + size < end else -1
        if cut < 0:
            spans.append((cur, end))
            return spans
        spans.append((cur, cut + 1))
        cur = cut + 2


def array_pieces(body: Body, spans: list[tuple[int, int]]) -> Iterator[bytes]:
    """Each span of :func:`split_array` as a JSON array, made when asked for (one at a time:
    the pieces of a 25 MB answer are never all in memory together)."""
    view = memoryview(body)
    for a, b in spans:
        yield b"".join((b"[", view[a:b], b"]"))


RELEASE_SLICE = 8192
"""Strings freed per call by :func:`release`: freeing 150,000 of them at once is one C call of
about 10 ms that holds the GIL; 8,192 take well under a millisecond."""


def release(*columns: list[str]) -> None:
    """Empty big lists of strings a slice at a time, so that the loop gets the GIL in between
    (a list dropped whole frees every string in one C call)."""
    for column in columns:
        while column:
            del column[-RELEASE_SLICE:]


class PodUsageKeeper:
    """The last good answer of each resource, and the store's per-pod table built from them."""

    def __init__(self, source: str, metrics: PodUsageMetrics) -> None:
        self.source = source
        self.metrics = metrics
        metrics.source(source)
        self.samples: dict[str, PodSamples] = {}
        self.unknown: dict[str, int] = {}
        self.ok_at: float | None = None
        """When a per-pod read last succeeded (any resource)."""
        self.published = False
        """A non-empty table is in the store (so turning per-pod data off must clear it)."""
        self.results: dict[str, str] = {}
        """Resource to the result of its last read (one of :data:`RESULTS`)."""
        self.rows = 0
        """Pods in the last table published."""

    def accept(self, resource: str, checked: CheckedPods, now: float) -> None:
        """A resource read that answered: count it; keep its samples unless it had none."""
        m = self.metrics
        m.series.labels(self.source, resource).set(checked.series)
        for reason, k in checked.rejected.items():
            m.rejected.labels(self.source, resource, reason).inc(k)
        if checked.unknown:
            m.unknown.labels(self.source, resource).inc(checked.unknown)
        if checked.series == 0:
            self.failed(resource, "empty")
            return
        m.queries.labels(self.source, resource, "ok").inc()
        self.results[resource] = "ok"
        self.samples[resource] = checked.samples
        self.unknown[resource] = checked.unknown
        self.ok_at = now

    def failed(self, resource: str, result: str = "failed") -> None:
        """A resource read that failed: its previous samples stay, ageing."""
        self.metrics.queries.labels(self.source, resource, result).inc()
        self.results[resource] = result

    async def publish(
        self, store: SnapshotStore, cluster: ClusterView | None, now: float, max_age: float
    ) -> None:
        """Hand the table built from the kept samples to the store (nothing before a first
        successful read). The table is built in a worker thread; the swap is the loop's."""
        if self.ok_at is None or cluster is None:
            return
        ok_at = self.ok_at
        usage = await asyncio.to_thread(
            cluster.pod_usage,
            (self.samples.get("cpu"), self.samples.get("memory")),
            oldest=now - max_age,
            unknown=sum(self.unknown.values()),
        )
        store.set_pod_usage(usage, ok_at)
        self.published = True
        self.rows = len(usage)
        self.metrics.pods.labels(self.source).set(len(usage))

    def clear(self, store: SnapshotStore) -> None:
        """Per-pod data switched off: forget the samples; empty the store's table once."""
        self.samples.clear()
        self.unknown.clear()
        self.ok_at = None
        self.rows = 0
        if self.published:
            self.published = False
            store.set_pod_usage(empty_pod_usage(), 0.0)
            self.metrics.pods.labels(self.source).set(0)


__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_CPU_QUERY",
    "DEFAULT_MEMORY_QUERY",
    "REASONS",
    "RESOURCES",
    "Body",
    "CheckedPods",
    "PodSwitch",
    "PodUsageKeeper",
    "PodUsageMetrics",
    "array_pieces",
    "check_pods",
    "no_pod_samples",
    "pod_switch",
    "release",
    "split_array",
]

"""The metrics-server source: node cpu and memory from ``metrics.k8s.io/v1beta1`` NodeMetrics.

For clusters without Prometheus. One ``GET /apis/metrics.k8s.io/v1beta1/nodes`` per refresh
returns every node's usage over metrics-server's window (cpu in cores, memory working set in
bytes); utilization is that usage over the node's allocatable, which comes from the snapshot
(the Kubernetes API cache fills it), so a node whose allocatable is unknown gets no sample.
Each sample carries the NodeMetrics ``timestamp`` (the end of its window), so staleness and the
fallback work exactly as for Prometheus. Only the ``cpu`` and ``memory`` signals exist here.

The request goes through the ``kubernetes`` package's asyncio client (its
``*_without_preload_content`` form: the bytes are decoded here with msgspec, not into models);
the call is passed in, so tests drive the real client against a loopback stand-in. :func:`build`
makes that call on the cluster cache's own API client (one client per process, closed by the
cluster source), and makes the first refresh wait for the cache's first node list.

Per-pod usage (``metrics.metricsServer.pods.enabled``): each refresh also lists ``PodMetrics``
(``GET /apis/metrics.k8s.io/v1beta1/pods``, every namespace), sums each pod's containers, and
hands the samples to :mod:`extender.sources.pods` for the checks, the match to the cluster cache
by namespace and name, and the store's per-pod table. That call failing never fails the node
refresh: the pod samples kept from the last good list age until they are stale. The list's
decode, checks, match and table build run in a worker thread, never on the event loop (see
``extender/sources/pods.py``, "Off the event loop").
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import aiohttp
import msgspec
import numpy as np
import numpy.typing as npt
from kubernetes.aio import client as k8s
from prometheus_client import CollectorRegistry

from extender.core import RESOURCES, QuantityError, Sample, parse_quantity
from extender.core.podusage import FloatArray
from extender.errors import SourceError
from extender.sources.base import ClusterView, Produces, SourceContext
from extender.sources.pods import (
    Body,
    CheckedPods,
    PodUsageKeeper,
    PodUsageMetrics,
    array_pieces,
    assemble,
    check_pods,
    pod_switch,
    release,
    split_array,
)
from extender.store import SnapshotStore
from extender.wire.streams import read_at_most

log = logging.getLogger(__name__)

#: Largest NodeMetricsList read: about 300 bytes a node, so 15,000 nodes fit ten times over.
MAX_RESPONSE_BYTES = 48 << 20
#: Largest PodMetricsList read: about 400 bytes a single-container pod, so 150,000 pods are
#: 60 MB and this leaves twice that.
MAX_POD_RESPONSE_BYTES = 128 << 20
#: Utilization above this is a broken sample (usage beyond allocatable is possible for memory
#: under overcommit, but not ten times over).
MAX_RATIO = 10.0
#: The first refresh waits this long at most for the cluster cache's first node list (the
#: allocatable that usage is divided by). A 5,000-node list takes a second or two; a wait this
#: long means the API server is unreachable, and the refresh then fails and is retried every
#: ``refreshInterval`` like any other.
NODES_WAIT_S = 30.0
#: Longest piece of an error answer quoted in a log line (control characters escaped).
LOGGED_TEXT_CHARS = 200
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

FetchCall = Callable[[], Awaitable[aiohttp.ClientResponse]]


class MetricsServerError(SourceError):
    """A refresh that produced nothing usable; the message says why."""


class _Usage(msgspec.Struct):
    cpu: str | None = None
    memory: str | None = None


class _Meta(msgspec.Struct):
    name: str = ""


class _NodeMetrics(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)
    timestamp: str = ""
    usage: _Usage = msgspec.field(default_factory=_Usage)


class _List(msgspec.Struct):
    items: list[_NodeMetrics] | None = None


_decoder = msgspec.json.Decoder(_List)


class _PodMeta(msgspec.Struct, gc=False):
    name: str = ""
    namespace: str = ""


class _ContainerMetrics(msgspec.Struct, gc=False):
    usage: _Usage = msgspec.field(default_factory=_Usage)


class _PodMetrics(msgspec.Struct, gc=False):
    metadata: _PodMeta = msgspec.field(default_factory=_PodMeta)
    timestamp: str = ""
    containers: list[_ContainerMetrics] | None = None


class _PodList(msgspec.Struct, gc=False):
    items: list[_PodMetrics] | None = None


_pod_decoder = msgspec.json.Decoder(_PodList)


@dataclass(slots=True)
class PodColumnsRead:
    """A PodMetricsList as columns: per pod its namespace, name, the sum of its containers'
    usage (cores, bytes; NaN where a container's quantity is missing), and the sample time."""

    namespaces: list[str]
    names: list[str]
    cpu: FloatArray
    memory: FloatArray
    timestamps: FloatArray
    bad_cpu: npt.NDArray[np.bool_]
    bad_memory: npt.NDArray[np.bool_]
    """Where a container's quantity did not parse."""


class _PodListHollow(msgspec.Struct):
    items: msgspec.Raw = msgspec.Raw(b"null")


_hollow_decoder = msgspec.json.Decoder(_PodListHollow)
_pod_items_decoder = msgspec.json.Decoder(list[_PodMetrics])


def _items_slot(hollow: bytes) -> bytes | None:
    """What a PodMetricsList has as its ``items`` (for :func:`split_array`)."""
    try:
        return bytes(_hollow_decoder.decode(hollow).items)
    except msgspec.DecodeError:
        return None


def parse_pod_metrics(body: Body) -> PodColumnsRead:
    """Decode a PodMetricsList; raises :class:`MetricsServerError` when it is not one.

    The ``items`` array is decoded in pieces (:func:`~extender.sources.pods.split_array`), so
    that no single call holds the GIL for long: this runs in a worker thread next to the event
    loop. A list that cannot be cut so, or whose pieces do not decode, is decoded whole.
    """
    spans = split_array(body, b'"items":', b'{"metadata":', _items_slot)
    if spans is not None:
        try:
            return _pod_metrics_columns(
                _pod_items_decoder.decode(p) for p in array_pieces(body, spans)
            )
        except msgspec.DecodeError:
            pass  # decoded whole below: the same columns, or the right error
    try:
        doc = _pod_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MetricsServerError(f"not a PodMetricsList: {exc}") from None
    return _pod_metrics_columns(iter((doc.items or [],)))


def _pod_metrics_columns(parts: Iterator[list[_PodMetrics]]) -> PodColumnsRead:
    namespaces: list[str] = []
    names: list[str] = []
    cpu: list[float] = []
    memory: list[float] = []
    stamps: list[float] = []
    bad_cpu: list[int] = []
    bad_memory: list[int] = []
    quantities: dict[str, float] = {}

    def qty(text: str) -> float:
        got = quantities.get(text)
        if got is None:
            got = quantities[text] = parse_quantity(text)
        return got

    i = 0
    for items in parts:
        for item in items:
            sums = [0.0, 0.0]
            for container in item.containers or ():
                for k, raw in enumerate((container.usage.cpu, container.usage.memory)):
                    if raw is None:
                        sums[k] = math.nan
                        continue
                    try:
                        sums[k] += qty(raw)
                    except QuantityError:
                        (bad_cpu, bad_memory)[k].append(i)
            if not item.containers:
                sums = [math.nan, math.nan]
            cpu.append(sums[0])
            memory.append(sums[1])
            stamps.append(_timestamp(item.timestamp) or math.nan)
            i += 1
        namespaces += [item.metadata.namespace for item in items]
        names += [item.metadata.name for item in items]
    bad = np.zeros((2, i), dtype=bool)
    bad[0, bad_cpu] = True
    bad[1, bad_memory] = True
    return PodColumnsRead(
        namespaces=namespaces,
        names=names,
        cpu=np.array(cpu, dtype=np.float64),
        memory=np.array(memory, dtype=np.float64),
        timestamps=np.array(stamps, dtype=np.float64),
        bad_cpu=bad[0],
        bad_memory=bad[1],
    )


def _short(text: str) -> str:
    """An excerpt of foreign text fit for a log line: cut, with control characters escaped."""
    cut = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text[:LOGGED_TEXT_CHARS])
    return cut + ("..." if len(text) > LOGGED_TEXT_CHARS else "")


def _timestamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def parse_node_metrics(
    body: bytes, allocatable: Callable[[str], tuple[float, float] | None]
) -> tuple[dict[str, dict[str, Sample]], dict[str, int]]:
    """Samples by node from a NodeMetricsList, and counts of items skipped by reason."""
    try:
        doc = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MetricsServerError(f"not a NodeMetricsList: {exc}") from None
    samples: dict[str, dict[str, Sample]] = {}
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    seen: set[str] = set()
    for item in doc.items or ():
        name = item.metadata.name
        if not name:
            skip("no_name")
            continue
        if name in seen:
            skip("duplicate")
            samples.pop(name, None)
            continue
        seen.add(name)
        ts = _timestamp(item.timestamp)
        if ts is None:
            skip("bad_timestamp")
            continue
        alloc = allocatable(name)
        if alloc is None:
            skip("unknown_allocatable")
            continue
        per: dict[str, Sample] = {}
        for k, (resource, raw) in enumerate(
            zip(RESOURCES, (item.usage.cpu, item.usage.memory), strict=True)
        ):
            if raw is None or not alloc[k] > 0:
                continue
            try:
                ratio = parse_quantity(raw) / alloc[k]
            except QuantityError:
                skip("bad_quantity")
                continue
            if not math.isfinite(ratio) or ratio > MAX_RATIO:
                skip("out_of_range")
                continue
            per[resource] = Sample(ratio, ts)
        if per:
            samples[name] = per
    return samples, skipped


def check_pod_metrics(
    body: Body | Sequence[bytes], cluster: ClusterView, oldest: float
) -> tuple[CheckedPods, CheckedPods]:
    """Decode one PodMetricsList (whole, or as the chunks it was read in), check and match
    its cpu and memory samples: what a refresh runs in its worker thread."""
    read = parse_pod_metrics(body if isinstance(body, Body) else assemble(body))
    cpu, memory = (
        check_pods(
            cluster,
            read.namespaces,
            read.names,
            values,
            read.timestamps,
            resource=resource,
            oldest=oldest,
            bad_value=bad,
        )
        for resource, values, bad in (
            ("cpu", read.cpu, read.bad_cpu),
            ("memory", read.memory, read.bad_memory),
        )
    )
    release(read.namespaces, read.names)
    return cpu, memory


class MetricsServerSource:
    """Refreshes node samples from metrics-server every ``interval`` seconds (with jitter).

    With ``nodes_published`` (the cluster cache's wait for its first node list, given a bound in
    seconds), :meth:`start` returns at once and :meth:`run` makes the first refresh after that
    wait; without it, :meth:`start` refreshes and :meth:`run` only loops.
    """

    name = "metrics-server"
    produces: frozenset[Produces] = frozenset({"nodes"})

    def __init__(
        self,
        store: SnapshotStore,
        fetch: FetchCall,
        interval: float,
        timeout: float,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        nodes_published: Callable[[float], Awaitable[bool]] | None = None,
        nodes_wait: float = NODES_WAIT_S,
        fetch_pods: FetchCall | None = None,
        cluster: ClusterView | None = None,
        pod_metrics: PodUsageMetrics | None = None,
    ) -> None:
        self.store = store
        self.fetch = fetch
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        self.nodes_published = nodes_published
        self.nodes_wait = nodes_wait
        self.last_error: str | None = None
        self.refreshes_ok = 0
        self.skipped: dict[str, int] = {}
        self.fetch_pods = fetch_pods
        """``GET .../v1beta1/pods`` (PodMetrics), used while per-pod usage is enabled."""
        self.cluster = cluster
        """The cluster cache pods are matched to (per-pod usage needs one)."""
        self.produces = frozenset({"nodes"})
        self.pods = PodUsageKeeper(
            "metrics-server",
            pod_metrics if pod_metrics is not None else PodUsageMetrics(CollectorRegistry()),
        )
        self.pods_error: str | None = None
        """Why the last PodMetrics read failed (None after a good one)."""

    def _allocatable(self, name: str) -> tuple[float, float] | None:
        snap = self.store.current.snapshot
        col = snap.index.get(name)
        if col is None:
            return None
        cpu, mem = float(snap.allocatable[0, col]), float(snap.allocatable[1, col])
        if math.isnan(cpu) and math.isnan(mem):
            return None
        return cpu, mem

    async def _body(self, fetch: FetchCall | None = None, limit: int = MAX_RESPONSE_BYTES) -> bytes:
        return b"".join(await self._chunks(fetch, limit))

    async def _chunks(
        self, fetch: FetchCall | None = None, limit: int = MAX_RESPONSE_BYTES
    ) -> list[bytes]:
        """The whole body as the chunks it arrived in, at most ``limit`` bytes (a big one is
        joined in the worker thread: see :func:`~extender.sources.pods.assemble`). Read to the
        end: ``content.read(n)`` would return only what has arrived so far, not ``n`` bytes."""
        async with asyncio.timeout(self.timeout):
            resp = await (fetch or self.fetch)()
            try:
                if resp.status != 200:
                    text = (await read_at_most(resp.content, 4096))[0].decode(errors="replace")
                    raise MetricsServerError(f"HTTP {resp.status}: {_short(text.strip())}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        raise MetricsServerError(f"answer larger than {limit} bytes")
                    chunks.append(chunk)
                return chunks
            finally:
                resp.release()

    async def refresh(self) -> bool:
        """One refresh; True when node samples were stored. Never raises (but for
        cancellation). Per-pod usage, when enabled, is refreshed too, on its own."""
        nodes = await self._refresh_nodes()
        await self._refresh_pods()
        return nodes

    async def _refresh_pods(self) -> None:
        metrics = self.store.policy.document.metrics
        enabled = pod_switch(metrics, "metrics-server").enabled
        if not enabled or self.fetch_pods is None or self.cluster is None:
            self.pods.clear(self.store)
            return
        try:
            chunks = await self._chunks(self.fetch_pods, MAX_POD_RESPONSE_BYTES)
            oldest = self.clock() - metrics.maxAge
            # The decode, checks and match in a worker thread: see extender/sources/pods.py.
            checked = await asyncio.to_thread(check_pod_metrics, chunks, self.cluster, oldest)
            for resource, one in zip(RESOURCES, checked, strict=True):
                self.pods.accept(resource, one, self.clock())
        except (MetricsServerError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._pods_failed(str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug must not end the refresh loop
            log.exception("metrics-server: unexpected error reading PodMetrics")
            self._pods_failed(repr(exc))
        else:
            if self.pods_error is not None:
                log.info("metrics-server: PodMetrics read again")
            self.pods_error = None
        await self.pods.publish(self.store, self.cluster, self.clock(), metrics.maxAge)

    def _pods_failed(self, message: str) -> None:
        for resource in RESOURCES:
            self.pods.failed(resource)
        if message != self.pods_error:
            log.error(
                "metrics-server: PodMetrics read failed, keeping the last pod samples until "
                "they go stale: %s",
                message,
            )
        self.pods_error = message

    async def _refresh_nodes(self) -> bool:
        try:
            body = await self._body()
            samples, self.skipped = parse_node_metrics(body, self._allocatable)
            if not samples:
                raise MetricsServerError(
                    "no usable node metrics (is metrics-server running, and are nodes known?)"
                )
        except (MetricsServerError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            message = str(exc) or type(exc).__name__
            if message != self.last_error:
                log.error("metrics-server: refresh failed, keeping the last samples: %s", message)
            self.last_error = message
            return False
        except Exception as exc:  # a bug must not end the refresh loop
            log.exception("metrics-server: unexpected error")
            self.last_error = repr(exc)
            return False
        self.store.set_samples(samples, self.clock())
        if self.last_error is not None:
            log.info("metrics-server: refreshing again (%d nodes)", len(samples))
        self.last_error = None
        self.refreshes_ok += 1
        return True

    async def start(self) -> None:
        """The first refresh, unless it has to wait for the node list (then :meth:`run` does
        it: start-up does not wait for the Kubernetes API)."""
        if self.nodes_published is None:
            await self.refresh()

    async def run(self) -> None:
        """Refresh forever, every ``interval`` ± 10%; the first refresh is :meth:`start`'s, or
        comes first here after the cluster's first node list (or ``nodes_wait`` seconds)."""
        if self.nodes_published is not None:
            if not await self.nodes_published(self.nodes_wait):
                log.warning(
                    "metrics-server: no node list from the Kubernetes API after %gs; refreshing "
                    "anyway (nodes without a known allocatable get no sample)",
                    self.nodes_wait,
                )
            await self.refresh()
        while True:
            await self.sleep(self.interval * (0.9 + 0.2 * self.rand()))
            await self.refresh()

    async def close(self) -> None:
        """Nothing to release: the API client is the cluster source's."""


def build(context: SourceContext) -> MetricsServerSource | None:
    """The ``metrics-server`` source on the cluster cache's API client; None (logged) when the
    extender runs without the Kubernetes API."""
    cluster = context.cluster
    api_client = cluster.api_client if cluster is not None else None
    if cluster is None or api_client is None:
        log.warning(
            "metrics-server source needs the Kubernetes API (--kubernetes auto and a "
            "kubeconfig or in-cluster config); using request-based scoring instead"
        )
        return None
    custom = k8s.CustomObjectsApi(api_client)
    fetch, fetch_pods = (
        functools.partial(
            custom.list_cluster_custom_object_without_preload_content,
            "metrics.k8s.io",
            "v1beta1",
            plural,
        )
        for plural in ("nodes", "pods")
    )
    settings = context.settings.metricsServer
    source = MetricsServerSource(
        context.store,
        fetch,
        settings.refreshInterval,
        settings.timeout,
        nodes_published=cluster.wait_nodes_published,
        fetch_pods=fetch_pods,
        cluster=cluster,
        pod_metrics=context.collectors.get(PodUsageMetrics),
    )
    if pod_switch(context.settings, "metrics-server").enabled:
        source.produces = frozenset({"nodes", "pods"})
    return source

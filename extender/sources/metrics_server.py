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
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import aiohttp
import msgspec
from kubernetes.aio import client as k8s

from extender.core import RESOURCES, QuantityError, Sample, parse_quantity
from extender.errors import SourceError
from extender.sources.base import Produces, SourceContext
from extender.store import SnapshotStore

log = logging.getLogger(__name__)

#: Largest NodeMetricsList read: about 300 bytes a node, so 15,000 nodes fit ten times over.
MAX_RESPONSE_BYTES = 48 << 20
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

    def _allocatable(self, name: str) -> tuple[float, float] | None:
        snap = self.store.current.snapshot
        col = snap.index.get(name)
        if col is None:
            return None
        cpu, mem = float(snap.allocatable[0, col]), float(snap.allocatable[1, col])
        if math.isnan(cpu) and math.isnan(mem):
            return None
        return cpu, mem

    async def _body(self) -> bytes:
        async with asyncio.timeout(self.timeout):
            resp = await self.fetch()
            try:
                if resp.status != 200:
                    text = (await resp.content.read(4096)).decode(errors="replace")
                    raise MetricsServerError(f"HTTP {resp.status}: {_short(text.strip())}")
                body = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                if len(body) > MAX_RESPONSE_BYTES:
                    raise MetricsServerError(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
                return body
            finally:
                resp.release()

    async def refresh(self) -> bool:
        """One refresh; True when samples were stored. Never raises (but for cancellation)."""
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
    fetch = functools.partial(
        custom.list_cluster_custom_object_without_preload_content,
        "metrics.k8s.io",
        "v1beta1",
        "nodes",
    )
    settings = context.settings.metricsServer
    return MetricsServerSource(
        context.store,
        fetch,
        settings.refreshInterval,
        settings.timeout,
        nodes_published=cluster.wait_nodes_published,
    )

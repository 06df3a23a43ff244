"""The metrics-server source: node cpu and memory from ``metrics.k8s.io/v1beta1`` NodeMetrics.

For clusters without Prometheus. One ``GET /apis/metrics.k8s.io/v1beta1/nodes`` per refresh
returns every node's usage over metrics-server's window (cpu in cores, memory working set in
bytes); utilization is that usage over the node's allocatable, which comes from the snapshot
(the Kubernetes API cache fills it), so a node whose allocatable is unknown gets no sample.
Each sample carries the NodeMetrics ``timestamp`` (the end of its window), so staleness and the
fallback work exactly as for Prometheus. Only the ``cpu`` and ``memory`` signals exist here.

The request goes through the ``kubernetes`` package's asyncio client (its
``*_without_preload_content`` form: the bytes are decoded here with msgspec, not into models);
the call is passed in, so tests drive the real client against a loopback stand-in.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import aiohttp
import msgspec

from extender.core import RESOURCES, QuantityError, Sample, parse_quantity
from extender.errors import SourceError
from extender.store import SnapshotStore

log = logging.getLogger(__name__)

#: Largest NodeMetricsList read: about 300 bytes a node, so 15,000 nodes fit ten times over.
MAX_RESPONSE_BYTES = 48 << 20
#: Utilization above this is a broken sample (usage beyond allocatable is possible for memory
#: under overcommit, but not ten times over).
MAX_RATIO = 10.0

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
    """Refreshes node samples from metrics-server every ``interval`` seconds (with jitter)."""

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
    ) -> None:
        self.store = store
        self.fetch = fetch
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
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
                    raise MetricsServerError(f"HTTP {resp.status}: {text.strip()[:200]}")
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

    async def run(self) -> None:
        """Refresh forever, every ``interval`` ± 10%; the first refresh is the caller's."""
        while True:
            await self.sleep(self.interval * (0.9 + 0.2 * self.rand()))
            await self.refresh()

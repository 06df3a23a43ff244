"""What every metrics source is: how it is built, what it may use, and its lifecycle.

A source turns something outside (Prometheus, metrics-server, a file) into snapshot parts, and
hands them to the :class:`~extender.store.SnapshotStore` itself. The server knows none of them by
name: it builds a :class:`SourceContext` and asks :func:`extender.sources.build_source` for the
source the policy's ``metrics.source`` names. Each module builds its own source from the context
(``build`` next to the code it builds), so a new source is one module and one line in the
registry.

Lifecycle, driven by the server (``server/run.py``), once per start and again on every reload
that changes the metrics settings::

    source = build_source(context)    # None: no source (``none``, or one that cannot run here)
    await source.start()              # at start-up; bounded by the source, never raises
    task = create_task(source.run())  # refresh forever, until cancelled
    ...
    task.cancel(); await source.close()   # idempotent; also after a start() that was cancelled

``start`` is what start-up waits for: the first refresh when it can be had quickly (Prometheus:
bounded by its query timeout; the static file: one read). A source whose first read depends on
something start-up does not wait for (metrics-server needs the cluster's first node list, for the
allocatable that usage is divided by) returns at once and makes that read at the top of ``run``.

What a source may use of the Kubernetes API cache is :class:`ClusterView`, which the cluster
source satisfies (``sources`` and ``cluster`` are independent halves of one layer: neither imports
the other, the server wires them). It shares the cluster's one API client, which the cluster owns
and closes: a source never closes it.

Per-pod sources (the issue "Per-pod usage": cAdvisor series from Prometheus, ``PodMetrics`` from
metrics-server) fit the same shape: built from the same context, the same lifecycle, with
:attr:`Source.produces` saying that they produce ``pods`` samples as well as (or instead of)
``nodes`` samples. They match pods to the cluster cache by namespace and name with
:meth:`ClusterView.match_pods` and build the store's per-pod table with
:meth:`ClusterView.pod_usage` (``extender/sources/pods.py`` holds what they share).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

from prometheus_client import CollectorRegistry

from extender.core.podusage import PodRefs, PodSamples, PodUsage
from extender.policy.model import MetricsSettings
from extender.store import SnapshotStore

M = TypeVar("M")

Produces = Literal["nodes", "pods"]
"""What a source's samples describe: whole nodes (today's sources), or single pods."""

AddressListener = Callable[[Mapping[str, str]], None]
"""Called with the whole map of node address (InternalIP, Hostname, ...) to node name."""


class ClusterView(Protocol):
    """What a source may use of the Kubernetes API cache.

    :class:`extender.cluster.ClusterSource` is one; tests may pass any object with these members.
    """

    @property
    def api_client(self) -> Any:
        """The ``kubernetes.aio`` ApiClient the cache lists and watches with, shared with the
        sources that call the API (metrics-server). The cluster source owns it and closes it
        once, after the sources have stopped; None when the cache was built without one."""
        ...

    async def wait_nodes_published(self, timeout: float) -> bool:
        """Wait until the store holds the first full node list (their allocatable), at most
        ``timeout`` seconds; True when it does."""
        ...

    def watch_addresses(self, listener: AddressListener) -> Callable[[], None]:
        """Call ``listener`` with the node address map now (if nodes are listed) and whenever it
        changes, from the cluster's background publisher (never on a request). Returns the
        function that stops the calls."""
        ...

    def match_pods(self, namespaces: Sequence[str], names: Sequence[str]) -> PodRefs:
        """The cache slot of each pod named by ``namespaces[i]``/``names[i]`` among the bound,
        non-terminal pods (-1 where there is none), with the slot's generation now."""
        ...

    def pod_usage(
        self,
        samples: tuple[PodSamples | None, PodSamples | None],
        *,
        oldest: float,
        unknown: int = 0,
    ) -> PodUsage:
        """The per-pod table of (cpu, memory) samples matched earlier by :meth:`match_pods`,
        against the pods bound now: samples older than ``oldest`` and samples of pods gone
        since they were matched are left out; ``unknown`` is carried into the table."""
        ...


class Source(Protocol):
    """A running metrics source; see the module docstring for its lifecycle."""

    name: str
    """The ``metrics.source`` value it was built for, for logs."""
    produces: frozenset[Produces]
    """The kinds of samples it hands to the store."""

    async def start(self) -> None:
        """The first refresh, bounded by the source itself; never raises (but cancellation)."""
        ...

    async def run(self) -> None:
        """Refresh forever; cancelling it is the way to stop it."""
        ...

    async def close(self) -> None:
        """Release what the source opened (sessions, subscriptions); safe to call twice."""
        ...


class Collectors:
    """Metric collectors registered once per registry, reused by every source built on it.

    A source is rebuilt on each reload that changes the metrics settings, but a collector can be
    registered on a :class:`~prometheus_client.CollectorRegistry` only once: each source asks
    for its metrics through :meth:`get`, which makes them the first time only.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._made: dict[Callable[[CollectorRegistry], object], object] = {}

    def get(self, factory: Callable[[CollectorRegistry], M]) -> M:
        """``factory(registry)`` the first time, the same object after."""
        made = self._made.get(factory)
        if made is None:
            made = self._made[factory] = factory(self.registry)
        return cast(M, made)


@dataclass(frozen=True, slots=True)
class SourceContext:
    """Everything a source may be built from."""

    store: SnapshotStore
    """Where the source puts its samples; its policy is read at each refresh."""
    settings: MetricsSettings
    """The policy's ``metrics`` section the source is built for."""
    base_dir: Path | None
    """The policy file's folder: relative paths (the static file) are relative to it."""
    collectors: Collectors = field(default_factory=lambda: Collectors(CollectorRegistry()))
    """The process' metric registry and the source metrics already registered on it."""
    cluster: ClusterView | None = None
    """The Kubernetes API cache, when the extender runs with one."""


SourceFactory = Callable[[SourceContext], Source | None]
"""Builds the source a ``metrics.source`` value names (not started), or None (and logs why)
when it cannot run with this context."""


__all__ = [
    "AddressListener",
    "ClusterView",
    "Collectors",
    "Produces",
    "Source",
    "SourceContext",
    "SourceFactory",
]

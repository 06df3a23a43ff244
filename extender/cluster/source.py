"""The cluster source: two reflectors (Nodes, bound Pods) feeding one cache, published to the store.

A third reflector, when its list call is given, keeps the cluster's PriorityClasses apart from
the cache (:attr:`ClusterSource.priority_classes`), for dry runs of manifests that name a class
but carry no ``spec.priority``.

Publication is coalesced: the first change after a quiet spell is published at once, later ones
at most every ``publish_interval_s`` (a publication rebuilds the snapshot: array work over the
nodes, Python work over what changed since the last one, a few hundred µs at 5,000 nodes). Between
events the source still wakes every ``tick_s`` to drop pods that left the estimation window and
to notice a policy whose estimation settings changed.

The publisher also tells the metrics sources what they need of the cache (the cluster source is
their :class:`extender.sources.base.ClusterView`): :attr:`ClusterSource.nodes_published` is set
at the first publication of a full node list, and listeners of :meth:`ClusterSource.
watch_addresses` get the node address map after each publication that changed it (Prometheus
maps ``instance`` addresses to node names with it), and per-pod sources match their samples to
bound pods through :meth:`ClusterSource.match_pods` and :meth:`ClusterSource.pod_usage`. The
source owns the API client it was given and closes it once, when :meth:`ClusterSource.run` ends;
the sources that share it stop first.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extender.cluster.cache import ClusterCache, NodeSink, PodSink, PriorityClasses
from extender.cluster.decode import NodeRecord, PodRecord, PriorityClassRecord
from extender.cluster.reflector import ListCall, Reflector
from extender.cluster.settings import DEFAULT_SETTINGS, POD_FIELD_SELECTOR, ClusterSettings
from extender.core import Rules
from extender.core.podusage import PodRefs, PodSamples, PodUsage
from extender.store import SnapshotStore

log = logging.getLogger(__name__)


def horizon_s(rules: Rules) -> float:
    """How long after binding a pod can still count as just placed: within the estimation window,
    or after its node's latest sample, which is at most ``maxAge`` old while it is used."""
    return max(rules.estimation.window_s, rules.max_age_s)


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """Counts and times for metrics, readiness and the admin views."""

    nodes: int
    pods: int
    recent_pods: int
    """Pods bound within the horizon: the candidates for just-placed projections."""
    nodes_synced: bool
    pods_synced: bool
    synced_at: float | None
    """When both resources were last known current (the older of the two): a list completed,
    a watch was (re)established, an event or a bookmark arrived. None before both have listed
    once. On a quiet watch this lags by up to the bookmark interval (about a minute)."""
    lists: int
    watches: int
    events: int
    stalls: int
    errors: int
    last_error: str | None

    def age(self, now: float) -> float | None:
        """Seconds since the cache was last known current, or None before the first sync."""
        return None if self.synced_at is None else max(0.0, now - self.synced_at)


class ClusterSource:
    """Owns the cache, its reflectors and the publisher; :meth:`run` until cancelled."""

    def __init__(
        self,
        store: SnapshotStore,
        list_nodes: ListCall,
        list_pods: ListCall,
        settings: ClusterSettings = DEFAULT_SETTINGS,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
        api_client: Any = None,
        list_priority_classes: ListCall | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._close = close
        self.api_client = api_client
        """The ``kubernetes.aio`` ApiClient the reflectors use, for the sources that call the API
        too (metrics-server); ``close`` closes it. None when built from bare list calls."""
        self.nodes_published = asyncio.Event()
        """Set once the store holds the first full node list (the nodes' allocatable)."""
        self._address_listeners: list[Callable[[Mapping[str, str]], None]] = []
        self._addresses_sent = -1
        self._changed = asyncio.Event()
        rules = store.policy.rules
        self.cache = ClusterCache(rules.estimation, horizon_s(rules), clock, self._changed.set)
        rng = rng if rng is not None else random.Random()
        self.nodes: Reflector[NodeRecord] = Reflector(
            "nodes", list_nodes, NodeSink(self.cache), settings, clock=clock, sleep=sleep, rng=rng
        )
        self.pods: Reflector[PodRecord] = Reflector(
            "pods",
            list_pods,
            PodSink(self.cache),
            settings,
            field_selector=POD_FIELD_SELECTOR,
            clock=clock,
            sleep=sleep,
            rng=rng,
        )
        self.priority_classes = PriorityClasses()
        """The cluster's PriorityClasses, when ``list_priority_classes`` is given (a third
        reflector keeps them): :meth:`PriorityClasses.resolve` says what priority a manifest
        without ``spec.priority`` would get. Not part of readiness: decisions never need it."""
        self.classes: Reflector[PriorityClassRecord] | None = None
        if list_priority_classes is not None:
            self.classes = Reflector(
                "priorityclasses",
                list_priority_classes,
                self.priority_classes,
                settings,
                clock=clock,
                sleep=sleep,
                rng=rng,
            )
        self.publications = 0
        self.published_at: float | None = None
        self.tasks: list[asyncio.Task[None]] = []
        """The running task, once started by :func:`extender.cluster.start_cluster`."""
        self._frozen = False

    async def run(self) -> None:
        """Both reflectors and the publisher; closes the API client when cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.nodes.run(), name="cluster-nodes")
                group.create_task(self.pods.run(), name="cluster-pods")
                if self.classes is not None:
                    group.create_task(self.classes.run(), name="cluster-priorityclasses")
                group.create_task(self._publisher(), name="cluster-publisher")
        finally:
            if self._close is not None:
                await self._close()

    def start(self) -> asyncio.Task[None]:
        task = asyncio.create_task(self.run(), name="cluster")
        self.tasks.append(task)
        return task

    # --- publication ----------------------------------------------------------------------------

    async def _publisher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.tick_s):
                    await self._changed.wait()
            self._changed.clear()
            try:
                self.publish()
            except Exception:  # a bug must not stop publication for good: log it, go on
                log.exception("cluster: publication to the store failed")
            if self.synced and not self._frozen and self.settings.freeze_gc_after_sync:
                self._frozen = True
                gc.freeze()
                log.info(
                    "cluster cache synced; %d objects frozen out of the GC", gc.get_freeze_count()
                )
            await asyncio.sleep(self.settings.publish_interval_s)

    def publish(self, force: bool = False) -> bool:
        """Hand nodes and recent pods to the store if anything changed; True if it did."""
        rules = self.store.policy.rules
        cache = self.cache
        cache.horizon_s = horizon_s(rules)
        if rules.estimation != cache.estimation:
            # Estimates are computed as pods are decoded, and the window decides which pods are
            # recent as they arrive: list again (after the current list, if one is running).
            cache.estimation = rules.estimation
            log.info("pods: estimation settings changed; listing again to re-estimate")
            self.pods.request_relist()
        if not cache.nodes_listed:
            return False
        now = self.clock()
        if not (force or cache.changed or cache.expiring(now)):
            return False
        cache.changed = False
        nodes = cache.node_infos()
        placements = cache.placements(now)
        self.store.set_cluster(nodes, placements, departures=cache.departures(now))
        self.publications += 1
        self.published_at = now
        self.nodes_published.set()
        self._send_addresses()
        return True

    def _send_addresses(self) -> None:
        """Hand the address map to every listener if it changed since they last had it."""
        version = self.cache.addresses_version
        if version == self._addresses_sent or not self._address_listeners:
            return
        self._addresses_sent = version
        addresses = self.cache.addresses()
        for listener in list(self._address_listeners):
            try:
                listener(addresses)
            except Exception:  # one listener's bug must not stop publication or the others
                log.exception("cluster: an address listener failed")

    # --- what the sources read (extender.sources.base.ClusterView) --------------------------------

    async def wait_nodes_published(self, timeout: float) -> bool:
        """Wait until the first full node list is in the store, at most ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self.nodes_published.wait()
        except TimeoutError:
            return False
        return True

    def watch_addresses(self, listener: Callable[[Mapping[str, str]], None]) -> Callable[[], None]:
        """Call ``listener`` with the node address map: now if the nodes are published, then
        from the publisher whenever the map changed. Returns the function that stops it."""
        self._address_listeners.append(listener)
        if self.nodes_published.is_set():
            listener(self.cache.addresses())

        def unwatch() -> None:
            if listener in self._address_listeners:
                self._address_listeners.remove(listener)

        return unwatch

    def match_pods(self, namespaces: Sequence[str], names: Sequence[str]) -> PodRefs:
        """Per-pod samples' (namespace, name) to the cache's pod slots (-1: no such pod)."""
        return self.cache.match_pods(namespaces, names)

    def pod_usage(
        self,
        samples: tuple[PodSamples | None, PodSamples | None],
        *,
        oldest: float,
        unknown: int = 0,
    ) -> PodUsage:
        """The per-pod table of (cpu, memory) samples against the pods bound now."""
        return self.cache.pod_usage(samples, oldest=oldest, unknown=unknown)

    # --- what the server reads ------------------------------------------------------------------

    def not_ready(self) -> str | None:
        """Why the extender should not take traffic yet: None once the nodes are listed."""
        if self.cache.nodes_listed:
            return None
        reason = "waiting for the first node list from the Kubernetes API"
        err = self.nodes.last_error
        return f"{reason} (last error: {err})" if err else reason

    @property
    def synced(self) -> bool:
        """Both nodes and pods have been listed at least once."""
        return self.cache.nodes_listed and self.cache.pods_listed

    def status(self) -> ClusterStatus:
        r = (self.nodes, self.pods)
        confirmed = [x.confirmed_at for x in r]
        synced_at = (
            min(c for c in confirmed if c is not None)
            if self.synced and None not in confirmed
            else None
        )
        return ClusterStatus(
            nodes=len(self.cache.nodes),
            pods=len(self.cache.pods),
            recent_pods=self.cache.recent,
            nodes_synced=self.cache.nodes_listed,
            pods_synced=self.cache.pods_listed,
            synced_at=synced_at,
            lists=sum(x.lists for x in r),
            watches=sum(x.watches for x in r),
            events=sum(x.events for x in r),
            stalls=sum(x.stalls for x in r),
            errors=sum(x.errors for x in r),
            last_error=self.pods.last_error or self.nodes.last_error,
        )

    def sizes(self) -> dict[str, int]:
        """Entry counts for the cache-size metric."""
        return {
            "cluster_nodes": len(self.cache.nodes),
            "cluster_pods": len(self.cache.pods),
            "cluster_recent_pods": self.cache.recent,
        }

    def pod(self, uid: str) -> PodRecord | None:
        return self.cache.pod(uid)

    def estimate(self, uid: str) -> tuple[float, float] | None:
        """UID → estimated (cpu cores, memory bytes): the preempt verb's victim lookup."""
        return self.cache.estimate(uid)

"""The cluster cache: nodes and bound pods as compact records, and what the store needs of them.

The reflectors feed it (one sink per resource); the publisher reads :meth:`ClusterCache.node_infos`
and :meth:`ClusterCache.placements`. Everything is kept so that a publication costs O(changed
nodes + recent pods), never O(pods):

* per-node request totals are updated incrementally on every pod change, in integer millicores
  and bytes so that 150,000 additions and removals add up exactly;
* a :class:`NodeInfo` is rebuilt only for the nodes touched since the last publication;
* pods bound within the horizon (the estimation window, or ``maxAge`` if longer: a pod bound after
  a node's latest *fresh* sample is bound within ``maxAge``) are kept in a separate small map.

Everything here runs on the event loop thread; nothing awaits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, KeysView
from typing import Protocol, TypeVar

import msgspec

from extender.cluster.decode import (
    NodeRecord,
    PodDecoder,
    PodRecord,
    PriorityClassRecord,
    decode_node,
    decode_priority_class,
)
from extender.core import Estimation, NodeInfo, PlacedPod

R = TypeVar("R")


class ClusterCache:
    """Nodes by name and bound, non-terminal pods by UID."""

    def __init__(
        self,
        estimation: Estimation,
        horizon_s: float,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.estimation = estimation
        """Settings the pods' usage estimates were computed with (a change needs a relist)."""
        self.horizon_s = horizon_s
        """Pods bound less than this long ago count as recent (candidates for placements)."""
        self.clock = clock
        self.on_change = on_change
        self.nodes: dict[str, NodeRecord] = {}
        self.pods: dict[str, PodRecord] = {}
        self.nodes_listed = False
        """True once a full node list has been applied."""
        self.pods_listed = False
        """True once a full pod list has been applied: request totals are known from then on."""
        self.changed = False
        """Something the store sees changed since the last :meth:`node_infos`/:meth:`placements`."""
        self._mcpu: dict[str, int] = {}
        self._memory: dict[str, int] = {}
        self._count: dict[str, int] = {}
        self._recent: dict[str, PodRecord] = {}
        self._infos: dict[str, NodeInfo] = {}
        self._dirty: set[str] = set()
        self._by_address: dict[str, str] = {}
        self.addresses_version = 0
        """Incremented whenever the address map changes (see :meth:`addresses`)."""

    # --- nodes ----------------------------------------------------------------------------------

    def put_node(self, name: str, record: NodeRecord | None) -> None:
        old = self.nodes.get(name)
        if record is not None and old == record:
            return
        if record is None and old is None:
            return
        old_addresses = old.addresses if old is not None else ()
        new_addresses = record.addresses if record is not None else ()
        if old_addresses != new_addresses:
            for address in old_addresses:
                if self._by_address.get(address) == name:
                    del self._by_address[address]
            for address in new_addresses:
                self._by_address[address] = name
            self.addresses_version += 1
        if record is None:
            del self.nodes[name]
        else:
            self.nodes[name] = record
        self._dirty.add(name)
        self._touch()

    def node_for_address(self, address: str) -> str | None:
        """The node that lists ``address`` (an InternalIP, a hostname) in its status."""
        return self._by_address.get(address)

    def addresses(self) -> dict[str, str]:
        """A copy of the map of every node address (InternalIP, Hostname, ...) to its node."""
        return dict(self._by_address)

    # --- pods -----------------------------------------------------------------------------------

    def put_pod(self, uid: str, record: PodRecord | None) -> None:
        """Add, replace or (with None) remove a pod; finished and unbound pods are None."""
        old = self.pods.get(uid)
        if old is not None:
            if record is not None and old == record:
                if uid not in self._recent and self._is_recent(record):  # the horizon grew
                    self._recent[uid] = record
                    self._touch()
                return
            self._account(old, -1)
        if record is None:
            if old is None:
                return
            del self.pods[uid]
            if self._recent.pop(uid, None) is not None:
                self.changed = True
            self._touch()
            return
        self.pods[uid] = record
        self._account(record, 1)
        if self._is_recent(record):
            self._recent[uid] = record
        else:
            self._recent.pop(uid, None)
        self._touch()

    def _is_recent(self, pod: PodRecord) -> bool:
        return pod.bound_at >= self.clock() - self.horizon_s

    def _account(self, pod: PodRecord, sign: int) -> None:
        node = pod.node
        count = self._count.get(node, 0) + sign
        if count:
            self._count[node] = count
            self._mcpu[node] = self._mcpu.get(node, 0) + sign * pod.request_mcpu
            self._memory[node] = self._memory.get(node, 0) + sign * pod.request_memory
        else:
            self._count.pop(node, None)
            self._mcpu.pop(node, None)
            self._memory.pop(node, None)
        self._dirty.add(node)

    def pod(self, uid: str) -> PodRecord | None:
        """The record of a bound, running pod by UID (for the preempt verb's victims)."""
        return self.pods.get(uid)

    def estimate(self, uid: str) -> tuple[float, float] | None:
        """A bound pod's estimated (cpu cores, memory bytes), or None when unknown."""
        pod = self.pods.get(uid)
        return None if pod is None else (pod.cpu, pod.memory)

    def requested(self, node: str) -> tuple[float, float] | None:
        """Sum of the requests of the pods bound to ``node`` (cores, bytes); None until the
        first pod list completes."""
        if not self.pods_listed:
            return None
        return self._mcpu.get(node, 0) / 1000, float(self._memory.get(node, 0))

    # --- what the store reads -------------------------------------------------------------------

    def _touch(self) -> None:
        self.changed = True
        self.on_change()

    def set_pods_listed(self) -> None:
        if not self.pods_listed:
            self.pods_listed = True
            self._dirty.update(self.nodes)  # request totals become known
            self._touch()

    def set_nodes_listed(self) -> None:
        if not self.nodes_listed:
            self.nodes_listed = True
            self._touch()

    def node_infos(self) -> list[NodeInfo]:
        """Every known node with its request totals; rebuilds only the nodes changed since."""
        for name in self._dirty:
            rec = self.nodes.get(name)
            if rec is None:
                self._infos.pop(name, None)
                continue
            req = self.requested(name)
            self._infos[name] = NodeInfo(
                name,
                rec.allocatable_cpu,
                rec.allocatable_memory,
                None if req is None else req[0],
                None if req is None else req[1],
            )
        self._dirty.clear()
        infos = self._infos
        return [infos[name] for name in self.nodes]  # in list (then arrival) order

    def placements(self, now: float) -> list[PlacedPod]:
        """Pods bound within the horizon before ``now``; older ones leave the recent set."""
        after = now - self.horizon_s
        expired = [uid for uid, p in self._recent.items() if p.bound_at < after]
        for uid in expired:
            del self._recent[uid]
        return [
            PlacedPod(p.node, p.cpu, p.memory, p.bound_at, p.uid) for p in self._recent.values()
        ]

    def expiring(self, now: float) -> bool:
        """Whether some recent pod has left the horizon (a publication would drop it)."""
        after = now - self.horizon_s
        return any(p.bound_at < after for p in self._recent.values())

    @property
    def recent(self) -> int:
        return len(self._recent)


# --- sinks: how a reflector applies one resource to the cache -----------------------------------


class Sink(Protocol[R]):
    """One resource's decoding and application, as a reflector drives it."""

    def decode(self, raw: msgspec.Raw | bytes) -> tuple[str, str, R | None]:
        """(key, resourceVersion, record or None when the object does not count)."""
        ...

    def put(self, key: str, record: R | None) -> None: ...

    def keys(self) -> KeysView[str]: ...

    def listed(self) -> None:
        """A full list has been applied."""
        ...


class NodeSink:
    def __init__(self, cache: ClusterCache) -> None:
        self.cache = cache

    def decode(self, raw: msgspec.Raw | bytes) -> tuple[str, str, NodeRecord | None]:
        return decode_node(raw)

    def put(self, key: str, record: NodeRecord | None) -> None:
        self.cache.put_node(key, record)

    def keys(self) -> KeysView[str]:
        return self.cache.nodes.keys()

    def listed(self) -> None:
        self.cache.set_nodes_listed()


class PodSink:
    def __init__(self, cache: ClusterCache) -> None:
        self.cache = cache
        self._decoder = PodDecoder(cache.estimation)

    def decode(self, raw: msgspec.Raw | bytes) -> tuple[str, str, PodRecord | None]:
        if self._decoder.est is not self.cache.estimation:
            self._decoder = PodDecoder(self.cache.estimation)
        return self._decoder.decode(raw)

    def put(self, key: str, record: PodRecord | None) -> None:
        self.cache.put_pod(key, record)

    def keys(self) -> KeysView[str]:
        return self.cache.pods.keys()

    def listed(self) -> None:
        self.cache.set_pods_listed()


class PriorityClasses:
    """The cluster's PriorityClasses by name, and its own reflector's sink: what a manifest's
    ``priorityClassName`` stands for when it has no ``spec.priority`` (a dry run of a manifest
    as written, before admission). Kept apart from the cache: nothing published depends on it.
    """

    def __init__(self) -> None:
        self.classes: dict[str, PriorityClassRecord] = {}
        self.synced = False
        """True once a full list has been applied: from then on a name not here does not
        exist (admission would refuse the pod)."""

    def resolve(self, name: str) -> int | None:
        """The priority admission would give a pod naming ``name`` (``""``: the globalDefault
        class's, else 0); None when that is not known: before the first list, or no such
        class."""
        if not self.synced:
            return None
        if name:
            record = self.classes.get(name)
            return None if record is None else record.value
        return next((r.value for r in self.classes.values() if r.global_default), 0)

    def decode(self, raw: msgspec.Raw | bytes) -> tuple[str, str, PriorityClassRecord | None]:
        return decode_priority_class(raw)

    def put(self, key: str, record: PriorityClassRecord | None) -> None:
        if record is None:
            self.classes.pop(key, None)
        else:
            self.classes[key] = record

    def keys(self) -> KeysView[str]:
        return self.classes.keys()

    def listed(self) -> None:
        self.synced = True

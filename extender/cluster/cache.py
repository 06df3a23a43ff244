"""The cluster cache: nodes and bound pods as compact records, and what the store needs of them.

The reflectors feed it (one sink per resource); the publisher reads :meth:`ClusterCache.node_infos`
and :meth:`ClusterCache.placements`. Everything is kept so that a publication costs O(changed
nodes + recent pods), never O(pods):

* per-node request totals are updated incrementally on every pod change, in integer millicores
  and bytes so that 150,000 additions and removals add up exactly;
* a :class:`NodeInfo` is rebuilt only for the nodes touched since the last publication;
* pods bound within the horizon (the estimation window, or ``maxAge`` if longer: a pod bound after
  a node's latest *fresh* sample is bound within ``maxAge``) are kept in a separate small map, as
  the :class:`~extender.core.PlacedPod` the store reads, made once when the pod arrives;
* pods deleted (or turned terminal) within the same horizon are kept as
  :class:`~extender.core.podusage.Departure` s in another: their node's sample may still show
  their usage (the mirror of a just-placed pod);
* both maps leave the horizon through a heap of their times (no scan of every recent pod at each
  publication), and both lists are handed out from a tuple remade only when its map changed: a
  publication that one bind changed costs that bind, and the store, given the same objects,
  pairs them with the last ones in C (:func:`~extender.core.model.align`);
* for the per-pod sources, each bound pod has a **slot** in :class:`~extender.core.podusage.
  PodColumns` (uid, node, owner, priority, requests by slot) and an index namespace -> name ->
  slot: matching a refresh's 150,000 samples is one dictionary lookup each, and building the
  snapshot's per-pod table is array indexing, not one object per pod.

Everything here runs on the event loop thread and nothing awaits -- except the two per-pod
readers, :meth:`ClusterCache.match_pods` and :meth:`ClusterCache.pod_usage`, which the per-pod
sources call from a worker thread (a 150,000-pod refresh must not hold the loop) while the loop
goes on changing the cache. They read no lock-protected copy; they are safe by construction:

* the index maps a name to its slot **and** that slot's generation packed in one int
  (:data:`SLOT_BITS`), so one ``dict.get`` (atomic under the GIL) answers both: a match can never
  pair one pod's slot with the generation of the pod that reused it;
* a freed slot's generation is incremented *before* anything else of the slot changes, and the
  table build reads each row's generation again after taking its fields (a seqlock): a row whose
  pod left meanwhile is dropped, never made of two pods' fields;
* the lists and arrays are only ever replaced whole (a grow) or written one element at a time,
  so a reader sees each element either before or after a write, never torn.

Each answer is then what a match or a build on the loop would have given at some instant during
the call, which is all a refresh ever had (the cache moves between refreshes anyway).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import threading
import time
from collections.abc import Callable, KeysView, Sequence
from typing import Generic, Protocol, TypeVar

import msgspec
import numpy as np

from extender.cluster.decode import (
    NodeRecord,
    PodDecoder,
    PodRecord,
    PriorityClassRecord,
    decode_node,
    decode_priority_class,
)
from extender.core import Estimation, NodeInfo, PlacedPod
from extender.core.podusage import (
    Departure,
    IntArray,
    PodColumns,
    PodRefs,
    PodRows,
    PodSamples,
    PodUsage,
    build_pod_table,
)

R = TypeVar("R")

INITIAL_SLOTS = 1024
"""Slots allocated at first; the columns double when full (a cluster of 150,000 pods grows
them eight times during its first list, each a copy of a few megabytes)."""
_NO_NAMES: dict[str, int] = {}
"""The names of a namespace the cache has no pod in (shared, never written)."""
SLOT_BITS = 32
"""An index entry is ``slot | generation << SLOT_BITS``: 4 billion slots is far beyond any
cluster (150,000 pods is the scale target), and Python ints hold any generation above it."""
SLOT_MASK = (1 << SLOT_BITS) - 1
MEMO_ENTRIES = 4
"""Answers whose matches :meth:`ClusterCache.match_pods` remembers: Prometheus' two per-pod
vectors, metrics-server's one list (both resources), and one spare for a reload during which an
old and a new source overlap."""


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
        self._recent: _Window[PlacedPod] = _Window(_bound_at)
        """Pods bound within the horizon: what :meth:`placements` lists."""
        self._infos: dict[str, NodeInfo] = {}
        self._info_list: list[NodeInfo] = []
        """:meth:`node_infos`, in the order of :attr:`nodes`."""
        self._info_at: dict[str, int] = {}
        """Node name to its place in :attr:`_info_list`, while no node came or went since."""
        self._nodes_moved = False
        """A node came or went: :attr:`_info_list` is to be made again."""
        self._dirty: set[str] = set()
        self._by_address: dict[str, str] = {}
        self.addresses_version = 0
        """Incremented whenever the address map changes (see :meth:`addresses`)."""
        self._departed: _Window[Departure] = _Window(_departed_at)
        """Pods deleted (or turned terminal) within the horizon: what :meth:`departures` lists."""
        self.columns = PodColumns(
            uids=[""] * INITIAL_SLOTS,
            nodes=[""] * INITIAL_SLOTS,
            owners=[""] * INITIAL_SLOTS,
            priority=np.zeros(INITIAL_SLOTS, dtype=np.int64),
            requests=np.zeros((2, INITIAL_SLOTS)),
            generation=np.zeros(INITIAL_SLOTS, dtype=np.int64),
        )
        """Bound pods by slot, for the per-pod sources (see the module docstring)."""
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = list(range(INITIAL_SLOTS - 1, -1, -1))
        self._index: dict[str, dict[str, int]] = {}
        """Namespace to pod name to ``slot | generation << SLOT_BITS``."""
        self._repoints = 0
        """Incremented when a name moves to another live slot (a relist saw a re-created pod
        before the deletion of the old one): remembered matches are then all redone."""
        self._memo: list[_Match] = []
        """The last answers' matches, newest first (see :meth:`match_pods`)."""
        self._last_rows: PodRows | None = None
        """The last table build's rows, for the next build to reuse."""
        self._reader_lock = threading.Lock()
        """Guards :attr:`_memo` and :attr:`_last_rows` (readers may run in two threads)."""

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
            self._nodes_moved = True
        else:
            self._nodes_moved |= old is None
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

    def put_pod(self, uid: str, record: PodRecord | None, gone_since: float | None = None) -> None:
        """Add, replace or (with None) remove a pod; finished and unbound pods are None.

        ``gone_since``: for a removal a list found (not a watch event), when the pod was last
        known to be there. It left at some moment since, so that is its departure time: the
        departure's usage is then taken off its node's sample for no longer than it can still
        be in it (stamping the list's own time would subtract it for up to the whole gap
        longer, and make the node look emptier than it is)."""
        old = self.pods.get(uid)
        if old is not None:
            if record is not None and old == record:
                if uid not in self._recent and self._is_recent(record):  # horizon grew
                    self._place(uid, record)
                    self._touch()
                return
            self._account(old, -1)
        if record is None:
            if old is None:
                return
            del self.pods[uid]
            self._free_slot(uid, old)
            at = self.clock() if gone_since is None else min(gone_since, self.clock())
            gone = Departure(uid, old.node, at, old.priority, old.cpu, old.memory)
            self._departed.put(uid, gone)
            self._recent.drop(uid)
            self._touch()
            return
        self.pods[uid] = record
        self._fill_slot(uid, record)
        self._departed.drop(uid)
        self._account(record, 1)
        if self._is_recent(record):
            self._place(uid, record)
        else:
            self._recent.drop(uid)
        self._touch()

    def _place(self, uid: str, pod: PodRecord) -> None:
        """Make ``pod`` (recent) one of :attr:`_recent`, keeping its place if it is one."""
        self._recent.put(uid, PlacedPod(pod.node, pod.cpu, pod.memory, pod.bound_at, pod.uid))

    def _fill_slot(self, uid: str, pod: PodRecord) -> None:
        slot = self._slot_of.get(uid)
        cols = self.columns
        if slot is None:
            if not self._free:
                self._grow()
            slot = self._slot_of[uid] = self._free.pop()
            cols.uids[slot] = uid
        elif cols.nodes[slot] != pod.node or cols.owners[slot] != pod.owner:
            cols.edits += 1  # a built table's strings are out of date
        names = self._index.get(pod.namespace)
        if names is None:
            names = self._index[pod.namespace] = {}
        entry = slot | int(cols.generation[slot]) << SLOT_BITS
        was = names.get(pod.name)
        if was != entry:
            if was is not None:
                self._repoints += 1
            names[pod.name] = entry
        cols.nodes[slot] = pod.node
        cols.owners[slot] = pod.owner
        cols.priority[slot] = pod.priority
        cols.requests[0, slot] = pod.request_mcpu / 1000
        cols.requests[1, slot] = pod.request_memory

    def _free_slot(self, uid: str, pod: PodRecord) -> None:
        slot = self._slot_of.pop(uid, None)
        if slot is None:
            return
        cols = self.columns
        entry = slot | int(cols.generation[slot]) << SLOT_BITS
        cols.generation[slot] += 1  # first: readers in another thread rely on this order
        names = self._index.get(pod.namespace)
        # A pod of the same name that arrived first (a relist) owns the name now: keep it.
        if names is not None and names.get(pod.name) == entry:
            del names[pod.name]
            if not names:
                del self._index[pod.namespace]
        cols.uids[slot] = cols.nodes[slot] = cols.owners[slot] = ""
        self._free.append(slot)

    def _grow(self) -> None:
        cols = self.columns
        size = len(cols.uids)
        cols.uids.extend([""] * size)
        cols.nodes.extend([""] * size)
        cols.owners.extend([""] * size)
        cols.priority = np.concatenate([cols.priority, np.zeros(size, dtype=np.int64)])
        cols.requests = np.concatenate([cols.requests, np.zeros((2, size))], axis=1)
        cols.generation = np.concatenate([cols.generation, np.zeros(size, dtype=np.int64)])
        self._free.extend(range(2 * size - 1, size - 1, -1))

    # --- per-pod samples (extender.sources.base.ClusterView) --------------------------------------

    def match_pods(self, namespaces: Sequence[str], names: Sequence[str]) -> PodRefs:
        """The slot of each (namespace, name) among the bound, non-terminal pods, -1 where
        there is none, with the slot's generation. Safe from a worker thread (module docstring).

        An answer with the same series in the same order as one of the last
        :data:`MEMO_ENTRIES` (Prometheus returns a vector in the same order from one refresh to
        the next) reuses its matches, and looks up again only the keys whose answer may have
        changed since: those that matched nothing, and those whose slot was freed. That gives
        what a fresh match would: a pod keeps its slot and its name while it exists, and a name
        that moves to another live slot (:attr:`_repoints`) voids every remembered match.
        (Answers are told apart by a digest of their keys: see :func:`_match_key`.)
        """
        n = len(names)
        if len(namespaces) != n:
            raise ValueError(f"{len(namespaces)} namespaces for {n} names")
        repoints = self._repoints  # before any lookup: a re-point after it voids what we keep
        key = _match_key(namespaces, names)
        with self._reader_lock:
            memo = next(
                (
                    m
                    for m in self._memo
                    if key is not None and m.repoints == repoints and m.same(key, n)
                ),
                None,
            )
        if memo is None:
            packed = self._lookup(namespaces, names)
        else:
            packed = memo.packed.copy()
            generation = self.columns.generation
            known = packed >= 0
            stale = ~known
            stale[known] = generation[packed[known] & SLOT_MASK] != packed[known] >> SLOT_BITS
            redo = np.flatnonzero(stale)
            if len(redo):
                again = redo.tolist()
                packed[redo] = self._lookup(
                    [namespaces[i] for i in again], [names[i] for i in again]
                )
        if key is not None:
            with self._reader_lock:
                kept = [m for m in self._memo if not m.same(key, n)][: MEMO_ENTRIES - 1]
                self._memo = [_Match(key, packed, repoints), *kept]
        found = packed >= 0
        return PodRefs(
            np.where(found, packed & SLOT_MASK, -1), np.where(found, packed >> SLOT_BITS, -1)
        )

    def _lookup(self, namespaces: Sequence[str], names: Sequence[str]) -> IntArray:
        """The packed index entry of each key, -1 where there is none: one atomic ``get``
        per level, whatever the loop does to the index meanwhile."""
        get = self._index.get
        return np.fromiter(
            [get(ns, _NO_NAMES).get(name, -1) for ns, name in zip(namespaces, names, strict=True)],
            dtype=np.int64,
            count=len(names),
        )

    def pod_usage(
        self,
        samples: tuple[PodSamples | None, PodSamples | None],
        *,
        oldest: float,
        unknown: int = 0,
    ) -> PodUsage:
        """The per-pod table from (cpu, memory) samples matched earlier by :meth:`match_pods`,
        against the pods bound now (see :func:`~extender.core.podusage.build_pod_table`; safe
        from a worker thread). The last build's strings are reused when the rows are the same."""
        with self._reader_lock:
            previous = self._last_rows
        usage, rows = build_pod_table(
            self.columns, samples, oldest=oldest, unknown=unknown, previous=previous
        )
        with self._reader_lock:
            self._last_rows = rows
        return usage

    def forget_pod_reads(self) -> None:
        """Forget the remembered matches and the last table's rows (the next match and build
        start cold, as the first ones do; for benchmarks)."""
        with self._reader_lock:
            self._memo = []
            self._last_rows = None

    def departures(self, now: float) -> list[Departure]:
        """Pods deleted (or turned terminal) within the horizon before ``now``; older ones are
        forgotten."""
        return list(self._departed.expire(now - self.horizon_s))

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
        moved = self._nodes_moved
        at, listed = self._info_at, self._info_list
        for name in self._dirty:
            rec = self.nodes.get(name)
            if rec is None:
                self._infos.pop(name, None)
                continue
            req = self.requested(name)
            info = self._infos[name] = NodeInfo(
                name,
                rec.allocatable_cpu,
                rec.allocatable_memory,
                None if req is None else req[0],
                None if req is None else req[1],
            )
            if not moved:
                listed[at[name]] = info
        self._dirty.clear()
        if moved:
            infos = self._infos
            self._info_list = [infos[name] for name in self.nodes]  # in list (then arrival) order
            self._info_at = {name: i for i, name in enumerate(self.nodes)}
            self._nodes_moved = False
        return list(self._info_list)

    def placements(self, now: float) -> list[PlacedPod]:
        """Pods bound within the horizon before ``now``; older ones leave the recent set."""
        return list(self._recent.expire(now - self.horizon_s))

    def expiring(self, now: float) -> bool:
        """Whether some recent pod has left the horizon (a publication would drop it)."""
        after = now - self.horizon_s
        return self._recent.first() < after or self._departed.first() < after

    @property
    def recent(self) -> int:
        return len(self._recent)


W = TypeVar("W", PlacedPod, Departure)


class _Window(Generic[W]):
    """Entries by UID that leave once their time (``at``) falls out of a horizon: in arrival
    order (a changed entry keeps its place), listed as one tuple until they change.

    A heap of (time, uid) holds every entry's time, and some of entries that left or changed
    (skipped as they come up): what leaves first is on top, so expiring costs what leaves.
    """

    def __init__(self, at: Callable[[W], float]) -> None:
        self._entries: dict[str, W] = {}
        self._at: Callable[[W], float] = at
        self._heap: list[tuple[float, str]] = []
        self._listed: tuple[W, ...] | None = ()
        """The entries as listed; None once they changed."""

    def __contains__(self, uid: str) -> bool:
        return uid in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, uid: str, entry: W) -> None:
        was = self._entries.get(uid)
        if was is not None and was == entry:
            return
        if was is None or self._at(was) != self._at(entry):
            heapq.heappush(self._heap, (self._at(entry), uid))
        self._entries[uid] = entry
        self._listed = None

    def drop(self, uid: str) -> None:
        if self._entries.pop(uid, None) is not None:
            self._listed = None

    def expire(self, after: float) -> tuple[W, ...]:
        """Drop the entries whose time is before ``after``; the rest, listed."""
        heap, entries = self._heap, self._entries
        while heap and heap[0][0] < after:
            _, uid = heapq.heappop(heap)
            entry = entries.get(uid)
            if entry is not None and self._at(entry) < after:
                del entries[uid]
                self._listed = None
        if self._listed is None:
            self._listed = tuple(entries.values())
        return self._listed

    def first(self) -> float:
        """The earliest time of an entry (dropping stale heap tops on the way); +inf if none."""
        heap = self._heap
        while heap:
            at, uid = heap[0]
            entry = self._entries.get(uid)
            if entry is not None and self._at(entry) == at:
                return at
            heapq.heappop(heap)
        return math.inf


def _bound_at(pod: PlacedPod) -> float:
    return pod.bound_at


def _departed_at(gone: Departure) -> float:
    return gone.departed_at


def _match_key(namespaces: Sequence[str], names: Sequence[str]) -> tuple[bytes, bytes] | None:
    """What identifies an answer's keys, in order: a 128-bit BLAKE2b digest of the namespaces
    and one of the names, each list joined by NUL (32 bytes remembered instead of the 5 MB the
    joined strings of 150,000 pods take; mistaking one answer for another would need a BLAKE2b
    collision). None (not remembered) when a label holds a NUL, which would make two different
    answers join to the same text."""
    n = len(names)
    if not n:
        return None
    digests = []
    for column in (namespaces, names):
        joined = "\0".join(column)
        if joined.count("\0") != n - 1:
            return None
        digests.append(hashlib.blake2b(joined.encode(), digest_size=16).digest())
    return digests[0], digests[1]


class _Match:
    """One remembered answer: its keys' digests and their packed index entries."""

    __slots__ = ("count", "key", "packed", "repoints")

    def __init__(self, key: tuple[bytes, bytes], packed: IntArray, repoints: int) -> None:
        self.key = key
        self.count = len(packed)
        self.packed = packed
        self.repoints = repoints

    def same(self, key: tuple[bytes, bytes], count: int) -> bool:
        return self.count == count and self.key == key


# --- sinks: how a reflector applies one resource to the cache -----------------------------------


class Sink(Protocol[R]):
    """One resource's decoding and application, as a reflector drives it."""

    def decode(self, raw: msgspec.Raw | bytes) -> tuple[str, str, R | None]:
        """(key, resourceVersion, record or None when the object does not count)."""
        ...

    def put(self, key: str, record: R | None, gone_since: float | None = None) -> None:
        """Apply ``record`` (None: the object is gone or does not count). ``gone_since``, from
        a list: when the reflector last knew the cache current (see
        :meth:`ClusterCache.put_pod`)."""
        ...

    def keys(self) -> KeysView[str]: ...

    def listed(self) -> None:
        """A full list has been applied."""
        ...


class NodeSink:
    def __init__(self, cache: ClusterCache) -> None:
        self.cache = cache

    def decode(self, raw: msgspec.Raw | bytes) -> tuple[str, str, NodeRecord | None]:
        return decode_node(raw)

    def put(self, key: str, record: NodeRecord | None, gone_since: float | None = None) -> None:
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

    def put(self, key: str, record: PodRecord | None, gone_since: float | None = None) -> None:
        self.cache.put_pod(key, record, gone_since)

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

    def put(
        self, key: str, record: PriorityClassRecord | None, gone_since: float | None = None
    ) -> None:
        if record is None:
            self.classes.pop(key, None)
        else:
            self.classes[key] = record

    def keys(self) -> KeysView[str]:
        return self.classes.keys()

    def listed(self) -> None:
        self.synced = True

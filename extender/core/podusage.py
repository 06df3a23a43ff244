"""Per-pod usage: the compact table a per-pod source hands to the store, and recent departures.

This module is the **interface** between the per-pod sources (``extender/sources``: cAdvisor
series through Prometheus recording rules, ``PodMetrics`` from metrics-server, each matched to
the cluster cache by namespace and name) and the decision core, which reads it through the
snapshot (visibility of just-placed pods, headroom by tier, the preemption mirror, estimates from
siblings). It holds plain data only.

Storage is columnar on purpose: at 150,000 pods a dict of objects costs several hundred bytes a
pod; parallel numpy arrays cost tens (the strings are the cache's own, shared, not copied).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from itertools import compress
from typing import cast

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def owner_key(kind: str, namespace: str, name: str) -> str:
    """The key pods of one controller share (siblings): ``kind/namespace/name`` of the pod's
    controlling owner reference (a Deployment's pods share their ReplicaSet's key); "" when the
    pod has no controller."""
    return f"{kind}/{namespace}/{name}" if kind and name else ""


@dataclass(frozen=True, slots=True)
class PodUsage:
    """One row per pod that has a usage sample **and** is bound, non-terminal, in the cluster
    cache. Samples that matched no such pod are counted in ``unknown``, never stored.

    Every array's last axis has ``len(uids)`` entries, in the same order as ``uids``. Row 0 of
    the two-row arrays is cpu (cores), row 1 memory (bytes): the order of ``core.RESOURCES``.
    """

    uids: tuple[str, ...]
    nodes: tuple[str, ...]
    """The node each pod is bound to (from the cluster cache, not from the sample's labels)."""
    priority: IntArray
    """Each pod's ``spec.priority`` (0 when unset), from the cluster cache."""
    requests: FloatArray
    """(2, pods): the scheduler's view of each pod's requests (cores, bytes)."""
    usage: FloatArray
    """(2, pods): the pod's latest valid usage sample (cores, bytes); NaN where that resource
    has no valid sample (out of range, stale, missing)."""
    sampled_at: FloatArray
    """(2, pods): seconds since the epoch when that sample was observed; NaN where missing."""
    owners: tuple[str, ...]
    """Each pod's :func:`owner_key` ("" when it has none)."""
    unknown: int = 0
    """Samples in the refresh that matched no bound pod of the cache (counted, not stored)."""

    def __len__(self) -> int:
        return len(self.uids)


def empty_pod_usage() -> PodUsage:
    """No per-pod data: every use of it falls back to today's node-level behaviour."""
    return PodUsage(
        uids=(),
        nodes=(),
        priority=np.zeros(0, dtype=np.int64),
        requests=np.zeros((2, 0)),
        usage=np.zeros((2, 0)),
        sampled_at=np.zeros((2, 0)),
        owners=(),
    )


@dataclass(frozen=True, slots=True)
class Departure:
    """A pod deleted (or turned terminal) recently, whose usage its node's sample may still
    show: the mirror of a just-placed pod. Kept by the cluster cache for its horizon."""

    uid: str
    node: str
    departed_at: float
    """Seconds since the epoch when the cache saw the deletion (or the terminal phase)."""
    priority: int = 0
    cpu: float = 0.0
    """The pod's estimated usage in cores (its estimate at decode time); the core prefers the
    pod's last measured usage when the per-pod table had one."""
    memory: float = 0.0


# --- building the table (additions for the sources and the cluster cache) ----------------------


@dataclass(slots=True)
class PodColumns:
    """The cluster cache's bound pods as parallel columns indexed by **slot**, for matching
    per-pod samples and building a :class:`PodUsage` without touching one object per pod.

    The cache owns it and updates it in place as pods come and go: a pod keeps its slot while
    it exists; a freed slot is reused by a later pod, and its ``generation`` then changes, so
    samples matched to the old pod (:class:`PodSamples` keep the generation they were matched
    at) no longer apply to the new one. A free slot has uid ``""``.
    """

    uids: list[str]
    nodes: list[str]
    owners: list[str]
    priority: IntArray
    """(capacity,) ``spec.priority``."""
    requests: FloatArray
    """(2, capacity) cores, bytes."""
    generation: IntArray
    """(capacity,) incremented each time the slot is freed, before anything else of the slot
    changes (readers in another thread rely on that order: see :func:`build_pod_table`)."""
    edits: int = 0
    """Incremented whenever an occupied slot's node or owner changes without the slot being
    freed (an orphaned pod loses its owner): a reused :class:`PodRows` is then out of date."""


@dataclass(frozen=True, slots=True)
class PodRefs:
    """Where each of a list of (namespace, name) keys is in :class:`PodColumns`."""

    slots: IntArray
    """The key's slot, -1 when no bound, non-terminal pod of the cache has that name."""
    generations: IntArray
    """Each slot's generation when matched (-1 where the slot is -1)."""


@dataclass(frozen=True, slots=True)
class PodSamples:
    """One resource's checked per-pod samples, already matched: every slot is a real one, no
    slot twice. Kept by a source as the last good answer of its query, re-applied to the
    cache's current columns at each build (a departed pod's row simply stops matching)."""

    slots: IntArray
    generations: IntArray
    values: FloatArray
    timestamps: FloatArray

    def __len__(self) -> int:
        return len(self.slots)


def no_pod_samples() -> PodSamples:
    """A resource without samples."""
    return PodSamples(
        slots=np.zeros(0, dtype=np.int64),
        generations=np.zeros(0, dtype=np.int64),
        values=np.zeros(0),
        timestamps=np.zeros(0),
    )


def build_pod_usage(
    columns: PodColumns,
    samples: tuple[PodSamples | None, PodSamples | None],
    *,
    oldest: float,
    unknown: int = 0,
) -> PodUsage:
    """The :class:`PodUsage` of the pods that have a sample of their own, cpu and memory from
    ``samples`` (either may be None: no data for that resource).

    A sample is left out (NaN) when its slot now holds another pod (its generation changed)
    or when it was taken before ``oldest`` (the source's ``now - maxAge``): a pod with neither
    resource left is not in the table. Rows come out in slot order.
    """
    return build_pod_table(columns, samples, oldest=oldest, unknown=unknown)[0]


@dataclass(frozen=True, slots=True)
class PodRows:
    """Which slots a built table took, and the strings it took from them: handed back to the
    next build, which reuses the three tuples (150,000 strings each) when it takes the same
    slots, at the same generations, with no pod's node or owner edited in between."""

    rows: IntArray
    generations: IntArray
    edits: int
    """:attr:`PodColumns.edits` when the strings were taken (-1: not reusable)."""
    uids: tuple[str, ...]
    nodes: tuple[str, ...]
    owners: tuple[str, ...]


def build_pod_table(
    columns: PodColumns,
    samples: tuple[PodSamples | None, PodSamples | None],
    *,
    oldest: float,
    unknown: int = 0,
    previous: PodRows | None = None,
) -> tuple[PodUsage, PodRows]:
    """:func:`build_pod_usage`, reusing ``previous`` (the last build's :class:`PodRows`) where
    it still applies, and returning this build's rows for the next one.

    Safe while the cache's owner changes ``columns`` from another thread, provided that owner
    increments a slot's ``generation`` *before* it touches anything else of a freed slot (the
    cache does): every row's generation is read again after its fields were taken, and a row
    whose generation moved meanwhile (its pod left during the build) is dropped, as the next
    build would drop it. A row is never made of two pods' fields.
    """
    edits = columns.edits
    generation = columns.generation
    capacity = len(generation)
    usage = np.full((2, capacity), np.nan)
    stamps = np.full((2, capacity), np.nan)
    for row, got in enumerate(samples):
        if got is None or not len(got):
            continue
        slots = got.slots
        keep = (slots >= 0) & (slots < capacity) & (got.timestamps >= oldest)
        keep[keep] &= generation[slots[keep]] == got.generations[keep]
        slots = slots[keep]
        usage[row, slots] = got.values[keep]
        stamps[row, slots] = got.timestamps[keep]
    rows = np.flatnonzero(~(np.isnan(usage[0]) & np.isnan(usage[1])))
    gens = generation[rows]
    if (
        previous is not None
        and previous.edits == edits >= 0
        and np.array_equal(previous.rows, rows)
        and np.array_equal(previous.generations, gens)
    ):
        uids, nodes, owners = previous.uids, previous.nodes, previous.owners
    else:
        take = _taker(rows)
        uids, nodes, owners = take(columns.uids), take(columns.nodes), take(columns.owners)
    priority = columns.priority[rows]
    requests = columns.requests[:, rows]
    moved = columns.generation[rows] != gens  # the attribute again: a grow replaces the array
    if moved.any():
        rows, gens, priority, requests = (
            rows[~moved],
            gens[~moved],
            priority[~moved],
            requests[:, ~moved],
        )
        stay = (~moved).tolist()
        uids, nodes, owners = (tuple(compress(c, stay)) for c in (uids, nodes, owners))
    table = PodUsage(
        uids=uids,
        nodes=nodes,
        priority=priority,
        requests=requests,
        usage=usage[:, rows],
        sampled_at=stamps[:, rows],
        owners=owners,
        unknown=unknown,
    )
    reusable = edits if columns.edits == edits and not moved.any() else -1
    return table, PodRows(rows, gens, reusable, uids, nodes, owners)


def _taker(rows: IntArray) -> Callable[[list[str]], tuple[str, ...]]:
    """``rows`` of a list as a tuple, in one C-level call (``operator.itemgetter``)."""
    index = rows.tolist()
    if not index:
        return lambda column: ()
    if len(index) == 1:
        only = index[0]
        return lambda column: (column[only],)
    getter = operator.itemgetter(*index)
    return lambda column: cast(tuple[str, ...], getter(column))

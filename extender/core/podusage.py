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

from dataclasses import dataclass

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

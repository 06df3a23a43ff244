"""Per-pod usage indexed for the request path: what a snapshot precomputes from a PodUsage table.

A :class:`~extender.core.podusage.PodUsage` table (one row per bound pod with a usage sample)
is indexed once per refresh of the per-pod source (or once the snapshot's node names change)
into a :class:`PodTable`: each row's node column, a uid-to-row map, which rows are fresh, and
the precomputed uses of the data, so that a request stays a handful of array operations:

* **headroom credits** (:class:`~extender.core.rules.Headroom`): per node and per *priority
  boundary*, how much usage of lower-priority pods a tier may leave out of the load. The
  boundaries are the distinct priorities of the table's fresh pods; the credit for a pod of
  priority P counts exactly the pods of priority below P. Beyond :data:`MAX_BOUNDARIES`
  distinct priorities the lowest ones are merged into one, and a pod at or below the merged
  ones gets no credit from them: the conservative side;
* **sibling estimates** (:class:`~extender.core.rules.Siblings`): per owner, a percentile of
  its running pods' usage.

Fresh means what it means for node samples: a finite value observed at most ``max_age`` from the
time the table was indexed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from extender.core.podusage import PodUsage
from extender.core.rules import Headroom, Siblings

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

#: Priority boundaries kept per snapshot. A cluster's pods take their priorities from its
#: PriorityClasses (a handful to a few dozen); each boundary costs two (resources, nodes) float
#: arrays per headroom mode (160 KB at 5,000 nodes), so 64 bound the cost at ~20 MB even for a
#: cluster that sets priorities freely. Beyond it the lowest boundaries are merged (conservative).
MAX_BOUNDARIES = 64

#: Resource rows of the per-pod arrays: cpu (cores), memory (bytes), as in ``core.RESOURCES``.
CPU, MEMORY = 0, 1

CREDIT_MODES = (Headroom.REQUESTS, Headroom.PREEMPTIBLE)


def row_credit(usage: FloatArray, requests: FloatArray, mode: Headroom) -> FloatArray:
    """(2, rows): how much of each pod's usage a tier with ``mode`` leaves out of the load when
    the pod is of lower priority. ``requests``: cpu above requests (CFS shares reclaim it),
    memory none (not reclaimable without an eviction). ``preemptible``: all of it (preemption
    evicts the pod, which frees its memory too). NaN usage (or request) gives no credit."""
    u = np.where(np.isfinite(usage), usage, 0.0)
    if mode is Headroom.PREEMPTIBLE:
        return u
    if mode is Headroom.REQUESTS:
        out = np.zeros_like(u)
        # An unknown request gives no credit (nothing is known to be reclaimable).
        req = requests[CPU]
        out[CPU] = np.where(np.isfinite(req), np.maximum(u[CPU] - req, 0.0), 0.0)
        return out
    return np.zeros_like(u)


@dataclass(frozen=True, slots=True)
class PodTable:
    """A PodUsage table indexed against a snapshot's node columns (see the module docstring)."""

    usage: PodUsage
    names: tuple[str, ...]
    """The node names it was indexed against; another snapshot with the same names reuses it."""
    cols: IndexArray
    """Per row, the node's snapshot column (the unknown column for a node not in the snapshot)."""
    rows: Mapping[str, int]
    """Pod UID to its row."""
    fresh: BoolArray
    """(2, rows): a finite sample at most ``max_age`` old when indexed."""
    indexed_at: float
    max_age_s: float
    bounds: IntArray
    """The distinct priorities of fresh pods, ascending (the highest :data:`MAX_BOUNDARIES`)."""
    credits: Mapping[Headroom, FloatArray]
    """Per headroom mode: (len(bounds) + 1, 2, width); entry k holds the credits of fresh pods
    whose priority is at or below ``bounds[k - 1]`` (entry 0: none), per node column. Only the
    modes some tier uses."""
    siblings: Mapping[str, tuple[float, float]]
    """Owner key to the percentile of its pods' fresh usage (cores, bytes); NaN for a resource
    with too few samples. Only owners with enough samples in one resource are kept."""
    siblings_rule: Siblings | None
    base: PodTable | None = None
    """For a table with departed pods taken out of its credits: the table as indexed (what the
    next snapshot reuses, so that departures are never taken out twice)."""

    def boundary(self, priority: int) -> int:
        """The credit entry for a pod of ``priority``: how many boundaries lie strictly below
        it (0: no pod is of lower priority)."""
        return int(np.searchsorted(self.bounds, priority, side="left"))

    def measured(self, uid: str) -> tuple[float, float] | None:
        """The pod's fresh measured usage (cores, bytes; NaN for a resource without a fresh
        sample), or None when the table has no fresh sample of it."""
        row = self.rows.get(uid)
        if row is None or not self.fresh[:, row].any():
            return None
        u = self.usage.usage[:, row]
        return (
            float(u[CPU]) if self.fresh[CPU, row] else math.nan,
            float(u[MEMORY]) if self.fresh[MEMORY, row] else math.nan,
        )

    def sampled_after(self, uid: str, resource: int, at: float) -> bool:
        """The pod has a fresh sample of ``resource`` observed at or after ``at``."""
        row = self.rows.get(uid)
        if row is None or not self.fresh[resource, row]:
            return False
        return bool(self.usage.sampled_at[resource, row] >= at)


def index_pods(
    usage: PodUsage,
    names: tuple[str, ...],
    index: Mapping[str, int],
    *,
    now: float,
    max_age_s: float,
    modes: Sequence[Headroom] = (),
    siblings: Siblings | None = None,
    previous: PodTable | None = None,
) -> PodTable:
    """Index ``usage`` against the snapshot columns ``index`` (width ``len(names) + 1``).

    ``previous`` (the table this one replaces) lends its node columns and its uid-to-row map
    when ``usage`` carries the very same uid and node tuples (the per-pod source hands back the
    same tuples while the pods stay the same) against the same names: at 150,000 pods those two
    cost ~65 ms, on the event loop, at every refresh."""
    n = len(usage)
    width = len(names) + 1
    unknown = width - 1
    if (
        previous is not None
        and previous.usage.uids is usage.uids
        and previous.usage.nodes is usage.nodes
        and previous.names == names
    ):
        cols, rows = previous.cols, previous.rows
    else:
        cols = np.fromiter(
            map(index.get, usage.nodes, itertools.repeat(unknown)), dtype=np.intp, count=n
        )
        rows = dict(zip(usage.uids, range(n), strict=True))  # twice as fast as a comprehension
    with np.errstate(invalid="ignore"):
        fresh = (
            np.isfinite(usage.usage)
            & (np.abs(now - usage.sampled_at) <= max_age_s)
            & (cols != unknown)[None, :]
        )
    priority = np.asarray(usage.priority, dtype=np.int64)
    present = fresh.any(axis=0)
    distinct = np.unique(priority[present])
    bounds = distinct[-MAX_BOUNDARIES:].astype(np.int64)
    credits: dict[Headroom, FloatArray] = {}
    for mode in modes:
        if mode in CREDIT_MODES and mode not in credits:
            credits[mode] = _credits(usage, fresh, cols, priority, bounds, width, mode)
    return PodTable(
        usage=usage,
        names=names,
        cols=cols,
        rows=rows,
        fresh=fresh,
        indexed_at=now,
        max_age_s=max_age_s,
        bounds=bounds,
        credits=credits,
        siblings=_siblings(usage, fresh, siblings) if siblings is not None else {},
        siblings_rule=siblings,
    )


def _credits(
    usage: PodUsage,
    fresh: BoolArray,
    cols: IndexArray,
    priority: IntArray,
    bounds: IntArray,
    width: int,
    mode: Headroom,
) -> FloatArray:
    """(boundaries + 1, 2, width): see :attr:`PodTable.credits`."""
    k = len(bounds) + 1
    out = np.zeros((k, 2, width))
    credit = np.where(fresh, row_credit(usage.usage, usage.requests, mode), 0.0)
    # A pod at (or, merged, below) bounds[rank] counts in every entry from rank + 1 on: those
    # are for pods whose priority is above bounds[rank], hence above its own.
    first = np.searchsorted(bounds, priority, side="left") + 1
    keep = first < k
    flat = first[keep] * width + cols[keep]
    for r in (CPU, MEMORY):
        per = np.bincount(flat, weights=credit[r, keep], minlength=k * width).reshape(k, width)
        out[:, r, :] = np.cumsum(per, axis=0)
    out.setflags(write=False)
    return out


def _siblings(usage: PodUsage, fresh: BoolArray, rule: Siblings) -> dict[str, tuple[float, float]]:
    """Owner to the ``rule.percentile`` of its pods' fresh usage, per resource (linear
    interpolation, as ``numpy.percentile``); owners with fewer than ``rule.min_pods`` samples
    in both resources are left out, and a resource with too few is NaN."""
    owners = list(dict.fromkeys(usage.owners))
    codes_of = dict(zip(owners, range(len(owners)), strict=True))
    codes = np.fromiter(map(codes_of.__getitem__, usage.owners), dtype=np.int64, count=len(usage))
    if not owners:
        return {}
    has_owner = np.array([o != "" for o in owners])[codes]
    q = rule.percentile / 100.0
    per_resource: list[FloatArray] = []
    for r in (CPU, MEMORY):
        mask = fresh[r] & has_owner
        c = codes[mask]
        v = usage.usage[r, mask]
        order = np.lexsort((v, c))
        c, v = c[order], v[order]
        counts = np.bincount(c, minlength=len(owners))
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        result = np.full(len(owners), np.nan)
        ok = counts >= max(rule.min_pods, 1)
        if ok.any():
            pos = (counts[ok] - 1) * q
            lo = np.floor(pos).astype(np.int64)
            hi = np.ceil(pos).astype(np.int64)
            a, b = v[starts[ok] + lo], v[starts[ok] + hi]
            result[ok] = a + (b - a) * (pos - lo)
        per_resource.append(result)
    cpu, mem = per_resource
    keep = np.flatnonzero(np.isfinite(cpu) | np.isfinite(mem))
    return {owners[i]: (float(cpu[i]), float(mem[i])) for i in keep.tolist()}


__all__ = [
    "CREDIT_MODES",
    "MAX_BOUNDARIES",
    "PodTable",
    "index_pods",
    "row_credit",
]

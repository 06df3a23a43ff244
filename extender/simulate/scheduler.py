"""kube-scheduler's placement arithmetic, as far as it decides where a pod goes.

Everything here is a pure function over arrays of the nodes in the scheduler's list order, so
the engine and the tests call the same code. The numbers follow the upstream sources
(``pkg/scheduler/schedule_one.go``, ``framework/plugins/noderesources``,
``framework/preemption``):

* **Filter** (``NodeResourcesFit``): a node fits when, for cpu (millicores), memory (bytes) and
  the pod count, the requests of its pods plus the pod's own stay within allocatable.
* **How many nodes are searched** (:func:`num_feasible_nodes_to_find`): every node below 100;
  otherwise ``percentageOfNodesToScore`` of them, adaptive when 0 (``50 - nodes/125`` percent,
  at least 5%), and never fewer than 100. The search starts where the previous one stopped
  (``nextStartNodeIndex``) and stops once that many feasible nodes are found.
* **Scores** (0..100 each, weight 1 each as in the default profile):
  ``NodeResourcesFit`` with ``LeastAllocated`` (:func:`least_allocated`) and
  ``NodeResourcesBalancedAllocation`` (:func:`balanced_allocation`), integer arithmetic as in Go.
* **Extender**: scores 0..10 count ``weight × 10`` (``MaxNodeScore / MaxExtenderPriority``).
* **Preemption** (:func:`select_victims`, :func:`pick_candidate`): on one node, remove every
  lower-priority pod, check the pod fits, then reprieve victims from the most important down
  while it still fits; among candidate nodes pick the one whose most important victim has the
  lowest priority, then the lowest sum of victim priorities, then the fewest victims, then the
  latest start of the most important victims, then the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MAX_NODE_SCORE = 100
"""``framework.MaxNodeScore``."""
MAX_EXTENDER_PRIORITY = 10
"""``extenderv1.MaxExtenderPriority``."""
MIN_FEASIBLE_NODES_TO_FIND = 100
"""``minFeasibleNodesToFind``: below this many nodes, every node is searched."""
MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND = 5
"""``minFeasibleNodesPercentageToFind``: the adaptive percentage never goes below this."""
MIN_CANDIDATE_NODES_PERCENTAGE = 10
"""DefaultPreemption's ``minCandidateNodesPercentage`` default."""
MIN_CANDIDATE_NODES_ABSOLUTE = 100
"""DefaultPreemption's ``minCandidateNodesAbsolute`` default."""


def num_feasible_nodes_to_find(percentage: int, num_all_nodes: int) -> int:
    """``numFeasibleNodesToFind``: how many feasible nodes the filter phase looks for."""
    if num_all_nodes < MIN_FEASIBLE_NODES_TO_FIND:
        return num_all_nodes
    if percentage == 0:
        percentage = 50 - num_all_nodes // 125
        percentage = max(percentage, MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND)
    num = num_all_nodes * percentage // 100
    return max(num, MIN_FEASIBLE_NODES_TO_FIND)


def num_preemption_candidates(num_nodes: int) -> int:
    """``GetOffsetAndNumCandidates``: how many candidate nodes the preemption dry run collects."""
    n = num_nodes * MIN_CANDIDATE_NODES_PERCENTAGE // 100
    n = max(n, MIN_CANDIDATE_NODES_ABSOLUTE)
    return min(n, num_nodes)


def fits(
    req_cpu_m: IntArray,
    req_mem: IntArray,
    pods: IntArray,
    alloc_cpu_m: IntArray,
    alloc_mem: IntArray,
    max_pods: IntArray,
    pod_cpu_m: int,
    pod_mem: int,
) -> BoolArray:
    """NodeResourcesFit's filter for every node at once."""
    ok: BoolArray = (
        (pods + 1 <= max_pods)
        & (req_cpu_m + pod_cpu_m <= alloc_cpu_m)
        & (req_mem + pod_mem <= alloc_mem)
    )
    return ok


def search_feasible(fit: BoolArray, start: int, to_find: int) -> tuple[IntArray, int]:
    """Walk the node list from ``start`` (wrapping) and keep the first ``to_find`` fitting nodes.

    Returns the kept node indices in visiting order and how many nodes were processed (which
    advances ``nextStartNodeIndex``): upstream cancels the search when it meets one feasible
    node more than it needs, which it neither keeps nor counts, so the nodes processed are the
    ones before that node. Upstream filters in parallel; list order is the deterministic
    version of the same search.
    """
    n = len(fit)
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    order = (np.arange(n, dtype=np.int64) + start) % n
    visited = fit[order]
    running = np.cumsum(visited)
    # Where the one feasible node too many was met; every node when there was none.
    processed = int(np.searchsorted(running, to_find + 1)) if running[-1] > to_find else n
    chosen = order[:processed][visited[:processed]]
    return chosen.astype(np.int64), processed


def least_allocated(
    req_cpu_m: IntArray, alloc_cpu_m: IntArray, req_mem: IntArray, alloc_mem: IntArray
) -> IntArray:
    """NodeResourcesFit ``LeastAllocated`` score (0..100), cpu and memory weight 1 each.

    ``req_*`` already include the incoming pod (non-zero requests). Per resource
    ``(allocatable - requested) * 100 / allocatable`` in integer arithmetic, 0 when requested
    exceeds allocatable or allocatable is 0; the node score is the weighted mean, truncated.
    """

    def one(req: IntArray, cap: IntArray) -> IntArray:
        safe = np.where(cap == 0, 1, cap)
        score = ((cap - req) * MAX_NODE_SCORE) // safe
        out: IntArray = np.where((cap == 0) | (req > cap), 0, score).astype(np.int64)
        return out

    total: IntArray = (one(req_cpu_m, alloc_cpu_m) + one(req_mem, alloc_mem)) // 2
    return total


def balanced_allocation(
    req_cpu_m: IntArray, alloc_cpu_m: IntArray, req_mem: IntArray, alloc_mem: IntArray
) -> IntArray:
    """``NodeResourcesBalancedAllocation`` score (0..100) for cpu and memory.

    Fractions ``requested / allocatable`` (incoming pod included) capped at 1; with two
    resources the standard deviation is ``|f_cpu - f_mem| / 2``; score ``int((1 - std) * 100)``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        f_cpu = np.minimum(req_cpu_m / alloc_cpu_m, 1.0)
        f_mem = np.minimum(req_mem / alloc_mem, 1.0)
    both = (alloc_cpu_m > 0) & (alloc_mem > 0)
    std = np.where(both, np.abs(f_cpu - f_mem) / 2.0, 0.0)
    out: IntArray = ((1.0 - std) * MAX_NODE_SCORE).astype(np.int64)
    return out


def extender_points(score: int, weight: int) -> int:
    """What one extender score adds to a node's total."""
    return score * weight * (MAX_NODE_SCORE // MAX_EXTENDER_PRIORITY)


@dataclass(frozen=True, slots=True)
class Running:
    """A pod on a node, as preemption sees it."""

    uid: str
    priority: int
    cpu_m: int
    memory: int
    started: float


@dataclass(frozen=True, slots=True)
class Candidate:
    node: int
    victims: tuple[Running, ...]


def select_victims(
    running: Sequence[Running],
    priority: int,
    free_cpu_m: int,
    free_mem: int,
    free_pods: int,
    pod_cpu_m: int,
    pod_mem: int,
) -> tuple[Running, ...] | None:
    """``SelectVictimsOnNode`` by requests: None when evicting every lower-priority pod would not
    make room; else the smallest set left after reprieving the most important pods first."""
    lower = [r for r in running if r.priority < priority]
    if not lower:
        return None
    cpu = free_cpu_m + sum(r.cpu_m for r in lower)
    mem = free_mem + sum(r.memory for r in lower)
    slots = free_pods + len(lower)
    if cpu < pod_cpu_m or mem < pod_mem or slots < 1:
        return None
    cpu -= pod_cpu_m
    mem -= pod_mem
    slots -= 1
    victims = []
    # MoreImportantPod: higher priority first, then the one that started earlier.
    for r in sorted(lower, key=lambda r: (-r.priority, r.started, r.uid)):
        if r.cpu_m <= cpu and r.memory <= mem and slots >= 1:
            cpu -= r.cpu_m
            mem -= r.memory
            slots -= 1
        else:
            victims.append(r)
    return tuple(victims) if victims else None


def pick_candidate(candidates: Sequence[Candidate]) -> Candidate | None:
    """``pickOneNodeForPreemption`` without PodDisruptionBudgets."""
    best: Candidate | None = None
    best_key: tuple[int, int, int, float] | None = None
    for cand in candidates:
        if not cand.victims:
            continue
        top = max(v.priority for v in cand.victims)
        total = sum(v.priority + 2**31 for v in cand.victims)
        earliest_top = min(v.started for v in cand.victims if v.priority == top)
        key = (top, total, len(cand.victims), -earliest_top)
        if best_key is None or key < best_key:
            best, best_key = cand, key
    return best

"""Plain data the decision reads: pods, nodes, samples and the immutable snapshot.

A :class:`Snapshot` is built off the request path (by :func:`build_snapshot`) whenever one of its
inputs changes, and swapped in atomically. It stores per-node data as numpy columns so that one
request over thousands of nodes is a handful of array operations rather than a Python loop per
node. Every array has one extra trailing column of "unknown" values (NaN): a node name that the
snapshot does not know maps to index ``-1`` and so reads as missing data, never as an error.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from extender.core.rules import RESOURCES, EstimateFrom, Estimation

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class ContainerResources:
    """One container's requests and limits for cpu (cores) and memory (bytes); None if unset."""

    cpu_request: float | None = None
    cpu_limit: float | None = None
    memory_request: float | None = None
    memory_limit: float | None = None
    restartable: bool = False
    """An init container with ``restartPolicy: Always``: a native sidecar, which keeps running
    beside the app containers (meaningless on an app container)."""


@dataclass(frozen=True, slots=True)
class PodInfo:
    """The fields of a Pod that decisions use."""

    namespace: str
    name: str
    uid: str = ""
    priority: int = 0
    priority_class_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    owner_kinds: tuple[str, ...] = ()
    containers: tuple[ContainerResources, ...] = ()
    init_containers: tuple[ContainerResources, ...] = ()
    overhead_cpu: float = 0.0
    overhead_memory: float = 0.0
    pinned_node: str = ""
    """The one node the pod's required node affinity pins it to by ``metadata.name``, written
    the way the DaemonSet controller schedules its pods; "" when it has no such affinity."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the extender knows of one node apart from its live samples."""

    name: str
    allocatable_cpu: float | None = None
    allocatable_memory: float | None = None
    requested_cpu: float | None = None
    """Sum of the requests of all pods bound to the node (cores), just-placed ones included,
    when a pod cache knows it."""
    requested_memory: float | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    value: float
    timestamp: float
    """Seconds since the epoch at which the value was observed (not fetched)."""


@dataclass(frozen=True, slots=True)
class PlacedPod:
    """A pod bound to a node, with its usage estimate, for the just-placed projection."""

    node: str
    cpu: float
    memory: float
    bound_at: float
    uid: str = ""
    """Keys the pod's baseline (see :func:`build_snapshot`); empty: no evidence is used."""


Baseline = tuple[float, float]
"""A node's (cpu, memory) samples as the pod was first seen bound: what its node showed before
the pod's usage could; NaN where there was no sample."""


def _container_estimate(
    request: float | None, limit: float | None, default: float, est: Estimation
) -> float:
    scaled = None if request is None else request * est.requests_factor
    first, second = (limit, scaled) if est.prefer is EstimateFrom.LIMITS else (scaled, limit)
    if first is not None:
        return first
    if second is not None:
        return second
    return default


Sizer = Callable[[ContainerResources], tuple[float, float]]
"""(cpu cores, memory bytes) of one container by some rule (requests, or an estimate)."""


def pod_footprint(pod: PodInfo, size: Sizer) -> tuple[float, float]:
    """A pod's (cpu, memory) as kube-scheduler adds it up (``resourcehelper.PodRequests``), with
    each container sized by ``size``. The one place this rule lives.

    App containers and sidecars (restartable init containers) run together and add up. An
    ordinary init container runs alone, beside the sidecars started before it in the list: the
    pod needs the larger of the two. Pod overhead is added on top.
    """
    cpu = mem = 0.0
    for c in pod.containers:
        c_cpu, c_mem = size(c)
        cpu += c_cpu
        mem += c_mem
    side_cpu = side_mem = 0.0  # sidecars started so far
    init_cpu = init_mem = 0.0  # the most any init step needs
    for c in pod.init_containers:
        c_cpu, c_mem = size(c)
        if c.restartable:
            cpu += c_cpu
            mem += c_mem
            side_cpu += c_cpu
            side_mem += c_mem
            step_cpu, step_mem = side_cpu, side_mem
        else:
            step_cpu, step_mem = c_cpu + side_cpu, c_mem + side_mem
        init_cpu = max(init_cpu, step_cpu)
        init_mem = max(init_mem, step_mem)
    return max(cpu, init_cpu) + pod.overhead_cpu, max(mem, init_mem) + pod.overhead_memory


def _requested(c: ContainerResources) -> tuple[float, float]:
    return c.cpu_request or 0.0, c.memory_request or 0.0


def pod_requests(pod: PodInfo) -> tuple[float, float]:
    """The (cpu cores, memory bytes) the scheduler counts for the pod: its effective requests."""
    return pod_footprint(pod, _requested)


def estimate_pod(pod: PodInfo, est: Estimation) -> tuple[float, float]:
    """Estimated (cpu cores, memory bytes) a pod will use, as the scheduler sizes it.

    Per container: the preferred field (requests × factor, or limits), else the other one, else
    the default; the containers combine by :func:`pod_footprint`'s rule, plus the overhead.
    """

    def size(c: ContainerResources) -> tuple[float, float]:
        return (
            _container_estimate(c.cpu_request, c.cpu_limit, est.default_cpu, est),
            _container_estimate(c.memory_request, c.memory_limit, est.default_memory, est),
        )

    return pod_footprint(pod, size)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a decision reads about the cluster, immutable once built.

    Arrays have shape ``(rows, len(names) + 1)``; the last column is the unknown node.
    """

    names: tuple[str, ...]
    index: Mapping[str, int]
    signals: tuple[str, ...]
    values: FloatArray
    """(signals, nodes): the latest valid sample, NaN where missing."""
    sampled_at: FloatArray
    """(signals, nodes): when that sample was observed, NaN where missing."""
    allocatable: FloatArray
    """(resources, nodes): cpu cores and memory bytes, NaN where unknown."""
    requested: FloatArray
    """(resources, nodes): sum of bound pods' requests, NaN where unknown."""
    placed: FloatArray
    """(resources, nodes): estimated usage of pods placed since the node's latest sample."""
    source_ok_at: float | None
    """When the live source last refreshed successfully; None when there is no live source."""
    built_at: float
    table: FloatArray = field(init=False, repr=False, compare=False)
    """All the per-node rows above stacked, so a request gathers its candidates in one take."""

    def __post_init__(self) -> None:
        table = np.vstack(
            [self.values, self.sampled_at, self.allocatable, self.requested, self.placed]
        )
        table.setflags(write=False)
        object.__setattr__(self, "table", table)

    def gather(self, cols: IndexArray) -> tuple[FloatArray, ...]:
        """(values, sampled_at, allocatable, requested, placed) of the given columns."""
        g = np.take(self.table, cols, axis=1)
        s, r = len(self.signals), len(RESOURCES)
        return (
            g[:s],
            g[s : 2 * s],
            g[2 * s : 2 * s + r],
            g[2 * s + r : 2 * s + 2 * r],
            g[2 * s + 2 * r :],
        )

    def lookup(self, names: Sequence[str]) -> IndexArray:
        """Column indices for node names; -1 (the unknown column) for names not known."""
        return np.fromiter(
            map(self.index.get, names, itertools.repeat(-1)), dtype=np.intp, count=len(names)
        )


def empty_snapshot(signals: Sequence[str] = RESOURCES, now: float = 0.0) -> Snapshot:
    return build_snapshot([], {}, [], signals=signals, source_ok_at=None, window_s=0.0, now=now)


def visible_fraction(age_at_sample: float, lag_s: float, window_s: float) -> float:
    """How much of a pod's usage its node's sample shows, ``age_at_sample`` after the bind.

    Nothing until ``lag_s`` (the container starts, a scrape and a rule evaluation take it in),
    then linearly more until all of it at ``window_s``: a ``rate()`` over a window takes in a
    step change linearly across that window. A sample older than the bind (negative age) or
    missing (NaN) shows nothing.
    """
    if not age_at_sample > lag_s:  # NaN compares False: nothing shown
        return 0.0
    ramp = window_s - lag_s
    if ramp <= 0 or age_at_sample >= window_s:
        return 1.0
    return (age_at_sample - lag_s) / ramp


def unseen_usage(
    estimates: Sequence[float],
    bound_at: Sequence[float],
    baselines: Sequence[float],
    sampled_at: float,
    sample: float,
    allocatable: float,
    lag_s: float,
    window_s: float,
) -> float:
    """The usage of one node's placed pods (one resource, absolute units) its sample does not
    show yet. Pods in bind order; ``baselines`` are the node's samples (utilization) as each pod
    was first seen bound, NaN where unknown.

    Two bounds, the lower wins, never below zero:

    * the **fade**: each estimate times what :func:`visible_fraction` says the sample does not
      show yet;
    * the **evidence**: since the earliest pod with a baseline was bound, the sample has risen
      by ``(sample - baseline) × allocatable``; that much of those pods' estimates is already in
      it and is not counted twice. A fall is no evidence (other load may have left).
    """
    fade = [
        e * (1.0 - visible_fraction(sampled_at - t, lag_s, window_s))
        for e, t in zip(estimates, bound_at, strict=True)
    ]
    first = next((i for i, b in enumerate(baselines) if math.isfinite(b)), None)
    if first is None or not (math.isfinite(sample) and allocatable > 0):
        return sum(fade)
    rise = max(0.0, sample - baselines[first]) * allocatable
    covered = max(0.0, min(sum(fade[first:]), sum(estimates[first:]) - rise))
    return sum(fade[:first]) + covered


def _baseline(baselines: Mapping[str, Baseline] | None, pod: PlacedPod, r: int) -> float:
    if baselines is None or not pod.uid:
        return math.nan
    got = baselines.get(pod.uid)
    return math.nan if got is None else got[r]


def build_snapshot(
    nodes: Iterable[NodeInfo],
    samples: Mapping[str, Mapping[str, Sample]],
    placements: Iterable[PlacedPod],
    *,
    signals: Sequence[str],
    source_ok_at: float | None,
    window_s: float,
    now: float,
    lag_s: float = 0.0,
    baselines: Mapping[str, Baseline] | None = None,
) -> Snapshot:
    """Assemble a snapshot from its parts.

    ``samples`` maps node name to signal name to sample; a node that has samples but is not in
    ``nodes`` still gets a column (its allocatable is unknown). Placed pods add to ``placed`` by
    :func:`unseen_usage`, per resource, against that resource's sample on their node.
    """
    node_list = list(nodes)
    names: list[str] = [n.name for n in node_list]
    seen = set(names)
    for name in samples:
        if name not in seen:
            names.append(name)
            seen.add(name)
    index = {name: i for i, name in enumerate(names)}
    width = len(names) + 1
    sig = tuple(signals)

    values = np.full((len(sig), width), np.nan)
    sampled_at = np.full((len(sig), width), np.nan)
    for node_name, per_signal in samples.items():
        col = index[node_name]
        for row, signal in enumerate(sig):
            sample = per_signal.get(signal)
            if sample is not None:
                values[row, col] = sample.value
                sampled_at[row, col] = sample.timestamp

    allocatable = np.full((len(RESOURCES), width), np.nan)
    requested = np.full((len(RESOURCES), width), np.nan)
    for node in node_list:
        col = index[node.name]
        allocatable[:, col] = (_nan(node.allocatable_cpu), _nan(node.allocatable_memory))
        requested[:, col] = (_nan(node.requested_cpu), _nan(node.requested_memory))

    placed = np.zeros((len(RESOURCES), width))  # nothing placed on an unknown node either
    by_node: dict[int, list[PlacedPod]] = {}
    for pod in placements:
        at = index.get(pod.node)
        if at is not None:
            by_node.setdefault(at, []).append(pod)
    rows = {r: sig.index(resource) for r, resource in enumerate(RESOURCES) if resource in sig}
    for pcol, pods in by_node.items():
        pods.sort(key=lambda p: p.bound_at)
        for r in range(len(RESOURCES)):
            srow = rows.get(r)
            placed[r, pcol] = unseen_usage(
                [(p.cpu, p.memory)[r] for p in pods],
                [p.bound_at for p in pods],
                [_baseline(baselines, p, r) for p in pods],
                math.nan if srow is None else float(sampled_at[srow, pcol]),
                math.nan if srow is None else float(values[srow, pcol]),
                float(allocatable[r, pcol]),
                lag_s,
                window_s,
            )

    for arr in (values, sampled_at, allocatable, requested, placed):
        arr.setflags(write=False)
    return Snapshot(
        names=tuple(names),
        index=index,
        signals=sig,
        values=values,
        sampled_at=sampled_at,
        allocatable=allocatable,
        requested=requested,
        placed=placed,
        source_ok_at=source_ok_at,
        built_at=now,
    )

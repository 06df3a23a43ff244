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
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from extender.core.pods import PodTable, index_pods, row_credit
from extender.core.podusage import Departure, PodUsage
from extender.core.rules import RESOURCES, EstimateFrom, Estimation, Headroom, Siblings

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]


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
    owner: str = ""
    """The controller owner reference as :func:`~extender.core.podusage.owner_key` spells it
    (``kind/namespace/name``); "" when the pod has no controller. Keys its siblings."""
    preemption_policy: str = "PreemptLowerPriority"
    """``spec.preemptionPolicy``: ``Never`` means the pod preempts nothing, so a
    ``preemptible`` headroom leaves nothing out for it."""


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
    departed: FloatArray | None = None
    """(resources, nodes): measured usage of recently departed pods their node's sample still
    shows (the mirror of ``placed``), subtracted in projections. None: zeros."""
    pods: PodTable | None = None
    """The per-pod usage table, indexed (None: no fresh per-pod data; node-level behaviour)."""
    built_from: tuple[object, tuple[NodeInfo, ...]] = field(
        default=(None, ()), repr=False, compare=False
    )
    """The samples mapping and the nodes this snapshot was built from, so the next build can
    reuse its sample rows when the samples are the same object and its node columns for the
    nodes that are the same objects (``build_snapshot``'s ``reuse``)."""
    placed_key: tuple[int, float, float] = field(default=(-1, 0.0, 0.0), repr=False, compare=False)
    """The :attr:`PlacedRows.serial` of the rows ``placed`` was computed from, with the lag
    and the window: the next build recomputes only the columns those rows' successor touched
    (``build_snapshot``'s ``reuse``)."""
    table: FloatArray = field(init=False, repr=False, compare=False)
    """All the per-node rows above stacked, so a request gathers its candidates in one take."""

    def __post_init__(self) -> None:
        if self.departed is None:
            departed = np.zeros((len(RESOURCES), len(self.names) + 1))
            departed.setflags(write=False)
            object.__setattr__(self, "departed", departed)
        assert self.departed is not None
        table = np.vstack(
            [
                self.values,
                self.sampled_at,
                self.allocatable,
                self.requested,
                self.placed,
                self.departed,
            ]
        )
        table.setflags(write=False)
        object.__setattr__(self, "table", table)

    def gather(self, cols: IndexArray) -> tuple[FloatArray, ...]:
        """(values, sampled_at, allocatable, requested, placed, departed) of the columns."""
        g = np.take(self.table, cols, axis=1)
        s, r = len(self.signals), len(RESOURCES)
        return (
            g[:s],
            g[s : 2 * s],
            g[2 * s : 2 * s + r],
            g[2 * s + r : 2 * s + 2 * r],
            g[2 * s + 2 * r : 2 * s + 3 * r],
            g[2 * s + 3 * r :],
        )

    def siblings_estimate(self, owner: str) -> tuple[float, float] | None:
        """The percentile of ``owner``'s running pods' usage (NaN per resource without enough
        samples), or None when siblings are off, there is no per-pod data or too few pods."""
        if self.pods is None or not owner:
            return None
        return self.pods.siblings.get(owner)

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


def departed_usage(
    departures: Sequence[Departure],
    index: Mapping[str, int],
    width: int,
    measured: Mapping[str, tuple[float, float]],
    node_sampled_at: FloatArray,
    lag_s: float,
    window_s: float,
) -> FloatArray:
    """(2, width): usage of departed pods their node's sample still shows, to subtract.

    The mirror of ``unseen_usage``'s fade: a pod gone at ``departed_at`` leaves the sample as
    a started pod enters it, fully shown until ``lag_s`` after, then less, linearly, until gone
    at ``window_s``. Only pods with a **measured** usage (``measured``: uid to cores, bytes) are
    subtracted: a pod the per-pod data never saw may never have been in the sample either, and
    with no per-pod data the decision must be exactly the node-level one.
    ``node_sampled_at`` is (2, width): when each node's cpu and memory samples were observed.
    """
    out = np.zeros((2, width))
    for dep in departures:
        col = index.get(dep.node)
        got = measured.get(dep.uid)
        if col is None or got is None:
            continue
        for r in range(len(RESOURCES)):
            value = got[r]
            if not math.isfinite(value) or value <= 0:
                continue
            age = float(node_sampled_at[r, col]) - dep.departed_at
            if not math.isfinite(age):
                continue
            # The sample still shows what the fade has not taken out yet; a sample from before
            # the departure (negative age) shows all of it.
            out[r, col] += value * (1.0 - visible_fraction(age, lag_s, window_s))
    return out


def visible_fractions(age: FloatArray, lag_s: float, window_s: float) -> FloatArray:
    """:func:`visible_fraction` of each age (NaN: nothing shown)."""
    ramp = window_s - lag_s
    with np.errstate(invalid="ignore"):
        shown = age > lag_s  # NaN compares False
        full = shown & ((ramp <= 0) | (age >= window_s))
        part = (age - lag_s) / ramp if ramp > 0 else np.zeros_like(age)
    return np.where(full, 1.0, np.where(shown, part, 0.0))


def unseen_usage_by_node(
    cols: IndexArray,
    estimates: FloatArray,
    bound_at: FloatArray,
    baselines: FloatArray,
    sampled_at: FloatArray,
    sample: FloatArray,
    allocatable: FloatArray,
    lag_s: float,
    window_s: float,
    width: int,
) -> FloatArray:
    """:func:`unseen_usage` of every node at once (one resource): the pods' node columns,
    estimates, bind times and baselines (NaN: none), and per node (``width`` columns) its
    sample's time and value and its allocatable. The same two bounds, by array operations
    rather than a Python loop per node, since it runs on every publication of the cluster
    cache (every 100 ms while pods are being bound)."""
    out = np.zeros(width)
    if len(cols) == 0:
        return out
    order = np.lexsort((bound_at, cols))  # by node, then bind order
    c, e, t, b = cols[order], estimates[order], bound_at[order], baselines[order]
    fade = e * (1.0 - visible_fractions(sampled_at[c] - t, lag_s, window_s))
    step = c[1:] != c[:-1]
    starts = np.flatnonzero(np.concatenate(([True], step)))
    group = np.cumsum(np.concatenate(([False], step)))  # each pod's node group, 0..groups-1
    gcols = c[starts]
    n = len(c)
    position = np.arange(n)
    finite = np.isfinite(b)
    first = np.minimum.reduceat(np.where(finite, position, n), starts)  # n: no baseline
    after = position >= first[group]
    ngroups = len(starts)
    fade_before = np.bincount(group, weights=np.where(after, 0.0, fade), minlength=ngroups)
    fade_after = np.bincount(group, weights=np.where(after, fade, 0.0), minlength=ngroups)
    est_after = np.bincount(group, weights=np.where(after, e, 0.0), minlength=ngroups)
    total_fade = fade_before + fade_after
    s_now, alloc = sample[gcols], allocatable[gcols]
    has = (first < n) & np.isfinite(s_now) & (alloc > 0)
    base_first = np.where(has, b[np.minimum(first, n - 1)], 0.0)
    with np.errstate(invalid="ignore"):
        rise = np.maximum(0.0, s_now - base_first) * alloc
        covered = np.maximum(0.0, np.minimum(fade_after, est_after - rise))
    out[gcols] = np.where(has, fade_before + covered, total_fade)
    return out


def _baseline(baselines: Mapping[str, Baseline] | None, pod: PlacedPod) -> Baseline:
    """The pod's (cpu, memory) baseline, NaN where it has none (no uid, or none recorded)."""
    got = None if baselines is None or not pod.uid else baselines.get(pod.uid)
    return (math.nan, math.nan) if got is None else (got[0], got[1])


# --- placed pods and departures as columns, kept from one build to the next ---------------------


class _Keyed(Protocol):
    @property
    def uid(self) -> str: ...

    @property
    def node(self) -> str: ...


K = TypeVar("K", bound=_Keyed)

_node_of = operator.attrgetter("node")
_uid_of = operator.attrgetter("uid")


def align(old: tuple[K, ...], new: tuple[K, ...]) -> IndexArray:
    """For each entry of ``new``, the position of the equal entry of ``old`` it is paired with;
    -1 where there is none (its row is computed afresh).

    Pairs keep their order in both: that is how the cluster cache's lists change from one
    publication to the next (entries leave from anywhere, new ones arrive at the end, a changed
    one keeps its place). Equal runs are found by comparing tuple slices, galloping, which
    compares element by element in C and by identity first: the Python work grows with the
    number of differences (times a logarithm), not with the length. Where the next entries
    differ, the old one is taken as replaced by the new one when they have the same ``uid``
    (neither is paired), else as gone. Any other change (an entry arriving in the middle)
    leaves entries unpaired that could have been paired, which only costs their
    recomputation; so does giving up after ``64 + len(old) // 8`` old entries skipped, which
    bounds the work on unrelated lists.
    """
    out = np.full(len(new), -1, dtype=np.intp)
    i = j = 0
    skips = 64 + len(old) // 8
    while i < len(old) and j < len(new):
        run = _equal_run(old, i, new, j)
        if run:
            out[j : j + run] = np.arange(i, i + run)
            i += run
            j += run
            continue
        if old[i].uid == new[j].uid:  # changed in place
            j += 1
        else:  # gone
            skips -= 1
            if not skips:
                break
        i += 1
    return out


def _equal_run(old: tuple[K, ...], i: int, new: tuple[K, ...], j: int) -> int:
    """How many entries from ``old[i]`` and ``new[j]`` on are equal, pairwise."""
    limit = min(len(old) - i, len(new) - j)
    if old[i : i + 1] != new[j : j + 1]:  # a slice compares by identity first, an element not
        return 0
    lo, step = 1, 1
    while lo < limit:
        hi = min(lo + step, limit)
        if old[i + lo : i + hi] == new[j + lo : j + hi]:
            lo, step = hi, step * 2
            continue
        while hi - lo > 1:  # the first difference is in [lo, hi)
            mid = (lo + hi) // 2
            if old[i + lo : i + mid] == new[j + lo : j + mid]:
                lo = mid
            else:
                hi = mid
        return lo
    return lo


def _columns(entries: tuple[K, ...], index: Mapping[str, int]) -> IndexArray:
    """Each entry's node column in ``index``; -1 where the node is not in it."""
    return np.fromiter(
        map(index.get, map(_node_of, entries), itertools.repeat(-1)),
        dtype=np.intp,
        count=len(entries),
    )


def _frozen(*arrays: npt.NDArray[np.generic]) -> None:
    for arr in arrays:
        arr.setflags(write=False)


_serials = itertools.count()
"""Tells :class:`PlacedRows` apart (see :attr:`PlacedRows.serial`)."""


@dataclass(frozen=True, slots=True)
class PlacedRows:
    """Placed pods as columns, in their order, each with its baseline: all that
    :func:`build_snapshot` reads of them. Made by :func:`placed_rows`, which takes the rows of
    an earlier one for the pods both have, so that a store keeps them at the cost of what
    changed, and says which node columns that touched, so that a build redoes only those."""

    pods: tuple[PlacedPod, ...]
    names: tuple[str, ...]
    """The snapshot node names ``cols`` refer to (see :meth:`located`)."""
    cols: IndexArray
    """Each pod's node column among ``names``; -1 where its node is not one of them."""
    estimates: FloatArray
    """(resources, pods): cpu cores and memory bytes."""
    bound_at: FloatArray
    has_uid: BoolArray
    baselines: FloatArray
    """(resources, pods): the node's samples as the pod was first seen bound; NaN where none."""
    serial: int = field(default_factory=lambda: next(_serials))
    """A number no other rows have: a snapshot records the rows it was built from by it."""
    since: int = -1
    """The serial of the rows these were made from, with the same ``names``; -1: none."""
    touched: IndexArray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    """The node columns whose pods differ from those of the rows ``since`` (a pod came, went,
    or got a baseline), in no order, some maybe twice: the others' pods are the same, in the
    same order."""

    def located(self, index: Mapping[str, int], names: tuple[str, ...]) -> PlacedRows:
        """These rows with their node columns among ``names`` (``index`` maps them)."""
        if self.names is names:
            return self
        if self.names == names:  # the same columns; the names object itself next time
            return replace(self, names=names)
        cols = _columns(self.pods, index)
        _frozen(cols)
        return PlacedRows(
            self.pods, names, cols, self.estimates, self.bound_at, self.has_uid, self.baselines
        )


def placed_rows(
    pods: Sequence[PlacedPod],
    baselines: Mapping[str, Baseline] | None,
    index: Mapping[str, int],
    names: tuple[str, ...],
    *,
    previous: PlacedRows | None = None,
    origin: IndexArray | None = None,
    recheck: bool = False,
) -> PlacedRows:
    """The rows of ``pods``: their estimates and bind times, their baselines from ``baselines``
    (by uid; none for a pod without one), their node columns from ``index`` (of ``names``).

    With ``previous``, a pod paired with one of its rows (``origin``, :func:`align` of the two
    lists when not given) takes that row as it is, baseline included, and only the others are
    read. So a pod's baseline must not change while it stays placed, except from none to one,
    which ``recheck`` looks up again for the paired rows that have none. The store's baselines
    behave so: a baseline is what the node showed as the pod was first seen bound.
    """
    pods_t = tuple(pods)
    n = len(pods_t)
    if previous is None or not previous.pods:
        origin = np.full(n, -1, dtype=np.intp)
    elif origin is None:
        origin = align(previous.pods, pods_t)
    fresh: list[int] = np.flatnonzero(origin < 0).tolist()
    same_names = previous is not None and (previous.names is names or previous.names == names)
    if previous is not None and len(fresh) < n:
        at = np.maximum(origin, 0)  # the fresh rows are written over below
        estimates = np.take(previous.estimates, at, axis=1)  # ~6x faster than [:, at]
        bound_at = previous.bound_at[at]
        has_uid = previous.has_uid[at]
        base = np.take(previous.baselines, at, axis=1)
        cols = previous.cols[at] if same_names else np.empty(n, dtype=np.intp)
    else:
        estimates = np.empty((len(RESOURCES), n))
        bound_at = np.empty(n)
        has_uid = np.empty(n, dtype=bool)
        base = np.empty((len(RESOURCES), n))
        cols = np.empty(n, dtype=np.intp)
    if fresh:
        new = [pods_t[k] for k in fresh]
        estimates[0, fresh] = [p.cpu for p in new]
        estimates[1, fresh] = [p.memory for p in new]
        bound_at[fresh] = [p.bound_at for p in new]
        has_uid[fresh] = [bool(p.uid) for p in new]
        base[:, fresh] = np.array([_baseline(baselines, p) for p in new], dtype=np.float64).T
        if same_names:
            cols[fresh] = [index.get(p.node, -1) for p in new]
    if not same_names:
        cols = _columns(pods_t, index)
    again: list[int] = []
    if recheck and previous is not None:
        paired = origin >= 0
        for k in np.flatnonzero(paired & has_uid & np.isnan(base).all(axis=0)).tolist():
            got = _baseline(baselines, pods_t[k])
            if not (math.isnan(got[0]) and math.isnan(got[1])):
                base[:, k] = got
                again.append(k)
    _frozen(cols, estimates, bound_at, has_uid, base)
    if previous is None or not same_names:
        return PlacedRows(pods_t, names, cols, estimates, bound_at, has_uid, base)
    kept = np.zeros(len(previous.pods), dtype=bool)
    kept[origin[origin >= 0]] = True
    touched = np.concatenate([cols[fresh], previous.cols[~kept], cols[again]])
    touched = touched[touched >= 0]
    _frozen(touched)
    return PlacedRows(
        pods_t,
        names,
        cols,
        estimates,
        bound_at,
        has_uid,
        base,
        since=previous.serial,
        touched=touched,
    )


@dataclass(frozen=True, slots=True)
class DepartedRows:
    """Recent departures as columns, in their order, each with the measured usage remembered
    for it: all that :func:`build_snapshot` reads of them besides the per-pod table. Made by
    :func:`departed_rows`, which takes the rows of an earlier one for the departures both
    have."""

    departures: tuple[Departure, ...]
    names: tuple[str, ...]
    """The snapshot node names ``cols`` refer to (see :meth:`located`)."""
    cols: IndexArray
    """Each departure's node column among ``names``; -1 where its node is not one of them."""
    departed_at: FloatArray
    measured: FloatArray
    """(resources, departures): the remembered measured usage (cores, bytes); NaN where none
    is remembered, or for that resource."""
    remembered: BoolArray
    """A measured usage is remembered for the pod."""

    def located(self, index: Mapping[str, int], names: tuple[str, ...]) -> DepartedRows:
        """These rows with their node columns among ``names`` (``index`` maps them)."""
        if self.names is names:
            return self
        if self.names == names:  # the same columns; the names object itself next time
            return replace(self, names=names)
        cols = _columns(self.departures, index)
        _frozen(cols)
        return replace(self, names=names, cols=cols)


_NOT_MEASURED = (math.nan, math.nan)


def departed_rows(
    departures: Sequence[Departure],
    measured: Mapping[str, tuple[float, float]] | None,
    index: Mapping[str, int],
    names: tuple[str, ...],
    *,
    previous: DepartedRows | None = None,
    origin: IndexArray | None = None,
    recheck: bool = False,
) -> DepartedRows:
    """The rows of ``departures``: their departure times, their remembered usage from
    ``measured`` (by uid), their node columns from ``index`` (of ``names``).

    ``previous``, ``origin`` and ``recheck`` as for :func:`placed_rows`: a remembered usage must
    not change while its pod stays departed, except from none to one (the store's do not: a
    usage is remembered from the table current when the departure arrived).
    """
    deps = tuple(departures)
    n = len(deps)
    if previous is None or not previous.departures:
        origin = np.full(n, -1, dtype=np.intp)
    elif origin is None:
        origin = align(previous.departures, deps)
    paired = origin >= 0
    fresh: list[int] = np.flatnonzero(~paired).tolist()
    same_names = previous is not None and (previous.names is names or previous.names == names)
    if previous is not None and len(fresh) < n:
        at = np.maximum(origin, 0)  # the fresh rows are written over below
        departed_at = previous.departed_at[at]
        usage = np.take(previous.measured, at, axis=1)
        remembered = previous.remembered[at]
        cols = previous.cols[at] if same_names else np.empty(n, dtype=np.intp)
    else:
        departed_at = np.empty(n)
        usage = np.empty((len(RESOURCES), n))
        remembered = np.empty(n, dtype=bool)
        cols = np.empty(n, dtype=np.intp)
    get = (measured or {}).get
    if fresh:
        new = [deps[k] for k in fresh]
        departed_at[fresh] = [d.departed_at for d in new]
        got = [get(d.uid) for d in new]
        remembered[fresh] = [g is not None for g in got]
        usage[:, fresh] = np.array(
            [_NOT_MEASURED if g is None else (g[0], g[1]) for g in got], dtype=np.float64
        ).T
        if same_names:
            cols[fresh] = [index.get(d.node, -1) for d in new]
    if not same_names:
        cols = _columns(deps, index)
    if recheck and previous is not None:
        for k in np.flatnonzero(paired & ~remembered).tolist():
            g = get(deps[k].uid)
            if g is not None:
                remembered[k] = True
                usage[:, k] = (g[0], g[1])
    _frozen(cols, departed_at, usage, remembered)
    return DepartedRows(deps, names, cols, departed_at, usage, remembered)


def _changed_nodes(old: tuple[NodeInfo, ...], new: tuple[NodeInfo, ...]) -> list[int]:
    """Positions where two node lists of the same length hold different nodes, ascending: a
    range whose slices compare equal (in C, by identity first) is done with, one that differs
    is split in eight. With a few changed nodes among thousands that is a few dozen C-level
    comparisons rather than a Python loop over all of them (~40 µs at 5,000 nodes)."""
    out: list[int] = []
    todo = [(0, len(new))]
    while todo:
        lo, hi = todo.pop()
        if old[lo:hi] == new[lo:hi]:
            continue
        if hi - lo <= 16:
            out.extend(i for i in range(lo, hi) if old[i] is not new[i] and old[i] != new[i])
            continue
        step = -(-(hi - lo) // 8)
        todo.extend((start, min(start + step, hi)) for start in reversed(range(lo, hi, step)))
    return out


def _sample_rows(
    samples: Mapping[str, Mapping[str, Sample]],
    index: Mapping[str, int],
    sig: tuple[str, ...],
    width: int,
) -> tuple[FloatArray, FloatArray]:
    """(values, sampled_at), each (signals, width): NaN where a node has no sample."""
    values = np.full((len(sig), width), np.nan)
    sampled_at = np.full((len(sig), width), np.nan)
    for row, signal in enumerate(sig):
        # Per signal, the columns and samples as lists, then one assignment each: setting
        # numpy elements one by one costs several times more at thousands of nodes.
        present = [
            (index[name], s) for name, per in samples.items() if (s := per.get(signal)) is not None
        ]
        if present:
            cols = [col for col, _ in present]
            values[row, cols] = [s.value for _, s in present]
            sampled_at[row, cols] = [s.timestamp for _, s in present]
    return values, sampled_at


def _node_columns(nodes: tuple[NodeInfo, ...], width: int) -> tuple[FloatArray, FloatArray]:
    """(allocatable, requested), each (resources, width); the nodes are the first columns."""
    allocatable = np.full((len(RESOURCES), width), np.nan)
    requested = np.full((len(RESOURCES), width), np.nan)
    count = len(nodes)
    allocatable[0, :count] = [_nan(n.allocatable_cpu) for n in nodes]
    allocatable[1, :count] = [_nan(n.allocatable_memory) for n in nodes]
    requested[0, :count] = [_nan(n.requested_cpu) for n in nodes]
    requested[1, :count] = [_nan(n.requested_memory) for n in nodes]
    return allocatable, requested


def build_snapshot(
    nodes: Iterable[NodeInfo],
    samples: Mapping[str, Mapping[str, Sample]],
    placements: Iterable[PlacedPod] | PlacedRows,
    *,
    signals: Sequence[str],
    source_ok_at: float | None,
    window_s: float,
    now: float,
    lag_s: float = 0.0,
    baselines: Mapping[str, Baseline] | None = None,
    pod_usage: PodUsage | None = None,
    pod_usage_ok_at: float | None = None,
    departures: Sequence[Departure] | DepartedRows = (),
    departed_measured: Mapping[str, tuple[float, float]] | None = None,
    max_age_s: float = 60.0,
    headroom_modes: Sequence[Headroom] = (),
    siblings: Siblings | None = None,
    previous: PodTable | None = None,
    reuse: Snapshot | None = None,
) -> Snapshot:
    """Assemble a snapshot from its parts.

    ``samples`` maps node name to signal name to sample; a node that has samples but is not in
    ``nodes`` still gets a column (its allocatable is unknown). Placed pods add to ``placed`` by
    :func:`unseen_usage`, per resource, against that resource's sample on their node.

    Per-pod data (``pod_usage``, refreshed as of ``pod_usage_ok_at``) is used only while that
    source is up (refreshed within ``max_age_s``); without it the snapshot is the node-level
    one exactly. With it: a placed pod whose own fresh sample was observed at least ``lag_s``
    after its bind (and whose node's sample is no older than that) is in its node's sample and
    adds nothing to ``placed``; departed pods with a measured usage (from the table, or
    ``departed_measured`` kept by the store from earlier tables) fill ``departed``; the table is
    indexed (:func:`~extender.core.pods.index_pods`, reusing ``previous`` when it indexed the
    same table against the same names) with credits for ``headroom_modes`` and ``siblings``.

    ``placements`` and ``departures`` may come as rows already (:class:`PlacedRows` with their
    baselines, :class:`DepartedRows` with their remembered usage; ``baselines`` and
    ``departed_measured`` are then not read), which a store keeps from one build to the next:
    the snapshot is the one the plain lists give.

    ``reuse`` (the snapshot this one replaces) saves the work its inputs share with this one:
    its sample rows when ``samples`` is the very mapping it was built from and the node names
    and signals are the same, and the allocatable and request columns of every node equal to
    the one it was built with at the same place (its names and index too when only such
    columns changed); and when ``placements`` are rows made from the ones it was built from,
    with the same samples, table, lag and window, its placed usage of every node but those
    whose pods or columns changed (:attr:`PlacedRows.touched`). The cluster cache publishes
    every 100 ms while pods are bound, with the samples unchanged and only the touched nodes'
    objects new; rebuilding all of it took ~60 ms at 5,000 nodes, and per publication ~6 ms
    at 5,000 nodes and 2,000 recent pods before the rows (~0.4 ms with them).
    """
    node_tuple = tuple(nodes)
    sig = tuple(signals)
    names_t, index, values, sampled_at, allocatable, requested, changed = _node_rows(
        node_tuple, samples, sig, reuse
    )
    width = len(names_t) + 1

    pods_live = (
        pod_usage is not None
        and len(pod_usage) > 0
        and pod_usage_ok_at is not None
        and now - pod_usage_ok_at <= max_age_s
    )
    table: PodTable | None = None
    if pods_live:
        assert pod_usage is not None
        modes = tuple(dict.fromkeys(headroom_modes))
        if previous is not None and previous.base is not None:
            previous = previous.base
        if (
            previous is not None
            and previous.usage is pod_usage
            and previous.names == names_t
            and previous.max_age_s == max_age_s
            and set(modes) <= set(previous.credits)
            and previous.siblings_rule == siblings
        ):
            table = previous
        else:
            table = index_pods(
                pod_usage,
                names_t,
                index,
                now=now,
                max_age_s=max_age_s,
                modes=modes,
                siblings=siblings,
                previous=previous,
            )

    rows = {r: sig.index(resource) for r, resource in enumerate(RESOURCES) if resource in sig}
    # When each node's cpu and memory samples were observed (NaN: no such signal or sample).
    node_times = np.full((len(RESOURCES), width), np.nan)
    for r, signal_row in rows.items():
        node_times[r] = sampled_at[signal_row]

    if isinstance(placements, PlacedRows):
        placed_in = placements.located(index, names_t)
    else:
        placed_in = placed_rows(tuple(placements), baselines, index, names_t)
    placed_key = (placed_in.serial, lag_s, window_s)
    # Only the columns whose pods or allocatable changed, when all else is what ``reuse``
    # was built from: the rows it was built from, the same sample rows, names and table. A
    # node's placed usage depends on nothing else.
    redo: IndexArray | None = None
    same_rows = reuse is not None and reuse.placed_key == placed_key
    if (
        reuse is not None
        and changed is not None
        and (same_rows or (placed_in.since >= 0 and reuse.placed_key[0] == placed_in.since))
        and reuse.placed_key[1:] == (lag_s, window_s)
        and names_t is reuse.names
        and values is reuse.values
        and sampled_at is reuse.sampled_at
        and table is _indexed(reuse.pods)
    ):
        again = np.zeros(width, dtype=bool)
        if not same_rows:
            again[placed_in.touched] = True
        again[changed] = True
        redo = np.flatnonzero(again)
    located = placed_in.cols >= 0
    if redo is None:
        placed = np.zeros((len(RESOURCES), width))  # nothing placed on an unknown node either
    else:
        placed = reuse.placed.copy() if reuse is not None else np.zeros((len(RESOURCES), width))
        for r in range(len(RESOURCES)):
            placed[r, redo] = 0.0
        located &= again[placed_in.cols]
    if located.any():
        every = bool(located.all())  # then no copies by mask
        pcols = placed_in.cols if every else placed_in.cols[located]
        bound = placed_in.bound_at if every else placed_in.bound_at[located]
        seen = None
        if table is not None:
            # A pod whose own fresh sample came after its usage could reach the node's
            # sample (and the node's sample is that recent too) is in it: no estimate.
            pods = (
                placed_in.pods
                if every
                else tuple(itertools.compress(placed_in.pods, located.tolist()))
            )
            trow = _table_rows(table, pods)
            seen = (trow, placed_in.has_uid[located], bound + lag_s)
        # Both resources in one call, resource r's node columns shifted by r * width: each
        # (resource, node) is a group of its own, computed as it would be alone.
        parts: list[tuple[IndexArray, FloatArray, FloatArray, FloatArray]] = []
        node_rows: list[tuple[FloatArray, FloatArray]] = []
        for r in range(len(RESOURCES)):
            srow = rows.get(r)
            pe = placed_in.estimates[r] if every else placed_in.estimates[r, located]
            pbase = placed_in.baselines[r] if every else placed_in.baselines[r, located]
            pc, pb = pcols, bound
            if seen is not None and table is not None:
                keep = ~_sampled_after(table, r, node_times[r, pcols], *seen)
                pc, pe, pb, pbase = pc[keep], pe[keep], pb[keep], pbase[keep]
            parts.append((pc + r * width, pe, pb, pbase))
            nan_row = np.full(width, np.nan)
            node_rows.append(
                (nan_row, nan_row) if srow is None else (sampled_at[srow], values[srow])
            )
        got = unseen_usage_by_node(
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
            np.concatenate([p[3] for p in parts]),
            np.concatenate([t for t, _ in node_rows]),
            np.concatenate([v for _, v in node_rows]),
            allocatable.ravel(),
            lag_s,
            window_s,
            len(RESOURCES) * width,
        ).reshape(len(RESOURCES), width)
        if redo is None:
            placed = got
        else:
            for r in range(len(RESOURCES)):
                placed[r, redo] = got[r, redo]
        placed[:, -1] = 0.0  # the unknown node's column

    if isinstance(departures, DepartedRows):
        departed_in = departures.located(index, names_t)
    else:
        departed_in = departed_rows(tuple(departures), departed_measured, index, names_t)
    departed: FloatArray | None = None
    if departed_in.departures:
        usage, has = departed_in.measured, departed_in.remembered
        if table is not None:
            # The table's measured usage of a departed pod comes first (table.measured).
            trow = _table_rows(table, departed_in.departures)
            at = np.maximum(trow, 0)
            fresh = np.take(table.fresh, at, axis=1)
            in_table = (trow >= 0) & fresh.any(axis=0)
            fresh_usage = np.where(fresh, np.take(table.usage.usage, at, axis=1), np.nan)
            usage = np.where(in_table, fresh_usage, usage)
            has = has | in_table
            table = _without_departed(table, trow[in_table])
        if has.any():
            departed = _departed_rows_usage(
                departed_in, usage, has, node_times, lag_s, window_s, width
            )
            departed.setflags(write=False)

    for arr in (values, sampled_at, allocatable, requested, placed):
        arr.setflags(write=False)
    return Snapshot(
        names=names_t,
        index=index,
        signals=sig,
        values=values,
        sampled_at=sampled_at,
        allocatable=allocatable,
        requested=requested,
        placed=placed,
        source_ok_at=source_ok_at,
        built_at=now,
        departed=departed,
        pods=table,
        built_from=(samples, node_tuple),
        placed_key=placed_key,
    )


def _indexed(table: PodTable | None) -> PodTable | None:
    """The table as indexed, before departed pods were taken out of its credits."""
    return table if table is None or table.base is None else table.base


def _node_rows(
    node_tuple: tuple[NodeInfo, ...],
    samples: Mapping[str, Mapping[str, Sample]],
    sig: tuple[str, ...],
    reuse: Snapshot | None,
) -> tuple[
    tuple[str, ...],
    Mapping[str, int],
    FloatArray,
    FloatArray,
    FloatArray,
    FloatArray,
    list[int] | None,
]:
    """(names, index, values, sampled_at, allocatable, requested) of a build, from ``reuse``
    where it has them (see :func:`build_snapshot`), and the columns of the nodes that differ
    from ``reuse``'s when all the rest is ``reuse``'s (else None)."""
    old_nodes = () if reuse is None else reuse.built_from[1]
    if (
        reuse is not None
        and reuse.built_from[0] is samples
        and reuse.signals == sig
        and len(old_nodes) == len(node_tuple)
    ):
        changed = _changed_nodes(old_nodes, node_tuple)
        if all(node_tuple[i].name == old_nodes[i].name for i in changed):
            # The same names in the same order, the same samples: only changed nodes' columns.
            allocatable, requested = _patched_nodes(reuse, node_tuple, changed)
            values, sampled_at = reuse.values, reuse.sampled_at
            return reuse.names, reuse.index, values, sampled_at, allocatable, requested, changed
    names: list[str] = [n.name for n in node_tuple]
    seen = set(names)
    for name in samples:
        if name not in seen:
            names.append(name)
            seen.add(name)
    index = {name: i for i, name in enumerate(names)}
    width = len(names) + 1
    names_t = tuple(names)
    same_names = reuse is not None and reuse.names == names_t
    if same_names and reuse is not None and reuse.built_from[0] is samples and reuse.signals == sig:
        values, sampled_at = reuse.values, reuse.sampled_at  # read-only; shared as they are
    else:
        values, sampled_at = _sample_rows(samples, index, sig, width)
    if same_names and reuse is not None and node_tuple and len(old_nodes) == len(node_tuple):
        allocatable, requested = _patched_nodes(
            reuse, node_tuple, _changed_nodes(old_nodes, node_tuple)
        )
    else:
        allocatable, requested = _node_columns(node_tuple, width)
    return names_t, index, values, sampled_at, allocatable, requested, None


def _patched_nodes(
    reuse: Snapshot, node_tuple: tuple[NodeInfo, ...], changed: list[int]
) -> tuple[FloatArray, FloatArray]:
    """``reuse``'s allocatable and request columns with those of the ``changed`` nodes redone
    (``reuse``'s own arrays, read-only, when none changed)."""
    if not changed:
        return reuse.allocatable, reuse.requested
    allocatable, requested = reuse.allocatable.copy(), reuse.requested.copy()
    for i in changed:
        new = node_tuple[i]
        allocatable[:, i] = (_nan(new.allocatable_cpu), _nan(new.allocatable_memory))
        requested[:, i] = (_nan(new.requested_cpu), _nan(new.requested_memory))
    return allocatable, requested


def _table_rows(
    table: PodTable, entries: tuple[PlacedPod, ...] | tuple[Departure, ...]
) -> IndexArray:
    """Each entry's row in the per-pod table by uid; -1 where it has none."""
    return np.fromiter(
        map(table.rows.get, map(_uid_of, entries), itertools.repeat(-1)),
        dtype=np.intp,
        count=len(entries),
    )


def _sampled_after(
    table: PodTable,
    r: int,
    node_seen: FloatArray,
    trow: IndexArray,
    has_uid: BoolArray,
    at: FloatArray,
) -> BoolArray:
    """Per pod (its table row, whether it has a uid, the time from which its usage can show):
    its node's sample (``node_seen``: when it was observed) and its own fresh sample of
    resource ``r`` (:meth:`~extender.core.pods.PodTable.sampled_after`) are both that recent."""
    row = np.maximum(trow, 0)
    with np.errstate(invalid="ignore"):
        both: BoolArray = (
            has_uid
            & (node_seen >= at)
            & (trow >= 0)
            & table.fresh[r, row]
            & (table.usage.sampled_at[r, row] >= at)
        )
    return both


def _departed_rows_usage(
    rows: DepartedRows,
    usage: FloatArray,
    has: BoolArray,
    node_sampled_at: FloatArray,
    lag_s: float,
    window_s: float,
    width: int,
) -> FloatArray:
    """:func:`departed_usage` over rows: ``usage`` (2, departures) is each pod's measured usage
    where ``has`` says there is one. The same terms, added up in the same order."""
    out = np.zeros((len(RESOURCES), width))
    cols = rows.cols
    use = has & (cols >= 0)
    for r in range(len(RESOURCES)):
        value = usage[r]
        age = node_sampled_at[r, cols] - rows.departed_at
        with np.errstate(invalid="ignore"):
            take = use & np.isfinite(value) & (value > 0) & np.isfinite(age)
        if take.any():
            shown = value[take] * (1.0 - visible_fractions(age[take], lag_s, window_s))
            out[r] = np.bincount(cols[take], weights=shown, minlength=width)
    return out


def _without_departed(table: PodTable, gone_rows: IndexArray) -> PodTable:
    """The table with departed pods' rows (``gone_rows``: fresh ones, in departure order) taken
    out of the headroom credits (the departed array accounts for them; a table from before the
    deletion still has their rows)."""
    if not len(gone_rows) or not table.credits:
        return table
    idx = gone_rows.astype(np.intp)
    usage = table.usage
    first = np.searchsorted(table.bounds, usage.priority[idx], side="left") + 1
    credits: dict[Headroom, FloatArray] = {}
    for mode, arr in table.credits.items():
        out = arr.copy()
        part = np.where(
            table.fresh[:, idx], row_credit(usage.usage[:, idx], usage.requests[:, idx], mode), 0.0
        )
        for k, i in enumerate(idx.tolist()):
            out[int(first[k]) :, :, int(table.cols[i])] -= part[:, k]
        out.setflags(write=False)
        credits[mode] = out
    return replace(table, credits=credits, base=table.base or table)

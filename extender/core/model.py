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
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from extender.core.pods import PodTable, index_pods, row_credit
from extender.core.podusage import Departure, PodUsage
from extender.core.rules import RESOURCES, EstimateFrom, Estimation, Headroom, Siblings

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
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    group = np.cumsum(np.r_[False, c[1:] != c[:-1]])  # each pod's node group, 0..groups-1
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


def _baseline(baselines: Mapping[str, Baseline] | None, pod: PlacedPod, r: int) -> float:
    if baselines is None or not pod.uid:
        return math.nan
    got = baselines.get(pod.uid)
    return math.nan if got is None else got[r]


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
    placements: Iterable[PlacedPod],
    *,
    signals: Sequence[str],
    source_ok_at: float | None,
    window_s: float,
    now: float,
    lag_s: float = 0.0,
    baselines: Mapping[str, Baseline] | None = None,
    pod_usage: PodUsage | None = None,
    pod_usage_ok_at: float | None = None,
    departures: Sequence[Departure] = (),
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

    ``reuse`` (the snapshot this one replaces) saves the work its inputs share with this one:
    its sample rows when ``samples`` is the very mapping it was built from and the node names
    and signals are the same, and the allocatable and request columns of every node that is
    the very same :class:`NodeInfo` object. The cluster cache publishes every 100 ms while pods
    are bound, with the samples unchanged and only the touched nodes' objects new; rebuilding
    all of it took ~60 ms at 5,000 nodes.
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

    names_t = tuple(names)
    same_names = reuse is not None and reuse.names == names_t
    if same_names and reuse is not None and reuse.built_from[0] is samples and reuse.signals == sig:
        values, sampled_at = reuse.values, reuse.sampled_at  # read-only; shared as they are
    else:
        values, sampled_at = _sample_rows(samples, index, sig, width)

    node_tuple = tuple(node_list)
    old_nodes = reuse.built_from[1] if same_names and reuse is not None else ()
    if node_tuple and len(old_nodes) == len(node_tuple):
        assert reuse is not None
        allocatable, requested = reuse.allocatable.copy(), reuse.requested.copy()
        for i, (old, new) in enumerate(zip(old_nodes, node_tuple, strict=True)):
            if old is not new:
                allocatable[:, i] = (_nan(new.allocatable_cpu), _nan(new.allocatable_memory))
                requested[:, i] = (_nan(new.requested_cpu), _nan(new.requested_memory))
    else:
        allocatable, requested = _node_columns(node_tuple, width)

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

    placed = np.zeros((len(RESOURCES), width))  # nothing placed on an unknown node either
    known = [(index.get(p.node), p) for p in placements]
    located = [(col, p) for col, p in known if col is not None]
    if located:
        pcols = np.fromiter((col for col, _ in located), dtype=np.intp, count=len(located))
        bound = np.fromiter((p.bound_at for _, p in located), dtype=np.float64, count=len(located))
        for r in range(len(RESOURCES)):
            srow = rows.get(r)
            est = np.fromiter(
                ((p.cpu, p.memory)[r] for _, p in located), dtype=np.float64, count=len(located)
            )
            base = np.fromiter(
                (_baseline(baselines, p, r) for _, p in located),
                dtype=np.float64,
                count=len(located),
            )
            pc, pe, pb, pbase = pcols, est, bound, base
            if table is not None:
                # A pod whose own fresh sample came after its usage could reach the node's
                # sample (and the node's sample is that recent too) is in it: no estimate.
                seen_from = node_times[r]
                keep = np.fromiter(
                    (
                        not (
                            p.uid
                            and float(seen_from[col]) >= p.bound_at + lag_s
                            and table.sampled_after(p.uid, r, p.bound_at + lag_s)
                        )
                        for col, p in located
                    ),
                    dtype=bool,
                    count=len(located),
                )
                pc, pe, pb, pbase = pcols[keep], est[keep], bound[keep], base[keep]
            nan_row = np.full(width, np.nan)
            placed[r] = unseen_usage_by_node(
                pc,
                pe,
                pb,
                pbase,
                nan_row if srow is None else sampled_at[srow],
                nan_row if srow is None else values[srow],
                allocatable[r],
                lag_s,
                window_s,
                width,
            )
        placed[:, -1] = 0.0  # the unknown node's column

    departed: FloatArray | None = None
    if departures:
        measured = dict(departed_measured or {})
        if table is not None:
            for dep in departures:
                got = table.measured(dep.uid)
                if got is not None:
                    measured[dep.uid] = got
            table = _without_departed(table, departures)
        if measured:
            departed = departed_usage(
                departures, index, width, measured, node_times, lag_s, window_s
            )
            departed.setflags(write=False)

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
        departed=departed,
        pods=table,
        built_from=(samples, node_tuple),
    )


def _without_departed(table: PodTable, departures: Sequence[Departure]) -> PodTable:
    """The table with departed pods' rows taken out of the headroom credits (the departed
    array accounts for them; a table from before the deletion still has their rows)."""
    gone = [table.rows[d.uid] for d in departures if d.uid in table.rows]
    gone = [i for i in gone if table.fresh[:, i].any()]
    if not gone or not table.credits:
        return table
    idx = np.array(gone, dtype=np.intp)
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

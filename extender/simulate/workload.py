"""Everything random about a scenario, drawn once per seed and shared by every policy compared.

The nodes, their hidden load (base, noise, hot spots), every pod that will arrive (when, its
requests, its real usage, how long it runs), the pods already running at the start and the
phases of the metrics pipeline are fixed here, before any scheduling happens. Each policy (and
the baseline) then replays the very same workload: differences in the results come from the
placement decisions alone.

Each part draws from its own stream (``random.Random`` seeded with ``"<seed>/<part>"``, numpy's
``default_rng([seed, k])``), so adding a tier does not change the pods of another.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from extender.simulate.scenario import Dist, ScenarioDocument, TierSpec
from extender.simulate.scheduler import balanced_allocation, fits, least_allocated

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    group: str
    cpu_m: int
    memory: int
    pods: int
    add_at: float


@dataclass(frozen=True, slots=True)
class PodTemplate:
    """One pod of the workload, as submitted (a replacement after preemption reuses it)."""

    uid: str
    name: str
    tier: int
    """Index into the scenario's tiers."""
    cpu_m: int
    """Request, millicores."""
    memory: int
    """Request, bytes."""
    cpu_use: float
    """Real usage, cores."""
    mem_use: float
    """Real usage, bytes."""
    lifetime: float
    """Seconds from binding to completion; ``inf`` runs past the end."""
    submit: float
    node: int = -1
    """For pods running at the start: their node (index into ``Workload.nodes``)."""


@dataclass(frozen=True, slots=True)
class HotSpotWindow:
    nodes: IntArray
    cpu: float
    memory: float
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Workload:
    nodes: tuple[NodeSpec, ...]
    """In the scheduler's list order: by joining time, then as listed."""
    pods: tuple[PodTemplate, ...]
    """By submission time; pods running at the start first."""
    bg_cpu: FloatArray
    """(nodes,) steady hidden cpu load, share of allocatable."""
    bg_mem: FloatArray
    noise_period: float
    noise_cpu: FloatArray
    """(periods, nodes) noise added to the hidden cpu load during each period."""
    noise_mem: FloatArray
    hot_spots: tuple[HotSpotWindow, ...]
    phases: tuple[float, float, float]
    """Offsets of the first scrape, rule evaluation and extender refresh, as a share of each
    interval (the three clocks are not aligned in a real cluster)."""
    duration: float


def _stream(seed: int, part: str) -> random.Random:
    return random.Random(f"{seed}/{part}")


def _choose(options: list[float], rng: random.Random) -> int:
    total = sum(options)
    x = rng.random() * total
    for i, w in enumerate(options):
        x -= w
        if x < 0:
            return i
    return len(options) - 1


def _arrival_times(tier: TierSpec, duration: float, rng: random.Random) -> list[float]:
    times: list[float] = []
    for arr in tier.arrivals:
        if arr.count is not None and arr.at is not None:
            step = arr.over / arr.count
            times.extend(arr.at + i * step for i in range(arr.count))
        elif arr.perMinute is not None:
            end = min(arr.end if arr.end is not None else duration, duration)
            rate = arr.perMinute / 60.0
            t = arr.start + rng.expovariate(rate)
            while t < end:
                times.append(t)
                t += rng.expovariate(rate)
    return sorted(t for t in times if t < duration)


def _make_pod(
    tier_index: int,
    tier: TierSpec,
    seq: int,
    submit: float,
    rng: random.Random,
    node: int = -1,
    request: tuple[int, int] | None = None,
) -> PodTemplate:
    if request is None:
        opt = tier.requests[_choose([o.weight for o in tier.requests], rng)]
        cpu_m, memory = round(opt.cpu * 1000), round(opt.memory)
    else:
        cpu_m, memory = request
    cpu_use = cpu_m / 1000 * tier.usage.cpu.sample(rng)
    mem_use = memory * tier.usage.memory.sample(rng)
    lifetime = tier.lifetime.sample(rng) if tier.lifetime is not None else math.inf
    name = f"{tier.name}-{seq:05d}"
    return PodTemplate(
        uid=f"uid-{tier.name}-{seq:05d}",
        name=name,
        tier=tier_index,
        cpu_m=cpu_m,
        memory=memory,
        cpu_use=cpu_use,
        mem_use=mem_use,
        lifetime=max(lifetime, 1.0),
        submit=submit,
        node=node,
    )


def _noise(sd: float, corr: float, periods: int, n: int, rng: np.random.Generator) -> FloatArray:
    z = rng.standard_normal((periods, n))
    out = np.zeros((periods, n))
    if sd == 0 or n == 0:
        return out
    scale = sd * math.sqrt(1 - corr * corr)
    out[0] = sd * z[0]
    for k in range(1, periods):
        out[k] = corr * out[k - 1] + scale * z[k]
    return out


def _dist_draws(dist: Dist[float], n: int, rng: random.Random) -> FloatArray:
    return np.array([dist.sample(rng) for _ in range(n)], dtype=np.float64)


def build_workload(sc: ScenarioDocument, seed: int) -> Workload:
    """Draw the whole workload of a scenario for ``seed``."""
    # Nodes in list order: kube-scheduler appends nodes as they join.
    listed: list[tuple[float, int, NodeSpec]] = []
    for group in sc.cluster.nodes:
        for name in group.node_names():
            spec = NodeSpec(
                name=name,
                group=group.name,
                cpu_m=round(group.cpu * 1000),
                memory=round(group.memory),
                pods=group.pods,
                add_at=group.addAt,
            )
            listed.append((group.addAt, len(listed), spec))
    nodes = tuple(spec for _, _, spec in sorted(listed, key=lambda x: (x[0], x[1])))
    index = {n.name: i for i, n in enumerate(nodes)}
    n = len(nodes)

    bg = sc.background
    rng_bg = _stream(seed, "background")
    bg_cpu = _dist_draws(bg.cpu, n, rng_bg)
    bg_mem = _dist_draws(bg.memory, n, rng_bg)
    for name, load in bg.nodes.items():
        bg_cpu[index[name]] = load.cpu
        bg_mem[index[name]] = load.memory
    spots = []
    for spot in bg.hotSpots:
        if spot.names is not None:
            chosen = [index[x] for x in spot.names]
        else:
            pool = [i for i, nd in enumerate(nodes) if spot.group in (None, nd.group)]
            chosen = sorted(rng_bg.sample(pool, spot.count or 0))
        spots.append(
            HotSpotWindow(
                nodes=np.array(chosen, dtype=np.int64),
                cpu=spot.cpu,
                memory=spot.memory,
                start=spot.start,
                end=spot.end if spot.end is not None else sc.duration,
            )
        )
    periods = math.ceil(sc.duration / bg.noise.period) + 1
    np_rng = np.random.default_rng([seed, 1])
    noise_cpu = _noise(bg.noise.cpu, bg.noise.correlation, periods, n, np_rng)
    noise_mem = _noise(bg.noise.memory, bg.noise.correlation, periods, n, np_rng)

    pods: list[PodTemplate] = []
    seqs = [0] * len(sc.tiers)
    tier_index = {t.name: i for i, t in enumerate(sc.tiers)}
    # Pods running at the start: pinned ones first, then the others placed by requests alone.
    rng_init = _stream(seed, "initial")
    for pinned in sc.pods:
        t = tier_index[pinned.tier]
        for _ in range(pinned.count):
            pods.append(
                _make_pod(
                    t,
                    sc.tiers[t],
                    seqs[t],
                    0.0,
                    rng_init,
                    node=index[pinned.node],
                    request=(round(pinned.cpu * 1000), round(pinned.memory)),
                )
            )
            seqs[t] += 1
    initial = [
        (t, tier)
        for t, tier in sorted(enumerate(sc.tiers), key=lambda x: -x[1].priority)
        if tier.initial
    ]
    if initial:
        pods.extend(_place_initial(nodes, pods, initial, seqs, rng_init))

    for t, tier in enumerate(sc.tiers):
        rng = _stream(seed, f"tier/{tier.name}")
        for at in _arrival_times(tier, sc.duration, rng):
            pods.append(_make_pod(t, tier, seqs[t], at, rng))
            seqs[t] += 1
    pods.sort(key=lambda p: (p.submit, p.node < 0, -sc.tiers[p.tier].priority, p.uid))

    rng_m = _stream(seed, "metrics")
    phases = (rng_m.random(), rng_m.random(), rng_m.random())
    return Workload(
        nodes=nodes,
        pods=tuple(pods),
        bg_cpu=bg_cpu,
        bg_mem=bg_mem,
        noise_period=bg.noise.period,
        noise_cpu=noise_cpu,
        noise_mem=noise_mem,
        hot_spots=tuple(spots),
        phases=phases,
        duration=sc.duration,
    )


def _place_initial(
    nodes: tuple[NodeSpec, ...],
    pinned: list[PodTemplate],
    tiers: list[tuple[int, TierSpec]],
    seqs: list[int],
    rng: random.Random,
) -> list[PodTemplate]:
    """Place the ``initial`` pods by requests (in-tree filter and scores, random ties) on the
    nodes present at the start; pods that fit nowhere start out pending instead."""
    present = [i for i, nd in enumerate(nodes) if nd.add_at <= 0]
    alloc_cpu = np.array([nodes[i].cpu_m for i in present], dtype=np.int64)
    alloc_mem = np.array([nodes[i].memory for i in present], dtype=np.int64)
    max_pods = np.array([nodes[i].pods for i in present], dtype=np.int64)
    req_cpu = np.zeros(len(present), dtype=np.int64)
    req_mem = np.zeros(len(present), dtype=np.int64)
    count = np.zeros(len(present), dtype=np.int64)
    where = {node: k for k, node in enumerate(present)}
    for p in pinned:
        k = where.get(p.node)
        if k is not None:
            req_cpu[k] += p.cpu_m
            req_mem[k] += p.memory
            count[k] += 1
    out = []
    for t, tier in tiers:
        for _ in range(tier.initial):
            pod = _make_pod(t, tier, seqs[t], 0.0, rng)
            seqs[t] += 1
            ok = np.flatnonzero(
                fits(req_cpu, req_mem, count, alloc_cpu, alloc_mem, max_pods, pod.cpu_m, pod.memory)
            )
            if not len(ok):
                out.append(pod)
                continue
            score = least_allocated(
                req_cpu[ok] + pod.cpu_m, alloc_cpu[ok], req_mem[ok] + pod.memory, alloc_mem[ok]
            ) + balanced_allocation(
                req_cpu[ok] + pod.cpu_m, alloc_cpu[ok], req_mem[ok] + pod.memory, alloc_mem[ok]
            )
            best = np.flatnonzero(score == score.max())
            k = int(ok[best[rng.randrange(len(best))]])
            req_cpu[k] += pod.cpu_m
            req_mem[k] += pod.memory
            count[k] += 1
            out.append(
                PodTemplate(
                    pod.uid,
                    pod.name,
                    pod.tier,
                    pod.cpu_m,
                    pod.memory,
                    pod.cpu_use,
                    pod.mem_use,
                    pod.lifetime,
                    0.0,
                    present[k],
                )
            )
    return out

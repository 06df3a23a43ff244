"""The discrete-event simulation: a cluster, kube-scheduler's model, the metrics pipeline and,
for a policy run, the extender's real decision code in the loop.

Simulated time jumps from event to event (arrivals, bindings, departures, scrapes, rule
evaluations, extender refreshes, noise changes, nodes joining); nothing sleeps and nothing reads
the wall clock. One :class:`Simulation` replays one workload under one policy (or none: the
baseline) and returns a :class:`RunResult`.

**What is modelled** (see :mod:`extender.simulate.scheduler` for the arithmetic):

* The scheduling queue: one pod at a time, highest priority first, then the earliest queued
  (``PrioritySort``); each attempt takes ``scheduler.cycle`` seconds. A pod that fails goes to the
  unschedulable pool and is retried, after its backoff (``backoffInitial`` doubling up to
  ``backoffMax``), once the cluster changed in a way that could help it: a pod left, a node
  joined, or (with the extender) the live metrics were refreshed; and at the latest after
  ``maxUnschedulable``.
* A scheduling cycle: the nominated node first (after a preemption), else ``NodeResourcesFit`` over
  the node list searched from a rotating start for ``percentageOfNodesToScore``; the extender's
  ``filter`` on the nodes found; no scoring when one node is left; else in-tree scores
  (``LeastAllocated`` + ``BalancedAllocation``) plus the extender's ``prioritize`` score
  × ``weight × 10``; ties broken at random (seeded).
* Preemption when no node is left: the dry run by requests on the nodes not rejected as
  unresolvable, from a random offset until enough candidates; with the extender, its ``preempt``
  verb (the real ``decide_preemption``) drops candidates; one node is picked as upstream does;
  the victims are deleted and re-created by their controllers; the preemptor is nominated.
* The extender sees what it would in a cluster: nodes with request totals and recently bound pods
  (the Kubernetes API cache, current at once), and live utilization only as the metrics pipeline
  delivers it: node counters scraped every ``scrapeInterval``; a recording rule every
  ``ruleInterval`` computing cpu as the mean over ``rateWindow`` (``rate()`` of the busy counter)
  and memory as the latest scrape; the extender querying every ``refreshInterval``, with the
  query's evaluation time as the sample's timestamp (as Prometheus answers instant queries).
* With a policy that turns per-pod usage on (``metrics.prometheus.pods.enabled`` or
  ``metrics.metricsServer.pods.enabled``), each refresh also hands the extender every running
  pod's own usage as the same pipeline shows it: cpu as the pod's share of the rule's rate
  window (a pod bound inside the window shows the part it ran), memory once a scrape saw it;
  and deleted pods (completed, preempted) reach it as departures, as the cluster cache would.

**Simplifications** (also listed in every report):

* Only cpu, memory and the pod count are resources; no affinity, taints, topology spread (the
  default ``PodTopologySpread`` constraints of the default profile are left out), volumes or
  image locality: plugins that score every node alike do not change a placement.
* Filtering is sequential in list order (upstream runs it in parallel and cancels when enough
  nodes are found: the same nodes, up to races); a single zone (the node tree's zone
  round-robin order is the list order).
* Preemption victims leave at once (no termination grace period) and the preemptor is retried
  immediately on its nominated node; PodDisruptionBudgets are not modelled.
* Once attempts of identical pods (same tier and requests) have failed on every node in the same
  cluster state, further retries of such pods fail at once and cost no scheduler time: binding
  more pods cannot make a failed pod fit, so the state only changes with the events above. The
  just-placed window expiring between refreshes does not trigger a retry.
* Pods use a constant amount of cpu and memory from binding to completion (no start-up ramp,
  no limits, no throttling); a node's true utilization is capped at 100%.
* Other signals than ``cpu`` and ``memory`` in a policy have no data in the simulation (they are
  missing, and each tier's ``onStale`` applies). ``metrics.source: none`` gives the extender no
  live data at all (request-based fallback), any other source the simulated pipeline.
* The Kubernetes API cache (node request totals, pods just bound) is current at once.
* The run starts warm: the metrics history before time 0 shows the state at time 0 (pods running
  at the start included) and the extender has just refreshed.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import numpy as np
import numpy.typing as npt

from extender.core import (
    ContainerResources,
    NodeInfo,
    PlacedPod,
    PodInfo,
    Sample,
    Tier,
    estimate_pod,
    tier_for,
)
from extender.core.podusage import Departure, PodUsage, owner_key
from extender.policy import LoadedPolicy
from extender.simulate.inprocess import InProcessExtender
from extender.simulate.scenario import ScenarioDocument, TierSpec
from extender.simulate.scheduler import (
    Candidate,
    Running,
    balanced_allocation,
    extender_points,
    fits,
    least_allocated,
    num_feasible_nodes_to_find,
    num_preemption_candidates,
    pick_candidate,
    search_feasible,
    select_victims,
)
from extender.simulate.workload import PodTemplate, Workload

FloatArray = npt.NDArray[np.float64]

SIMPLIFICATIONS = (
    "Only cpu, memory and the pod count are resources. No affinity, taints, topology spread "
    "(the default profile's implicit PodTopologySpread constraints are left out), volumes or "
    "image locality: plugins that score every node alike do not change a placement.",
    "The filter phase runs sequentially in list order (upstream runs it in parallel and cancels "
    "once enough nodes are found); one zone.",
    "Preemption victims leave at once (no termination grace period) and the preemptor is retried "
    "at once on its nominated node; no PodDisruptionBudgets.",
    "Once identical pods (same tier and requests) have failed on every node in the same cluster "
    "state, their further retries fail at once and cost no scheduler time; the just-placed "
    "window expiring between refreshes does not trigger a retry.",
    "Pods use constant cpu and memory from binding to completion (no start-up ramp, limits or "
    "throttling); true utilization is capped at 100%.",
    "Policy signals other than cpu and memory have no data (each tier's onStale applies); "
    "metrics.source none gives the extender no live data, any other source gets the simulated "
    "pipeline.",
    "The Kubernetes API cache is current at once (bindings and deletions reach the extender "
    "before its next call).",
    "The run starts warm: the metrics history before time 0 shows the state at time 0, and the "
    "extender has just refreshed.",
)
"""Listed in every report; the module docstring explains each."""

MAX_HEAT_COLUMNS = 1500
"""The per-node series behind the plots keep at most this many points in time (every k-th scrape
for long runs): enough for a plot, and 15,000 nodes × a week of scrapes would not fit in memory."""

HOT = 0.9
"""A node above this true cpu utilization counts as hot (node-seconds above it are reported)."""

# Event kinds; the number also orders events that fall on the same instant: the cluster changes
# first, then the metrics pipeline observes it, then new pods arrive, then the scheduler runs.
(
    _NODE_ADD,
    _DEPART,
    _LOAD,
    _SCRAPE,
    _RULE,
    _REFRESH,
    _ARRIVE,
    _WARM,
    _BACKOFF,
    _GIVE_UP,
    _SCHED,
) = range(11)

PENDING, RUNNING, DONE, PREEMPTED, GAVE_UP = range(5)
OUTCOMES = ("pending", "running", "completed", "preempted", "gave up")

_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class SimPod:
    """One pod object: a workload pod, or the re-creation of a preempted one."""

    id: int
    tpl: PodTemplate
    uid: str
    name: str
    submit: float
    priority: int
    state: int = PENDING
    node: int = -1
    bound_at: float = math.nan
    attempts: int = 0
    nominated: int = -1
    fail_version: int = -1
    fail_time: float = 0.0
    token: int = 0
    """Invalidates backoff events scheduled before the pod's latest failure."""
    in_active: bool = False
    initial: bool = False
    """Running at the start: not placed by the scheduler under test."""
    body: bytes = b""
    """The Pod JSON kube-scheduler sends the extender, built on first use."""


@dataclass(frozen=True, slots=True)
class Placement:
    pod: str
    tier: int
    time: float
    node: int
    cpu: float
    """True cpu utilization of the node with the pod on it."""
    memory: float
    above_ceiling: bool
    """Above the ceiling of the pod's policy tier, for cpu or memory."""
    waited: float


@dataclass
class RunResult:
    label: str
    policy: str | None
    """The policy file, None for the baseline."""
    workload: Workload
    tiers: tuple[TierSpec, ...]
    policy_tiers: tuple[str, ...]
    """Per scenario tier: the policy tier its pods fall in (of the ceilings' policy)."""
    ceilings: tuple[tuple[float, float], ...]
    """Per scenario tier: (cpu, memory) ceilings used for the above-ceiling share."""
    interval: float
    """The metrics interval herding is counted over (the extender's refresh interval)."""
    placements: list[Placement] = field(default_factory=list)
    outcomes: list[tuple[int, int, float, float, bool]] = field(default_factory=list)
    """Per pod object: (tier, outcome, submitted, bound at or NaN, running at the start)."""
    evicted: list[int] = field(default_factory=list)
    """Per scenario tier: pods preempted."""
    preemptions: list[int] = field(default_factory=list)
    """Per scenario tier: successful preemptions by pods of the tier."""
    replacements: int = 0
    submitted: int = 0
    hot_node_seconds: float = 0.0
    pod_seconds: list[float] = field(default_factory=list)
    """Per scenario tier: pod-seconds running (pods running at the start included)."""
    hot_pod_seconds: list[float] = field(default_factory=list)
    """Per scenario tier: pod-seconds running on a node above 90% true cpu."""
    times: list[float] = field(default_factory=list)
    """Scrape times of the series below."""
    heat: list[npt.NDArray[np.float32]] = field(default_factory=list)
    """True cpu utilization of every node at each scrape (NaN before it joins); every k-th
    scrape for runs longer than :data:`MAX_HEAT_COLUMNS` scrapes."""
    extender_calls: dict[str, int] = field(default_factory=dict)
    cycles: int = 0
    """Scheduling attempts run (not counting retries answered from an identical failure)."""


class Simulation:
    def __init__(
        self,
        scenario: ScenarioDocument,
        workload: Workload,
        seed: int,
        policy: LoadedPolicy | None,
        ceilings_from: LoadedPolicy | None = None,
        label: str | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.sc = scenario
        self.wl = workload
        self.policy = policy
        self.progress = progress
        self.rng = random.Random(f"{seed}/scheduler")
        self.now = 0.0
        self.end = workload.duration
        nodes = workload.nodes
        n = len(nodes)
        self.names = [nd.name for nd in nodes]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.alloc_cpu_m = np.array([nd.cpu_m for nd in nodes], dtype=np.int64)
        self.alloc_mem = np.array([nd.memory for nd in nodes], dtype=np.int64)
        self.max_pods = np.array([nd.pods for nd in nodes], dtype=np.int64)
        self.cores = self.alloc_cpu_m / 1000.0
        self.mem_f = self.alloc_mem.astype(np.float64)
        self.req_cpu_m = np.zeros(n, dtype=np.int64)
        self.req_mem = np.zeros(n, dtype=np.int64)
        self.npods = np.zeros(n, dtype=np.int64)
        self.use_cpu = np.zeros(n)
        self.use_mem = np.zeros(n)
        self.bg_cpu = workload.bg_cpu.copy()
        self.bg_mem = workload.bg_mem.copy()
        self.util_cpu = np.zeros(n)
        self.util_mem = np.zeros(n)
        self.busy = np.zeros(n)
        """Integral of true cpu utilization over time (the node's busy-seconds counter)."""
        self.on_node: list[dict[int, SimPod]] = [{} for _ in range(n)]
        self.tier_pods = np.zeros((n, len(scenario.tiers)), dtype=np.int64)
        """Running pods per node and scenario tier."""
        self.n_ready = 0
        self.last = 0.0
        self.pod_seconds = np.zeros(len(scenario.tiers))
        self.hot_pod_seconds = np.zeros(len(scenario.tiers))
        self.start_index = 0
        self.version = 0
        self.memo: dict[tuple[int, int, int], int] = {}
        """Pod class (tier, cpu, memory) to the cluster version at which it failed on every
        node (then retries of the class fail at once until the version changes)."""
        self.covered: dict[tuple[int, int, int], tuple[int, npt.NDArray[np.bool_]]] = {}
        """Pod class to (version, nodes its failed attempts at that version processed)."""

        self.pods: list[SimPod] = []
        self.by_uid: dict[str, SimPod] = {}
        self.active: list[tuple[int, float, int, int]] = []
        self.unschedulable: dict[int, SimPod] = {}
        self.events: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self.sched_pending = False
        self.sched_free_at = 0.0
        self.copies: dict[str, int] = defaultdict(int)

        ms = scenario.metrics
        self.scrape_interval = ms.scrapeInterval
        self.rule_interval = ms.ruleInterval
        self.rate_window = ms.rateWindow
        ceil_policy = policy if policy is not None else ceilings_from
        self.refresh_interval = ms.refreshInterval or _refresh_of(ceil_policy)
        self.scrapes: deque[tuple[float, FloatArray, FloatArray]] = deque()
        self.scrape_count = 0
        self.heat_every = max(1, math.ceil(self.end / self.scrape_interval / MAX_HEAT_COLUMNS))
        self.rule_out: tuple[FloatArray, FloatArray] | None = None

        # Per scenario tier: what the pods look like to the extender and to the ceilings.
        self.tiers = scenario.tiers
        tier_policy = [
            tier_for(_pod_info(t, "probe", "probe", 0, 0), ceil_policy.rules)
            if ceil_policy is not None
            else None
            for t in self.tiers
        ]
        self.ceil = [_ceilings(t) for t in tier_policy]
        self.result = RunResult(
            label=label or ("baseline" if policy is None else policy.source),
            policy=None if policy is None else policy.source,
            workload=workload,
            tiers=tuple(self.tiers),
            policy_tiers=tuple("-" if t is None else t.name for t in tier_policy),
            ceilings=tuple(self.ceil),
            interval=self.refresh_interval,
            evicted=[0] * len(self.tiers),
            preemptions=[0] * len(self.tiers),
        )

        self.ext: InProcessExtender | None = None
        self.live = False
        self.pod_feed = False
        """Per-pod usage and departures are handed to the extender (see the module docstring)."""
        self.pod_usage: PodUsage | None = None
        self.departures: deque[Departure] = deque()
        self.rule_span: tuple[float, float] | None = None
        """(first, last) scrape times the latest rule evaluation read."""
        if policy is not None:
            self.ext = InProcessExtender(policy, lambda: self.now, self._victim_estimate)
            rules = policy.rules
            self.horizon = max(rules.estimation.window_s, rules.max_age_s)
            self.live = policy.document.metrics.source != "none"
            self.signals = [s for s in ("cpu", "memory") if s in rules.signals]
            m = policy.document.metrics
            self.pod_feed = self.live and (
                m.prometheus.pods.enabled or m.metricsServer.pods.enabled
            )
        self.estimates: dict[tuple[int, int, int], tuple[float, float]] = {}
        self.node_infos: list[NodeInfo] = []
        self.placed: deque[PlacedPod] = deque()
        self.samples: dict[str, dict[str, Sample]] | None = None
        self.samples_at: float | None = None
        self.ext_dirty = True

    # --- event plumbing ---------------------------------------------------------------------

    def _push(self, t: float, kind: int, arg: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, kind, self._seq, arg, 0))

    def _periodic(self, kind: int, interval: float, phase: float) -> None:
        t = phase * interval
        while t < self.end:
            self._push(t, kind)
            t += interval

    def run(self) -> RunResult:
        wl = self.wl
        for at in sorted({nd.add_at for nd in wl.nodes}):
            self._push(at, _NODE_ADD)
        for k, tpl in enumerate(wl.pods):
            self._push(tpl.submit, _ARRIVE, k)
        load_times = {0.0}
        t = wl.noise_period
        while t < self.end:
            load_times.add(t)
            t += wl.noise_period
        for spot in wl.hot_spots:
            load_times.update(x for x in (spot.start, spot.end) if x < self.end)
        for t in sorted(load_times):
            self._push(t, _LOAD)
        self._periodic(_SCRAPE, self.scrape_interval, wl.phases[0])
        self._periodic(_RULE, self.rule_interval, wl.phases[1])
        if self.ext is not None and self.live:
            self._periodic(_REFRESH, self.refresh_interval, wl.phases[2])
        self._push(0.0, _WARM)

        report_every = self.end / 200
        next_report = 0.0
        while self.events:
            t, kind, _, arg, token = heapq.heappop(self.events)
            if t >= self.end:
                break
            self._advance(t)
            if kind == _SCHED:
                self._schedule()
            elif kind == _ARRIVE:
                self._arrive(wl.pods[arg])
            elif kind == _DEPART:
                self._depart(arg)
            elif kind == _BACKOFF:
                self._backoff_done(arg, token)
            elif kind == _GIVE_UP:
                self._give_up(arg)
            elif kind == _SCRAPE:
                self._scrape()
            elif kind == _RULE:
                self._rule()
            elif kind == _REFRESH:
                self._refresh()
            elif kind == _LOAD:
                self._load()
            elif kind == _WARM:
                self._warm()
            elif kind == _NODE_ADD:
                self._node_add()
            if self.progress is not None and t >= next_report:
                self.progress(t / self.end)
                next_report = t + report_every
        self._advance(self.end)
        if self.progress is not None:
            self.progress(1.0)
        return self._finish()

    def _advance(self, t: float) -> None:
        dt = t - self.last
        if dt > 0:
            r = self.n_ready
            u = self.util_cpu[:r]
            self.busy[:r] += u * dt
            hot = u > HOT
            self.result.hot_node_seconds += dt * int(np.count_nonzero(hot))
            counts = self.tier_pods[:r]
            self.pod_seconds += counts.sum(axis=0) * dt
            if hot.any():
                self.hot_pod_seconds += counts[hot].sum(axis=0) * dt
            self.last = t
        self.now = t

    def _bump(self) -> None:
        """The cluster changed in a way that may help a pending pod: requeue the waiting ones."""
        self.version += 1
        if not self.unschedulable:
            return
        for pod in list(self.unschedulable.values()):
            self._to_backoff(pod)
        self.unschedulable.clear()

    def _to_backoff(self, pod: SimPod) -> None:
        s = self.sc.scheduler
        wait = min(s.backoffInitial * 2 ** max(pod.attempts - 1, 0), s.backoffMax)
        pod.token += 1
        self._seq += 1
        heapq.heappush(
            self.events,
            (max(self.now, pod.fail_time + wait), _BACKOFF, self._seq, pod.id, pod.token),
        )

    # --- cluster state ------------------------------------------------------------------------

    def _recompute(self, i: int) -> None:
        self.util_cpu[i] = min(max(self.use_cpu[i] / self.cores[i] + self.bg_cpu[i], 0.0), 1.0)
        self.util_mem[i] = min(max(self.use_mem[i] / self.mem_f[i] + self.bg_mem[i], 0.0), 1.0)

    def _load(self) -> None:
        wl = self.wl
        k = min(int(self.now / wl.noise_period), len(wl.noise_cpu) - 1)
        cpu = wl.bg_cpu + wl.noise_cpu[k]
        mem = wl.bg_mem + wl.noise_mem[k]
        for spot in wl.hot_spots:
            if spot.start <= self.now < spot.end:
                cpu[spot.nodes] += spot.cpu
                mem[spot.nodes] += spot.memory
        self.bg_cpu, self.bg_mem = cpu, mem
        self.util_cpu = np.clip(self.use_cpu / self.cores + cpu, 0.0, 1.0)
        self.util_mem = np.clip(self.use_mem / self.mem_f + mem, 0.0, 1.0)

    def _node_add(self) -> None:
        n = len(self.wl.nodes)
        while self.n_ready < n and self.wl.nodes[self.n_ready].add_at <= self.now:
            i = self.n_ready
            self.n_ready += 1
            nd = self.wl.nodes[i]
            self.node_infos.append(NodeInfo(nd.name, self.cores[i], self.mem_f[i], 0.0, 0.0))
        self.ext_dirty = True
        self._bump()

    def _arrive(self, tpl: PodTemplate, uid: str | None = None, name: str | None = None) -> None:
        tier = self.tiers[tpl.tier]
        pod = SimPod(
            id=len(self.pods),
            tpl=tpl,
            uid=uid or tpl.uid,
            name=name or tpl.name,
            submit=self.now,
            priority=tier.priority,
        )
        self.pods.append(pod)
        self.by_uid[pod.uid] = pod
        self.result.submitted += 1
        if 0 <= tpl.node < self.n_ready:
            pod.initial = True
            self._bind(pod, tpl.node)
            return
        if tier.patience is not None:
            self._push(self.now + tier.patience, _GIVE_UP, pod.id)
        self._activate(pod)

    def _activate(self, pod: SimPod) -> None:
        pod.in_active = True
        heapq.heappush(self.active, (-pod.priority, pod.submit, pod.id, 0))
        if not self.sched_pending:
            self.sched_pending = True
            self._push(max(self.now, self.sched_free_at), _SCHED)

    def _bind(self, pod: SimPod, i: int) -> None:
        tpl = pod.tpl
        pod.state = RUNNING
        pod.node = i
        pod.bound_at = self.now
        pod.nominated = -1
        self.req_cpu_m[i] += tpl.cpu_m
        self.req_mem[i] += tpl.memory
        self.npods[i] += 1
        self.tier_pods[i, tpl.tier] += 1
        self.use_cpu[i] += tpl.cpu_use
        self.use_mem[i] += tpl.mem_use
        self._recompute(i)
        self.on_node[i][pod.id] = pod
        if math.isfinite(tpl.lifetime):
            self._push(self.now + tpl.lifetime, _DEPART, pod.id)
        if self.ext is not None:
            self._node_changed(i)
        if pod.initial:
            return
        cpu, mem = float(self.util_cpu[i]), float(self.util_mem[i])
        c_cpu, c_mem = self.ceil[tpl.tier]
        self.result.placements.append(
            Placement(
                pod.uid,
                tpl.tier,
                self.now,
                i,
                cpu,
                mem,
                cpu > c_cpu or mem > c_mem,
                self.now - pod.submit,
            )
        )
        if self.ext is not None:
            est = self._estimate(tpl)
            self.placed.append(PlacedPod(self.names[i], est[0], est[1], self.now, pod.uid))

    def _unbind(self, pod: SimPod, state: int) -> None:
        i, tpl = pod.node, pod.tpl
        pod.state = state
        self.req_cpu_m[i] -= tpl.cpu_m
        self.req_mem[i] -= tpl.memory
        self.npods[i] -= 1
        self.tier_pods[i, tpl.tier] -= 1
        self.use_cpu[i] -= tpl.cpu_use
        self.use_mem[i] -= tpl.mem_use
        self._recompute(i)
        del self.on_node[i][pod.id]
        if self.ext is not None:
            self._node_changed(i)
            if self.pod_feed:
                est = self._estimate(tpl)
                self.departures.append(
                    Departure(pod.uid, self.names[i], self.now, pod.priority, est[0], est[1])
                )

    def _depart(self, pod_id: int) -> None:
        pod = self.pods[pod_id]
        if pod.state != RUNNING:
            return
        self._unbind(pod, DONE)
        self._bump()

    def _give_up(self, pod_id: int) -> None:
        pod = self.pods[pod_id]
        if pod.state != PENDING:
            return
        pod.state = GAVE_UP
        pod.in_active = False
        self.unschedulable.pop(pod.id, None)

    def _backoff_done(self, pod_id: int, token: int) -> None:
        pod = self.pods[pod_id]
        if pod.token == token and pod.state == PENDING and not pod.in_active:
            self._activate(pod)

    # --- metrics pipeline -----------------------------------------------------------------------

    def _scrape(self) -> None:
        r = self.n_ready
        busy = np.full(len(self.busy), np.nan)
        busy[:r] = self.busy[:r]
        mem = np.full(len(self.busy), np.nan)
        mem[:r] = self.util_mem[:r]
        self.scrapes.append((self.now, busy, mem))
        horizon = self.now - self.rate_window - self.scrape_interval
        while self.scrapes and self.scrapes[0][0] < horizon:
            self.scrapes.popleft()
        self.scrape_count += 1
        if self.scrape_count % self.heat_every == 0:
            heat = np.full(len(self.busy), np.nan, dtype=np.float32)
            heat[:r] = self.util_cpu[:r]
            self.result.times.append(self.now)
            self.result.heat.append(heat)
        # podMaxInUnschedulablePodsDuration: a periodic flush of pods waiting too long.
        limit = self.sc.scheduler.maxUnschedulable
        stuck = [p for p in self.unschedulable.values() if self.now - p.fail_time >= limit]
        for pod in stuck:
            del self.unschedulable[pod.id]
            self._to_backoff(pod)

    def _warm(self) -> None:
        """The cluster ran like this before the start: the pipeline's history shows the state at
        time 0 (with the pods running at the start), and the extender has just refreshed."""
        r = self.n_ready
        self.scrapes.clear()
        steps = int(self.rate_window // self.scrape_interval) + 1
        for k in range(steps, -1, -1):
            t = -k * self.scrape_interval
            busy = np.full(len(self.busy), np.nan)
            busy[:r] = self.util_cpu[:r] * t
            mem = np.full(len(self.busy), np.nan)
            mem[:r] = self.util_mem[:r]
            self.scrapes.append((t, busy, mem))
        self._rule()
        if self.ext is not None and self.live:
            self._refresh()

    def _rule(self) -> None:
        """cpu = increase of the busy counter over the rate window / elapsed; memory = latest."""
        window = [s for s in self.scrapes if s[0] > self.now - self.rate_window]
        if len(window) < 2:
            return
        t_last, busy_last, mem_last = window[-1]
        first_t = np.full(len(busy_last), np.nan)
        first_busy = np.full(len(busy_last), np.nan)
        for t, busy, _ in reversed(window[:-1]):
            known = ~np.isnan(busy)
            first_t = np.where(known, t, first_t)
            first_busy = np.where(known, busy, first_busy)
        with np.errstate(invalid="ignore", divide="ignore"):
            cpu = (busy_last - first_busy) / (t_last - first_t)
        self.rule_out = (cpu, mem_last.copy())
        self.rule_span = (window[0][0], t_last)

    def _refresh(self) -> None:
        """The extender's periodic query: the latest rule output, stamped with the query time."""
        if self.rule_out is None:
            return
        cpu, mem = self.rule_out
        values = {"cpu": cpu, "memory": mem}
        samples: dict[str, dict[str, Sample]] = {}
        cols = {s: values[s].tolist() for s in self.signals}
        for i in range(self.n_ready):
            per: dict[str, Sample] = {}
            for s in self.signals:
                v = cols[s][i]
                if not math.isnan(v):
                    per[s] = Sample(min(max(v, 0.0), 1.0), self.now)
            if per:
                samples[self.names[i]] = per
        self.samples = samples
        self.samples_at = self.now
        if self.pod_feed:
            self.pod_usage = self._pod_usage()
        self.ext_dirty = True
        self._bump()

    def _pod_usage(self) -> PodUsage | None:
        """Every running pod's usage as the rule's latest evaluation shows it, stamped with the
        query time (as the node samples are): cpu times the share of the rate window the pod
        ran, memory once a scrape saw it; pods bound after the last scrape are not in it."""
        if self.rule_span is None:
            return None
        first, last = self.rule_span
        span = max(last - first, 1e-9)
        uids: list[str] = []
        nodes: list[str] = []
        owners: list[str] = []
        rows: list[tuple[int, float, float, float, float]] = []
        for i in range(self.n_ready):
            for p in self.on_node[i].values():
                if p.bound_at >= last:
                    continue
                tpl = p.tpl
                shown = min(max((last - max(p.bound_at, first)) / span, 0.0), 1.0)
                tier = self.tiers[tpl.tier]
                uids.append(p.uid)
                nodes.append(self.names[i])
                owners.append(owner_key("ReplicaSet", tier.namespace, tier.name))
                rows.append(
                    (
                        p.priority,
                        tpl.cpu_m / 1000,
                        float(tpl.memory),
                        tpl.cpu_use * shown,
                        tpl.mem_use,
                    )
                )
        arr = np.array(rows, dtype=np.float64).reshape(len(rows), 5).T
        n = len(rows)
        return PodUsage(
            uids=tuple(uids),
            nodes=tuple(nodes),
            priority=arr[0].astype(np.int64),
            requests=np.ascontiguousarray(arr[1:3]),
            usage=np.ascontiguousarray(arr[3:5]),
            sampled_at=np.full((2, n), self.now),
            owners=tuple(owners),
        )

    # --- the extender's view ---------------------------------------------------------------------

    def _estimate(self, tpl: PodTemplate) -> tuple[float, float]:
        key = (tpl.tier, tpl.cpu_m, tpl.memory)
        est = self.estimates.get(key)
        if est is None:
            assert self.policy is not None
            info = _pod_info(self.tiers[tpl.tier], "x", "x", tpl.cpu_m, tpl.memory)
            est = self.estimates[key] = estimate_pod(info, self.policy.rules.estimation)
        return est

    def _victim_estimate(self, uid: str) -> tuple[float, float] | None:
        pod = self.by_uid.get(uid)
        if pod is None or pod.state != RUNNING:
            return None
        return self._estimate(pod.tpl)

    def _node_changed(self, i: int) -> None:
        old = self.node_infos[i]
        self.node_infos[i] = NodeInfo(
            old.name,
            old.allocatable_cpu,
            old.allocatable_memory,
            self.req_cpu_m[i] / 1000.0,
            float(self.req_mem[i]),
        )
        self.ext_dirty = True

    def _sync(self) -> InProcessExtender:
        ext = self.ext
        assert ext is not None
        if self.ext_dirty:
            after = self.now - self.horizon
            while self.placed and self.placed[0].bound_at < after:
                self.placed.popleft()
            while self.departures and self.departures[0].departed_at < after:
                self.departures.popleft()
            ext.publish(
                self.node_infos,
                list(self.placed),
                self.samples,
                self.samples_at,
                pod_usage=self.pod_usage,
                departures=tuple(self.departures),
            )
            self.samples = None  # handed over; the store keeps them until the next refresh
            self.pod_usage = None
            self.ext_dirty = False
        return ext

    def _body(self, pod: SimPod) -> bytes:
        if not pod.body:
            pod.body = _pod_json(self.tiers[pod.tpl.tier], pod)
        return pod.body

    # --- the scheduler ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        self.sched_pending = False
        while self.active:
            _, _, pod_id, _ = heapq.heappop(self.active)
            pod = self.pods[pod_id]
            if not pod.in_active:
                continue
            pod.in_active = False
            if pod.state != PENDING:
                continue
            key = (pod.tpl.tier, pod.tpl.cpu_m, pod.tpl.memory)
            if pod.nominated < 0 and self.memo.get(key) == self.version:
                self._unschedulable(pod)
                continue
            self._cycle(pod, key)
            self.result.cycles += 1
            self.sched_free_at = self.now + self.sc.scheduler.cycle
            break
        if self.active and not self.sched_pending:
            self.sched_pending = True
            self._push(max(self.now, self.sched_free_at), _SCHED)

    def _unschedulable(self, pod: SimPod) -> None:
        pod.attempts += 1
        pod.fail_version = self.version
        pod.fail_time = self.now
        self.unschedulable[pod.id] = pod

    def _cover(self, key: tuple[int, int, int], start: int, processed: int, n: int) -> bool:
        """Record the nodes a failed attempt processed; True once the class's failures at this
        version processed every node. Within a version only bindings happen, and they only add
        requests and just-placed usage, so a node that failed a class keeps failing it."""
        entry = self.covered.get(key)
        if entry is None or entry[0] != self.version or len(entry[1]) != n:
            mask = np.zeros(n, dtype=bool)
            self.covered[key] = (self.version, mask)
        else:
            mask = entry[1]
        mask[(start + np.arange(processed)) % n] = True
        return bool(mask.all())

    def _fits_one(self, i: int, tpl: PodTemplate) -> bool:
        return bool(
            self.npods[i] + 1 <= self.max_pods[i]
            and self.req_cpu_m[i] + tpl.cpu_m <= self.alloc_cpu_m[i]
            and self.req_mem[i] + tpl.memory <= self.alloc_mem[i]
        )

    def _cycle(self, pod: SimPod, key: tuple[int, int, int]) -> None:
        tpl = pod.tpl
        n = self.n_ready
        if n == 0:
            self._unschedulable(pod)
            return
        if 0 <= pod.nominated < n:
            i = pod.nominated
            pod.nominated = -1
            if self._fits_one(i, tpl) and (
                self.ext is None or self._sync().filter(self._body(pod), [self.names[i]]).kept
            ):
                self._bind(pod, i)
                return
        fit = fits(
            self.req_cpu_m[:n],
            self.req_mem[:n],
            self.npods[:n],
            self.alloc_cpu_m[:n],
            self.alloc_mem[:n],
            self.max_pods[:n],
            tpl.cpu_m,
            tpl.memory,
        )
        to_find = num_feasible_nodes_to_find(self.sc.scheduler.percentageOfNodesToScore, n)
        start = self.start_index % n
        feasible, processed = search_feasible(fit, start, to_find)
        self.start_index = (start + processed) % n
        unresolvable: set[int] = set()
        kept = feasible.tolist()
        if self.ext is not None and kept:
            res = self._sync().filter(self._body(pod), [self.names[i] for i in kept])
            kept = [self.index[name] for name in res.kept]
            unresolvable = {self.index[name] for name in res.unresolvable}
        if not kept:
            complete = self._cover(key, start, processed, n)
            if self.sc.scheduler.preemption and self.tiers[tpl.tier].preemptionPolicy != "Never":
                done, visited_all = self._preempt(pod, unresolvable)
                if done:
                    return
                complete = complete and visited_all
            self._unschedulable(pod)
            if complete:
                self.memo[key] = self.version
            return
        if len(kept) == 1:
            self._bind(pod, kept[0])
            return
        idx = np.array(kept, dtype=np.int64)
        req_cpu = self.req_cpu_m[idx] + tpl.cpu_m
        req_mem = self.req_mem[idx] + tpl.memory
        a_cpu, a_mem = self.alloc_cpu_m[idx], self.alloc_mem[idx]
        total = least_allocated(req_cpu, a_cpu, req_mem, a_mem) + balanced_allocation(
            req_cpu, a_cpu, req_mem, a_mem
        )
        if self.ext is not None:
            scores = self._sync().prioritize(self._body(pod), [self.names[i] for i in kept])
            weight = self.sc.scheduler.extenderWeight
            total = total + np.array(
                [extender_points(scores.get(self.names[i], 0), weight) for i in kept],
                dtype=np.int64,
            )
        best = np.flatnonzero(total == total.max())
        choice = int(best[self.rng.randrange(len(best))]) if len(best) > 1 else int(best[0])
        self._bind(pod, kept[choice])

    def _preempt(self, pod: SimPod, unresolvable: set[int]) -> tuple[bool, bool]:
        """DefaultPreemption by requests; returns (preempted, every potential node visited)."""
        tpl = pod.tpl
        potential = [i for i in range(self.n_ready) if i not in unresolvable]
        if not potential or not any(
            other.priority < pod.priority for i in potential for other in self.on_node[i].values()
        ):
            return False, True
        want = num_preemption_candidates(len(potential))
        offset = self.rng.randrange(len(potential))
        candidates: list[Candidate] = []
        visited_all = True
        for k in range(len(potential)):
            i = potential[(offset + k) % len(potential)]
            running = [
                Running(p.uid, p.priority, p.tpl.cpu_m, p.tpl.memory, p.bound_at)
                for p in self.on_node[i].values()
            ]
            victims = select_victims(
                running,
                pod.priority,
                int(self.alloc_cpu_m[i] - self.req_cpu_m[i]),
                int(self.alloc_mem[i] - self.req_mem[i]),
                int(self.max_pods[i] - self.npods[i]),
                tpl.cpu_m,
                tpl.memory,
            )
            if victims:
                candidates.append(Candidate(i, victims))
                if len(candidates) >= want:
                    visited_all = k == len(potential) - 1
                    break
        if not candidates:
            return False, True
        if self.ext is not None:
            offered = {self.names[c.node]: [v.uid for v in c.victims] for c in candidates}
            answer = self._sync().preempt(self._body(pod), offered)
            kept: list[Candidate] = []
            for cand in candidates:
                uids = answer.get(self.names[cand.node])
                if uids:
                    chosen = set(uids)
                    kept.append(
                        Candidate(cand.node, tuple(v for v in cand.victims if v.uid in chosen))
                    )
            candidates = kept
        best = pick_candidate(candidates)
        if best is None:
            return False, visited_all
        for victim in best.victims:
            self._evict(self.by_uid[victim.uid])
        self.result.preemptions[tpl.tier] += 1
        pod.nominated = best.node
        self._bump()
        self._activate(pod)
        return True, visited_all

    def _evict(self, victim: SimPod) -> None:
        self._unbind(victim, PREEMPTED)
        tpl = victim.tpl
        self.result.evicted[tpl.tier] += 1
        if self.tiers[tpl.tier].restartOnPreemption:
            self.copies[tpl.uid] += 1
            k = self.copies[tpl.uid]
            self.result.replacements += 1
            self._arrive(
                PodTemplate(
                    tpl.uid,
                    tpl.name,
                    tpl.tier,
                    tpl.cpu_m,
                    tpl.memory,
                    tpl.cpu_use,
                    tpl.mem_use,
                    tpl.lifetime,
                    self.now,
                ),
                uid=f"{tpl.uid}-r{k}",
                name=f"{tpl.name}-r{k}",
            )

    # --- the end ----------------------------------------------------------------------------

    def _finish(self) -> RunResult:
        res = self.result
        for pod in self.pods:
            outcome = pod.state
            res.outcomes.append((pod.tpl.tier, outcome, pod.submit, pod.bound_at, pod.initial))
        if self.ext is not None:
            res.extender_calls = dict(self.ext.calls)
        res.pod_seconds = self.pod_seconds.tolist()
        res.hot_pod_seconds = self.hot_pod_seconds.tolist()
        return res


def _refresh_of(policy: LoadedPolicy | None) -> float:
    if policy is None:
        return 15.0
    m = policy.document.metrics
    if m.source == "static":
        return m.static.refreshInterval
    return m.prometheus.refreshInterval


def _ceilings(tier: Tier | None) -> tuple[float, float]:
    if tier is None:
        return math.inf, math.inf
    return tier.ceilings.get("cpu", math.inf), tier.ceilings.get("memory", math.inf)


def _pod_info(tier: TierSpec, name: str, uid: str, cpu_m: int, memory: int) -> PodInfo:
    return PodInfo(
        namespace=tier.namespace,
        name=name,
        uid=uid,
        priority=tier.priority,
        priority_class_name=tier.priorityClassName or tier.name,
        labels=dict(tier.labels),
        owner_kinds=("ReplicaSet",),
        containers=(ContainerResources(cpu_request=cpu_m / 1000, memory_request=float(memory)),),
    )


def _pod_json(tier: TierSpec, pod: SimPod) -> bytes:
    """The Pod as kube-scheduler sends it (the fields an extender may read)."""
    tpl = pod.tpl
    return _encode(
        {
            "metadata": {
                "name": pod.name,
                "namespace": tier.namespace,
                "uid": pod.uid,
                "labels": dict(tier.labels),
                "ownerReferences": [{"kind": "ReplicaSet", "name": tier.name, "controller": True}],
            },
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "resources": {
                            "requests": {"cpu": f"{tpl.cpu_m}m", "memory": str(tpl.memory)}
                        },
                    }
                ],
                "priority": tier.priority,
                "priorityClassName": tier.priorityClassName or tier.name,
                "preemptionPolicy": tier.preemptionPolicy,
                "schedulerName": "default-scheduler",
            },
            "status": {"phase": "Pending"},
        }
    )

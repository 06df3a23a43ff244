"""Scenario files: the cluster, its hidden load, the workload and the metrics pipeline to replay.

A scenario is YAML, validated like a policy: YAML 1.2 scalars, no duplicate keys, typed models
that forbid unknown fields, then cross-field checks (unique names, references that resolve), and
every problem reported at once as ``file:line:col: path: message``.

Numbers that vary (a pod's real usage, its lifetime, a node's hidden load) are *distributions*,
written as a constant (``0.8``), a uniform range (``[0.5, 1.2]``) or a mapping with ``dist``::

    usage: {cpu: {dist: lognormal, median: 0.7, sigma: 0.4, max: 3}}
    lifetime: {dist: exponential, mean: 20m, min: 1m}

A ``count`` in a node group or a burst is exact; rates (``perMinute``) are Poisson.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from extender.policy.loader import pydantic_issues
from extender.policy.model import Duration, PositiveDuration, Quantity, StrictModel
from extender.policy.yamlpos import Document, DocumentError, Issue, Path, parse, read_text

API_VERSION = "priority-extender.io/v1alpha1"
KIND = "Scenario"

#: Largest scenario file read: a captured 5,000-node cluster with its pinned pods is a few MB.
MAX_SCENARIO_BYTES = 32 << 20

#: Bounds that catch typos (a duration in milliseconds read as seconds) rather than limit use.
MAX_NODES = 20_000
MAX_DURATION_S = 7 * 24 * 3600.0

_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


V = TypeVar("V", bound=float)


def _dist_shorthand(value: Any) -> Any:
    """``0.8`` or ``"20m"`` is a constant; ``[a, b]`` is uniform between a and b."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | str):
        return {"dist": "constant", "value": value}
    if isinstance(value, list) and len(value) == 2:
        return {"dist": "uniform", "min": value[0], "max": value[1]}
    return value


class Dist(StrictModel, Generic[V]):
    """A distribution of non-negative values; ``min``/``max`` clip any of them."""

    dist: Literal["constant", "uniform", "normal", "lognormal", "exponential"]
    value: V | None = None
    """For ``constant``."""
    min: V | None = None
    """Lower bound (``uniform``), or a clip for the others. Default 0."""
    max: V | None = None
    """Upper bound (``uniform``), or a clip for the others."""
    mean: V | None = None
    """For ``normal`` and ``exponential``."""
    sd: V | None = None
    """For ``normal``: the standard deviation."""
    median: V | None = None
    """For ``lognormal``: exp(mu)."""
    sigma: Annotated[float, Field(ge=0, le=5)] | None = None
    """For ``lognormal``: the standard deviation of the logarithm."""

    @model_validator(mode="after")
    def _fields_for_kind(self) -> Dist[V]:
        need = {
            "constant": ("value",),
            "uniform": ("min", "max"),
            "normal": ("mean", "sd"),
            "lognormal": ("median", "sigma"),
            "exponential": ("mean",),
        }[self.dist]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"dist {self.dist} needs {', '.join(missing)}")
        allowed = set(need) | {"min", "max"}
        extra = [
            f
            for f in ("value", "mean", "sd", "median", "sigma")
            if f not in allowed and getattr(self, f) is not None
        ]
        if extra:
            raise ValueError(f"dist {self.dist} does not take {', '.join(extra)}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def sample(self, rng: random.Random) -> float:
        """One draw, clipped to [min (default 0), max]."""
        if self.dist == "constant":
            x = float(self.value or 0.0)
        elif self.dist == "uniform":
            x = rng.uniform(float(self.min or 0.0), float(self.max or 0.0))
        elif self.dist == "normal":
            x = rng.gauss(float(self.mean or 0.0), float(self.sd or 0.0))
        elif self.dist == "lognormal":
            x = float(self.median or 0.0) * math.exp(rng.gauss(0.0, float(self.sigma or 0.0)))
        else:
            mean = float(self.mean or 0.0)
            x = rng.expovariate(1.0 / mean) if mean > 0 else 0.0
        lo = float(self.min) if self.min is not None else 0.0
        x = max(x, lo)
        if self.max is not None:
            x = min(x, float(self.max))
        return x

    @property
    def upper(self) -> float:
        """The largest value a draw can take (infinite when unbounded)."""
        if self.dist == "constant":
            return float(self.value or 0.0)
        if self.max is not None:
            return float(self.max)
        return math.inf


NonNegative = Annotated[float, Field(ge=0, le=1e6)]
Fraction = Annotated[float, Field(ge=-1, le=1)]
"""A share of a node's allocatable; negative for pods that use less than they request."""

RatioDist = Annotated[Dist[NonNegative], BeforeValidator(_dist_shorthand)]
FractionDist = Annotated[
    Dist[Annotated[float, Field(ge=0, le=1)]], BeforeValidator(_dist_shorthand)
]
DurationDist = Annotated[Dist[Duration], BeforeValidator(_dist_shorthand)]


def _forever(value: Any) -> Any:
    return None if value == "forever" else value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


class NodeGroup(StrictModel):
    """Nodes of one shape: ``count`` of them named ``<name>-000``, ``<name>-001``, ..."""

    name: Annotated[str, Field(pattern=_NAME, max_length=200)]
    count: Annotated[int, Field(ge=1, le=MAX_NODES)] | None = None
    """How many; default 1, or the length of ``names``."""
    names: list[Annotated[str, Field(pattern=_NAME, max_length=253)]] | None = None
    """Exact node names instead of numbered ones (captured clusters)."""
    cpu: Annotated[Quantity, Field(gt=0)]
    """Allocatable cpu (cores): ``16`` or ``15500m``."""
    memory: Annotated[Quantity, Field(gt=0)]
    """Allocatable memory: ``64Gi``."""
    pods: Annotated[int, Field(ge=1, le=10_000)] = 110
    """Allocatable pods (the kubelet's default ``maxPods``)."""
    addAt: Duration = 0.0
    """When the group joins the cluster (a scale-up); 0 means from the start."""

    @model_validator(mode="after")
    def _count_matches_names(self) -> NodeGroup:
        if self.names is not None and self.count is not None and self.count != len(self.names):
            raise ValueError(f"count {self.count} but {len(self.names)} names")
        return self

    @property
    def size(self) -> int:
        if self.names is not None:
            return len(self.names)
        return self.count if self.count is not None else 1

    def node_names(self) -> list[str]:
        if self.names is not None:
            return list(self.names)
        return [f"{self.name}-{i:03d}" for i in range(self.size)]


class Cluster(StrictModel):
    nodes: list[NodeGroup] = Field(min_length=1)
    """Node groups, in the order kube-scheduler lists them (nodes added later come last)."""


class Noise(StrictModel):
    """Noisy neighbours: an AR(1) wobble around each node's hidden load, redrawn every period."""

    cpu: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Standard deviation, as a share of allocatable cpu."""
    memory: Annotated[float, Field(ge=0, le=1)] = 0.0
    period: PositiveDuration = 30.0
    correlation: Annotated[float, Field(ge=0, lt=1)] = 0.7
    """How much of the previous period's deviation carries over (0: independent draws)."""


class HotSpot(StrictModel):
    """Extra hidden load on some nodes for a while (a runaway process, a noisy tenant)."""

    count: Annotated[int, Field(ge=1, le=MAX_NODES)] | None = None
    """How many nodes, chosen at random (seeded) from ``group`` or from the whole cluster."""
    names: list[str] | None = None
    """Or exactly these nodes."""
    group: str | None = None
    cpu: Fraction = 0.0
    memory: Fraction = 0.0
    start: Duration = 0.0
    end: Duration | None = None
    """Default: the end of the scenario."""

    @model_validator(mode="after")
    def _which_nodes(self) -> HotSpot:
        if (self.count is None) == (self.names is None):
            raise ValueError("give either count (random nodes) or names")
        if self.names is not None and self.group is not None:
            raise ValueError("group only applies with count")
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end}s is before start {self.start}s")
        return self


class NodeLoad(StrictModel):
    cpu: Fraction = 0.0
    memory: Fraction = 0.0


class Background(StrictModel):
    """Load that requests do not show: system daemons, pods outside the scheduler's view,
    noisy neighbours and hot spots. Shares of each node's allocatable."""

    cpu: FractionDist = Field(default_factory=lambda: _const(0.05))
    """Per node, drawn once: the steady hidden cpu load."""
    memory: FractionDist = Field(default_factory=lambda: _const(0.10))
    noise: Noise = Field(default_factory=Noise)
    hotSpots: list[HotSpot] = Field(default_factory=list)
    nodes: dict[str, NodeLoad] = Field(default_factory=dict)
    """Per node name: a steady hidden load that replaces the drawn one (captured clusters; may be
    negative where pods use less than they request)."""


def _const(x: float) -> Any:
    return Dist[Annotated[float, Field(ge=0, le=1)]](dist="constant", value=x)


class RequestOption(StrictModel):
    cpu: Annotated[Quantity, Field(gt=0)]
    memory: Annotated[Quantity, Field(gt=0)]
    weight: Annotated[float, Field(gt=0)] = 1.0
    """Relative frequency among the tier's options."""


class Usage(StrictModel):
    """Real usage as a multiple of requests (1.0: uses exactly what it asks for)."""

    cpu: RatioDist = Field(default_factory=lambda: Dist[NonNegative](dist="constant", value=1.0))
    memory: RatioDist = Field(default_factory=lambda: Dist[NonNegative](dist="constant", value=1.0))


class Arrival(StrictModel):
    """Either a steady Poisson rate over a period, or a burst of an exact count."""

    perMinute: Annotated[float, Field(gt=0, le=1e5)] | None = None
    start: Duration = 0.0
    """For a rate: when it starts."""
    end: Duration | None = None
    """For a rate: when it stops (default: the end of the scenario)."""
    count: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """For a burst: how many pods."""
    at: Duration | None = None
    """For a burst: when it starts."""
    over: Duration = 0.0
    """For a burst: spread evenly over this long (0: all at once)."""

    @model_validator(mode="after")
    def _rate_or_burst(self) -> Arrival:
        if (self.perMinute is None) == (self.count is None):
            raise ValueError("give either perMinute (a rate) or count (a burst)")
        if self.count is not None and self.at is None:
            raise ValueError("a burst needs at")
        if self.perMinute is not None and self.at is not None:
            raise ValueError("at only applies to a burst (count); a rate uses start and end")
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end}s is before start {self.start}s")
        return self


class TierSpec(StrictModel):
    """One kind of workload: its priority, shape, real usage, lifetime and arrivals."""

    name: Annotated[str, Field(pattern=_NAME, max_length=63)]
    priority: Annotated[int, Field(ge=-2_147_483_648, le=2_000_001_000)] = 0
    """``spec.priority``, as the Priority admission plugin resolves it from the class."""
    priorityClassName: str | None = None
    """Default: the tier's name."""
    namespace: Annotated[str, Field(pattern=_NAME, max_length=63)] = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    preemptionPolicy: Literal["PreemptLowerPriority", "Never"] = "PreemptLowerPriority"
    requests: Annotated[list[RequestOption], BeforeValidator(_one_or_many), Field(min_length=1)]
    """One ``{cpu, memory}`` or a list of options with weights."""
    usage: Usage = Field(default_factory=Usage)
    lifetime: Annotated[DurationDist | None, BeforeValidator(_forever)] = None
    """How long a pod runs once bound; ``forever`` (the default) outlives the scenario."""
    arrivals: list[Arrival] = Field(default_factory=list)
    initial: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    """Pods already running at the start, placed by the request-based scheduler alone (the
    same placement for every policy compared)."""
    patience: PositiveDuration | None = None
    """A pod pending this long is given up (a CI job timing out); default: waits forever."""
    restartOnPreemption: bool = True
    """A preempted pod is re-created at once by its controller (Deployment, Job)."""


class PinnedPods(StrictModel):
    """Pods running on a given node at the start (captured clusters)."""

    tier: str
    node: str
    cpu: Annotated[Quantity, Field(ge=0)]
    memory: Annotated[Quantity, Field(ge=0)]
    count: Annotated[int, Field(ge=1, le=10_000)] = 1


class MetricsPipeline(StrictModel):
    """How live utilization reaches the extender, and how late."""

    scrapeInterval: PositiveDuration = 15.0
    """Prometheus scrapes node counters this often."""
    ruleInterval: PositiveDuration = 15.0
    """Recording rules (``node:cpu_utilization:ratio``) are evaluated this often."""
    rateWindow: PositiveDuration = 60.0
    """The cpu rule's ``rate()`` window: cpu is the mean over the scrapes in this window."""
    refreshInterval: PositiveDuration | None = None
    """How often the extender queries; default: the policy's own refresh interval."""


class SchedulerSpec(StrictModel):
    """The kube-scheduler settings that matter for placement."""

    percentageOfNodesToScore: Annotated[int, Field(ge=0, le=100)] = 0
    """0: the adaptive default (50% - nodes/125, at least 5% and 100 nodes)."""
    extenderWeight: Annotated[int, Field(ge=1, le=100)] = 5
    """``extenders[].weight``: extender scores (0..10) count ``weight × 10`` each."""
    cycle: Annotated[Duration, Field(le=10)] = 0.01
    """Time one scheduling attempt takes: pods of a burst are bound this far apart."""
    backoffInitial: PositiveDuration = 1.0
    """``podInitialBackoffSeconds``."""
    backoffMax: PositiveDuration = 10.0
    """``podMaxBackoffSeconds``."""
    maxUnschedulable: PositiveDuration = 300.0
    """An unschedulable pod is retried after this long even if nothing changed
    (``podMaxInUnschedulablePodsDuration``)."""
    preemption: bool = True
    """DefaultPreemption enabled."""


class ScenarioDocument(StrictModel):
    """A cluster, its hidden load, a workload and a metrics pipeline, replayed for a while."""

    apiVersion: str
    kind: Literal["Scenario"]
    description: str = ""
    duration: Annotated[PositiveDuration, Field(le=MAX_DURATION_S)]
    cluster: Cluster
    background: Background = Field(default_factory=Background)
    tiers: list[TierSpec] = Field(min_length=1, max_length=64)
    pods: list[PinnedPods] = Field(default_factory=list)
    metrics: MetricsPipeline = Field(default_factory=MetricsPipeline)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)


class ScenarioError(DocumentError):
    """A scenario that cannot be used; ``issues`` lists every problem, already formatted."""


@dataclass(frozen=True, slots=True)
class Scenario:
    document: ScenarioDocument
    source: str
    """The file it came from."""

    @property
    def name(self) -> str:
        return FsPath(self.source).stem


def _semantic_issues(doc: Document, sc: ScenarioDocument) -> list[Issue]:
    issues: list[Issue] = []

    def add(path: Path, message: str, *, key: bool = False) -> None:
        issues.append(Issue(doc.mark_of(path, key=key), path, message))

    if sc.apiVersion != API_VERSION:
        add(("apiVersion",), f"unsupported apiVersion {sc.apiVersion!r}; supported: {API_VERSION}")
    groups: dict[str, NodeGroup] = {}
    nodes: dict[str, tuple[int, int]] = {}
    for g, group in enumerate(sc.cluster.nodes):
        if group.name in groups:
            add(("cluster", "nodes", g, "name"), f"duplicate node group {group.name!r}")
        groups[group.name] = group
        for name in group.node_names():
            if name in nodes:
                add(
                    ("cluster", "nodes", g),
                    f"node {name!r} is also in cluster.nodes[{nodes[name][0]}]",
                )
            nodes[name] = (g, 0)
        if group.addAt >= sc.duration:
            add(("cluster", "nodes", g, "addAt"), "joins after the scenario ends")
    if len(nodes) > MAX_NODES:
        add(("cluster", "nodes"), f"{len(nodes)} nodes; at most {MAX_NODES}")

    for h, spot in enumerate(sc.background.hotSpots):
        where = ("background", "hotSpots", h)
        for n in spot.names or ():
            if n not in nodes:
                add((*where, "names"), f"unknown node {n!r}")
        if spot.group is not None and spot.group not in groups:
            add((*where, "group"), f"unknown node group {spot.group!r}")
        elif spot.count is not None:
            pool = groups[spot.group].size if spot.group is not None else len(nodes)
            if spot.count > pool:
                add((*where, "count"), f"{spot.count} nodes asked, {pool} available")
    for n in sc.background.nodes:
        if n not in nodes:
            add(("background", "nodes", n), f"unknown node {n!r}", key=True)

    tiers: dict[str, int] = {}
    for t, tier in enumerate(sc.tiers):
        if tier.name in tiers:
            add(
                ("tiers", t, "name"),
                f"duplicate tier {tier.name!r} (also tiers[{tiers[tier.name]}])",
            )
        tiers[tier.name] = t
        for a, arr in enumerate(tier.arrivals):
            start = arr.at if arr.at is not None else arr.start
            if start >= sc.duration:
                add(("tiers", t, "arrivals", a), "starts after the scenario ends")
    for p, pinned in enumerate(sc.pods):
        if pinned.tier not in tiers:
            add(("pods", p, "tier"), f"unknown tier {pinned.tier!r}")
        if pinned.node not in nodes:
            add(("pods", p, "node"), f"unknown node {pinned.node!r}")
    return issues


def load_text(text: str, filename: str) -> Scenario:
    """Validate scenario text; raise :class:`ScenarioError` listing every problem."""
    doc = parse(text)
    issues = list(doc.issues)
    document: ScenarioDocument | None = None
    if doc.data is not None:
        if not isinstance(doc.data, dict):
            issues.append(Issue(doc.mark_of(()), (), "a scenario must be a mapping"))
        else:
            try:
                document = ScenarioDocument.model_validate(doc.data)
            except ValidationError as exc:
                reported = {i.path for i in doc.issues}
                issues.extend(i for i in pydantic_issues(doc, exc) if i.path not in reported)
            if document is not None:
                issues.extend(_semantic_issues(doc, document))
    if issues or document is None:
        issues.sort(key=lambda i: (i.mark.line, i.mark.column))
        raise ScenarioError(filename, [i.format(filename) for i in issues])
    return Scenario(document, filename)


def load_scenario(path: str | FsPath) -> Scenario:
    """Read and validate a scenario file; unreadable files are a :class:`ScenarioError` too."""
    return load_text(read_text(path, MAX_SCENARIO_BYTES, ScenarioError), str(path))

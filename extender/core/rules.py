"""The compiled form of a policy, as the decision core reads it.

These are plain frozen dataclasses: the ``policy`` layer parses and validates the platform team's
YAML and compiles it into a :class:`Rules`; nothing here knows about YAML or files.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Signals that are resources: pods carry an estimate for them, so a projection can add the
#: just-placed pods and the incoming pod to the live sample. Other signals (network, disk, custom)
#: are compared as sampled.
RESOURCES: tuple[str, ...] = ("cpu", "memory")


class OnStale(enum.Enum):
    """What a tier does with a node whose live data is stale or missing."""

    ALLOW = "allow"
    """Keep the node; score it from request-based utilization where known, else neutrally."""
    REJECT = "reject"
    """Reject the node (reported as unresolvable: preemption cannot make data fresh)."""
    NEUTRAL = "neutral"
    """Keep the node with the neutral score, whatever else is known about it."""


class Strategy(enum.Enum):
    """How a tier turns projected utilization into a 0..10 score."""

    LEAST_LOADED = "leastLoaded"
    MOST_LOADED = "mostLoaded"
    TARGET_LOAD = "targetLoad"
    BALANCED = "balanced"


class EstimateFrom(enum.Enum):
    """Which container field estimates a pod's usage first."""

    REQUESTS = "requests"
    LIMITS = "limits"


class Headroom(enum.Enum):
    """Which usage of lower-priority pods counts against a tier's ceilings (per-pod data only;
    without it every mode is ``all``).

    Memory is not reclaimable without an eviction (the kernel cannot take back pages the way
    CFS shares take back CPU), so ``requests`` counts lower pods' memory in full, and only
    ``preemptible`` discounts it: preemption evicts those pods, which is what frees it.
    """

    ALL = "all"
    """Every pod's usage counts (node-level behaviour)."""
    REQUESTS = "requests"
    """A lower-priority pod's cpu counts only up to its request: CPU above requests is
    reclaimable by CFS shares. Memory counts in full."""
    PREEMPTIBLE = "preemptible"
    """The usage (cpu and memory) of the pods this pod could preempt does not count: lower
    priority, when the pod's ``preemptionPolicy`` is not ``Never``."""


class SelectorOp(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True)
class SelectorRequirement:
    key: str
    op: SelectorOp
    values: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes label selector: every label and every expression must hold."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
    expressions: tuple[SelectorRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.expressions:
            present = req.key in labels
            if req.op is SelectorOp.EXISTS and not present:
                return False
            if req.op is SelectorOp.DOES_NOT_EXIST and present:
                return False
            if req.op is SelectorOp.IN and (not present or labels[req.key] not in req.values):
                return False
            if req.op is SelectorOp.NOT_IN and present and labels[req.key] in req.values:
                return False
        return True


@dataclass(frozen=True, slots=True)
class TierMatch:
    """Which pods belong to a tier. Every criterion that is set must hold (as in a selector)."""

    priority_class_names: frozenset[str] | None = None
    min_priority: int | None = None
    max_priority: int | None = None
    namespaces: frozenset[str] | None = None
    pod_selector: LabelSelector | None = None


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    match: TierMatch
    ceilings: Mapping[str, float]
    """Per signal: reject a node whose projected utilization is above this (0..1 or more)."""
    strategy: Strategy
    weights: Mapping[str, float]
    """Per signal weight in the score; signals not listed do not count."""
    target: float = 0.6
    """For ``targetLoad``: the utilization that scores highest."""
    on_stale: OnStale = OnStale.ALLOW
    floor_keep: int = 0
    """When every candidate is rejected: keep this many, the least over their ceilings (0:
    reject them all). A filter rejection is final for the attempt and autoscalers do not run
    extenders, so a tier that must run needs a floor."""
    observe: bool = False
    """Shadow mode: decide and record, but keep every node and answer neutral scores."""
    headroom: Headroom = Headroom.ALL
    """Which usage of lower-priority pods counts against this tier (see :class:`Headroom`)."""


@dataclass(frozen=True, slots=True)
class Siblings:
    """Estimate a new pod from the measured usage of its controller's running pods."""

    percentile: float = 90.0
    """Of the siblings' usage samples, per resource (0..100)."""
    min_pods: int = 3
    """Siblings with a fresh sample needed before their percentile replaces the rule: fewer
    say little about the next one (one pod's p90 is that pod)."""


@dataclass(frozen=True, slots=True)
class Estimation:
    """How the usage of a pod that metrics cannot see yet is estimated."""

    window_s: float = 150.0
    """A bound pod stops counting as just placed this long after it was bound (as of its node's
    sample): ``lag_s`` plus the rate window over which its usage fades in."""
    lag_s: float = 30.0
    """A bound pod counts in full until its node's sample is this much younger than the bind:
    the time for its usage to reach the metrics at all. After it the estimate fades linearly to
    zero at ``window_s``, as ``rate()`` takes in a step change over its window."""
    prefer: EstimateFrom = EstimateFrom.REQUESTS
    requests_factor: float = 1.0
    default_cpu: float = 0.1
    """Cores, for a container that declares neither a request nor a limit."""
    default_memory: float = 128 * 2**20
    """Bytes, for a container that declares neither a request nor a limit."""
    siblings: Siblings | None = None
    """None: estimates come from the pod's own spec only (today's rule)."""


@dataclass(frozen=True, slots=True)
class Bypass:
    """Pods the extender does not judge: every node is kept with a neutral score."""

    daemonsets: bool = True
    namespaces: frozenset[str] = frozenset()
    pod_selector: LabelSelector | None = None


@dataclass(frozen=True, slots=True)
class Rules:
    """A whole compiled policy."""

    signals: tuple[str, ...]
    tiers: tuple[Tier, ...]
    default_tier: Tier
    max_age_s: float = 60.0
    estimation: Estimation = Estimation()
    bypass: Bypass = Bypass()
    neutral_score: int = 5
    preemption_max_per_node: int = 0
    """Cap on approved preemptions per node within ``preemption_window_s``; 0 means no cap."""
    preemption_window_s: float = 300.0
    live_source: bool = True
    """False with ``metrics.source: none``: request-based scoring by design, so no tier waits
    for live data (``onStale: reject`` applies only while a live source is down)."""
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """What the decision derives from these rules once and keeps with them (per tier, its
    ceilings and weights as arrays: :func:`extender.core.decide.tier_vectors`), so a request
    does not rebuild it. Filled on first use, not here: the policy loader builds rules without
    numpy (``policy check`` answers without importing it)."""

    @property
    def uses_headroom(self) -> bool:
        """Some tier discounts lower-priority pods' usage (per-pod credits are precomputed)."""
        return any(t.headroom is not Headroom.ALL for t in (*self.tiers, self.default_tier))

"""The PriorityPolicy document: typed models of the platform team's YAML.

Field names are the YAML spelling (camelCase). Every field documents its default and why; the
JSON schema in ``config/policy.schema.json`` is generated from these models
(``priority-extender policy schema``) and a test fails when it is stale.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
)

from extender.core.quantity import QuantityError, parse_quantity
from extender.core.rules import EstimateFrom, Headroom, OnStale, Strategy

# The names a policy may spell come from the core's enums, the one list of each; the models keep
# plain strings (a strict model would not coerce text into an enum) and the loader converts.
if TYPE_CHECKING:
    StrategyName = str
    OnStaleName = str
    EstimateFromName = str
    HeadroomName = str
else:
    StrategyName = Literal[tuple(s.value for s in Strategy)]
    OnStaleName = Literal[tuple(s.value for s in OnStale)]
    EstimateFromName = Literal[tuple(s.value for s in EstimateFrom)]
    HeadroomName = Literal[tuple(h.value for h in Headroom)]

API_GROUP = "priority-extender.io"
API_VERSION = f"{API_GROUP}/v1alpha1"
SUPPORTED_API_VERSIONS = (API_VERSION,)
KIND = "PriorityPolicy"

_DURATION = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> Any:
    """``90s``, ``1m30s``, ``500ms``, ``2h`` (Go style) or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 15s, 2m or 1m30s")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("a duration must be a finite number of seconds")
        return float(value)
    if not isinstance(value, str):
        return value  # let the float validator report the type
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match["num"]) * _UNIT_SECONDS[match["unit"]]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"invalid duration {value!r}: use a number with s, m, h or ms (15s, 1m30s)"
        )
    return total


def _quantity(value: Any) -> Any:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            return parse_quantity(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
    return value


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(ge=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: 15s, 2m, 1m30s, 500ms, or a number of seconds.",
        }
    ),
]
PositiveDuration = Annotated[Duration, Field(gt=0)]
"""For intervals and timeouts, where zero would mean "always" or "never"."""


#: Floors of ``refreshInterval``, per source; below them a refresh costs CPU for nothing.
#: Prometheus evaluates recording rules at most once a second (and the source itself never
#: waits less, ``sources.prometheus.MIN_INTERVAL_S``).
PROMETHEUS_MIN_INTERVAL_S = 1.0
#: The static file is parsed again at each refresh: ~20 ms of CPU for 5,000 nodes, so 1 s keeps
#: it at 2% of a core (``1ms`` was 98%); the file is edited by hand or by a test, not streamed.
STATIC_MIN_INTERVAL_S = 1.0
#: metrics-server refuses a ``--metric-resolution`` below 10 s (kubelets compute usage every
#: 10-15 s), so reading NodeMetrics faster returns the same values, and lists every node of the
#: cluster from the API server each time for nothing.
METRICS_SERVER_MIN_INTERVAL_S = 10.0


def _at_least(floor: float) -> AfterValidator:
    def check(seconds: float) -> float:
        if seconds < floor:
            raise ValueError(
                f"{seconds:g}s is below this source's floor of {floor:g}s: refreshing faster "
                "reads the same data again and costs CPU at every refresh"
            )
        return seconds

    return AfterValidator(check)


def _interval_schema(floor: float) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"},
                {"type": "number", "minimum": floor},
            ],
            "description": f"A duration of at least {floor:g}s: 15s, 2m, 1m30s, or a number of "
            "seconds.",
        }
    )


PrometheusInterval = Annotated[
    float,
    BeforeValidator(parse_duration),
    _at_least(PROMETHEUS_MIN_INTERVAL_S),
    _interval_schema(PROMETHEUS_MIN_INTERVAL_S),
]
StaticInterval = Annotated[
    float,
    BeforeValidator(parse_duration),
    _at_least(STATIC_MIN_INTERVAL_S),
    _interval_schema(STATIC_MIN_INTERVAL_S),
]
MetricsServerInterval = Annotated[
    float,
    BeforeValidator(parse_duration),
    _at_least(METRICS_SERVER_MIN_INTERVAL_S),
    _interval_schema(METRICS_SERVER_MIN_INTERVAL_S),
]
Quantity = Annotated[
    float,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "number", "minimum": 0}],
            "description": "A Kubernetes quantity: 100m, 0.5, 128Mi, 1Gi.",
        }
    ),
]
SignalName = Annotated[str, Field(pattern=r"^[a-z][a-zA-Z0-9_]*$", max_length=63)]
Ratio = Annotated[float, Field(ge=0, le=10)]
"""A utilization ceiling; above 1 is allowed (memory overcommit) but bounded against typos."""


def _pair(value: Any) -> Any:
    """YAML gives a list; strict mode accepts only a tuple."""
    return tuple(value) if isinstance(value, list) else value


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"[{value[0]}, {value[1]}]: the minimum is above the maximum")
    return value


ValueRange = Annotated[
    tuple[float, float],
    BeforeValidator(_pair),
    AfterValidator(_ordered),
    WithJsonSchema(
        {
            "type": "array",
            "prefixItems": [{"type": "number"}, {"type": "number"}],
            "minItems": 2,
            "maxItems": 2,
            "description": "[min, max], both included: the values a signal's samples may take.",
        }
    ),
]


class StrictModel(BaseModel):
    """Unknown fields, loose types, NaN and infinities are errors; field docstrings become the
    JSON schema's descriptions. The base of every document model (policy, scenarios)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )


#: The recording rules ``config/prometheus-rules.yaml`` ships for per-pod usage: cAdvisor's
#: container series summed per pod (``namespace``, ``pod``), without the pause container and
#: the ``container=""`` aggregates.
POD_CPU_RULE = "pod:container_cpu_usage:rate"
POD_MEMORY_RULE = "pod:container_memory_working_set:bytes"

NonBlank = Annotated[str, Field(min_length=1, pattern=r"\S")]
"""A query: empty or blank text is an error at its position."""


class PrometheusPods(StrictModel):
    """Per-pod usage from cAdvisor series, through the shipped recording rules."""

    enabled: bool = False
    """Off by default: without per-pod data every decision is the node-level one. On, it
    feeds visibility of just-placed pods, tiers' ``headroom``, the preemption mirror, explain's
    pods by tier and ``estimation.siblings``."""
    cpuQuery: NonBlank = POD_CPU_RULE
    """Instant query returning one series per pod (labels ``namespace`` and ``pod``): its cpu
    usage in cores. The default reads the shipped recording rule."""
    memoryQuery: NonBlank = POD_MEMORY_RULE
    """Instant query returning one series per pod (labels ``namespace`` and ``pod``): its
    working set in bytes (what the kubelet evicts by)."""


class MetricsServerPods(StrictModel):
    enabled: bool = False
    """Read ``PodMetrics`` (``metrics.k8s.io/v1beta1``) with the NodeMetrics, for the per-pod
    uses (see ``metrics.prometheus.pods.enabled``). Off by default: without per-pod data every
    decision is the node-level one."""


class PrometheusSource(StrictModel):
    url: str = "http://prometheus.monitoring.svc:9090"
    """Base URL of the Prometheus (or Thanos, Mimir) HTTP API."""
    refreshInterval: PrometheusInterval = 15.0
    """How often every signal is queried. 15s matches the usual scrape interval; faster buys
    nothing, since the data underneath only changes that often. At least 1s."""
    timeout: PositiveDuration = 5.0
    """Per query. Refreshes run in the background, so this never delays a scheduling answer."""
    nodeLabel: str = "node"
    """The label that carries the Kubernetes node name on every series the queries return."""
    maxResponseBytes: Annotated[int, Field(ge=1 << 10, le=1 << 30)] = 16 << 20
    """Largest answer read for one query (after decompression); a larger one fails that query.
    16 MiB holds 15,000 nodes (Kubernetes' supported maximum) at 1 KB a series, which is a raw
    series with a dozen labels (an aggregated one is about 150 bytes); it stops a query that
    forgot its ``by (node)`` from pulling every raw series into memory."""
    ranges: dict[SignalName, ValueRange] = Field(default_factory=dict)
    """Per signal: the values its samples may take, ``[min, max]``; default ``[0, 1]`` (a
    utilization ratio). A sample outside is rejected and counted, and that node's signal is
    missing; values within 2% of the span outside are clamped instead, since ``rate()`` over
    jittery scrapes overshoots that much. Signals not declared in ``signals`` are ignored."""
    pods: PrometheusPods = Field(default_factory=PrometheusPods)
    """Per-pod usage (off by default)."""


class StaticSource(StrictModel):
    file: str = "static-metrics.yaml"
    """Per-node samples for demos and tests; a relative path is relative to the policy file."""
    refreshInterval: StaticInterval = 15.0
    """How often the file is read again. Its samples count as observed at each read. At least
    1s: each read parses the whole file."""


class MetricsServerSource(StrictModel):
    refreshInterval: MetricsServerInterval = 15.0
    """How often NodeMetrics are read. metrics-server itself scrapes kubelets every 15 s by
    default (and never faster than every 10 s), so faster buys nothing. At least 10s."""
    timeout: PositiveDuration = 5.0
    """Per request; refreshes run in the background."""
    pods: MetricsServerPods = Field(default_factory=MetricsServerPods)
    """Per-pod usage from PodMetrics (off by default)."""


class MetricsSettings(StrictModel):
    source: Literal["static", "prometheus", "metrics-server", "none"] = "static"
    """Where live utilization comes from. ``none`` means request-based scoring only."""
    signals: dict[SignalName, str] = Field(
        default_factory=lambda: {
            "cpu": "node:cpu_utilization:ratio",
            "memory": "node:memory_utilization:ratio",
        }
    )
    """Signal name to the PromQL instant query that returns one 0..1 value per node. ``cpu``
    and ``memory`` are resources: pod estimates are added to them in projections. The defaults
    read the recording rules shipped in ``config/prometheus-rules.yaml``."""
    maxAge: PositiveDuration = 60.0
    """A sample older than this is stale; a source that has not refreshed for this long is down
    and decisions fall back to request-based scoring. Four refresh intervals by default."""
    prometheus: PrometheusSource = Field(default_factory=PrometheusSource)
    static: StaticSource = Field(default_factory=StaticSource)
    metricsServer: MetricsServerSource = Field(default_factory=MetricsServerSource)


class SelectorExpression(StrictModel):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class Selector(StrictModel):
    matchLabels: dict[str, str] = Field(default_factory=dict)
    matchExpressions: list[SelectorExpression] = Field(default_factory=list)


class TierMatchSpec(StrictModel):
    """Every criterion given must hold; an empty match matches every pod."""

    priorityClassNames: list[str] | None = None
    minPriority: int | None = None
    maxPriority: int | None = None
    namespaces: list[str] | None = None
    podSelector: Selector | None = None


class ScoreSpec(StrictModel):
    strategy: StrategyName = Strategy.LEAST_LOADED.value
    """leastLoaded spreads, mostLoaded packs, targetLoad fills towards ``target`` then spreads,
    balanced evens out the signals of a node (cpu against memory)."""
    weights: dict[SignalName, Annotated[float, Field(ge=0, le=100)]] | None = None
    """Per signal; default: every declared signal with weight 1."""
    target: Annotated[float, Field(gt=0, lt=1)] = 0.6
    """For targetLoad: the utilization that scores 10 (Trimaran's TargetLoadPacking curve)."""


class FloorSpec(StrictModel):
    keep: Annotated[int, Field(ge=0, le=100)] = 0
    """When every candidate node is rejected for this tier, keep this many: the least over
    their ceilings (nodes without fresh data last). 0 rejects them all and the pod waits; a
    rejection is final for that scheduling attempt, and cluster autoscalers do not run
    extenders, so a tier that must run needs a floor. Counted in
    ``priority_extender_floor_applied_total`` and marked in explain."""


Mode = Literal["enforce", "observe"]
"""``enforce`` answers with the decision; ``observe`` (shadow mode) keeps every node with
neutral scores and only records and exports what the decision would have been."""


class TierSpec(StrictModel):
    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
    match: TierMatchSpec = Field(default_factory=TierMatchSpec)
    filter: dict[SignalName, Ratio] = Field(default_factory=dict)
    """Per signal: reject nodes whose projected utilization is above this ceiling."""
    score: ScoreSpec = Field(default_factory=ScoreSpec)
    onStale: OnStaleName = OnStale.ALLOW.value
    """For nodes without fresh data: allow (score by requests where known), reject, or keep
    with the neutral score. ``reject`` also holds while the whole source is down (fallback):
    such a tier waits for data rather than being placed by requests."""
    floor: FloorSpec = Field(default_factory=FloorSpec)
    """What happens when every candidate is rejected (default: reject them all)."""
    mode: Mode | None = None
    """``enforce`` or ``observe`` for this tier; default: the policy's ``mode``."""
    headroom: HeadroomName = Headroom.ALL.value
    """Which usage of lower-priority pods counts against this tier's ceilings, with per-pod
    data (without it every mode is ``all``). ``all``: every pod's usage (the default, the
    node-level behaviour). ``requests``: a lower-priority pod's cpu counts only up to its
    request, since CFS shares take back cpu above requests when this tier needs it; its memory
    counts in full, since memory is not reclaimable without an eviction. ``preemptible``: the
    usage of the pods this pod could preempt (lower priority, and the pod's
    ``preemptionPolicy`` is not ``Never``) does not count at all, memory included, since
    preemption evicts them. Scores still read the load as it is, so a tier prefers nodes
    really less loaded among those its headroom allows."""


class EstimationDefaults(StrictModel):
    cpu: Quantity = 0.1
    """For a container with no cpu request or limit: 100m, kube-scheduler's own assumption."""
    memory: Quantity = 200 * 2**20
    """For a container with no memory request or limit: 200Mi, as kube-scheduler assumes."""


class SiblingsSpec(StrictModel):
    percentile: Annotated[float, Field(gt=0, le=100)] = 90.0
    """Of the running siblings' measured usage, per resource: p90 covers most replicas without
    taking the worst one."""
    minPods: Annotated[int, Field(ge=1, le=10000)] = 3
    """Siblings with a fresh usage sample needed before their percentile is used: one or two
    pods say little about the next one."""


class EstimationSpec(StrictModel):
    window: Duration = 150.0
    """How long after its bind a pod's estimate still counts, as of its node's sample: ``lag``
    plus the query's rate window, over which the estimate fades to zero as the metrics take the
    pod in. The shipped recording rules use ``rate(...[2m])``: 30 s + 120 s = 150 s."""
    lag: Duration = 30.0
    """How long after its bind a pod's estimate counts in full: before then its usage cannot
    be in its node's sample. A container starts within a few seconds of the bind; its usage
    reaches the next scrape (15 s interval) and the recording rules' next evaluation (15 s):
    5 + 15/2 + 15/2 ≈ 20 s typically, 35 s at worst; 30 s. (The extender's own refresh does
    not add: a sample is dated when Prometheus evaluated it.) Where the node's sample has
    already risen since the bind, that rise counts as the pod's usage whatever the lag says."""
    prefer: EstimateFromName = EstimateFrom.REQUESTS.value
    requestsFactor: Annotated[float, Field(gt=0, le=10)] = 1.0
    """Requests are multiplied by this when they estimate usage."""
    defaults: EstimationDefaults = Field(default_factory=EstimationDefaults)
    siblings: SiblingsSpec | None = None
    """With per-pod data: a new pod whose controller (ReplicaSet, StatefulSet, Job) has running
    pods with usage samples is estimated at a percentile of their usage instead of by the rule
    above. Off (null) by default: the rule above only."""


class BypassSpec(StrictModel):
    daemonSets: bool = True
    """DaemonSet pods go to a fixed node; judging them only delays them."""
    namespaces: list[str] = Field(default_factory=lambda: ["kube-system"])
    podSelector: Selector | None = None
    """For example the extender's own pods, so that it can always be rescheduled."""


class PreemptionSpec(StrictModel):
    maxPerNode: Annotated[int, Field(ge=0, le=1000)] = 0
    """Approve at most this many preemptions on one node within ``window``; 0 turns the cap off.
    Stops eviction churn on a node that keeps attracting preemptors. Every node offered back to
    the scheduler counts as approved (it picks one of them), so this is an upper bound."""
    window: Duration = 300.0
    """The period over which approvals are counted."""


class PolicyDocument(StrictModel):
    """A PriorityPolicy: what each priority tier may do, and where live load comes from."""

    apiVersion: str = Field(
        json_schema_extra={"enum": list(SUPPORTED_API_VERSIONS)},
    )
    kind: Literal["PriorityPolicy"]
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tiers: list[TierSpec] = Field(min_length=1, max_length=64)
    """First match wins."""
    defaultTier: str | None = None
    """The tier for pods that match none; default: a built-in permissive tier (no ceilings,
    leastLoaded), so that an incomplete policy never blocks a pod."""
    estimation: EstimationSpec = Field(default_factory=EstimationSpec)
    bypass: BypassSpec = Field(default_factory=BypassSpec)
    preemption: PreemptionSpec = Field(default_factory=PreemptionSpec)
    mode: Mode = "enforce"
    """``observe`` runs the whole policy in shadow mode (tiers may override it): every node is
    kept with neutral scores, and what would have been rejected is counted in
    ``priority_extender_observed_rejections_total`` and shown in explain. A way to run a new
    policy for a week before it decides anything."""

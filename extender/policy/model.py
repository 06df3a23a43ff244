"""The PriorityPolicy document: typed models of the platform team's YAML.

Field names are the YAML spelling (camelCase). Every field documents its default and why; the
JSON schema in ``config/policy.schema.json`` is generated from these models
(``priority-extender policy schema``) and a test fails when it is stale.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
)

from extender.core.quantity import QuantityError, parse_quantity

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


class PrometheusSource(StrictModel):
    url: str = "http://prometheus.monitoring.svc:9090"
    """Base URL of the Prometheus (or Thanos, Mimir) HTTP API."""
    refreshInterval: PositiveDuration = 15.0
    """How often every signal is queried. 15s matches the usual scrape interval; faster buys
    nothing, since the data underneath only changes that often."""
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


class StaticSource(StrictModel):
    file: str = "static-metrics.yaml"
    """Per-node samples for demos and tests; a relative path is relative to the policy file."""
    refreshInterval: PositiveDuration = 15.0
    """How often the file is read again. Its samples count as observed at each read."""


class MetricsServerSource(StrictModel):
    refreshInterval: PositiveDuration = 15.0
    """How often NodeMetrics are read. metrics-server itself scrapes kubelets every 15 s by
    default, so faster buys nothing."""
    timeout: PositiveDuration = 5.0
    """Per request; refreshes run in the background."""


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
    strategy: Literal["leastLoaded", "mostLoaded", "targetLoad", "balanced"] = "leastLoaded"
    """leastLoaded spreads, mostLoaded packs, targetLoad fills towards ``target`` then spreads,
    balanced evens out the signals of a node (cpu against memory)."""
    weights: dict[SignalName, Annotated[float, Field(ge=0, le=100)]] | None = None
    """Per signal; default: every declared signal with weight 1."""
    target: Annotated[float, Field(gt=0, lt=1)] = 0.6
    """For targetLoad: the utilization that scores 10 (Trimaran's TargetLoadPacking curve)."""


class TierSpec(StrictModel):
    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
    match: TierMatchSpec = Field(default_factory=TierMatchSpec)
    filter: dict[SignalName, Ratio] = Field(default_factory=dict)
    """Per signal: reject nodes whose projected utilization is above this ceiling."""
    score: ScoreSpec = Field(default_factory=ScoreSpec)
    onStale: Literal["allow", "reject", "neutral"] = "allow"
    """For nodes without fresh data: allow (score by requests where known), reject, or keep
    with the neutral score."""


class EstimationDefaults(StrictModel):
    cpu: Quantity = 0.1
    """For a container with no cpu request or limit: 100m, kube-scheduler's own assumption."""
    memory: Quantity = 200 * 2**20
    """For a container with no memory request or limit: 200Mi, as kube-scheduler assumes."""


class EstimationSpec(StrictModel):
    window: Duration = 150.0
    """Pods bound within this window still count as just placed. Metrics lag a placement by a
    scrape interval plus the rate window before they show its full usage: 15 s + 2 m with the
    shipped recording rules, so 150 s."""
    prefer: Literal["requests", "limits"] = "requests"
    requestsFactor: Annotated[float, Field(gt=0, le=10)] = 1.0
    """Requests are multiplied by this when they estimate usage."""
    defaults: EstimationDefaults = Field(default_factory=EstimationDefaults)


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

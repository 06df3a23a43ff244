"""Pure decision logic: no I/O, no clock, no asyncio, no logging.

Everything here is a function of its arguments; the current time is passed in as ``now``.
"""

from extender.core.decide import (
    MAX_SCORE,
    REASON_STALE,
    Candidates,
    Evaluation,
    bypass_reason,
    evaluate,
    live_reason,
    tier_for,
)
from extender.core.explain import (
    SnapshotFileError,
    snapshot_from_dict,
    snapshot_to_dict,
    summarize,
)
from extender.core.model import (
    ContainerResources,
    NodeInfo,
    PlacedPod,
    PodInfo,
    Sample,
    Snapshot,
    build_snapshot,
    empty_snapshot,
    estimate_pod,
    pod_footprint,
    pod_requests,
)
from extender.core.preempt import (
    PreemptCandidate,
    PreemptionDecision,
    Victim,
    decide_preemption,
)
from extender.core.quantity import QuantityError, parse_quantity
from extender.core.rules import (
    RESOURCES,
    Bypass,
    EstimateFrom,
    Estimation,
    LabelSelector,
    OnStale,
    Rules,
    SelectorOp,
    SelectorRequirement,
    Strategy,
    Tier,
    TierMatch,
)

__all__ = [
    "MAX_SCORE",
    "REASON_STALE",
    "RESOURCES",
    "Bypass",
    "Candidates",
    "ContainerResources",
    "EstimateFrom",
    "Estimation",
    "Evaluation",
    "LabelSelector",
    "NodeInfo",
    "OnStale",
    "PlacedPod",
    "PodInfo",
    "PreemptCandidate",
    "PreemptionDecision",
    "QuantityError",
    "Rules",
    "Sample",
    "SelectorOp",
    "SelectorRequirement",
    "Snapshot",
    "SnapshotFileError",
    "Strategy",
    "Tier",
    "TierMatch",
    "Victim",
    "build_snapshot",
    "bypass_reason",
    "decide_preemption",
    "empty_snapshot",
    "estimate_pod",
    "evaluate",
    "live_reason",
    "parse_quantity",
    "pod_footprint",
    "pod_requests",
    "snapshot_from_dict",
    "snapshot_to_dict",
    "summarize",
    "tier_for",
]

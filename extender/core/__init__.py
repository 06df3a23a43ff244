"""Pure decision logic: no I/O, no clock, no asyncio, no logging.

Everything here is a function of its arguments; the current time is passed in as ``now``.

The names below are loaded when first used (:func:`__getattr__`), so that importing one
submodule, or a name from a light one (``Rules`` from :mod:`extender.core.rules`,
``parse_quantity`` from :mod:`extender.core.quantity`: what loading a policy needs), does not
import the array modules (decide, explain, model, preempt) and numpy with them: ``--version`` and
``policy check`` stay fast (tests/test_cli_imports.py). Type checkers see the eager imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from extender.core.decide import (
        MAX_SCORE,
        REASON_STALE,
        Assessment,
        Candidates,
        Evaluation,
        assess_all,
        bypass_reason,
        evaluate,
        live_reason,
        pod_class,
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

#: Public name -> the submodule of extender.core that defines it.
_EXPORTS: dict[str, str] = {
    "Assessment": "decide",
    "Bypass": "rules",
    "Candidates": "decide",
    "ContainerResources": "model",
    "EstimateFrom": "rules",
    "Estimation": "rules",
    "Evaluation": "decide",
    "LabelSelector": "rules",
    "MAX_SCORE": "decide",
    "NodeInfo": "model",
    "OnStale": "rules",
    "PlacedPod": "model",
    "PodInfo": "model",
    "PreemptCandidate": "preempt",
    "PreemptionDecision": "preempt",
    "QuantityError": "quantity",
    "REASON_STALE": "decide",
    "RESOURCES": "rules",
    "Rules": "rules",
    "Sample": "model",
    "SelectorOp": "rules",
    "SelectorRequirement": "rules",
    "Snapshot": "model",
    "SnapshotFileError": "explain",
    "Strategy": "rules",
    "Tier": "rules",
    "TierMatch": "rules",
    "Victim": "preempt",
    "assess_all": "decide",
    "build_snapshot": "model",
    "bypass_reason": "decide",
    "decide_preemption": "preempt",
    "empty_snapshot": "model",
    "estimate_pod": "model",
    "evaluate": "decide",
    "live_reason": "decide",
    "parse_quantity": "quantity",
    "pod_class": "decide",
    "pod_footprint": "model",
    "pod_requests": "model",
    "snapshot_from_dict": "explain",
    "snapshot_to_dict": "explain",
    "summarize": "explain",
    "tier_for": "decide",
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its submodule on first use (then cached here)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "MAX_SCORE",
    "REASON_STALE",
    "RESOURCES",
    "Assessment",
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
    "assess_all",
    "build_snapshot",
    "bypass_reason",
    "decide_preemption",
    "empty_snapshot",
    "estimate_pod",
    "evaluate",
    "live_reason",
    "parse_quantity",
    "pod_class",
    "pod_footprint",
    "pod_requests",
    "snapshot_from_dict",
    "snapshot_to_dict",
    "summarize",
    "tier_for",
]

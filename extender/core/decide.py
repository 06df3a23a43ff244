"""The decision: which candidate nodes a pod may land on, and how each scores.

One call of :func:`evaluate` answers both verbs: ``filter`` reads :attr:`Evaluation.keep` and the
reasons, ``prioritize`` reads :attr:`Evaluation.scores`. The work is a few array operations over
the candidate columns of the snapshot; per-node Python runs only for rejected nodes (to name the
reason) and for :meth:`Evaluation.explain`, which materialises one node's inputs on demand from
the same arrays the verdict came from, so an explanation can never disagree with the decision.

Semantics (see the policy documentation for the user-facing version):

* **Projection** of a resource signal = live sample + (estimate of pods placed since that sample
  + the incoming pod's estimate) / allocatable. Other signals are compared as sampled.
* **Fresh** means a sample exists and is at most ``max_age`` old (and not more than ``max_age`` in
  the future, which only a broken clock produces).
* **Filter**: a node is rejected when a fresh projection is above the tier's ceiling for that
  signal; a node missing fresh data for a signal the tier uses is rejected only by
  ``onStale: reject``. All rejections are unresolvable: preemption cannot lower live load as the
  scheduler's dry run sees it, nor make data fresh.
* **Fallback**: when the live source has not refreshed for ``max_age`` (or there is none), no node
  is rejected for load and scores come from request-based utilization (requests of bound pods +
  just-placed estimates + the pod's own estimate, over allocatable), neutral where unknown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from extender.core.model import FloatArray, IndexArray, PodInfo, Snapshot, estimate_pod
from extender.core.rules import RESOURCES, OnStale, Rules, Strategy, Tier

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

MAX_SCORE = 10
"""kube-scheduler's extender score range is 0..10 (``MaxExtenderPriority``)."""

REASON_STALE = "node metrics stale or missing"


def _matches_tier(tier: Tier, pod: PodInfo) -> bool:
    m = tier.match
    if m.priority_class_names is not None and pod.priority_class_name not in m.priority_class_names:
        return False
    if m.min_priority is not None and pod.priority < m.min_priority:
        return False
    if m.max_priority is not None and pod.priority > m.max_priority:
        return False
    if m.namespaces is not None and pod.namespace not in m.namespaces:
        return False
    return m.pod_selector is None or m.pod_selector.matches(pod.labels)


def tier_for(pod: PodInfo, rules: Rules) -> Tier:
    """The first tier whose match holds for the pod, else the default tier."""
    for tier in rules.tiers:
        if _matches_tier(tier, pod):
            return tier
    return rules.default_tier


def bypass_reason(pod: PodInfo, rules: Rules) -> str | None:
    """Why the extender does not judge this pod, or None if it does."""
    b = rules.bypass
    if b.daemonsets and "DaemonSet" in pod.owner_kinds:
        return "daemonset"
    if pod.namespace in b.namespaces:
        return "namespace"
    if b.pod_selector is not None and b.pod_selector.matches(pod.labels):
        return "selector"
    return None


def live_reason(signals: Sequence[str], tier: str) -> str:
    """The short, aggregatable reason for a live-load rejection (no node names, no numbers)."""
    return f"{'+'.join(signals)} load above {tier} tier ceiling"


@dataclass(frozen=True, slots=True)
class Candidates:
    """The nodes of one request: names, and allocatable from full Node objects if sent."""

    names: Sequence[str]
    allocatable: FloatArray | None = None
    """(resources, candidates) cpu cores and memory bytes; NaN where a Node did not say."""
    freed: FloatArray | None = None
    """(resources, candidates) usage that leaves each node before the pod lands: the estimates
    of preemption victims. Subtracted in projections."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The verdict and score for every candidate, with the arrays that produced them."""

    pod: PodInfo
    tier: Tier | None
    """None when the pod is bypassed."""
    bypass: str | None
    names: Sequence[str]
    fallback: bool
    """True when the live source is down or absent and request-based scoring applies."""
    keep: BoolArray
    reason_codes: npt.NDArray[np.int64]
    """0 kept; -1 stale; otherwise a bit mask of the signals above their ceiling, plus 1."""
    scores: IntArray
    # Inputs and intermediate values, for explanations.
    signals: tuple[str, ...]
    columns: IndexArray
    values: FloatArray
    ages: FloatArray
    fresh: BoolArray
    allocatable: FloatArray
    placed: FloatArray
    estimate: tuple[float, float]
    projection: FloatArray
    usage: FloatArray
    ceilings: FloatArray
    weights: FloatArray
    raw_scores: FloatArray

    def reason(self, i: int) -> str | None:
        code = int(self.reason_codes[i])
        if code == 0:
            return None
        if code == -1:
            return REASON_STALE
        assert self.tier is not None
        over = [s for bit, s in enumerate(self.signals) if (code - 1) >> bit & 1]
        return live_reason(over, self.tier.name)

    def failed(self) -> dict[str, str]:
        """Rejected node name to reason (all are unresolvable, see the module docstring)."""
        rejected = np.flatnonzero(~self.keep)
        cache: dict[int, str] = {}
        out: dict[str, str] = {}
        for i in rejected.tolist():
            code = int(self.reason_codes[i])
            text = cache.get(code)
            if text is None:
                text = cache[code] = self.reason(i) or ""
            out[self.names[i]] = text
        return out

    def kept(self) -> list[int]:
        kept: list[int] = np.flatnonzero(self.keep).tolist()
        return kept

    def explain(self, i: int) -> dict[str, Any]:
        """One node's decision with every input behind it, as plain JSON-ready data."""
        per_signal: dict[str, dict[str, Any]] = {}
        for s, signal in enumerate(self.signals):
            per_signal[signal] = {
                "sample": _num(self.values[s, i]),
                "ageSeconds": _num(self.ages[s, i]),
                "fresh": bool(self.fresh[s, i]),
                "projected": _num(self.projection[s, i]),
                "ceiling": _num(self.ceilings[s]) if self.ceilings.size else None,
                "usedForScore": _num(self.usage[s, i]),
                "weight": float(self.weights[s]) if self.weights.size else 0.0,
            }
        return {
            "node": self.names[i],
            "known": bool(self.columns[i] >= 0),
            "tier": None if self.tier is None else self.tier.name,
            "bypass": self.bypass,
            "fallback": self.fallback,
            "allocatable": {r: _num(self.allocatable[k, i]) for k, r in enumerate(RESOURCES)},
            "justPlaced": {r: _num(self.placed[k, i]) for k, r in enumerate(RESOURCES)},
            "podEstimate": dict(zip(RESOURCES, self.estimate, strict=True)),
            "signals": per_signal,
            "rawScore": _num(self.raw_scores[i]),
            "score": int(self.scores[i]),
            "kept": bool(self.keep[i]),
            "reason": self.reason(i),
        }


def _num(x: float | np.floating[Any]) -> float | None:
    v = float(x)
    return round(v, 6) if math.isfinite(v) else None


def _strategy_parts(tier: Tier, u: FloatArray) -> FloatArray:
    """Per-signal score parts in 0..10 for utilization ``u`` (already clipped to 0..1)."""
    if tier.strategy is Strategy.LEAST_LOADED:
        return (1.0 - u) * MAX_SCORE
    if tier.strategy is Strategy.MOST_LOADED:
        return u * MAX_SCORE
    if tier.strategy is Strategy.TARGET_LOAD:
        t = tier.target
        below = ((1.0 - t) * u / t + t) * MAX_SCORE
        above = t * (1.0 - u) / (1.0 - t) * MAX_SCORE
        return np.where(u <= t, below, above)
    return u  # balanced: the parts are the utilizations themselves


def _combine(tier: Tier, parts: FloatArray, weights: FloatArray, neutral: float) -> FloatArray:
    """Weighted score per node; ``neutral`` where no weighted signal is known."""
    known = ~np.isnan(parts)
    w = np.where(known, weights[:, None], 0.0)
    total = w.sum(axis=0)
    p = np.where(known, parts, 0.0)
    mean = (p * w).sum(axis=0) / total
    if tier.strategy is Strategy.BALANCED:
        var = (w * (p - mean) ** 2).sum(axis=0) / total
        counted = (w > 0).sum(axis=0)
        score = (1.0 - np.sqrt(var)) * MAX_SCORE
        return np.where(counted >= 2, score, neutral)
    return np.where(total > 0, mean, neutral)


def evaluate(
    pod: PodInfo, candidates: Candidates, snap: Snapshot, rules: Rules, now: float
) -> Evaluation:
    """Decide every candidate for ``pod`` against ``snap`` under ``rules`` at time ``now``."""
    # NaN marks missing data throughout; the arithmetic on it is expected, not an error.
    with np.errstate(all="ignore"):
        return _evaluate(pod, candidates, snap, rules, now)


def _evaluate(
    pod: PodInfo, candidates: Candidates, snap: Snapshot, rules: Rules, now: float
) -> Evaluation:
    names = candidates.names
    count = len(names)
    cols = snap.lookup(names)
    signals = snap.signals
    nsig = len(signals)
    values, sampled_at, alloc, requested, placed = snap.gather(cols)
    ages = now - sampled_at
    fresh = np.abs(ages) <= rules.max_age_s  # False where there is no sample (NaN)
    if candidates.allocatable is not None:
        alloc = np.where(np.isnan(candidates.allocatable), alloc, candidates.allocatable)
    estimate = estimate_pod(pod, rules.estimation)
    delta = placed + np.array(estimate)[:, None]
    if candidates.freed is not None:
        delta = delta - candidates.freed
    known_alloc = alloc > 0
    added = np.where(known_alloc, delta / alloc, 0.0)
    projection = values.copy()
    for r, resource in enumerate(RESOURCES):
        if resource in signals:
            projection[signals.index(resource)] += added[r]

    def by_requests() -> FloatArray:
        """Request-based utilization per signal row (NaN for non-resource signals).

        ``requested`` already sums every bound pod, just-placed ones included: only the
        incoming pod (less any preemption victims) is added.
        """
        incoming = np.array(estimate)[:, None]
        if candidates.freed is not None:
            incoming = incoming - candidates.freed
        ratio = np.where(known_alloc, (requested + incoming) / alloc, np.nan)
        out = np.full((nsig, count), np.nan)
        for r, resource in enumerate(RESOURCES):
            if resource in signals:
                out[signals.index(resource)] = ratio[r]
        return out

    bypass = bypass_reason(pod, rules)
    tier = None if bypass is not None else tier_for(pod, rules)
    neutral = float(rules.neutral_score)
    fallback = snap.source_ok_at is None or now - snap.source_ok_at > rules.max_age_s

    if tier is None:
        empty = np.zeros(nsig)
        return Evaluation(
            pod=pod,
            tier=None,
            bypass=bypass,
            names=names,
            fallback=fallback,
            keep=np.ones(count, dtype=bool),
            reason_codes=np.zeros(count, dtype=np.int64),
            scores=np.full(count, rules.neutral_score, dtype=np.int64),
            signals=signals,
            columns=cols,
            values=values,
            ages=ages,
            fresh=fresh,
            allocatable=alloc,
            placed=placed,
            estimate=estimate,
            projection=projection,
            usage=np.full((nsig, count), np.nan),
            ceilings=np.full(nsig, np.inf),
            weights=empty,
            raw_scores=np.full(count, neutral),
        )

    ceilings = np.array([tier.ceilings.get(s, math.inf) for s in signals], dtype=np.float64)
    weights = np.array([tier.weights.get(s, 0.0) for s in signals], dtype=np.float64)
    needed = np.isfinite(ceilings) | (weights > 0)

    if fallback:
        codes = np.zeros(count, dtype=np.int64)
        usage = by_requests()
        stale: BoolArray = np.zeros(count, dtype=bool)
    else:
        over = fresh & (projection > ceilings[:, None])
        # Row loops, not axis reductions: there are a handful of signals and thousands of nodes.
        over_mask = np.zeros(count, dtype=np.int64)
        stale = np.zeros(count, dtype=bool)
        for row in range(nsig):
            over_mask |= over[row].astype(np.int64) << row
            if needed[row]:
                stale |= ~fresh[row]
        codes = np.where(over_mask > 0, over_mask + 1, 0)
        if tier.on_stale is OnStale.REJECT:
            codes = np.where((codes == 0) & stale, -1, codes)
        usage = np.where(fresh, projection, np.nan)
        if tier.on_stale is OnStale.ALLOW and stale.any():
            usage = np.where(fresh, usage, by_requests())

    u = np.minimum(np.maximum(usage, 0.0), 1.0)  # NaN stays NaN (unknown)
    raw = _combine(tier, _strategy_parts(tier, u), weights, neutral)
    if tier.on_stale is OnStale.NEUTRAL and not fallback:
        raw = np.where(stale, neutral, raw)
    # Round half up; raw is in 0..10 so truncating raw + 0.5 is the floor.
    scores = np.minimum(np.maximum(raw + 0.5, 0.0), MAX_SCORE).astype(np.int64)

    return Evaluation(
        pod=pod,
        tier=tier,
        bypass=None,
        names=names,
        fallback=fallback,
        keep=codes == 0,
        reason_codes=codes,
        scores=scores,
        signals=signals,
        columns=cols,
        values=values,
        ages=ages,
        fresh=fresh,
        allocatable=alloc,
        placed=placed,
        estimate=estimate,
        projection=projection,
        usage=usage,
        ceilings=ceilings,
        weights=weights,
        raw_scores=raw,
    )


__all__ = [
    "MAX_SCORE",
    "REASON_STALE",
    "Candidates",
    "Evaluation",
    "bypass_reason",
    "evaluate",
    "live_reason",
    "tier_for",
]

"""The decision: which candidate nodes a pod may land on, and how each scores.

One call of :func:`evaluate` answers both verbs: ``filter`` reads :attr:`Evaluation.keep` and the
reasons, ``prioritize`` reads :attr:`Evaluation.scores`. The work is a few array operations over
the candidate columns of the snapshot; per-node Python runs only for rejected nodes (to name the
reason) and for :meth:`Evaluation.explain`, which materialises one node's inputs on demand from
the same arrays the verdict came from, so an explanation can never disagree with the decision.

Semantics (see the policy documentation for the user-facing version):

* **Projection** of a resource signal = live sample + (estimate of pods placed since that sample
  + the incoming pod's estimate - usage of departed pods the sample still shows) / allocatable.
  Other signals are compared as sampled.
* **Headroom** (per-pod data, a tier with ``headroom`` other than ``all``): the usage of
  lower-priority pods the tier may leave out (cpu above requests, or all of the pods the pod
  could preempt) is taken off the projection the ceilings are compared with, never below zero
  load. Scores still read the load as it is (less the departed), so among the nodes a tier may
  use, the ones really less loaded rank first.
* **Estimate** of the incoming pod: its spec by the policy's rule, or, with ``siblings`` on and
  enough running pods of its owner measured, their usage percentile.
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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from extender.core.model import FloatArray, IndexArray, PodInfo, Snapshot, estimate_pod
from extender.core.rules import RESOURCES, Headroom, OnStale, Rules, Strategy, Tier

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
    # An owner reference is whatever the pod's author wrote; a DaemonSet pod is believed only
    # when it also carries the controller's own scheduling: a required affinity to exactly one
    # node by name (see ``PodInfo.pinned_node``).
    if b.daemonsets and "DaemonSet" in pod.owner_kinds and pod.pinned_node:
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
    columns: IndexArray | None = None
    """The names' snapshot columns, when already known (a prioritize call for the nodes a
    filter call just kept); looked up from the names otherwise."""


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
    observed: bool
    """Shadow mode: ``keep`` and ``scores`` are the pass-through answer; ``verdict_*`` is what
    the policy decided, recorded and exported but not enforced."""
    keep: BoolArray
    """What is answered: the verdict, or every node in shadow mode."""
    reason_codes: npt.NDArray[np.int64]
    """0 within the ceilings; -1 stale; otherwise a bit mask of the signals above their
    ceiling, plus 1. A node kept by the floor keeps its code (explain shows both)."""
    floored: BoolArray
    """Nodes kept by the tier's floor although rejected: every candidate was."""
    scores: IntArray
    """What is answered: the verdict's scores, or neutral ones in shadow mode."""
    verdict_keep: BoolArray
    verdict_scores: IntArray
    # Inputs and intermediate values, for explanations.
    signals: tuple[str, ...]
    columns: IndexArray
    values: FloatArray
    ages: FloatArray
    fresh: BoolArray
    allocatable: FloatArray
    placed: FloatArray
    departed: FloatArray
    """(resources, candidates): departed pods' usage their node's sample still shows."""
    credit: FloatArray
    """(resources, candidates): lower-priority usage the tier's headroom left out."""
    estimate: tuple[float, float]
    projection: FloatArray
    usage: FloatArray
    ceilings: FloatArray
    weights: FloatArray
    raw_scores: FloatArray

    def reason(self, i: int) -> str | None:
        """Why node ``i`` is (or, in shadow mode or under the floor, would be) rejected."""
        code = int(self.reason_codes[i])
        return None if code == 0 else self.reason_text(code)

    def failed(self) -> dict[str, str]:
        """Rejected node name to reason (all are unresolvable, see the module docstring)."""
        rejected = np.flatnonzero(~self.keep)
        if not len(rejected):
            return {}
        codes = self.reason_codes[rejected]
        names = self.names
        first = int(codes[0])
        if (codes == first).all():  # the usual case: one reason for every rejected node
            text = self.reason_text(first)
            return dict.fromkeys(map(names.__getitem__, rejected.tolist()), text)
        texts = {int(c): self.reason_text(int(c)) for c in np.unique(codes).tolist()}
        return {names[i]: texts[c] for i, c in zip(rejected.tolist(), codes.tolist(), strict=True)}

    def reason_text(self, code: int) -> str:
        """The reason text of a reason code (empty for 0, which is no rejection)."""
        if code == 0:
            return ""
        if code == -1:
            return REASON_STALE
        assert self.tier is not None
        over = [s for bit, s in enumerate(self.signals) if (code - 1) >> bit & 1]
        return live_reason(over, self.tier.name)

    def with_pod(self, pod: PodInfo) -> Evaluation:
        """The same evaluation about ``pod`` (a slimmer copy of its pod, for the decision
        log). Every field by name: cheaper than dataclasses.replace on the request path."""
        return Evaluation(
            pod=pod,
            tier=self.tier,
            bypass=self.bypass,
            names=self.names,
            fallback=self.fallback,
            observed=self.observed,
            keep=self.keep,
            reason_codes=self.reason_codes,
            floored=self.floored,
            scores=self.scores,
            verdict_keep=self.verdict_keep,
            verdict_scores=self.verdict_scores,
            signals=self.signals,
            columns=self.columns,
            values=self.values,
            ages=self.ages,
            fresh=self.fresh,
            allocatable=self.allocatable,
            placed=self.placed,
            departed=self.departed,
            credit=self.credit,
            estimate=self.estimate,
            projection=self.projection,
            usage=self.usage,
            ceilings=self.ceilings,
            weights=self.weights,
            raw_scores=self.raw_scores,
        )

    def floor_applied(self) -> bool:
        """Every candidate was rejected and the tier's floor kept some."""
        return bool(self.floored.any())

    def rejected_everywhere(self) -> bool:
        """The verdict keeps no candidate (the pod waits, unless shadow mode passes it)."""
        return len(self.names) > 0 and not bool(self.verdict_keep.any())

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
            "departed": {r: _num(self.departed[k, i]) for k, r in enumerate(RESOURCES)},
            "headroom": {
                "mode": Headroom.ALL.value if self.tier is None else self.tier.headroom.value,
                "leftOut": {r: _num(self.credit[k, i]) for k, r in enumerate(RESOURCES)},
            },
            "podEstimate": dict(zip(RESOURCES, self.estimate, strict=True)),
            "signals": per_signal,
            "rawScore": _num(self.raw_scores[i]),
            "score": int(self.scores[i]),
            "kept": bool(self.keep[i]),
            "reason": self.reason(i),
            "keptByFloor": bool(self.floored[i]),
            "observed": self.observed,
            "verdict": {"kept": bool(self.verdict_keep[i]), "score": int(self.verdict_scores[i])},
        }


@dataclass(frozen=True, slots=True)
class TierVectors:
    """A tier's per-signal settings as arrays (signal order), read-only."""

    ceilings: npt.NDArray[np.float64]
    """(signals,) the ceiling of each signal; +inf where the tier sets none."""
    ceilings_col: npt.NDArray[np.float64]
    """(signals, 1): the same, ready to broadcast against (signals, candidates)."""
    weights: npt.NDArray[np.float64]
    needed_rows: tuple[int, ...]
    """Signals the tier reads (a ceiling or a weight): missing data there makes a node stale."""
    ceiling_rows: tuple[int, ...]
    """Signals with a finite ceiling."""

    @staticmethod
    def build(tier: Tier, signals: tuple[str, ...]) -> TierVectors:
        ceilings = np.array([tier.ceilings.get(s, math.inf) for s in signals], dtype=np.float64)
        weights = np.array([tier.weights.get(s, 0.0) for s in signals], dtype=np.float64)
        needed = np.isfinite(ceilings) | (weights > 0)
        col = ceilings[:, None].copy()
        for arr in (ceilings, weights, col):
            arr.setflags(write=False)
        return TierVectors(
            ceilings=ceilings,
            ceilings_col=col,
            weights=weights,
            needed_rows=tuple(int(i) for i in np.flatnonzero(needed)),
            ceiling_rows=tuple(int(i) for i in np.flatnonzero(np.isfinite(ceilings))),
        )


def tier_vectors(rules: Rules, tier: Tier) -> TierVectors:
    """The tier's :class:`TierVectors`, built once per rules object and kept with it (in
    ``rules.derived``; two threads racing build equal ones, either is kept)."""
    key = f"vectors:{tier.name}"
    got = rules.derived.get(key)
    if got is None:
        got = rules.derived[key] = TierVectors.build(tier, rules.signals)
    assert isinstance(got, TierVectors)
    return got


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


@dataclass(frozen=True, slots=True)
class Assessment:
    """One kind of pod judged over a set of snapshot columns: every array of the decision but
    the per-request finish (the floor, shadow mode). Built for a request's candidates, or once
    over every column of a snapshot and then gathered for each request (:func:`assess_all`),
    which is how one pod shape pays the array work once per snapshot rather than per call.
    Elementwise work gives the same values either way, so a gathered decision is the decision.

    The per-node rows are kept stacked (floats, integers, booleans), so that gathering a
    request's candidates is three ``take`` calls, not one per array.
    """

    tier: Tier | None
    bypass: str | None
    estimate: tuple[float, float]
    fallback: bool
    cols: IndexArray
    """Snapshot columns of the rows below (-1: the unknown column)."""
    floats: FloatArray
    """Stacked rows: values, sampled_at (signals each), allocatable, placed, departed, credit
    (resources each), projection, usage (signals each), raw score (one)."""
    ints: npt.NDArray[np.int64]
    """Stacked rows: reason codes, scores."""
    fresh: BoolArray
    valid_from: float
    valid_until: float
    """The verdicts hold for any ``now`` in ``[valid_from, valid_until)``: no sample changes
    freshness and the source does not go down in between (only ages move)."""

    @staticmethod
    def make(
        head: tuple[Tier | None, str | None, tuple[float, float], bool],
        cols: IndexArray,
        rows: tuple[FloatArray, ...],
        codes: npt.NDArray[np.int64],
        scores: IntArray,
        fresh: BoolArray,
        valid: tuple[float, float],
    ) -> Assessment:
        """From ``rows`` = (values, sampled_at, allocatable, placed, departed, credit,
        projection, usage, raw)."""
        floats = np.vstack(rows)
        tier, bypass, estimate, fallback = head
        return Assessment(
            tier,
            bypass,
            estimate,
            fallback,
            cols,
            floats,
            np.vstack([codes, scores]),
            fresh,
            *valid,
        )

    def _rows(self, first: int, count: int) -> FloatArray:
        return self.floats[first : first + count]

    @property
    def _nsig(self) -> int:
        return len(self.fresh)

    @property
    def values(self) -> FloatArray:
        return self._rows(0, self._nsig)

    @property
    def sampled_at(self) -> FloatArray:
        return self._rows(self._nsig, self._nsig)

    @property
    def allocatable(self) -> FloatArray:
        return self._rows(2 * self._nsig, len(RESOURCES))

    @property
    def placed(self) -> FloatArray:
        return self._rows(2 * self._nsig + len(RESOURCES), len(RESOURCES))

    @property
    def departed(self) -> FloatArray:
        return self._rows(2 * self._nsig + 2 * len(RESOURCES), len(RESOURCES))

    @property
    def credit(self) -> FloatArray:
        return self._rows(2 * self._nsig + 3 * len(RESOURCES), len(RESOURCES))

    @property
    def projection(self) -> FloatArray:
        return self._rows(2 * self._nsig + 4 * len(RESOURCES), self._nsig)

    @property
    def usage(self) -> FloatArray:
        return self._rows(3 * self._nsig + 4 * len(RESOURCES), self._nsig)

    @property
    def raw(self) -> FloatArray:
        row: FloatArray = self.floats[-1]
        return row

    @property
    def codes(self) -> npt.NDArray[np.int64]:
        row: npt.NDArray[np.int64] = self.ints[0]
        return row

    @property
    def scores(self) -> IntArray:
        row: IntArray = self.ints[1]
        return row

    def column_major(self) -> Assessment:
        """The same assessment with the float rows stored node by node (Fortran order), the
        layout :meth:`take` gathers from fastest: one node's values are adjacent, so a
        gather copies a run of them per node (3-4 times faster than picking each row's
        element at 5,000 of 15,000 nodes). Copying costs about as much as two gathers; an
        assessment of the whole snapshot is gathered from by every request for a while."""
        return replace(self, floats=np.asfortranarray(self.floats))

    def take(self, idx: IndexArray, cols: IndexArray) -> Assessment:
        """The rows at positions ``idx`` (into this assessment's columns), labelled ``cols``."""
        floats = self.floats
        if floats.flags.f_contiguous and not floats.flags.c_contiguous:
            # Node by node: gather whole nodes (np.take on floats itself would first copy it
            # to row order). The rows of the result are views across its nodes.
            taken = np.take(floats.T, idx, axis=0).T
        else:
            taken = np.take(floats, idx, axis=1)
        return Assessment(
            self.tier,
            self.bypass,
            self.estimate,
            self.fallback,
            cols,
            taken,
            np.take(self.ints, idx, axis=1),
            np.take(self.fresh, idx, axis=1),
            self.valid_from,
            self.valid_until,
        )


def pod_estimate(pod: PodInfo, rules: Rules, snap: Snapshot | None = None) -> tuple[float, float]:
    """The incoming pod's (cpu, memory) estimate: its owner's siblings' usage percentile where
    the snapshot has one for that resource, else the policy's rule on the pod's spec."""
    rule = estimate_pod(pod, rules.estimation)
    got = (
        None
        if snap is None or rules.estimation.siblings is None
        else (snap.siblings_estimate(pod.owner))
    )
    if got is None:
        return rule
    return (
        got[0] if math.isfinite(got[0]) else rule[0],
        got[1] if math.isfinite(got[1]) else rule[1],
    )


def pod_class(
    pod: PodInfo, rules: Rules, snap: Snapshot | None = None
) -> tuple[str | None, Tier | None, tuple[float, float]]:
    """What a decision depends on of the pod: (bypass reason, tier, estimate). Pods that agree
    on these (and on :func:`headroom_key`) get the same verdict on every node."""
    bypass = bypass_reason(pod, rules)
    tier = None if bypass is not None else tier_for(pod, rules)
    return bypass, tier, pod_estimate(pod, rules, snap)


def headroom_key(pod: PodInfo, tier: Tier | None, snap: Snapshot) -> tuple[str, int] | None:
    """Which precomputed credit a pod of ``tier`` reads: (mode, priority boundary), or None
    when nothing is left out (mode ``all``, no per-pod data, a ``preemptible`` tier's pod that
    never preempts, or no lower-priority pod measured)."""
    table = snap.pods
    if tier is None or table is None or tier.headroom is Headroom.ALL:
        return None
    if tier.headroom is Headroom.PREEMPTIBLE and pod.preemption_policy == "Never":
        return None
    if tier.headroom not in table.credits:
        return None
    k = table.boundary(pod.priority)
    return None if k == 0 else (tier.headroom.value, k)


def _credit(key: tuple[str, int] | None, snap: Snapshot, cols: IndexArray) -> FloatArray:
    """(resources, candidates): the usage the key's headroom leaves out on each column."""
    if key is None or snap.pods is None:
        return np.zeros((len(RESOURCES), len(cols)))
    arr = snap.pods.credits[Headroom(key[0])][key[1]]
    out: FloatArray = np.take(arr, cols, axis=1)
    return out


def assess_all(pod: PodInfo, snap: Snapshot, rules: Rules, now: float) -> Assessment:
    """``pod``'s kind over every column of ``snap`` (the unknown column last)."""
    cols = np.arange(len(snap.names) + 1, dtype=np.intp)
    with np.errstate(all="ignore"):
        return _assess(pod, cols, snap, rules, now, None, None, kept=True).column_major()


def evaluate(
    pod: PodInfo,
    candidates: Candidates,
    snap: Snapshot,
    rules: Rules,
    now: float,
    whole: Assessment | None = None,
    keep_pod: PodInfo | None = None,
) -> Evaluation:
    """Decide every candidate for ``pod`` against ``snap`` under ``rules`` at time ``now``.

    ``whole``, an :func:`assess_all` of the same pod kind, snapshot and rules valid at ``now``,
    is gathered instead of computing again; it is ignored when the request brings its own
    allocatable (full Node objects) or frees usage (preemption). ``keep_pod`` is the pod the
    evaluation holds, when not ``pod`` itself (the decision log's slimmed copy of it, so that
    the evaluation is not copied again to swap it in).
    """
    cols = candidates.columns if candidates.columns is not None else snap.lookup(candidates.names)
    # NaN marks missing data throughout; the arithmetic on it is expected, not an error.
    with np.errstate(all="ignore"):
        if (
            whole is not None
            and candidates.allocatable is None
            and candidates.freed is None
            and whole.valid_from <= now < whole.valid_until
        ):
            part = whole.take(np.where(cols < 0, len(snap.names), cols), cols)
        else:
            part = _assess(pod, cols, snap, rules, now, candidates.allocatable, candidates.freed)
        held = pod if keep_pod is None else keep_pod
        return _finish(held, candidates, part, rules, now, snap.signals)


def _validity(
    sampled_at: FloatArray, fresh: BoolArray, source_ok_at: float | None, rules: Rules, now: float
) -> tuple[float, float]:
    """The span around ``now`` in which no freshness changes and the source stays up or down."""
    max_age = rules.max_age_s
    ends = [math.inf]
    finite = sampled_at[np.isfinite(sampled_at)]
    if finite.size:
        stale_at = finite[fresh[np.isfinite(sampled_at)]] + max_age
        if stale_at.size:
            ends.append(float(stale_at.min()))
        future = finite - max_age
        future = future[future > now]
        if future.size:
            ends.append(float(future.min()))
    if source_ok_at is not None and now - source_ok_at <= max_age:
        ends.append(source_ok_at + max_age)
    return now, min(ends)


def _assess(
    pod: PodInfo,
    cols: IndexArray,
    snap: Snapshot,
    rules: Rules,
    now: float,
    allocatable: FloatArray | None,
    freed: FloatArray | None,
    kept: bool = False,
) -> Assessment:
    count = len(cols)
    signals = snap.signals
    nsig = len(signals)
    values, sampled_at, alloc, requested, placed, departed = snap.gather(cols)
    ages = now - sampled_at
    fresh = np.abs(ages) <= rules.max_age_s  # False where there is no sample (NaN)
    if allocatable is not None:
        alloc = np.where(np.isnan(allocatable), alloc, allocatable)
    bypass, tier, estimate = pod_class(pod, rules, snap)
    credit = _credit(headroom_key(pod, tier, snap), snap, cols)
    incoming = np.array(estimate)[:, None]
    if freed is not None:
        incoming = incoming - freed
    known_alloc = alloc > 0
    added = np.where(known_alloc, (placed + incoming) / alloc, 0.0)
    # What leaves the sample: departed pods, then the headroom's credit; neither takes a node's
    # load below zero (a measured pod cannot be more of the sample than the sample).
    gone = np.where(known_alloc, departed / alloc, 0.0)
    left_out = np.where(known_alloc, credit / alloc, 0.0)
    projection = values.copy()
    scored = values.copy()
    resource_rows = [(r, signals.index(res)) for r, res in enumerate(RESOURCES) if res in signals]
    for r, row in resource_rows:
        base = values[row]
        # Where nothing leaves, the sample is used exactly as it is (today's arithmetic).
        shown = np.where(gone[r] > 0, np.maximum(base - gone[r], np.minimum(base, 0.0)), base)
        scored[row] = shown + added[r]
        after = np.where(
            left_out[r] > 0, np.maximum(shown - left_out[r], np.minimum(shown, 0.0)), shown
        )
        projection[row] = after + added[r]

    def by_requests() -> FloatArray:
        """Request-based utilization per signal row (NaN for non-resource signals).

        ``requested`` already sums every bound pod, just-placed ones included: only the
        incoming pod (less any preemption victims) is added.
        """
        ratio = np.where(known_alloc, (requested + incoming) / alloc, np.nan)
        out = np.full((nsig, count), np.nan)
        for r, row in resource_rows:
            out[row] = ratio[r]
        return out

    neutral = float(rules.neutral_score)
    fallback = snap.source_ok_at is None or now - snap.source_ok_at > rules.max_age_s
    codes = np.zeros(count, dtype=np.int64)

    if tier is None:
        usage = np.full((nsig, count), np.nan)
        raw = np.full(count, neutral)
    else:
        vec = tier_vectors(rules, tier)
        stale: BoolArray = np.zeros(count, dtype=bool)
        if fallback:
            # The whole source is down: nothing is rejected for load, scores come from requests,
            # and a tier that never guesses (onStale: reject) waits for data to return.
            usage = by_requests()
            if tier.on_stale is OnStale.REJECT and rules.live_source:
                stale = np.ones(count, dtype=bool)
                codes[:] = -1
        else:
            over = fresh & (projection > vec.ceilings_col)
            # Row loops, not axis reductions: a handful of signals and thousands of nodes.
            over_mask = np.zeros(count, dtype=np.int64)
            for row in vec.ceiling_rows:
                over_mask |= over[row].astype(np.int64) << row
            for row in vec.needed_rows:
                stale |= ~fresh[row]
            codes = np.where(over_mask > 0, over_mask + 1, 0)
            if tier.on_stale is OnStale.REJECT:
                codes = np.where((codes == 0) & stale, -1, codes)
            usage = np.where(fresh, scored, np.nan)
            # Elementwise (any row not fresh), so a decision never depends on which other nodes
            # are candidates: the whole-snapshot assessment must give the per-request answer.
            if tier.on_stale is OnStale.ALLOW and not fresh.all():
                usage = np.where(fresh, usage, by_requests())
        u = np.minimum(np.maximum(usage, 0.0), 1.0)  # NaN stays NaN (unknown)
        raw = _combine(tier, _strategy_parts(tier, u), vec.weights, neutral)
        if tier.on_stale is OnStale.NEUTRAL and not fallback:
            raw = np.where(stale, neutral, raw)
    # Round half up; raw is in 0..10 so truncating raw + 0.5 is the floor.
    scores = np.minimum(np.maximum(raw + 0.5, 0.0), MAX_SCORE).astype(np.int64)
    # Only an assessment kept for later requests needs the span it stays valid in; one built
    # for a single request is used at ``now`` and thrown away.
    valid = _validity(sampled_at, fresh, snap.source_ok_at, rules, now) if kept else (now, now)
    return Assessment.make(
        (tier, bypass, estimate, fallback),
        cols,
        (values, sampled_at, alloc, placed, departed, credit, projection, usage, raw[None, :]),
        codes,
        scores,
        fresh,
        valid,
    )


def _finish(
    pod: PodInfo,
    candidates: Candidates,
    a: Assessment,
    rules: Rules,
    now: float,
    signals: tuple[str, ...],
) -> Evaluation:
    """The per-request part: the floor (it depends on the whole candidate set) and shadow mode."""
    tier = a.tier
    count = len(a.cols)
    if tier is None:
        ceilings, weights = np.full(len(signals), np.inf), np.zeros(len(signals))
    else:
        vec = tier_vectors(rules, tier)
        ceilings, weights = vec.ceilings, vec.weights
    floored: BoolArray = np.zeros(count, dtype=bool)
    passing = a.codes == 0
    if tier is not None and tier.floor_keep > 0 and count and not passing.any():
        floored = _floor(tier.floor_keep, a.projection, a.fresh, ceilings, a.raw)
    verdict_keep = passing | floored
    observed = tier is not None and tier.observe
    return Evaluation(
        pod=pod,
        tier=tier,
        bypass=a.bypass,
        names=candidates.names,
        fallback=a.fallback,
        observed=observed,
        keep=np.ones(count, dtype=bool) if observed else verdict_keep,
        reason_codes=a.codes,
        floored=floored,
        scores=np.full(count, rules.neutral_score, dtype=np.int64) if observed else a.scores,
        verdict_keep=verdict_keep,
        verdict_scores=a.scores,
        signals=signals,
        columns=a.cols,
        values=a.values,
        ages=now - a.sampled_at,
        fresh=a.fresh,
        allocatable=a.allocatable,
        placed=a.placed,
        departed=a.departed,
        credit=a.credit,
        estimate=a.estimate,
        projection=a.projection,
        usage=a.usage,
        ceilings=ceilings,
        weights=weights,
        raw_scores=a.raw,
    )


def _floor(
    keep: int, projection: FloatArray, fresh: BoolArray, ceilings: FloatArray, raw: FloatArray
) -> BoolArray:
    """The ``keep`` candidates least over their ceilings (by the worst signal; nodes without
    fresh data last), the better score first among equals."""
    with np.errstate(invalid="ignore"):
        excess = np.where(fresh, projection - ceilings[:, None], np.nan)
    worst = np.max(np.where(np.isnan(excess), -np.inf, excess), axis=0)
    worst = np.where(np.isnan(excess).all(axis=0), np.inf, worst)
    order = np.lexsort((-raw, worst))
    out = np.zeros(len(raw), dtype=bool)
    out[order[:keep]] = True
    return out


__all__ = [
    "MAX_SCORE",
    "REASON_STALE",
    "Assessment",
    "Candidates",
    "Evaluation",
    "assess_all",
    "bypass_reason",
    "evaluate",
    "headroom_key",
    "live_reason",
    "pod_class",
    "pod_estimate",
    "tier_for",
]

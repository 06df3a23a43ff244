"""Preemption that respects live load: which candidate nodes the scheduler may evict on.

kube-scheduler's preemption dry run does not call the extender's filter, so without this verb it
evicts pods on nodes the extender rejects, and the preemptor still cannot land there. Here each
candidate is judged as the filter would judge it *after* its victims are gone: their estimated
usage is subtracted from the projection. A candidate is dropped when the preemptor would still be
rejected there, when it has no victims (the scheduler must never be told to preempt nothing), or
when the node has already had ``max_per_node`` approvals within the policy's window. Otherwise
it is kept with its victims exactly as offered: victims are never added or invented.

With per-pod data a victim frees its **measured** usage (its estimate where it has no fresh
sample), less what the preemptor's tier headroom already left out of the load for it (a
``preemptible`` tier has already left out all of a measured victim's usage; a ``requests`` tier
its cpu above requests). After the victims are deleted, the snapshot's ``departed`` rows keep
their usage off their node until its sample no longer shows them (``core.model.departed_usage``),
so the preemptor is not rejected where it preempted and does not preempt again elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from extender.core.decide import Candidates, Evaluation, evaluate, headroom_key, pod_class
from extender.core.model import PodInfo, Snapshot
from extender.core.pods import row_credit
from extender.core.rules import Headroom, Rules

DROP_NO_VICTIMS = "no victims"
DROP_CAPPED = "preemption cap reached"


@dataclass(frozen=True, slots=True)
class Victim:
    uid: str
    cpu: float | None = None
    """Estimated usage in cores; None when the victim is unknown (usage not subtracted)."""
    memory: float | None = None


@dataclass(frozen=True, slots=True)
class PreemptCandidate:
    node: str
    victims: tuple[Victim, ...]
    pdb_violations: int = 0


@dataclass(frozen=True, slots=True)
class PreemptionDecision:
    kept: tuple[PreemptCandidate, ...]
    dropped: Mapping[str, str]
    """Node name to the reason it was dropped."""
    evaluation: Evaluation
    """The filter's view of each candidate after eviction, in candidate order."""


def decide_preemption(
    pod: PodInfo,
    candidates: Sequence[PreemptCandidate],
    snap: Snapshot,
    rules: Rules,
    now: float,
    approvals: Mapping[str, int] | None = None,
    max_per_node: int = 0,
) -> PreemptionDecision:
    """Judge every candidate; ``approvals`` counts recent approvals per node (for the cap)."""
    names = [c.node for c in candidates]
    freed = np.zeros((2, len(candidates)))
    freer = _victim_usage(pod, snap, rules)
    for i, cand in enumerate(candidates):
        for v in cand.victims:
            cpu, mem = freer(v)
            freed[0, i] += cpu
            freed[1, i] += mem
    evaluation = evaluate(pod, Candidates(names, freed=freed), snap, rules, now)
    counts = approvals or {}
    kept: list[PreemptCandidate] = []
    dropped: dict[str, str] = {}
    for i, cand in enumerate(candidates):
        if not cand.victims:
            dropped[cand.node] = DROP_NO_VICTIMS
        elif not evaluation.keep[i]:
            dropped[cand.node] = evaluation.reason(i) or ""
        elif max_per_node > 0 and counts.get(cand.node, 0) >= max_per_node:
            dropped[cand.node] = DROP_CAPPED
        else:
            kept.append(cand)
    return PreemptionDecision(tuple(kept), dropped, evaluation)


def _victim_usage(pod: PodInfo, snap: Snapshot, rules: Rules) -> Callable[[Victim], Freed]:
    """What one victim frees in the preemptor's projection: its measured usage where fresh,
    else its estimate (nothing when unknown), less the headroom credit already taken for it."""
    table = snap.pods
    if table is None:
        return _estimate_only
    _, tier, _ = pod_class(pod, rules, snap)
    key = headroom_key(pod, tier, snap)
    # The key's entry counts pods at or below bounds[k - 1]: below the preemptor's priority.
    bound = int(table.bounds[key[1] - 1]) if key is not None else None
    mode = Headroom(key[0]) if key is not None else None
    usage, requests, fresh = table.usage.usage, table.usage.requests, table.fresh

    def freed(v: Victim) -> Freed:
        row = table.rows.get(v.uid)
        if row is None or not fresh[:, row].any():
            return _estimate_only(v)
        got = usage[:, row : row + 1]
        credit = (
            row_credit(got, requests[:, row : row + 1], mode)[:, 0]
            if mode is not None and bound is not None and table.usage.priority[row] <= bound
            else np.zeros(2)
        )
        est = _estimate_only(v)
        cpu = float(got[0, 0] - credit[0]) if fresh[0, row] else est[0]
        mem = float(got[1, 0] - credit[1]) if fresh[1, row] else est[1]
        return max(cpu, 0.0), max(mem, 0.0)

    return freed


Freed = tuple[float, float]


def _estimate_only(v: Victim) -> Freed:
    return v.cpu or 0.0, v.memory or 0.0

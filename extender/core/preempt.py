"""Preemption that respects live load: which candidate nodes the scheduler may evict on.

kube-scheduler's preemption dry run does not call the extender's filter, so without this verb it
evicts pods on nodes the extender rejects, and the preemptor still cannot land there. Here each
candidate is judged as the filter would judge it *after* its victims are gone: their estimated
usage is subtracted from the projection. A candidate is dropped when the preemptor would still be
rejected there, when it has no victims (the scheduler must never be told to preempt nothing), or
when the node has already had ``max_per_node`` approvals within the policy's window. Otherwise
it is kept with its victims exactly as offered: victims are never added or invented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from extender.core.decide import Candidates, Evaluation, evaluate
from extender.core.model import PodInfo, Snapshot
from extender.core.rules import Rules

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
    for i, cand in enumerate(candidates):
        freed[0, i] = sum(v.cpu or 0.0 for v in cand.victims)
        freed[1, i] = sum(v.memory or 0.0 for v in cand.victims)
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

"""A bounded in-memory log of recent decisions, readable by pod on the admin port.

Recording costs the request path one ``deque.append`` of a reference: the evaluation already
holds every array its explanation needs, and explanations are rendered only when asked for.
The log is bounded by decisions *and* by the candidate nodes they hold, so a run of 5,000-node
requests cannot grow it past a few tens of MB.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from extender.core import Evaluation

#: Decisions kept at most. At the scheduler's few hundred pods a second this is the last few
#: seconds of a busy cluster, and minutes to hours of a quiet one.
MAX_DECISIONS = 2048
#: Candidate nodes held across all kept decisions. An evaluation costs about 250 bytes a
#: candidate (its arrays), so this bounds the log near 50 MB.
MAX_CANDIDATES = 200_000


@dataclass(frozen=True, slots=True)
class Decision:
    at: float
    verb: str
    evaluation: Evaluation


class DecisionLog:
    def __init__(
        self, max_decisions: int = MAX_DECISIONS, max_candidates: int = MAX_CANDIDATES
    ) -> None:
        self.max_decisions = max_decisions
        self.max_candidates = max_candidates
        self._entries: deque[Decision] = deque()
        self._candidates = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def candidates(self) -> int:
        return self._candidates

    def add(self, verb: str, evaluation: Evaluation, at: float) -> None:
        self._entries.append(Decision(at, verb, evaluation))
        self._candidates += len(evaluation.names)
        while self._entries and (
            len(self._entries) > self.max_decisions or self._candidates > self.max_candidates
        ):
            old = self._entries.popleft()
            self._candidates -= len(old.evaluation.names)

    def find(self, pod: str) -> list[Decision]:
        """Decisions for a pod given as ``namespace/name`` or by UID, newest first."""
        out = []
        for d in reversed(self._entries):
            p = d.evaluation.pod
            if pod in (p.uid, f"{p.namespace}/{p.name}"):
                out.append(d)
        return out

    def waiting(self, now: float, window_s: float) -> dict[str, int]:
        """By tier, the distinct pods whose latest filter decision within ``window_s`` kept no
        node: the pods the policy keeps pending right now (scrape time, not the request path)."""
        seen: set[str] = set()
        out: dict[str, int] = {}
        for d in reversed(self._entries):
            if d.at < now - window_s:
                break
            if d.verb != "filter":
                continue
            ev = d.evaluation
            key = ev.pod.uid or f"{ev.pod.namespace}/{ev.pod.name}"
            if key in seen:
                continue
            seen.add(key)
            if ev.tier is not None and len(ev.names) and not ev.keep.any():
                out[ev.tier.name] = out.get(ev.tier.name, 0) + 1
        return out

"""A bounded in-memory log of recent decisions, readable by pod on the admin port.

Recording costs the request path a slimmed copy of the pod and one ``deque.append``: the
evaluation already holds every array its explanation needs, and explanations are rendered only
when asked for.

What is kept of a pod is what explain shows and what the log is searched by: namespace, name,
UID, priority, priority class, owner kinds, controller owner key, preemption policy, and its
labels up to :data:`MAX_POD_LABEL_BYTES` (the rest dropped, with a :attr:`Decision.note` saying
how many; the decision itself was taken on every label). Containers are not kept: their
estimate is (``Evaluation.estimate``). Without this, 2,100 pods with 256 KiB of labels each
(valid syntax: a Deployment copies its template's labels into every replica) held +750 MB for
as long as they stayed in the log.

The log is bounded three ways, the oldest decisions dropped first:

* :data:`MAX_DECISIONS` entries;
* :data:`MAX_CANDIDATES` candidate nodes across entries (the arrays of an evaluation);
* :data:`MAX_BYTES` estimated bytes across entries (:func:`entry_bytes`: the arrays, the
  candidate names and the kept pod), so that neither long node names nor fat pods can grow it.

It may be written from a worker thread (large requests are decided off the event loop) while
the event loop reads it, so every access holds a lock.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from dataclasses import dataclass

from extender.core import Evaluation, PodInfo

#: Decisions kept at most. At the scheduler's few hundred pods a second this is the last few
#: seconds of a busy cluster, and minutes to hours of a quiet one.
MAX_DECISIONS = 2048
#: Candidate nodes held across all kept decisions. An evaluation costs about 250 bytes a
#: candidate (its arrays), so this bounds the arrays near 50 MB.
MAX_CANDIDATES = 200_000
#: Estimated bytes held across all kept decisions: the 50 MB of arrays above plus room for the
#: names and pods of 2,048 entries. The Deployment's 1 GiB limit budgets 64 MiB for the log
#: (docs/reliability.md, "Memory").
MAX_BYTES = 64 << 20
#: Label bytes (keys plus values) kept per pod. Real pods carry a few hundred bytes of labels;
#: 4 KiB keeps every one of them whole and bounds 2,048 fat pods at 8 MiB.
MAX_POD_LABEL_BYTES = 4096
#: Owner references kept per pod (a pod has one controller; a few more are kept for explain).
MAX_OWNERS = 8
#: Longest namespace, name or UID kept: a DNS subdomain's 253 characters, the longest the API
#: server admits (anything longer is hostile and only needs to be recognisable).
MAX_NAME_CHARS = 253
#: Bytes of one candidate's arrays in an evaluation (about 30 numpy values of 8 bytes).
ARRAY_BYTES_PER_CANDIDATE = 250
#: CPython's cost of a str object beyond its characters (``sys.getsizeof("")``).
STR_OVERHEAD = sys.getsizeof("")
#: The evaluation, its Decision, the slim PodInfo and the numpy array headers (~30 arrays of
#: ~112 bytes each), counted once per entry.
ENTRY_OVERHEAD = 4096


@dataclass(frozen=True, slots=True)
class Slim:
    """What the log keeps of one request's pod (:func:`slim_pod`), made once per pod."""

    source: PodInfo
    """The request's pod."""
    pod: PodInfo
    """The slimmed copy the log keeps."""
    note: str | None
    size: int
    """:func:`pod_bytes` of ``pod``."""


@dataclass(frozen=True, slots=True)
class Decision:
    at: float
    verb: str
    evaluation: Evaluation
    note: str | None = None
    """Set when the log kept less of the pod than the decision saw (labels truncated)."""


def slim_pod(pod: PodInfo) -> tuple[PodInfo, str | None]:
    """What the log keeps of a pod (see the module docstring), and a note when labels were
    dropped. Returns ``pod`` itself when nothing needs cutting but its containers."""
    note = None
    labels = dict(pod.labels)
    used = sum(len(k) + len(v) for k, v in labels.items())
    if used > MAX_POD_LABEL_BYTES:
        kept: dict[str, str] = {}
        used = 0
        for key, value in labels.items():
            cost = len(key) + len(value)
            if used + cost > MAX_POD_LABEL_BYTES:
                continue
            kept[key] = value
            used += cost
        note = (
            f"labels truncated in the decision log: {len(kept)} of {len(labels)} kept "
            f"(at most {MAX_POD_LABEL_BYTES} bytes a pod); the decision saw all of them"
        )
        labels = kept
    # The constructor, not dataclasses.replace: this runs for every decision, and replace
    # introspects the fields on each call (several times slower).
    return (
        PodInfo(
            namespace=pod.namespace[:MAX_NAME_CHARS],
            name=pod.name[:MAX_NAME_CHARS],
            uid=pod.uid[:MAX_NAME_CHARS],
            priority=pod.priority,
            priority_class_name=pod.priority_class_name[:MAX_NAME_CHARS],
            labels=labels,
            owner_kinds=tuple(k[:MAX_NAME_CHARS] for k in pod.owner_kinds[:MAX_OWNERS]),
            overhead_cpu=pod.overhead_cpu,
            overhead_memory=pod.overhead_memory,
            pinned_node=pod.pinned_node,
            owner=pod.owner[: 3 * MAX_NAME_CHARS],
            preemption_policy=pod.preemption_policy[:MAX_NAME_CHARS],
        ),
        note,
    )


def pod_bytes(pod: PodInfo) -> int:
    """Estimated bytes of a (slimmed) pod's strings."""
    pod_strings = [pod.namespace, pod.name, pod.uid, pod.priority_class_name, *pod.owner_kinds]
    pod_strings += [*pod.labels.keys(), *pod.labels.values()]
    return sum(map(len, pod_strings)) + len(pod_strings) * STR_OVERHEAD


def entry_bytes(
    evaluation: Evaluation, pod_size: int | None = None, names_chars: int | None = None
) -> int:
    """Estimated bytes an evaluation holds once its pod is slimmed: the arrays, the candidate
    names (their characters plus the str overhead) and the pod's strings (``pod_size``, when
    :func:`pod_bytes` of it is known already). ``names_chars`` bounds the names' characters
    when known already: the length of the JSON array they were decoded from, which holds every
    character of them plus quotes and commas (never less)."""
    names = evaluation.names
    return (
        ENTRY_OVERHEAD
        + len(names) * (ARRAY_BYTES_PER_CANDIDATE + STR_OVERHEAD)
        + (sum(map(len, names)) if names_chars is None else names_chars)
        + (pod_bytes(evaluation.pod) if pod_size is None else pod_size)
    )


class DecisionLog:
    def __init__(
        self,
        max_decisions: int = MAX_DECISIONS,
        max_candidates: int = MAX_CANDIDATES,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.max_decisions = max_decisions
        self.max_candidates = max_candidates
        self.max_bytes = max_bytes
        self._entries: deque[tuple[Decision, int]] = deque()
        """Each decision with its :func:`entry_bytes`."""
        self._candidates = 0
        self._bytes = 0
        self._lock = threading.Lock()
        self._last: Slim | None = None
        """The latest pod slimmed: filter and prioritize decide the very same PodInfo (the
        wire decodes a repeated pod once)."""

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def candidates(self) -> int:
        return self._candidates

    @property
    def bytes(self) -> int:
        """Estimated bytes held (:func:`entry_bytes` summed), at most :attr:`max_bytes`."""
        return self._bytes

    def slim(self, pod: PodInfo) -> Slim:
        """What the log keeps of ``pod``; the same object for the same pod twice in a row.
        Decide with ``keep_pod=slim.pod`` and hand it to :meth:`add`, and the evaluation is
        logged as it is."""
        last = self._last
        if last is not None and last.source is pod:
            return last
        kept, note = slim_pod(pod)
        got = Slim(pod, kept, note, pod_bytes(kept))
        self._last = got
        return got

    def add(
        self,
        verb: str,
        evaluation: Evaluation,
        at: float,
        slim: Slim | None = None,
        names_chars: int | None = None,
    ) -> None:
        """Log a decision; its pod is slimmed unless it is ``slim``'s slimmed pod already.
        ``names_chars``: see :func:`entry_bytes`."""
        if slim is None or evaluation.pod is not slim.pod:
            slim = self.slim(evaluation.pod)
            evaluation = evaluation.with_pod(slim.pod)
        size = entry_bytes(evaluation, slim.size, names_chars)
        note = slim.note
        with self._lock:
            self._entries.append((Decision(at, verb, evaluation, note), size))
            self._candidates += len(evaluation.names)
            self._bytes += size
            while self._entries and (
                len(self._entries) > self.max_decisions
                or self._candidates > self.max_candidates
                or self._bytes > self.max_bytes
            ):
                old, old_size = self._entries.popleft()
                self._candidates -= len(old.evaluation.names)
                self._bytes -= old_size

    def _newest_first(self) -> list[Decision]:
        with self._lock:
            return [d for d, _ in reversed(self._entries)]

    def find(self, pod: str) -> list[Decision]:
        """Decisions for a pod given as ``namespace/name`` or by UID, newest first."""
        out = []
        for d in self._newest_first():
            p = d.evaluation.pod
            if pod in (p.uid, f"{p.namespace}/{p.name}"):
                out.append(d)
        return out

    def waiting(self, now: float, window_s: float) -> dict[str, int]:
        """By tier, the distinct pods whose latest filter decision within ``window_s`` kept no
        node: the pods the policy keeps pending right now (scrape time, not the request path)."""
        seen: set[str] = set()
        out: dict[str, int] = {}
        for d in self._newest_first():
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

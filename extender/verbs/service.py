"""The extender's verbs, bytes in and bytes out: decode, decide, encode, fail open, record.

This is everything kube-scheduler's three calls mean, with no HTTP in it. The aiohttp layer
(:mod:`extender.server.app`) reads the body, admits or sheds the request and turns a
:class:`Reply` into a response; the simulator (:mod:`extender.simulate.inprocess`) and the fuzz
tests call the same methods directly, so all three run one code path.

Per call:

* the body is decoded (a :class:`~extender.wire.WireError` becomes a 400 reply naming the
  problem, in ``Error``);
* the current state (snapshot and policy) is read once, and the pure core decides at ``clock()``;
* the decision goes to the :class:`~extender.verbs.decisions.DecisionLog` (explain reads it) and
  to the :class:`Observer` (the server's Prometheus metrics);
* any exception while deciding fails open: every node kept with neutral scores, or the
  preemption candidates unchanged, with ``outcome="fail_open"`` and the traceback logged.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from extender.core import Evaluation, PodInfo, PreemptionDecision, decide_preemption, evaluate
from extender.logs import bind_pod
from extender.store import SnapshotStore
from extender.verbs.decisions import DecisionLog
from extender.wire import (
    FilterArgs,
    PreemptArgs,
    VictimLookup,
    WireError,
    decode_args,
    decode_preempt,
    encode_error,
    encode_filter,
    encode_filter_pass_all,
    encode_preempt,
    encode_priorities,
)

log = logging.getLogger(__name__)

VERBS = ("filter", "prioritize", "preempt")

A = TypeVar("A", FilterArgs, PreemptArgs)
"""A decoded request."""


class Observer(Protocol):
    """What the verbs report about each decision (implemented by the server's metrics)."""

    def observe_filter(self, evaluation: Evaluation) -> None: ...

    def observe_scores(self, evaluation: Evaluation) -> None: ...

    def observe_preemption(self, decision: PreemptionDecision, unknown_victims: int) -> None: ...


class NullObserver:
    """Records nothing: for the simulator and tests that do not read metrics."""

    def observe_filter(self, evaluation: Evaluation) -> None:
        return None

    def observe_scores(self, evaluation: Evaluation) -> None:
        return None

    def observe_preemption(self, decision: PreemptionDecision, unknown_victims: int) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Reply:
    """One verb's answer: the HTTP status and JSON body, and how the call went."""

    status: int
    body: bytes
    outcome: str
    """``ok``, ``bad_request`` (undecodable body) or ``fail_open`` (internal error)."""
    pod: PodInfo | None = None
    """The decoded pod, None when the body could not be decoded."""


class Verbs:
    """filter, prioritize and preempt over one store, with a clock (injectable for tests)."""

    def __init__(
        self,
        store: SnapshotStore,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
        victim_lookup: VictimLookup = lambda uid: None,
        decisions: DecisionLog | None = None,
    ) -> None:
        self.store = store
        self.observer: Observer = observer if observer is not None else NullObserver()
        self.clock = clock
        self.victim_lookup = victim_lookup
        self.decisions = decisions if decisions is not None else DecisionLog()
        self._approvals: deque[tuple[float, str]] = deque()
        """(time, node) of every preemption candidate handed back, for the per-node cap."""

    # --- the three verbs -------------------------------------------------------------------------

    def filter(self, body: bytes) -> Reply:
        return self._run("filter", body, decode_args, self._filter, encode_filter_pass_all)

    def prioritize(self, body: bytes) -> Reply:
        return self._run("prioritize", body, decode_args, self._prioritize, self._neutral)

    def preempt(self, body: bytes) -> Reply:
        """Drop candidates where the preemptor would still be rejected after the evictions."""
        return self._run("preempt", body, self._decode_preempt, self._preempt, self._unchanged)

    def call(self, verb: str, body: bytes) -> Reply:
        """The verb by name (one of :data:`VERBS`)."""
        if verb == "filter":
            return self.filter(body)
        if verb == "prioritize":
            return self.prioritize(body)
        if verb == "preempt":
            return self.preempt(body)
        raise ValueError(f"unknown verb {verb!r}")

    # --- the common path -------------------------------------------------------------------------

    def _run(
        self,
        verb: str,
        body: bytes,
        decode: Callable[[bytes], A],
        answer: Callable[[A], bytes],
        fail_open: Callable[[A], bytes],
    ) -> Reply:
        try:
            args = decode(body)
        except WireError as exc:
            log.warning("%s: rejected request: %s", verb, exc)
            return Reply(400, encode_error(str(exc)), "bad_request")
        pod = args.pod
        try:
            with bind_pod(pod.namespace, pod.name, pod.uid):
                return Reply(200, answer(args), "ok", pod)
        except Exception:
            log.exception(
                "%s: internal error deciding for pod %s/%s; failing open",
                verb,
                pod.namespace,
                pod.name,
            )
            return Reply(200, fail_open(args), "fail_open", pod)

    def _decide(self, verb: str, args: FilterArgs) -> Evaluation:
        state = self.store.current
        now = self.clock()
        evaluation = evaluate(args.pod, args.candidates, state.snapshot, state.policy.rules, now)
        self.decisions.add(verb, evaluation, now)
        return evaluation

    def _filter(self, args: FilterArgs) -> bytes:
        evaluation = self._decide("filter", args)
        self.observer.observe_filter(evaluation)
        tier = evaluation.tier
        if tier is not None and evaluation.floor_applied():
            log.warning(
                "filter: pod %s/%s: every one of %d candidates is rejected for tier %s; "
                "its floor keeps the %d least over their ceilings",
                args.pod.namespace,
                args.pod.name,
                len(evaluation.names),
                tier.name,
                int(evaluation.floored.sum()),
            )
        elif tier is not None and not evaluation.observed and evaluation.rejected_everywhere():
            log.info(
                "filter: pod %s/%s: every one of %d candidates is rejected for tier %s "
                "(no floor): it waits for a retry",
                args.pod.namespace,
                args.pod.name,
                len(evaluation.names),
                tier.name,
            )
        return encode_filter(args, evaluation)

    def _prioritize(self, args: FilterArgs) -> bytes:
        evaluation = self._decide("prioritize", args)
        self.observer.observe_scores(evaluation)
        return encode_priorities(list(args.candidates.names), evaluation.scores.tolist())

    def _neutral(self, args: FilterArgs) -> bytes:
        neutral = self.store.current.policy.rules.neutral_score
        names = list(args.candidates.names)
        return encode_priorities(names, [neutral] * len(names))

    def _decode_preempt(self, body: bytes) -> PreemptArgs:
        estimation = self.store.current.policy.rules.estimation
        return decode_preempt(body, estimation, self.victim_lookup)

    def _recent_approvals(self, now: float, window: float) -> Counter[str]:
        while self._approvals and self._approvals[0][0] < now - window:
            self._approvals.popleft()
        return Counter(node for _, node in self._approvals)

    def _preempt(self, args: PreemptArgs) -> bytes:
        state = self.store.current
        rules = state.policy.rules
        now = self.clock()
        capped = rules.preemption_max_per_node > 0
        decision = decide_preemption(
            args.pod,
            args.candidates,
            state.snapshot,
            rules,
            now,
            self._recent_approvals(now, rules.preemption_window_s) if capped else None,
            rules.preemption_max_per_node,
        )
        self.decisions.add("preempt", decision.evaluation, now)
        if capped:
            self._approvals.extend((now, c.node) for c in decision.kept)
        self.observer.observe_preemption(decision, args.unknown_victims)
        if decision.dropped:
            log.info(
                "preempt: pod %s/%s: dropped %d of %d candidates: %s",
                args.pod.namespace,
                args.pod.name,
                len(decision.dropped),
                len(args.candidates),
                dict(decision.dropped),
            )
        return encode_preempt(decision.kept)

    def _unchanged(self, args: PreemptArgs) -> bytes:
        return encode_preempt(args.candidates)

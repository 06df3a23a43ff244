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

import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from extender.core import (
    Assessment,
    Candidates,
    Evaluation,
    PodInfo,
    PreemptionDecision,
    assess_all,
    decide_preemption,
    evaluate,
    pod_class,
)
from extender.core.decide import headroom_key
from extender.core.model import IndexArray
from extender.logs import bind_pod
from extender.store import SnapshotStore, State
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
    remember_names,
)
from extender.wire.names import (
    JsonNames,
    kept_names_json,
    names_filter_reply,
    names_priorities_reply,
)

log = logging.getLogger(__name__)

VERBS = ("filter", "prioritize", "preempt")

#: Dropped candidates named in the preempt log line; the rest are counted (a 10 MB request
#: whose candidates were all dropped wrote one 10 MB line).
LOGGED_DROPS = 10

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


#: Pod kinds whose whole-snapshot assessment is kept per state. A backlog is a few workloads at
#: a time (kube-scheduler pops pods of one ReplicaSet together); 16 covers several tiers and
#: shapes interleaved, at about 30 arrays of 5,000 floats (~1 MB) each.
ASSESSMENTS_KEPT = 16
#: Candidate lists at least this share of the snapshot's nodes are assessed over the whole
#: snapshot on first sight: the whole costs little more than the part, and prioritize (and the
#: next pod of the same kind) then gathers from it. Smaller lists are assessed alone until their
#: kind comes back.
WHOLE_SHARE = 0.25


class Assessments:
    """Whole-snapshot assessments by pod kind, for the state they were made on.

    A decision depends on the pod only through its kind (bypass, tier, estimate): filter and
    prioritize for one pod, and every replica of a workload, share one assessment while the
    snapshot and policy stay the same and no sample changes freshness. Only the request path
    touches this, from the loop or the worker thread that decides large requests: a lock makes
    each lookup one step.
    """

    def __init__(self) -> None:
        self._state: State | None = None
        self._kept: dict[tuple[object, ...], Assessment] = {}
        self._seen: set[tuple[object, ...]] = set()
        self._lock = threading.Lock()  # large requests are decided in a worker thread

    def get(self, state: State, pod: PodInfo, candidates: int, now: float) -> Assessment | None:
        with self._lock:
            return self._get(state, pod, candidates, now)

    def _get(self, state: State, pod: PodInfo, candidates: int, now: float) -> Assessment | None:
        snap, rules = state.snapshot, state.policy.rules
        if state is not self._state:
            self._state, self._kept, self._seen = state, {}, set()
        bypass, tier, estimate = pod_class(pod, rules, snap)
        key = (bypass, None if tier is None else tier.name, estimate, headroom_key(pod, tier, snap))
        got = self._kept.get(key)
        if got is not None and got.valid_from <= now < got.valid_until:
            return got
        if key not in self._seen and candidates < WHOLE_SHARE * len(snap.names):
            self._seen.add(key)
            return None
        whole = assess_all(pod, snap, rules, now)
        if len(self._kept) >= ASSESSMENTS_KEPT:
            self._kept.pop(next(iter(self._kept)))
        self._kept[key] = whole
        return whole


@dataclass(frozen=True, slots=True)
class _LastFilter:
    """What the latest names-only filter call answered, for the prioritize call that follows:
    kube-scheduler sends it the same pod and exactly the names filter kept, in that order."""

    state: State
    pod: PodInfo
    """The very PodInfo decided (the wire hands back the same object for the same bytes)."""
    names_json: bytes
    """The kept names as the reply's NodeNames array."""
    columns: IndexArray
    """Their snapshot columns, in the same order."""
    whole: Assessment | None
    """The whole-snapshot assessment filter gathered from, if any: prioritize gathers from it
    too while it is valid, instead of finding it again by the pod's kind."""


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
        self._approvals_lock = threading.Lock()
        self.assessments = Assessments()
        """Whole-snapshot assessments by pod kind (read by tests to see what was reused)."""
        self._last_filter: _LastFilter | None = None

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

    def _decide(self, verb: str, args: FilterArgs) -> tuple[State, Evaluation, Assessment | None]:
        state = self.store.current
        now = self.clock()
        snap, rules = state.snapshot, state.policy.rules
        whole = None
        candidates = args.candidates
        if args.full_nodes is None:  # names only: the snapshot's columns are the nodes
            last = self._last_filter
            # The prioritize call for the pod filter just judged, on the same state: the
            # columns are known already (a byte comparison instead of a lookup), and so is
            # the assessment to gather from while it stays valid.
            if (
                verb == "prioritize"
                and last is not None
                and last.state is state
                and last.pod is args.pod
                and last.names_json == args.names_json
            ):
                candidates = Candidates(candidates.names, columns=last.columns)
                whole = last.whole
            else:  # thousands of names: found from the request's bytes, not one by one
                columns = state.names.lookup_json(args.names_json, candidates.names)
                if columns is not None:
                    candidates = Candidates(candidates.names, columns=columns)
            if whole is None or not whole.valid_from <= now < whole.valid_until:
                whole = self.assessments.get(state, args.pod, len(candidates.names), now)
        slim = self.decisions.slim(args.pod)
        evaluation = evaluate(args.pod, candidates, snap, rules, now, whole, keep_pod=slim.pod)
        # Names only: their JSON array's length bounds their characters (no pass over them).
        chars = len(args.names_json) if args.full_nodes is None else None
        self.decisions.add(verb, evaluation, now, slim, chars)
        return state, evaluation, whole

    def _filter(self, args: FilterArgs) -> bytes:
        state, evaluation, whole = self._decide("filter", args)
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
        if args.full_nodes is None:
            positions = np.flatnonzero(evaluation.keep)
            kept = kept_names_json(evaluation, state.names, positions)
            columns = evaluation.columns[positions]
            self._last_filter = _LastFilter(state, args.pod, kept, columns, whole)
            # The names for the prioritize call that follows, read from the bytes only if
            # it needs them (JsonNames), unless the kept names hold an escape.
            names = evaluation.names
            remember_names(
                kept,
                JsonNames.encoded(kept, len(positions)) or [names[i] for i in positions.tolist()],
            )
            return names_filter_reply(evaluation, state.names, kept)
        return encode_filter(args, evaluation)

    def _prioritize(self, args: FilterArgs) -> bytes:
        state, evaluation, _ = self._decide("prioritize", args)
        self.observer.observe_scores(evaluation)
        names = args.candidates.names
        return names_priorities_reply(evaluation.columns, names, evaluation.scores, state.names)

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
        # Large requests are decided in a worker thread while small ones run on the loop: the
        # approvals are read and extended under a lock, as one step per call.
        with self._approvals_lock:
            decision = decide_preemption(
                args.pod,
                args.candidates,
                state.snapshot,
                rules,
                now,
                self._recent_approvals(now, rules.preemption_window_s) if capped else None,
                rules.preemption_max_per_node,
            )
            if capped:
                self._approvals.extend((now, c.node) for c in decision.kept)
        self.decisions.add("preempt", decision.evaluation, now)
        self.observer.observe_preemption(decision, args.unknown_victims)
        if decision.dropped:
            shown = {
                n[:253]: r for n, r in itertools.islice(decision.dropped.items(), LOGGED_DROPS)
            }
            more = len(decision.dropped) - len(shown)
            log.info(
                "preempt: pod %s/%s: dropped %d of %d candidates: %s%s",
                args.pod.namespace,
                args.pod.name,
                len(decision.dropped),
                len(args.candidates),
                shown,
                f" (and {more} more)" if more else "",
            )
        return encode_preempt(decision.kept)

    def _unchanged(self, args: PreemptArgs) -> bytes:
        return encode_preempt(args.candidates)

"""The extender's own Prometheus metrics, registered on an injected registry.

Label values are bounded: verbs, outcomes, results, reasons and tier names (from the policy) are
small fixed sets; a node or pod name is never a label. Values that describe the current state
(snapshot age, stale nodes, fallback, cache sizes, the loaded policy) are computed at scrape time
by :class:`StateCollector`, so the request path does not maintain them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from extender import __version__
from extender.cluster.source import ClusterStatus
from extender.core import MAX_SCORE, REASON_STALE, Evaluation, PreemptionDecision
from extender.core.preempt import DROP_CAPPED, DROP_NO_VICTIMS
from extender.store import SnapshotStore

#: Millisecond-scale answers are the norm; the top bucket is kube-scheduler's default
#: ``httpTimeout`` (5 s), past which the caller has already given up.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

#: From a names-only call on a small cluster (~2 KB) to a full-node list of 5,000 nodes (~77 MB).
SIZE_BUCKETS = (1e3, 1e4, 1e5, 1e6, 1e7, 1e8)

#: How far back ``priority_extender_pods_waiting`` looks: kube-scheduler retries an
#: unschedulable pod at least every 5 minutes, so a pod still pending has a decision this recent.
WAITING_WINDOW_S = 300.0

OUTCOMES = (
    "ok",
    "bad_request",
    "too_large",
    "fail_open",
    "abandoned",
    "overloaded",
    "timeout",
)
"""``priority_extender_requests_total`` outcomes. ``timeout``: the body did not arrive within
the body deadline (a stalled caller, cut with 408 and its connection closed)."""
PREEMPT_RESULTS = (
    "kept",
    "dropped_live_load",
    "dropped_stale",
    "dropped_no_victims",
    "dropped_capped",
)
RELOAD_RESULTS = ("success", "error", "unchanged")


@dataclass
class ScoreCounts:
    """Scores given, per tier, as histogram buckets kept in numpy (one bincount per request;
    the sum is read off the buckets when scraped, since every score is a whole bucket)."""

    counts: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)

    def add(self, tier: str, scores: npt.NDArray[np.int64]) -> None:
        if not len(scores):
            return
        bins = np.bincount(scores, minlength=MAX_SCORE + 1)
        got = self.counts.get(tier)
        if got is None:
            self.counts[tier] = bins[: MAX_SCORE + 1].astype(np.int64)
        else:
            got += bins[: MAX_SCORE + 1]

    def total(self, tier: str) -> int:
        """The sum of every score given to ``tier``."""
        return int(self.counts[tier] @ _SCORE_VALUES)


_SCORE_VALUES = np.arange(MAX_SCORE + 1, dtype=np.int64)


class StateCollector(Collector):
    """Metrics read from the current state when Prometheus scrapes."""

    def __init__(
        self,
        store: SnapshotStore,
        scores: ScoreCounts,
        sizes: Callable[[], dict[str, int]],
        clock: Callable[[], float] = time.time,
        waiting: Callable[[float], dict[str, int]] | None = None,
    ) -> None:
        self.store = store
        self.scores = scores
        self.sizes = sizes
        self.clock = clock
        self.waiting = waiting

    def collect(self) -> Iterable[Metric]:
        state = self.store.current
        snap, rules = state.snapshot, state.policy.rules
        now = self.clock()

        age = GaugeMetricFamily(
            "priority_extender_source_age_seconds",
            "Seconds since the live metrics source last refreshed successfully "
            "(absent when there is no live source).",
        )
        if snap.source_ok_at is not None:
            age.add_metric([], now - snap.source_ok_at)
        yield age
        yield GaugeMetricFamily(
            "priority_extender_snapshot_age_seconds",
            "Seconds since the snapshot decisions read was built.",
            value=now - snap.built_at,
        )
        fallback = snap.source_ok_at is None or now - snap.source_ok_at > rules.max_age_s
        yield GaugeMetricFamily(
            "priority_extender_fallback_active",
            "1 while decisions use request-based utilization because live data is down or absent.",
            value=1 if fallback else 0,
        )
        data = GaugeMetricFamily(
            "priority_extender_nodes",
            "Nodes in the snapshot by the state of their live data (fresh: every signal fresh).",
            labels=["data"],
        )
        values = snap.values[:, :-1]
        with np.errstate(all="ignore"):
            fresh = ~np.isnan(values) & (np.abs(now - snap.sampled_at[:, :-1]) <= rules.max_age_s)
        missing = np.isnan(values).all(axis=0) if values.size else np.zeros(0, dtype=bool)
        all_fresh = fresh.all(axis=0) if values.size else np.zeros(0, dtype=bool)
        data.add_metric(["fresh"], float(np.count_nonzero(all_fresh)))
        data.add_metric(["missing"], float(np.count_nonzero(missing)))
        data.add_metric(["stale"], float(np.count_nonzero(~all_fresh & ~missing)))
        yield data

        sizes = GaugeMetricFamily(
            "priority_extender_cache_entries", "Entries held in memory, by cache.", labels=["cache"]
        )
        for name, size in sorted(self.sizes().items()):
            sizes.add_metric([name], float(size))
        yield sizes

        if self.waiting is not None:
            waiting = GaugeMetricFamily(
                "priority_extender_pods_waiting",
                "Distinct pods whose latest filter call, within the last "
                f"{WAITING_WINDOW_S:.0f} s, rejected every candidate node, by tier: pods a "
                "ceiling keeps pending (kube-scheduler retries them on cluster events and at "
                "least every 5 minutes).",
                labels=["tier"],
            )
            pending = self.waiting(now)
            for tier in sorted({t.name for t in (*rules.tiers, rules.default_tier)} | set(pending)):
                waiting.add_metric([tier], float(pending.get(tier, 0)))
            yield waiting

        info = InfoMetricFamily(
            "priority_extender_policy", "The policy in force: where it came from and its hash."
        )
        info.add_metric([], {"source": state.policy.source, "sha256": state.policy.sha256})
        yield info

        hist = HistogramMetricFamily(
            "priority_extender_scores",
            "Scores given by prioritize (0..10), per tier.",
            labels=["tier"],
        )
        for tier, counts in sorted(self.scores.counts.items()):
            cumulative = np.cumsum(counts).tolist()
            buckets = [(str(float(s)), float(c)) for s, c in enumerate(cumulative)]
            buckets.append(("+Inf", float(cumulative[-1])))
            hist.add_metric([tier], buckets, float(self.scores.total(tier)))
        yield hist


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.scores = ScoreCounts()
        self.requests = Counter(
            "priority_extender_requests",
            "Extender calls from kube-scheduler, by verb and outcome.",
            ["verb", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "priority_extender_request_duration_seconds",
            "Time from the request body being read to the reply being built, by verb.",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_bytes = Histogram(
            "priority_extender_request_size_bytes",
            "Size of request bodies, by verb.",
            ["verb"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.rejections = Counter(
            "priority_extender_filter_rejections",
            "Nodes rejected by filter, by reason kind and tier.",
            ["reason", "tier"],
            registry=registry,
        )
        self.floor_applied = Counter(
            "priority_extender_floor_applied",
            "Filter calls where every candidate was rejected and the tier's floor kept some, "
            "by tier.",
            ["tier"],
            registry=registry,
        )
        self.all_rejected = Counter(
            "priority_extender_all_rejected",
            "Filter calls where every candidate was rejected and the pod waits, by tier.",
            ["tier"],
            registry=registry,
        )
        self.observed_rejections = Counter(
            "priority_extender_observed_rejections",
            "Nodes a tier in shadow mode (observe) would have rejected, by reason kind and tier.",
            ["reason", "tier"],
            registry=registry,
        )
        self._rejection_children: dict[tuple[bool, str, str], Counter] = {}
        self.preempt_candidates = Counter(
            "priority_extender_preempt_candidates",
            "Preemption candidate nodes offered by kube-scheduler, by what the extender did.",
            ["result"],
            registry=registry,
        )
        self.preempt_unknown_victims = Counter(
            "priority_extender_preempt_unknown_victims",
            "Victims named by UID that the pod cache did not know (usage not subtracted).",
            registry=registry,
        )
        self.reloads = Counter(
            "priority_extender_policy_reloads",
            "Policy reload attempts by result; on error the last good policy stays in force.",
            ["result"],
            registry=registry,
        )
        self.last_reload = Gauge(
            "priority_extender_policy_last_success_timestamp_seconds",
            "When the policy in force was loaded.",
            registry=registry,
        )
        self.reload_failing = Gauge(
            "priority_extender_policy_reload_failing",
            "1 while the policy file on disk is invalid (the last good policy is in force).",
            registry=registry,
        )
        self.build_info = Info(
            "priority_extender_build",
            "Version of the running extender.",
            registry=registry,
        )
        self.build_info.info({"version": __version__})
        for verb in ("filter", "prioritize", "preempt"):
            for outcome in OUTCOMES:
                self.requests.labels(verb, outcome)
        for result in PREEMPT_RESULTS:
            self.preempt_candidates.labels(result)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)

    def observe_state(
        self,
        store: SnapshotStore,
        sizes: Callable[[], dict[str, int]],
        clock: Callable[[], float] = time.time,
        waiting: Callable[[float], dict[str, int]] | None = None,
    ) -> None:
        """Register the scrape-time collector over ``store``; ``waiting(now)`` counts, by tier,
        the pods whose latest filter decision rejected every candidate."""
        self.registry.register(StateCollector(store, self.scores, sizes, clock, waiting))

    def observe_filter(self, evaluation: Evaluation) -> None:
        keep = evaluation.verdict_keep
        if evaluation.tier is None or keep.all():
            return
        tier = evaluation.tier.name
        # Rejected nodes carry a reason code: -1 stale, positive for live load (0 is kept).
        codes = evaluation.reason_codes[~keep]
        stale = int(np.count_nonzero(codes == -1))
        live = len(codes) - stale
        if len(codes) == len(keep):
            if not evaluation.observed:
                self.all_rejected.labels(tier).inc()
        elif evaluation.floor_applied():
            self.floor_applied.labels(tier).inc()
        if live:
            self._rejected(evaluation.observed, "live_load", tier).inc(live)
        if stale:
            self._rejected(evaluation.observed, "stale", tier).inc(stale)

    def _rejected(self, observed: bool, kind: str, tier: str) -> Counter:
        """The rejections counter's child for these labels, looked up once (``labels()``
        checks and locks on every call: a few microseconds per filter call)."""
        key = (observed, kind, tier)
        child = self._rejection_children.get(key)
        if child is None:
            counter = self.observed_rejections if observed else self.rejections
            child = self._rejection_children[key] = counter.labels(kind, tier)
        return child

    def observe_scores(self, evaluation: Evaluation) -> None:
        tier = "(bypass)" if evaluation.tier is None else evaluation.tier.name
        self.scores.add(tier, evaluation.scores)

    def observe_preemption(self, decision: PreemptionDecision, unknown_victims: int) -> None:
        m = self.preempt_candidates
        m.labels("kept").inc(len(decision.kept))
        for reason in decision.dropped.values():
            m.labels(_drop_kind(reason)).inc()
        if unknown_victims:
            self.preempt_unknown_victims.inc(unknown_victims)


def _drop_kind(reason: str) -> str:
    """A bounded metric label for a drop reason (which embeds tier and signal names)."""
    if reason == DROP_NO_VICTIMS:
        return "dropped_no_victims"
    if reason == DROP_CAPPED:
        return "dropped_capped"
    if reason == REASON_STALE:
        return "dropped_stale"
    return "dropped_live_load"


class ClusterCollector(Collector):
    """The Kubernetes API cache's health, read from its status at scrape time."""

    def __init__(
        self, status: Callable[[], ClusterStatus], clock: Callable[[], float] = time.time
    ) -> None:
        self.status = status
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        st = self.status()
        age = GaugeMetricFamily(
            "priority_extender_cluster_cache_age_seconds",
            "Seconds since the Kubernetes API cache was last known current (absent before the "
            "first full sync); it grows while a watch is broken and the cache serves as is.",
        )
        synced_age = st.age(self.clock())
        if synced_age is not None:
            age.add_metric([], synced_age)
        yield age
        yield GaugeMetricFamily(
            "priority_extender_cluster_synced",
            "1 once nodes and pods have both been listed in full.",
            value=1 if st.nodes_synced and st.pods_synced else 0,
        )
        for name, help_text, value in (
            ("lists", "Full lists made (the first, and relists after 410 Gone).", st.lists),
            ("watches", "Watch streams opened.", st.watches),
            ("events", "Watch events applied.", st.events),
            ("stalls", "Watch streams that went silent and were restarted.", st.stalls),
            ("errors", "Failed API calls (each followed by a backoff).", st.errors),
        ):
            yield CounterMetricFamily(
                f"priority_extender_cluster_{name}", help_text, value=float(value)
            )

"""The extender's own Prometheus metrics, registered on an injected registry.

Label values are bounded: verbs and outcomes are fixed sets, never node or pod names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from extender import __version__

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

OUTCOMES = ("ok", "bad_request", "too_large", "fail_open")
PREEMPT_RESULTS = (
    "kept",
    "dropped_live_load",
    "dropped_stale",
    "dropped_no_victims",
    "dropped_capped",
)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
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
        self.fallback = Gauge(
            "priority_extender_fallback_active",
            "1 while decisions use request-based utilization because live data is down or absent.",
            registry=registry,
        )
        self.snapshot_nodes = Gauge(
            "priority_extender_snapshot_nodes",
            "Nodes known to the current snapshot.",
            registry=registry,
        )
        self.build_info = Info(
            "priority_extender_build",
            "Version of the running extender.",
            registry=registry,
        )
        self.build_info.info({"version": __version__})
        for result in PREEMPT_RESULTS:
            self.preempt_candidates.labels(result)
        for verb in ("filter", "prioritize", "preempt"):
            for outcome in OUTCOMES:
                self.requests.labels(verb, outcome)

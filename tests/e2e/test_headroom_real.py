"""Headroom by tier on the real kube-scheduler (issue 14): a node hot only with preemptible
batch load takes a high-priority pod whose tier's headroom leaves that load out
(``headroom: preemptible``), and rejects one whose tier counts it (``headroom: all``).

The per-pod usage comes the production way: cAdvisor-shaped series (container series, the pause
container and the cgroup aggregates) in a real Prometheus (backfilled with promtool by
``tests/e2e/cadvisor.py``), summed per pod by the shipped recording rules and read by the
extender's Prometheus source, matched to the pods of the real API server by namespace and name.
That Prometheus also holds the node's node_exporter series, so node and pod samples agree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests import prometheus_server as real
from tests.e2e import cadvisor, kube
from tests.e2e.extender_proc import e2e_policy
from tests.e2e.harness import Scenario
from tests.e2e.procs import http_get

GiB = 2**30
CORES = 8
HOT = 0.9
"""The node's cpu utilization: above both tiers' 0.85 ceiling below."""
BATCH_PODS = 4
BATCH_CORES = 1.0
"""Each batch pod's measured usage: 4 of the node's 8 cores (0.5) are preemptible batch load,
so a tier that leaves it out sees 0.4 (+ the pod's own 250m / 8)."""
CEILING = 0.85


def _policy(url: str) -> dict[str, Any]:
    """config/policy.yaml reading ``url`` with per-pod usage on; system-critical counts all
    usage (headroom all), production leaves out what it could preempt (headroom preemptible).
    Same ceilings, no floors, so only the headroom differs."""
    doc = e2e_policy(url)
    doc["metrics"]["prometheus"]["pods"] = {"enabled": True}
    for tier in doc["tiers"]:
        if tier["name"] in ("system-critical", "production"):
            tier["filter"] = {"cpu": CEILING, "memory": 0.9}
            tier["floor"] = {"keep": 0}
            tier["headroom"] = "all" if tier["name"] == "system-critical" else "preemptible"
    return doc


def _hot_cpu(sc: Scenario, node: str) -> float:
    samples = sc.s.ext.snapshot()["nodes"].get(node, {}).get("samples", {})
    value = (samples.get("cpu") or {}).get("value")
    return -1.0 if value is None else float(value)


def _pod_metrics(sc: Scenario) -> str:
    """The extender's per-pod usage metrics, for a failure message."""
    _, body = http_get(sc.s.ext.admin_url + "/metrics")
    lines = body.decode(errors="replace").splitlines()
    return "\n".join(line for line in lines if line.startswith("priority_extender_pod_usage"))


def _cpu_refreshes(sc: Scenario) -> tuple[float, float]:
    """(per-pod cpu answers read ok, cpu samples that matched no pod) so far."""
    status, body = http_get(sc.s.ext.admin_url + "/metrics")
    assert status == 200, status

    def value(name: str, labels: str) -> float:
        found = re.search(rb"%s\{%s\} ([0-9.e+]+)" % (name.encode(), labels.encode()), body)
        return float(found.group(1)) if found else -1.0

    return (
        value(
            "priority_extender_pod_usage_queries_total",
            'resource="cpu",result="ok",source="prometheus"',
        ),
        value(
            "priority_extender_pod_usage_unknown_samples_total",
            'resource="cpu",source="prometheus"',
        ),
    )


def _pod_table_size(sc: Scenario) -> float:
    status, body = http_get(sc.s.ext.admin_url + "/metrics")
    assert status == 200, status
    found = re.search(rb'priority_extender_pod_usage_pods\{source="prometheus"\} ([0-9.e+]+)', body)
    return float(found.group(1)) if found else -1.0


def test_a_high_priority_pod_uses_preemptible_load_only_when_its_tier_says_so(
    scenario: Scenario, tmp_path: Path
) -> None:
    sc = scenario
    hot = sc.node("hot", HOT, cores=CORES, memory_gib=32)
    batch = [
        sc.pod(f"batch-{i}", "batch", cpu="100m", memory="128Mi", node_name=hot)
        for i in range(BATCH_PODS)
    ]
    loads = [
        cadvisor.PodLoad(sc.namespace, name, (("main", BATCH_CORES, 1 * GiB),)) for name in batch
    ]
    node = real.NodeLoad(hot, busy=(HOT,) * CORES, mem_total=32 * GiB, mem_available=22.4 * GiB)
    with cadvisor.running_prometheus(tmp_path, loads, [node]) as prometheus:
        sc.s.ensure(_policy(prometheus.url))
        kube.wait_for(
            "the extender to read the hot node and its batch pods' usage",
            lambda: _pod_table_size(sc) >= BATCH_PODS and abs(_hot_cpu(sc, hot) - HOT) < 0.01,
            lambda: (
                f"pods in the table: {_pod_table_size(sc)}; hot cpu: {_hot_cpu(sc, hot)}\n"
                + _pod_metrics(sc)
                + f"\nprometheus: {prometheus.query(cadvisor.POD_RULES[0])}"
                + f"\npods: {sc.describe(batch)}"
            ),
            60.0,
        )
        # A table of the 4 pods may hold only their memory: a cpu answer read before the cache
        # listed them matched none (counted unknown), and kube-scheduler does not retry a pod
        # the extender rejected for 5 minutes. Wait for a cpu answer that matched all of them.
        seen = [_cpu_refreshes(sc)]

        def cpu_matched() -> bool:
            now = _cpu_refreshes(sc)
            ok = now[0] > seen[-1][0] and now[1] == seen[-1][1]
            seen.append(now)
            return ok

        kube.wait_for(
            "a per-pod cpu answer that matched every batch pod",
            cpu_matched,
            lambda: f"(cpu answers ok, unknown cpu samples) over time: {seen[-5:]}",
            60.0,
        )
        counted = sc.pod("critical-1", "critical", cpu="250m", memory="256Mi")
        left_out = sc.pod("production-1", "production", cpu="250m", memory="256Mi")

        # production: 0.9 - 0.5 of preemptible batch + 250m / 8 = 0.43 <= 0.85: it lands.
        try:
            bound = sc.wait_bound([left_out])
        except AssertionError as exc:  # say what the extender saw (this failed once in ~6)
            decisions = sc.s.ext.decisions(f"{sc.namespace}/{left_out}")
            raise AssertionError(
                f"{exc}\nthe extender's decisions for {left_out}: {json.dumps(decisions)[:4000]}"
                f"\npods in the table: {_pod_table_size(sc)}\n{_pod_metrics(sc)}"
                f"\nprometheus: {prometheus.query(cadvisor.POD_RULES[0])}"
            ) from None
        assert bound == {left_out: hot}
        # system-critical counts the batch load: 0.9 + 0.03 > 0.85, and nowhere else to go.
        ((reason, message),) = sc.wait_unschedulable([counted]).values()
        assert reason == "Unschedulable"
        assert "cpu load above system-critical tier ceiling" in message, message
        assert sc.bindings([counted]) == {counted: None}
        # No batch pod was preempted for either of them.
        assert sc.evicted() == []
        assert set(sc.bindings(batch).values()) == {hot}

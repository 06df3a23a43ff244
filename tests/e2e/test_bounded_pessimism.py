"""Bounded pessimism on the real kube-scheduler (issue 19): a rolling update, and pods bound
during a metrics outage counted once the source returns.

Both conditions left pods Unschedulable on nodes far below their tier's ceiling before: the
rollout because the old pods' usage stays in ``rate(...[2m])`` while every new pod counts at its
full requests; the outage because pods bound while Prometheus was down were counted again as
"just placed" on top of samples that already held them.
"""

from __future__ import annotations

import time

from tests.e2e.harness import (
    FRESH_S,
    OUTAGE_MAX_AGE_S,
    Scenario,
    source_age,
    stop_prometheus_until_fallback,
    wait_until,
)


def test_a_rolling_update_is_never_stranded(scenario: Scenario) -> None:
    """Ten nodes at 45% cpu, each with two old production pods (their usage in the samples).
    All twenty are replaced at once: two new 1-core pods per 4-core node project 0.45 + 0.5,
    above production's 0.85, on every node while the old usage is still in the samples (as soon
    as the extender has seen one new pod bound per node: how many it sees before the burst is
    decided depends on the watch's timing). The floor keeps the rollout moving; by ground truth
    (the old usage, no new usage yet) every node stays below the ceiling, and no new pod may be
    left Unschedulable."""
    sc = scenario
    nodes = sc.create_nodes(
        [(f"n{i:02d}", {"cpu": 0.45, "memory": 0.30, "cores": 4, "memory_gib": 16}) for i in range(10)]
    )  # fmt: skip
    old = sc.create_pods(
        [
            (f"web-v1-{i:02d}-{k}", "production", {"cpu": "1", "memory": "1Gi", "node_name": node})
            for i, node in enumerate(nodes)
            for k in range(2)
        ]
    )
    sc.wait_extender_sees(requested_cpu=dict.fromkeys(nodes, 2.0))
    for name in old:  # the old version goes, its usage stays in the samples for a while
        sc.core.delete_namespaced_pod(name, sc.namespace, grace_period_seconds=0)
    new = sc.create_pods(
        [(f"web-v2-{i:02d}", "production", {"cpu": "1", "memory": "1Gi"}) for i in range(20)]
    )
    sc.wait_settled(new)
    pending = {n: sc.unschedulable(n) for n, node in sc.bindings(new).items() if not node}
    assert not pending, "\n".join(f"{n}: {why}" for n, why in pending.items())
    assert sc.above_ceiling(new, sc.s.policy()) == []


def test_after_an_outage_nothing_is_rejected_everywhere(scenario: Scenario) -> None:
    """Four 8-core nodes at 25% cpu whose load follows the pods bound on them. Two 1-core
    standard pods per node are bound during an outage (by requests), so the nodes really are at
    50% when Prometheus returns, here without its storage (a Prometheus pod without a volume):
    every series starts again. Then batch pods (ceiling 0.60, no floor) arrive.

    Before: the cpu rule (1 - rate(idle)) read every restarted series as nearly 100% busy, and
    the pods bound during the outage were counted again as just placed (sample + 0.25 + 0.0625):
    batch was rejected on every node. Now the evidence rule takes the rise since those pods'
    baseline (the last sample before the outage) as their usage, so a node's projection is about
    its true load plus the incoming pod, under the ceiling on the nodes with two pods or fewer."""
    sc = scenario
    sc.s.ensure(policy=sc.s.policy(maxAge=f"{OUTAGE_MAX_AGE_S:g}s"))
    nodes = [sc.node(f"n{i}", 0.25, cores=8, memory_gib=32, follow=True) for i in range(4)]
    sc.wait_extender_sees()

    prom = sc.s.prometheus
    try:
        stop_prometheus_until_fallback(sc)
        during = sc.create_pods(
            [(f"during-{i}", "standard", {"cpu": "1", "memory": "1Gi"}) for i in range(8)]
        )
        placed = sc.wait_bound(during)
        assert set(placed.values()) <= set(nodes)
    finally:
        prom.start(fresh=True)

    wait_until(
        "the extender to read Prometheus again",
        lambda: source_age(sc.s.ext.snapshot()) < FRESH_S,
        lambda: str(sc.s.ext.snapshot().get("sourceOkAt")),
    )
    # A restarted series needs two scrapes before the rules give it a value (until then a node
    # is "missing", and batch, onStale: reject, would wait for a retry). Whatever the first
    # values read, the rise since the pods' baselines is what counts as their usage.
    returned = time.time()

    def sampled_again() -> bool:
        entries = sc.s.ext.snapshot()["nodes"]
        return all(
            entries.get(n, {}).get("samples", {}).get("cpu", {}).get("timestamp", 0) > returned
            for n in nodes
        )

    wait_until("every node to have a sample again", sampled_again, lambda: "")
    after = sc.create_pods(
        [(f"after-{i}", "batch", {"cpu": "500m", "memory": "512Mi"}) for i in range(4)]
    )
    sc.wait_settled(after)
    pending = {n: sc.unschedulable(n) for n, node in sc.bindings(after).items() if not node}
    assert not pending, "\n".join(f"{n}: {why}" for n, why in pending.items())
    for name in after:
        filters = [d for d in sc.s.ext.decisions(f"{sc.namespace}/{name}") if d["verb"] == "filter"]
        assert filters, name
        assert all(d["ranking"] and not d["fallback"] for d in filters), filters
    assert sc.above_ceiling(after, sc.s.policy()) == []

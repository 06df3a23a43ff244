"""Nodes hot by live load but empty by requests: avoided by the tiers whose ceiling they exceed,
used by the tiers whose ceiling they do not (test 1 of issue 18)."""

from __future__ import annotations

from tests.e2e.harness import Scenario

HOT = 0.78
"""Above the batch (0.60) and standard (0.75) cpu ceilings of config/policy.yaml, below
production (0.85) and system-critical (0.97), with room for the small pods placed on it."""
COOL = 0.10


def test_hot_nodes_are_avoided_by_low_tiers_and_used_by_high_ones(scenario: Scenario) -> None:
    sc = scenario
    # The hot nodes are empty by requests and have room for 110 pods: kube-scheduler alone
    # scores them best (least allocated). The cool ones hold two pods each.
    hot = [sc.node(f"hot-{i}", HOT, cores=16, memory_gib=64) for i in (1, 2)]
    cool = [sc.node(f"cool-{i}", COOL, cores=16, memory_gib=64, pods=2) for i in (1, 2)]
    sc.wait_extender_sees()

    low = sc.create_pods(
        [(f"batch-{i}", "batch", {"cpu": "1", "memory": "256Mi"}) for i in (1, 2)]
        + [(f"standard-{i}", "standard", {"cpu": "1", "memory": "256Mi"}) for i in (1, 2)]
    )
    placed = sc.wait_bound(low)
    assert set(placed.values()) <= set(cool), placed  # never on a hot node
    assert sorted(placed.values()) == sorted(cool * 2)  # the cool nodes are now full

    # One more batch pod: the cool nodes are full by pod count, the hot ones too hot for batch.
    sc.pod("batch-extra", "batch", cpu="1", memory="256Mi")
    ((reason, message),) = sc.wait_unschedulable(["batch-extra"]).values()
    assert reason == "Unschedulable"
    assert "2 Too many pods" in message, message
    assert "2 cpu load above batch tier ceiling" in message, message

    # Production and critical pods may use the hot nodes, and must: nothing else has room.
    before = sc.s.cp.scheduler_metrics()
    high = sc.create_pods(
        [(f"production-{i}", "production", {"cpu": "250m"}) for i in (1, 2)]
        + [("critical-1", "critical", {"cpu": "250m"})]
    )
    placed_high = sc.wait_bound(high)
    assert set(placed_high.values()) <= set(hot), placed_high
    assert sc.bindings(["batch-extra"]) == {"batch-extra": None}
    assert sc.above_ceiling(low + high, sc.s.policy()) == []
    # kube-scheduler's own account: three more pods scheduled, each attempt timed.
    after = sc.s.cp.scheduler_metrics()
    assert after.attempts.get("scheduled", 0) >= before.attempts.get("scheduled", 0) + 3
    assert after.attempts.get("unschedulable", 0) >= 1
    assert after.duration_count >= before.duration_count + 3

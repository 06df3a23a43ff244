"""Prometheus stopped in the middle (test 5 of issue 18): once the samples are older than the
policy's ``maxAge`` the extender falls back to request-based scoring, so production and standard
pods keep being scheduled; it uses live data again once Prometheus is back on the same port and
storage, and no pod is left pending: batch pods (``onStale: reject``), which may wait for data
while the source is down, are scheduled once it is back.

A hot node (cpu 0.90, above the production and batch ceilings) is by far the emptiest by requests,
so a pod lands there only when the live data is not used.
"""

from __future__ import annotations

from tests.e2e.harness import (
    FRESH_S,
    OUTAGE_MAX_AGE_S,
    Scenario,
    source_age,
    stop_prometheus_until_fallback,
    wait_until,
)


def test_prometheus_outage_falls_back_to_requests_and_recovers(scenario: Scenario) -> None:
    sc = scenario
    policy = sc.s.policy(maxAge=f"{OUTAGE_MAX_AGE_S:g}s")
    sc.s.ensure(policy=policy)
    hot = sc.node("hot", 0.90, cores=64, memory_gib=256)
    cool = [sc.node(f"cool-{i}", 0.10, cores=16) for i in (1, 2)]
    sc.wait_extender_sees()

    before = sc.wait_bound(sc.create_pods([(f"before-{i}", "production", {}) for i in range(2)]))
    assert set(before.values()) <= set(cool), before

    prom = sc.s.prometheus
    try:
        stop_prometheus_until_fallback(sc)
        during_names = sc.create_pods(
            [(f"during-{i}", "production", {}) for i in range(3)] + [("during-std", "standard", {})]
        )
        sc.pod("during-batch", "batch")
        during = sc.wait_bound(during_names)  # none stuck pending
        for name in during_names:
            decisions = sc.s.ext.decisions(f"{sc.namespace}/{name}")
            assert decisions, name
            assert all(d["fallback"] for d in decisions), decisions
        assert hot in during.values(), during  # request-based: the emptiest node wins
        sc.wait_settled(["during-batch"])  # bound by requests, or waiting for data
    finally:
        prom.start()

    wait_until(
        "the extender to read Prometheus again",
        lambda: source_age(sc.s.ext.snapshot()) < FRESH_S,
        lambda: str(sc.s.ext.snapshot().get("sourceOkAt")),
    )
    sc.wait_extender_sees()
    # A pod rejected by an extender is retried on the next cluster event (or after 5 minutes):
    # a label change on a node is one.
    sc.touch_node(cool[0])
    sc.wait_bound(["during-batch"])
    after = sc.wait_bound([sc.pod("after", "production")])
    assert after["after"] in cool, after
    assert not any(d["fallback"] for d in sc.s.ext.decisions(f"{sc.namespace}/after"))

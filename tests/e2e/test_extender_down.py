"""The extender killed (test 6 of issue 18): with ``ignorable: false`` pods wait, saying why, and
are scheduled once it is back (after a cluster event: kube-scheduler v1.28 retries a pod that
failed with an error on the next cluster event, or after 5 minutes); with ``ignorable: true`` pods
are scheduled without it, and load awareness returns with it.

Both use a hot node (cpu 0.90, above the batch ceiling) that is by far the emptiest by requests,
so that where a batch pod lands shows whether the extender took part.
"""

from __future__ import annotations

from tests.e2e.harness import Scenario


def _nodes(sc: Scenario) -> tuple[str, str]:
    hot = sc.node("hot", 0.90, cores=64, memory_gib=256)
    cool = sc.node("cool", 0.10, cores=16)
    sc.wait_extender_sees()
    return hot, cool


def test_not_ignorable_pods_wait_for_the_extender_then_schedule(scenario: Scenario) -> None:
    sc = scenario
    _hot, cool = _nodes(sc)
    sc.s.ext.kill()
    names = sc.create_pods([(f"waits-{i}", "batch", {}) for i in range(2)])
    conditions = sc.wait_unschedulable(names, reason="SchedulerError")
    for _reason, message in conditions.values():
        assert f"127.0.0.1:{sc.s.ext.port}/filter" in message, message
        assert "connection refused" in message, message
    assert any("connection refused" in m for m in sc.events(names[0])), sc.events()
    assert sc.bindings(names) == dict.fromkeys(names)

    assert sc.s.ext.policy is not None
    sc.s.ext.start(sc.s.ext.policy)  # same ports: kube-scheduler's configuration still holds
    sc.wait_extender_sees()
    sc.touch_node(cool)  # the cluster event that makes kube-scheduler retry them now
    placed = sc.wait_bound(names)
    assert set(placed.values()) == {cool}, placed  # placed with the extender: not on the hot node
    assert all(sc.s.ext.decisions(f"{sc.namespace}/{n}") for n in names)


def test_ignorable_pods_schedule_without_the_extender(scenario: Scenario) -> None:
    sc = scenario
    sc.s.ensure(scheduler=sc.s.scheduler_config(ignorable=True))
    hot, cool = _nodes(sc)
    sc.s.ext.kill()
    names = sc.create_pods([(f"without-{i}", "batch", {}) for i in range(2)])
    placed = sc.wait_bound(names)
    # Without the extender nothing stops batch pods from going to the hot node, which
    # kube-scheduler alone scores best (64 free cores against 16).
    assert hot in placed.values(), placed

    assert sc.s.ext.policy is not None
    sc.s.ext.start(sc.s.ext.policy)
    sc.wait_extender_sees()
    placed_after = sc.wait_bound([sc.pod("with-extender", "batch")])
    assert placed_after == {"with-extender": cool}
    assert sc.s.ext.decisions(f"{sc.namespace}/with-extender")

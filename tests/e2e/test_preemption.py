"""Preemption with ``preemptVerb`` (test 4 of issue 18): a production pod that needs room on nodes
full by requests gets it, with no eviction on a node it cannot use (hot by live load: the
extender reports those as unresolvable, since kube-scheduler's preemption dry run does not call
extenders) and no more evictions than it needs (one)."""

from __future__ import annotations

from tests.e2e.harness import Scenario

HOT, COOL = 0.90, 0.20
"""Hot is above the production ceiling (0.85); cool is far below it."""


def test_preemption_evicts_one_pod_on_a_node_the_preemptor_can_use(scenario: Scenario) -> None:
    sc = scenario
    # Two pods fit on each node (by pod count): every node is full with two batch pods.
    hot = [sc.node(f"hot-{i}", HOT, cores=16, pods=2) for i in (1, 2)]
    cool = [sc.node(f"cool-{i}", COOL, cores=16, pods=2) for i in (1, 2)]
    sc.create_pods(
        [
            (f"victim-{node.rsplit('-', 2)[-2]}{node[-1]}-{k}", "batch", {"node_name": node})
            for node in hot + cool
            for k in range(2)
        ]
    )
    sc.wait_extender_sees(requested_cpu=dict.fromkeys(hot + cool, 0.2))

    placed = sc.wait_bound([sc.pod("preemptor", "production")])
    node = placed["preemptor"]
    assert node in cool, placed
    evicted = sc.evicted()
    assert len(evicted) == 1, evicted
    assert evicted[0][1] == node, evicted
    assert not any(n in hot for _, n in evicted), evicted
    remaining = sc.bindings()
    assert sum(1 for v in remaining.values() if v in hot) == 4, remaining  # untouched
    assert sc.above_ceiling(["preemptor"], sc.s.policy()) == []

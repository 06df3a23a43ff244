"""The double count (test 3 of issue 18): pods bound seconds earlier whose load the samples already
hold must not make any critical or production pod Unschedulable.

Forty nodes each run two pods that were bound a few seconds ago (created with ``spec.nodeName``,
as a pod is once bound) and whose usage is already in the node's live samples: the emulated load
is the base plus those pods from the first sample on. Before bounded pessimism (issue 19) the
extender added the two pods again as "just placed" (inside the 150 s estimation window),
projected every node above every tier's ceiling, and kube-scheduler left every pod Unschedulable
("0/40 nodes are available: 40 cpu+memory load above production tier ceiling"). By ground truth
every node has room for them under each tier's ceiling. No sample history tells the extender that
these pods are already in the samples (it never saw the nodes without them), so what keeps the
critical and production pods placeable is their tiers' floor, on the least loaded nodes.
"""

from __future__ import annotations

from tests.e2e.harness import Scenario

NODES = 40
CORES = 4
MEMORY_GIB = 16
BASE_CPU, BASE_MEMORY = 0.05, 0.10
"""The nodes' own load (system daemons) before the pods."""
PREPLACED = 2
"""Pods per node, bound seconds ago: 1 core and 4 GiB each, so they add 0.5 cpu and 0.5 memory."""


def test_pods_already_in_the_samples_do_not_block_critical_or_production(
    scenario: Scenario,
) -> None:
    sc = scenario
    cpu = BASE_CPU + PREPLACED * 1.0 / CORES  # 0.55: the pods' usage is in the samples
    memory = BASE_MEMORY + PREPLACED * 4.0 / MEMORY_GIB  # 0.60
    nodes = sc.create_nodes(
        [
            (
                f"n{i:02d}",
                {
                    "cpu": cpu,
                    "memory": memory,
                    "cores": CORES,
                    "memory_gib": MEMORY_GIB,
                    "follow": True,
                },
            )
            for i in range(NODES)
        ]
    )
    sc.create_pods(
        [
            (f"running-{i:02d}-{k}", "standard", {"cpu": "1", "memory": "4Gi", "node_name": node})
            for i, node in enumerate(nodes)
            for k in range(PREPLACED)
        ]
    )
    sc.wait_extender_sees(requested_cpu={n: float(PREPLACED) for n in nodes})

    # Room by ground truth: 0.55 + 0.125 cpu and 0.60 + 0.0625 memory, far under production's
    # 0.85/0.90 and critical's 0.97/0.97 ceilings; and by requests (2 of 4 cores in use).
    incoming = sc.create_pods(
        [(f"critical-{i}", "critical", {"cpu": "500m", "memory": "1Gi"}) for i in range(5)]
        + [(f"production-{i}", "production", {"cpu": "500m", "memory": "1Gi"}) for i in range(5)]
    )
    sc.wait_settled(incoming)
    pending = {n: sc.unschedulable(n) for n, node in sc.bindings(incoming).items() if not node}
    assert not pending, (
        "critical/production pods left Unschedulable:\n"
        + "\n".join(f"{name}: {got}" for name, got in pending.items())
        + "\nFailedScheduling events:\n"
        + "\n".join(sorted(set(sc.events())))
    )
    assert sc.above_ceiling(incoming, sc.s.policy()) == []

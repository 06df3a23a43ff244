"""A burst of 40 pods created within a fraction of a second spreads while metrics lag (test 2 of
issue 18).

Eight 16-core nodes: one nearly idle by live load (cpu 0.05), seven at 0.30, all empty by requests.
Each bound pod raises its node's emulated load by its request (1 core = 1/16), which the
``rate(...[2m])`` samples take in only over two minutes: during the burst the samples stay where
they were, and only the extender's count of just-placed pods tells it that the idle node is
filling up. Without that count the idle node would keep its lead on the extender's 0..10 scale
(8 against 7: 50 points at weight 5) for the whole burst, against about 3 points per pod that the
in-tree request-based scores take off it, and would take pods until full (16 cores).

The criterion, the idle node's "share": filling the nodes' projected cpu to one common level with
40 cores, the idle node takes 8.5 pods and each other 4.5. The extender's score is an integer, one
step per 0.1 of utilization (1.6 pods here), and within a step the in-tree scores decide: so the
idle node may exceed its share by one step, rounded up to 2 pods, and no more. The busy nodes
are only required to get pods at all (spreading), and ground truth is not asserted here: the
extender learns of a binding through its watch, published at most every 0.1 s, and kube-scheduler
decides all 40 pods within about 0.15 s, so most of the burst is decided against a view that
lacks the pods just bound; pods then fall among the seven tied busy nodes by the in-tree scores,
and up to 12 were seen on one busy node (cpu 0.99 by ground truth, above the production ceiling).
That is an extender limitation reported with issue 18, not a property this test can pin down.
"""

from __future__ import annotations

import math
from collections import Counter

from tests.e2e.harness import Scenario

CORES = 16
IDLE, BUSY = 0.05, 0.30
PODS = 40
SLACK = 2
"""One extender score step in pods (0.1 × 16 cores = 1.6), rounded up; see the module doc."""


def shares(levels: list[float], pods: int, per_pod: float) -> list[float]:
    """Pods per node that fill every node's projected load to one level (water filling)."""
    active = sorted(levels)
    for k in range(len(active), 0, -1):
        level = (pods * per_pod + sum(active[:k])) / k
        if level >= active[k - 1]:
            return [max(0.0, (level - u) / per_pod) for u in levels]
    return [0.0] * len(levels)


def test_a_burst_spreads_while_metrics_lag(scenario: Scenario) -> None:
    sc = scenario
    levels = [IDLE] + [BUSY] * 7
    nodes = [
        sc.node(f"n{i}", u, cores=CORES, memory_gib=64, follow=True) for i, u in enumerate(levels)
    ]
    sc.wait_extender_sees()

    names = sc.create_pods(
        [(f"burst-{i:02d}", "production", {"cpu": "1", "memory": "256Mi"}) for i in range(PODS)]
    )
    placed = sc.wait_bound(names)
    counts = Counter(placed.values())
    share = shares(levels, PODS, 1.0 / CORES)[0]
    idle = counts[nodes[0]]
    assert idle <= math.ceil(share) + SLACK, f"{idle} pods piled onto the idle node: {dict(counts)}"
    assert all(counts[n] >= 1 for n in nodes), f"not spread over every node: {dict(counts)}"

"""The shipped recording rules read a node that has just joined at its true utilization.

A node's counters start when it joins; for two minutes its series are younger than the rules'
``rate(...[2m])`` window, and ``rate()`` reads low by the share of the window they cover. The cpu
rule is a ratio of two such rates (idle over all), which cancels that share, where
``1 - rate(idle)`` read a new node as nearly 100% busy for two minutes: every tier's ceiling
would have rejected it right after a scale-up.
"""

from __future__ import annotations

import time

from tests.e2e.harness import Scenario

#: Bound on waiting for the rule's first value for a new series (two 1 s scrapes and a 1 s
#: evaluation, on a loaded machine).
FIRST_VALUE_S = 30.0


def test_a_node_that_has_just_joined_reads_its_true_cpu(scenario: Scenario) -> None:
    name = f"e2e-{scenario.id}-fresh"
    scenario.s.exporter.add(name, 0.20, 0.30, cores=4, backfill=False)
    prometheus = scenario.s.prometheus
    deadline = time.monotonic() + FIRST_VALUE_S
    readings: list[float] = []
    while time.monotonic() < deadline and len(readings) < 5:
        value = prometheus.values().get(name)
        if value is not None:
            readings.append(value)
        time.sleep(1.0)
    assert readings, "the rule never produced a value for the new node"
    # Within a series' first seconds, a plain 1 - rate(idle) read about 1 - 0.8 * d / 120:
    # 0.95 or more. The ratio reads the node's 20% from its first value on.
    assert all(abs(v - 0.20) < 0.03 for v in readings), readings

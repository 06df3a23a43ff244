"""From the raw record of a run to the numbers a platform team compares.

Per tier (pods running at the start are not counted: the scheduler under test did not place
them):

* **above ceiling**: the share of placements after which the node's *true* utilization (with the
  new pod's own usage) is above the cpu or memory ceiling of the pod's policy tier. The baseline
  is judged against the first policy's ceilings.
* **util p50/p95**: true cpu utilization of the chosen node, with the pod, at placement.
* **wait p50/p95**: submission to binding; pods still pending at the end count until the end,
  pods given up count until they gave up.
* **evicted**: pods of the tier preempted; **preemptions**: successful preemptions by the tier.
* **herding**: the most pods of the tier bound to one node within one metrics interval (the
  extender's refresh interval, aligned to its refreshes).
* **time on hot nodes**: the share of the tier's pod-time (pods running at the start included)
  spent on nodes above 90% true cpu: what the tier's pods feel.

Per run: node-seconds above 90% true cpu, the mean true cpu utilization, herding over all tiers.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from extender.simulate.engine import DONE, GAVE_UP, PENDING, PREEMPTED, RUNNING, RunResult


@dataclass(frozen=True, slots=True)
class TierRow:
    tier: str
    policy_tier: str
    submitted: int
    placed: int
    pending: int
    gave_up: int
    above_ceiling: float | None
    util_p50: float | None
    util_p95: float | None
    wait_p50: float | None
    wait_p95: float | None
    evicted: int
    preemptions: int
    herding: int
    hot_time: float | None


@dataclass(frozen=True, slots=True)
class RunSummary:
    label: str
    submitted: int
    placed: int
    pending: int
    gave_up: int
    running_at_start: int
    hot_node_seconds: float
    mean_util: float | None
    herding: int
    preemptions: int
    evicted: int
    cycles: int
    extender_calls: int
    tiers: tuple[TierRow, ...]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.array(values), q, method="linear"))


def _herding(times: list[float], nodes: list[int], interval: float, phase: float) -> int:
    if not times:
        return 0
    counts = Counter(
        (node, math.floor((t - phase) / interval)) for t, node in zip(times, nodes, strict=True)
    )
    return max(counts.values())


def summarize(run: RunResult) -> RunSummary:
    wl = run.workload
    end = wl.duration
    phase = wl.phases[2] * run.interval
    rows = []
    for k, tier in enumerate(run.tiers):
        outs = [o for o in run.outcomes if o[0] == k and not o[4]]
        placements = [p for p in run.placements if p.tier == k]
        waits = []
        for _, state, submit, bound, _ in outs:
            if state in (RUNNING, DONE, PREEMPTED):
                waits.append(bound - submit)
            elif state == PENDING:
                waits.append(end - submit)
            elif state == GAVE_UP and tier.patience is not None:
                waits.append(tier.patience)
        rows.append(
            TierRow(
                tier=tier.name,
                policy_tier=run.policy_tiers[k],
                submitted=len(outs),
                placed=sum(1 for o in outs if o[1] in (RUNNING, DONE, PREEMPTED)),
                pending=sum(1 for o in outs if o[1] == PENDING),
                gave_up=sum(1 for o in outs if o[1] == GAVE_UP),
                above_ceiling=(
                    sum(p.above_ceiling for p in placements) / len(placements)
                    if placements
                    else None
                ),
                util_p50=_pct([p.cpu for p in placements], 50),
                util_p95=_pct([p.cpu for p in placements], 95),
                wait_p50=_pct(waits, 50),
                wait_p95=_pct(waits, 95),
                evicted=run.evicted[k],
                preemptions=run.preemptions[k],
                herding=_herding(
                    [p.time for p in placements], [p.node for p in placements], run.interval, phase
                ),
                hot_time=(
                    run.hot_pod_seconds[k] / run.pod_seconds[k] if run.pod_seconds[k] > 0 else None
                ),
            )
        )
    heat = np.array(run.heat, dtype=np.float64) if run.heat else np.zeros((0, 0))
    mean_util = float(np.nanmean(heat)) if heat.size and not np.isnan(heat).all() else None
    return RunSummary(
        label=run.label,
        submitted=sum(r.submitted for r in rows),
        placed=sum(r.placed for r in rows),
        pending=sum(r.pending for r in rows),
        gave_up=sum(r.gave_up for r in rows),
        running_at_start=sum(1 for o in run.outcomes if o[4]),
        hot_node_seconds=run.hot_node_seconds,
        mean_util=mean_util,
        herding=_herding(
            [p.time for p in run.placements], [p.node for p in run.placements], run.interval, phase
        ),
        preemptions=sum(run.preemptions),
        evicted=sum(run.evicted),
        cycles=run.cycles,
        extender_calls=sum(run.extender_calls.values()),
        tiers=tuple(rows),
    )


# --- rendering ----------------------------------------------------------------------------------


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 60:
        return f"{x:.1f}s"
    if x < 3600:
        return f"{x / 60:.1f}m"
    return f"{x / 3600:.1f}h"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    right = [i > 1 for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "| " + " | ".join(out) + " |"

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if r else (":" + "-" * (w + 1))
            for w, r in zip(widths, right, strict=True)
        )
        + "|"
    )
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def summary_table(runs: list[RunSummary]) -> str:
    header = [
        "run",
        "placed",
        "pending at end",
        "gave up",
        "node-s cpu>90%",
        "mean cpu",
        "herding",
        "preemptions",
        "evicted",
        "extender calls",
    ]
    rows = [
        [
            r.label,
            "",
            str(r.pending),
            str(r.gave_up),
            f"{r.hot_node_seconds:,.0f}",
            _share(r.mean_util),
            str(r.herding),
            str(r.preemptions),
            str(r.evicted),
            str(r.extender_calls),
        ]
        for r in runs
    ]
    for row, r in zip(rows, runs, strict=True):
        row[1] = f"{r.placed}/{r.submitted}"
    return _table(header, rows)


def tier_table(runs: list[RunSummary]) -> str:
    header = [
        "tier (policy tier)",
        "run",
        "placed",
        "pending",
        "gave up",
        "above ceiling",
        "util p50",
        "util p95",
        "wait p50",
        "wait p95",
        "evicted",
        "preempted others",
        "herding",
        "time on hot nodes",
    ]
    rows = []
    if not runs:
        return ""
    for k in range(len(runs[0].tiers)):
        for r in runs:
            t = r.tiers[k]
            rows.append(
                [
                    f"{t.tier} ({t.policy_tier})",
                    r.label,
                    f"{t.placed}/{t.submitted}",
                    str(t.pending),
                    str(t.gave_up),
                    _share(t.above_ceiling),
                    _share(t.util_p50),
                    _share(t.util_p95),
                    _secs(t.wait_p50),
                    _secs(t.wait_p95),
                    str(t.evicted),
                    str(t.preemptions),
                    str(t.herding),
                    _share(t.hot_time),
                ]
            )
    return _table(header, rows)

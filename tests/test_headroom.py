"""Headroom by tier (issue 14): which usage of lower-priority pods counts against a tier's
ceilings, per mode, at exact values; and with no per-pod data, exactly today's decisions."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from extender.core.decide import Candidates, assess_all, evaluate
from extender.core.model import Sample, build_snapshot
from extender.core.podusage import PodUsage, empty_pod_usage
from extender.core.rules import Headroom, Rules, Tier, TierMatch
from extender.policy import PolicyError, load_text
from tests.builders import NOW, GiB, node, pod, rules, tier
from tests.pod_builders import Row, table

MODES = tuple(Headroom)
HOT = {"cpu": 0.85, "memory": 0.90}
"""Node n1: 4 cores, 16 GiB; 3.4 cores and 14.4 GiB in use."""


def critical(headroom: Headroom) -> Tier:
    return replace(
        tier(
            "critical", ceilings={"cpu": 0.80, "memory": 0.95}, match=TierMatch(min_priority=1000)
        ),
        headroom=headroom,
    )


def policy(headroom: Headroom) -> Rules:
    return rules(critical(headroom), tier("rest"))


def snap(
    usage: PodUsage | None,
    r: Rules,
    loads: dict[str, dict[str, float]] | None = None,
    ok_at: float | None = NOW,
    now: float = NOW,
):
    loads = loads or {"n1": HOT}
    samples = {n: {s: Sample(v, now - 5.0) for s, v in per.items()} for n, per in loads.items()}
    return build_snapshot(
        [node(n) for n in loads],
        samples,
        [],
        signals=("cpu", "memory"),
        source_ok_at=now,
        window_s=150.0,
        now=now,
        lag_s=30.0,
        pod_usage=usage,
        pod_usage_ok_at=ok_at,
        max_age_s=r.max_age_s,
        headroom_modes=[t.headroom for t in r.tiers if t.headroom is not Headroom.ALL],
    )


BATCH = [
    # 1.6 cores used of 0.4 requested, 4 GiB of 4 GiB: preemptible batch load.
    Row("b1", "n1", cpu=1.6, memory=4 * GiB, priority=0, req_cpu=0.4, req_memory=4 * GiB),
    # Production at the critical pod's own priority: never left out.
    Row("p1", "n1", cpu=1.0, memory=2 * GiB, priority=1000, req_cpu=0.5, req_memory=2 * GiB),
]
CRIT = pod("crit", priority=1000, cpu=0.2, memory=0.25 * GiB)  # 0.05 cpu, ~0.016 memory


def decide(headroom: Headroom, p=CRIT, rows=BATCH, **kw):
    r = policy(headroom)
    s = snap(table(rows), r, **kw)
    return evaluate(p, Candidates(["n1"]), s, r, NOW)


@pytest.mark.parametrize(
    ("mode", "cpu", "memory", "kept"),
    [
        # all: 0.85 + 0.05 = 0.90 > 0.80.
        (Headroom.ALL, 0.90, 0.90 + 0.25 / 16, False),
        # requests: b1's cpu above its request (1.2 cores = 0.30) is left out; memory in full.
        (Headroom.REQUESTS, 0.60, 0.90 + 0.25 / 16, True),
        # preemptible: all of b1 (1.6 cores = 0.40, 4 GiB = 0.25), memory included.
        (Headroom.PREEMPTIBLE, 0.50, 0.65 + 0.25 / 16, True),
    ],
)
def test_each_mode_leaves_out_what_it_says(mode, cpu, memory, kept):
    ev = decide(mode)
    assert ev.projection[:, 0] == pytest.approx([cpu, memory])
    assert bool(ev.keep[0]) is kept
    # Scores read the load as it is: the same in every mode.
    assert ev.usage[:, 0] == pytest.approx([0.90, 0.90 + 0.25 / 16])
    detail = ev.explain(0)
    assert detail["headroom"]["mode"] == mode.value


def test_preemptible_leaves_out_nothing_for_a_pod_that_never_preempts():
    never = replace(CRIT, preemption_policy="Never")
    ev = decide(Headroom.PREEMPTIBLE, p=never)
    assert ev.projection[0, 0] == pytest.approx(0.90)
    assert not ev.keep[0]


@pytest.mark.parametrize("mode", MODES)
def test_pods_of_the_same_priority_are_never_left_out(mode):
    peer = pod("peer", priority=0, cpu=0.2, memory=0.25 * GiB)
    r = rules(replace(tier("all", ceilings={"cpu": 0.8}), headroom=mode))
    ev = evaluate(peer, Candidates(["n1"]), snap(table(BATCH), r), r, NOW)
    assert ev.projection[0, 0] == pytest.approx(0.90)


@pytest.mark.parametrize(
    ("priority", "left_out_cores"),
    [
        (0, 0.0),  # nothing below priority 0
        (50, 1.0),  # the priority-0 pod
        (100, 1.0),  # the priority-100 pod is not below 100
        (500, 1.5),  # priority 0 and 100
        (10**9, 3.5),  # everything (1000 included)
    ],
)
def test_the_priority_boundary_counts_only_strictly_lower_pods(priority, left_out_cores):
    rows = [
        Row("a", "n1", cpu=1.0, memory=0.0, priority=0),
        Row("b", "n1", cpu=0.5, memory=0.0, priority=100),
        Row("c", "n1", cpu=2.0, memory=0.0, priority=1000),
    ]
    r = rules(replace(tier("any"), headroom=Headroom.PREEMPTIBLE))
    s = snap(table(rows), r, loads={"n1": {"cpu": 0.9, "memory": 0.1}})
    p = pod("x", priority=priority, cpu=0.0, memory=0.0)
    ev = evaluate(p, Candidates(["n1"]), s, r, NOW)
    assert ev.credit[0, 0] == pytest.approx(left_out_cores)
    assert ev.projection[0, 0] == pytest.approx(max(0.0, 0.9 - left_out_cores / 4))


def test_credit_never_takes_the_load_below_zero():
    rows = [Row("a", "n1", cpu=8.0, memory=64 * GiB, priority=0)]  # more than the sample shows
    ev = decide(Headroom.PREEMPTIBLE, rows=rows)
    assert ev.projection[:, 0] == pytest.approx([0.05, 0.25 / 16])


@pytest.mark.parametrize(
    ("why", "kw", "rows"),
    [
        ("stale pod samples", {}, [replace(BATCH[0], age=61.0)]),
        ("per-pod source down", {"ok_at": NOW - 61.0}, BATCH),
        ("pod on a node the snapshot does not know", {}, [replace(BATCH[0], node="elsewhere")]),
    ],
)
def test_bad_or_missing_per_pod_data_leaves_nothing_out(why, kw, rows):
    ev = decide(Headroom.PREEMPTIBLE, rows=rows, **kw)
    assert ev.projection[0, 0] == pytest.approx(0.90), why
    assert not ev.keep[0]


def _arrays(ev):
    return (
        ev.keep,
        ev.reason_codes,
        ev.scores,
        np.nan_to_num(ev.projection, nan=-1),
        np.nan_to_num(ev.usage, nan=-1),
        ev.placed,
    )


LOADS = {
    "cold": {"cpu": 0.2, "memory": 0.3},
    "warm": {"cpu": 0.7, "memory": 0.6},
    "hot": {"cpu": 0.95, "memory": 0.9},
    "half": {"cpu": 0.5},
}


@pytest.mark.parametrize(("mode", "priority"), list(itertools.product(MODES, (0, 1000, 10**9))))
def test_without_per_pod_data_every_decision_is_todays(mode, priority):
    """An empty table, no table and a table for a source that is down give today's arrays."""
    r = policy(mode)
    today = rules(critical(Headroom.ALL), tier("rest"))
    p = pod("x", priority=priority)
    cands = Candidates([*LOADS, "unknown"])
    base = evaluate(p, cands, snap(None, today, loads=LOADS), today, NOW)
    for usage, ok_at in ((None, NOW), (empty_pod_usage(), NOW), (table(BATCH), NOW - 600)):
        s = snap(usage, r, loads=LOADS, ok_at=ok_at)
        assert s.pods is None
        got = evaluate(p, cands, s, r, NOW)
        for a, b in zip(_arrays(base), _arrays(got), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_the_whole_snapshot_assessment_gathers_the_same_decision(mode):
    r = policy(mode)
    loads = {"n1": HOT, "n2": {"cpu": 0.6, "memory": 0.5}}
    rows = [*BATCH, replace(BATCH[0], uid="b2", node="n2")]
    s = snap(table(rows), r, loads=loads)
    cands = Candidates(["n2", "n1", "nope"])
    alone = evaluate(CRIT, cands, s, r, NOW)
    gathered = evaluate(CRIT, cands, s, r, NOW, assess_all(CRIT, s, r, NOW))
    for a, b in zip(_arrays(alone), _arrays(gathered), strict=True):
        np.testing.assert_array_equal(a, b)


POLICY = """
apiVersion: priority-extender.io/v1alpha1
kind: PriorityPolicy
metrics:
  source: prometheus
  prometheus:
    pods: {enabled: true}
tiers:
- name: critical
  match: {minPriority: 1000}
  filter: {cpu: 0.8}
  headroom: HEADROOM
- name: rest
estimation:
  siblings: {percentile: 75, minPods: 2}
"""


@pytest.mark.parametrize("mode", MODES)
def test_the_policy_compiles_headroom_and_siblings(mode):
    loaded = load_text(POLICY.replace("HEADROOM", mode.value), "p.yaml")
    r = loaded.rules
    assert r.tiers[0].headroom is mode
    assert r.tiers[1].headroom is Headroom.ALL
    assert r.estimation.siblings is not None
    assert (r.estimation.siblings.percentile, r.estimation.siblings.min_pods) == (75.0, 2)
    assert loaded.document.metrics.prometheus.pods.cpuQuery == "pod:container_cpu_usage:rate"


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("headroom: HEADROOM", "headroom: some", "p.yaml:12:13: tiers[0].headroom"),
        ("{percentile: 75, minPods: 2}", "{percentile: 0, minPods: 2}", "estimation.siblings"),
        ("{percentile: 75, minPods: 2}", "{percentile: 75, minPods: 0}", "minPods"),
        ("pods: {enabled: true}", "pods: {enabled: true, cpuQuery: ' '}", "cpuQuery"),
    ],
)
def test_bad_settings_are_errors_with_positions(old, new, where):
    text = POLICY.replace(old, new).replace("HEADROOM", "all")
    with pytest.raises(PolicyError) as err:
        load_text(text, "p.yaml")
    message = str(err.value)
    assert "p.yaml:" in message
    assert where in message


def test_explain_lists_the_pods_behind_a_nodes_load_by_tier():
    from extender.core.explain import load_pods, summarize

    r = policy(Headroom.PREEMPTIBLE)
    rows = [*BATCH, Row("b2", "n1", cpu=0.3, memory=1 * GiB, priority=0, req_cpu=0.1)]
    s = snap(table(rows), r)
    groups = load_pods(s, "n1", r)
    assert groups is not None
    by_tier = {g["tier"]: g for g in groups}
    assert set(by_tier) == {"critical", "rest"}
    assert by_tier["rest"]["pods"] == 2
    assert by_tier["rest"]["usage"]["cpu"] == pytest.approx(1.9)
    assert [p["uid"] for p in by_tier["rest"]["top"]] == ["b1", "b2"]  # most cpu first
    assert by_tier["critical"]["top"][0]["uid"] == "p1"
    assert load_pods(snap(None, r), "n1", r) is None  # no per-pod data: nothing to list
    ev = evaluate(CRIT, Candidates(["n1"]), s, r, NOW)
    detail = summarize(ev, snap=s, rules=r)["details"][0]
    assert detail["loadPods"] == groups
    assert detail["headroom"] == {"mode": "preemptible", "leftOut": {"cpu": 1.9, "memory": 5 * GiB}}


def test_a_refreshed_table_of_the_same_pods_reuses_the_node_columns_and_rows():
    """The per-pod source hands back the same uid and node tuples while the pods stay the
    same; indexing then keeps the previous table's columns and row map (its values are new)."""
    from dataclasses import replace

    from extender.core.pods import index_pods

    names = ("n0", "n1")
    index = {n: i for i, n in enumerate(names)}
    first = table([Row("a", "n0", cpu=1.0, memory=GiB), Row("b", "n1", cpu=2.0, memory=GiB)])
    t1 = index_pods(first, names, index, now=NOW, max_age_s=60.0)
    later = replace(first, usage=first.usage * 2)  # same pods, new samples
    t2 = index_pods(later, names, index, now=NOW, max_age_s=60.0, previous=t1)
    assert t2.cols is t1.cols
    assert t2.rows is t1.rows
    assert t2.usage is later
    moved = replace(later, nodes=("n1", "n1"))  # a pod on another node: computed afresh
    t3 = index_pods(moved, names, index, now=NOW, max_age_s=60.0, previous=t2)
    assert t3.cols.tolist() == [1, 1]
    assert t3.rows == t1.rows

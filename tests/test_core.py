"""Table-driven tests of the decision core: tiers, projection, filter, strategies, stale data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from extender.core import (
    Bypass,
    Candidates,
    ContainerResources,
    EstimateFrom,
    Estimation,
    LabelSelector,
    OnStale,
    PlacedPod,
    PodInfo,
    SelectorOp,
    SelectorRequirement,
    Strategy,
    TierMatch,
    build_snapshot,
    estimate_pod,
    evaluate,
    tier_for,
)
from extender.core.decide import REASON_STALE
from tests.builders import NOW, GiB, node, pod, rules, snapshot, tier


def run(p, snap, r, names=None, now=NOW, allocatable=None):
    names = list(names if names is not None else snap.names)
    return evaluate(p, Candidates(names, allocatable), snap, r, now)


# --- tiers ---------------------------------------------------------------------------------------

CRITICAL = tier("critical", match=TierMatch(min_priority=1_000_000))
PROD = tier("prod", match=TierMatch(priority_class_names=frozenset({"prod-high", "prod"})))
TEAM = tier(
    "team",
    match=TierMatch(
        namespaces=frozenset({"team-a"}),
        pod_selector=LabelSelector(
            match_labels={"tier": "web"},
            expressions=(SelectorRequirement("canary", SelectorOp.DOES_NOT_EXIST),),
        ),
    ),
)
BATCH = tier("batch", match=TierMatch(max_priority=0))
STANDARD = tier("standard")


@pytest.mark.parametrize(
    ("priority", "klass", "namespace", "labels", "expected"),
    [
        (2_000_000_000, "system-cluster-critical", "kube-system", {}, "critical"),
        (1_000_000, "", "x", {}, "critical"),
        (999_999, "prod", "x", {}, "prod"),
        (1000, "prod-high", "x", {}, "prod"),
        (10, "", "team-a", {"tier": "web"}, "team"),
        (10, "", "team-a", {"tier": "web", "canary": "1"}, "standard"),
        (10, "", "team-b", {"tier": "web"}, "standard"),
        (0, "", "x", {}, "batch"),
        (-5, "best-effort", "x", {}, "batch"),
        (1, "", "x", {}, "standard"),
    ],
)
def test_tier_first_match_wins(priority, klass, namespace, labels, expected):
    r = rules(CRITICAL, PROD, TEAM, BATCH, default=STANDARD)
    p = PodInfo(namespace, "p", priority=priority, priority_class_name=klass, labels=labels)
    assert tier_for(p, r).name == expected


@pytest.mark.parametrize(
    ("op", "values", "labels", "expected"),
    [
        (SelectorOp.IN, {"a", "b"}, {"k": "a"}, True),
        (SelectorOp.IN, {"a"}, {"k": "c"}, False),
        (SelectorOp.IN, {"a"}, {}, False),
        (SelectorOp.NOT_IN, {"a"}, {"k": "b"}, True),
        (SelectorOp.NOT_IN, {"a"}, {}, True),
        (SelectorOp.NOT_IN, {"a"}, {"k": "a"}, False),
        (SelectorOp.EXISTS, set(), {"k": ""}, True),
        (SelectorOp.EXISTS, set(), {}, False),
        (SelectorOp.DOES_NOT_EXIST, set(), {}, True),
        (SelectorOp.DOES_NOT_EXIST, set(), {"k": "x"}, False),
    ],
)
def test_label_selector_operators(op, values, labels, expected):
    sel = LabelSelector(expressions=(SelectorRequirement("k", op, frozenset(values)),))
    assert sel.matches(labels) is expected


# --- estimates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("containers", "init", "prefer", "factor", "expected"),
    [
        # requests preferred, scaled by the factor
        ([ContainerResources(0.5, 2.0, GiB, 2 * GiB)], [], EstimateFrom.REQUESTS, 1.5,
         (0.75, 1.5 * GiB)),
        # limits preferred
        ([ContainerResources(0.5, 2.0, GiB, 2 * GiB)], [], EstimateFrom.LIMITS, 1.0,
         (2.0, 2 * GiB)),
        # limits preferred but absent: requests x factor
        ([ContainerResources(0.5, None, GiB, None)], [], EstimateFrom.LIMITS, 2.0,
         (1.0, 2 * GiB)),
        # requests preferred but absent: limits
        ([ContainerResources(None, 1.0, None, GiB)], [], EstimateFrom.REQUESTS, 3.0,
         (1.0, GiB)),
        # nothing declared: defaults (0.1 core, 128 MiB), summed over containers
        ([ContainerResources(), ContainerResources()], [], EstimateFrom.REQUESTS, 1.0,
         (0.2, 256 * 2**20)),
        # a large init container dominates
        ([ContainerResources(0.5, None, GiB, None)], [ContainerResources(2.0, None, 3 * GiB)],
         EstimateFrom.REQUESTS, 1.0, (2.0, 3 * GiB)),
    ],
)  # fmt: skip
def test_estimate_pod(containers, init, prefer, factor, expected):
    p = PodInfo("ns", "p", containers=tuple(containers), init_containers=tuple(init))
    est = Estimation(prefer=prefer, requests_factor=factor, default_memory=128 * 2**20)
    assert estimate_pod(p, est) == pytest.approx(expected)


def test_estimate_adds_overhead():
    p = replace(pod(cpu=1.0, memory=GiB), overhead_cpu=0.25, overhead_memory=GiB / 2)
    assert estimate_pod(p, Estimation()) == pytest.approx((1.25, 1.5 * GiB))


# --- projection and filter -----------------------------------------------------------------------


def test_projection_adds_pod_estimate_over_allocatable():
    snap = snapshot({"a": (0.50, 0.25)})
    ev = run(pod(cpu=1.0, memory=2 * GiB), snap, rules(tier(ceilings={"cpu": 0.9})))
    # cpu: 0.50 + 1/4 ; memory: 0.25 + 2/16
    assert ev.projection[:, 0] == pytest.approx([0.75, 0.375])
    assert ev.keep.tolist() == [True]


@pytest.mark.parametrize(
    ("loads", "ceilings", "kept", "reason"),
    [
        ({"a": (0.40, 0.10)}, {"cpu": 0.6}, True, None),
        # 0.40 + 0.5/4 = 0.525 <= 0.55
        ({"a": (0.40, 0.10)}, {"cpu": 0.55}, True, None),
        ({"a": (0.40, 0.10)}, {"cpu": 0.5}, False, "cpu load above t tier ceiling"),
        ({"a": (0.10, 0.90)}, {"cpu": 0.5, "memory": 0.8}, False, "memory load above t tier ceiling"),
        ({"a": (0.90, 0.90)}, {"cpu": 0.5, "memory": 0.8}, False,
         "cpu+memory load above t tier ceiling"),
        # a signal without a ceiling never rejects
        ({"a": (0.99, 0.10)}, {"memory": 0.8}, True, None),
    ],
)  # fmt: skip
def test_filter_ceilings(loads, ceilings, kept, reason):
    ev = run(pod(cpu=0.5, memory=GiB / 4), snapshot(loads), rules(tier(ceilings=ceilings)))
    assert ev.keep.tolist() == [kept]
    assert ev.reason(0) == reason
    assert ev.failed() == ({} if kept else {"a": reason})


def test_just_placed_pods_count_until_metrics_see_them():
    nodes = [node("a"), node("b")]
    placements = [
        PlacedPod("a", cpu=1.0, memory=0, bound_at=NOW - 2),  # after the sample (NOW - 5)
        PlacedPod("b", cpu=1.0, memory=0, bound_at=NOW - 600),  # long ago, in the sample
        PlacedPod("zzz", cpu=1.0, memory=0, bound_at=NOW),  # unknown node: ignored
    ]
    snap = snapshot({"a": (0.3, 0.1), "b": (0.3, 0.1)}, nodes=nodes, placements=placements)
    ev = run(pod(cpu=0.0, memory=0.0), snap, rules(tier(ceilings={"cpu": 0.5})))
    assert ev.placed[0].tolist() == [1.0, 0.0]
    assert ev.projection[0].tolist() == pytest.approx([0.55, 0.3])
    assert ev.keep.tolist() == [False, True]


def test_just_placed_pods_fade_as_their_node_sample_ages_past_the_bind():
    """Bound 60 s before now, sampled 5 s before now: the sample is 55 s younger than the bind.
    With no lag and a 90 s window, 55/90 of the estimate is in it; with 30 s, all of it."""
    placements = [PlacedPod("a", cpu=1.0, memory=0, bound_at=NOW - 60)]
    snap = snapshot({"a": (0.3, 0.1)}, placements=placements, window_s=90)
    assert snap.placed[0, 0] == pytest.approx(1.0 - 55 / 90)
    snap = snapshot({"a": (0.3, 0.1)}, placements=placements, window_s=30)
    assert snap.placed[0, 0] == 0.0


def test_full_node_allocatable_overrides_snapshot():
    snap = snapshot({"a": (0.5, 0.1)})
    alloc = np.array([[2.0], [np.nan]])
    ev = run(pod(cpu=1.0, memory=0), snap, rules(tier()), allocatable=alloc)
    assert ev.projection[0, 0] == pytest.approx(1.0)  # 0.5 + 1/2, not 1/4
    assert ev.allocatable[1, 0] == 16 * GiB  # memory kept from the snapshot


def test_unknown_allocatable_projects_the_sample_alone():
    snap = snapshot({"a": (0.5, 0.1)}, nodes=[])
    ev = run(pod(cpu=1.0), snap, rules(tier(ceilings={"cpu": 0.6})))
    assert ev.projection[0, 0] == pytest.approx(0.5)
    assert ev.keep.tolist() == [True]


# --- stale and missing data ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_stale", "kept", "score"),
    [
        # allow: kept, scored from requests: (1 + 0.5) / 4 cpu, (4 GiB + 1 GiB) / 16 GiB memory
        (OnStale.ALLOW, True, round(((1 - 0.375) + (1 - 0.3125)) / 2 * 10)),
        (OnStale.NEUTRAL, True, 5),
        (OnStale.REJECT, False, None),
    ],
)
def test_on_stale(on_stale, kept, score):
    nodes = [node("old", req_cpu=1.0, req_memory=4 * GiB), node("fresh")]
    snap = snapshot({"old": (0.1, 0.1), "fresh": (0.1, 0.1)}, nodes=nodes)
    # make "old" stale: rebuild with its samples 120 s old
    old = snapshot({"old": (0.1, 0.1)}, nodes=nodes, age=120)
    snap = replace(
        snap,
        values=np.where(np.arange(3) == 0, old.values[:, [0, 0, 0]], snap.values),
        sampled_at=np.where(np.arange(3) == 0, old.sampled_at[:, [0, 0, 0]], snap.sampled_at),
    )
    r = rules(tier(on_stale=on_stale, ceilings={"cpu": 0.9}))
    ev = run(pod(cpu=0.5, memory=GiB), snap, r)
    assert not ev.fresh[:, 0].any()
    assert ev.fresh[:, 1].all()
    assert ev.keep.tolist() == [kept, True]
    if kept:
        assert ev.scores[0] == score
    else:
        assert ev.failed() == {"old": REASON_STALE}


def test_unknown_node_is_missing_data_not_an_error():
    snap = snapshot({"a": (0.1, 0.1)})
    ev = run(pod(), snap, rules(tier(on_stale=OnStale.ALLOW)), names=["a", "ghost"])
    assert ev.keep.tolist() == [True, True]
    assert ev.scores[1] == 5
    assert ev.explain(1)["known"] is False
    ev = run(pod(), snap, rules(tier(on_stale=OnStale.REJECT)), names=["a", "ghost"])
    assert ev.failed() == {"ghost": REASON_STALE}


def test_future_timestamps_beyond_max_age_are_not_fresh():
    snap = snapshot({"a": (0.1, 0.1)}, age=-3600)
    ev = run(pod(), snap, rules(tier(on_stale=OnStale.REJECT)))
    assert ev.keep.tolist() == [False]


def test_source_down_longer_than_max_age_falls_back_to_requests():
    nodes = [node("a", req_cpu=3.0, req_memory=GiB), node("b", req_cpu=0.5, req_memory=GiB)]
    # Live data says a is idle and b is hot, but it is 10 minutes old and the source is down.
    snap = snapshot(
        {"a": (0.05, 0.1), "b": (0.99, 0.99)}, nodes=nodes, age=600, source_ok_at=NOW - 600
    )
    r = rules(tier(ceilings={"cpu": 0.5}, on_stale=OnStale.ALLOW, weights={"cpu": 1}))
    ev = run(pod(cpu=0.5, memory=0), snap, r)
    assert ev.fallback
    assert ev.keep.tolist() == [True, True]  # no live filtering
    # requests: a (3 + .5)/4 = 0.875 -> 1.25 ; b (0.5 + .5)/4 = 0.25 -> 7.5
    assert ev.scores.tolist() == [1, 8]
    # A tier that never guesses waits for the source instead (and says why).
    r = rules(tier(ceilings={"cpu": 0.5}, on_stale=OnStale.REJECT, weights={"cpu": 1}))
    ev = run(pod(cpu=0.5, memory=0), snap, r)
    assert ev.keep.tolist() == [False, False]
    assert ev.failed() == {"a": REASON_STALE, "b": REASON_STALE}
    # ... unless there is no live source by design (metrics.source: none).
    r = replace(r, live_source=False)
    assert run(pod(cpu=0.5, memory=0), snap, r).keep.tolist() == [True, True]


def test_no_live_source_is_fallback():
    snap = snapshot({"a": (0.1, 0.1)}, source_ok_at=None)
    ev = run(pod(), snap, rules(tier(ceilings={"cpu": 0.01})))
    assert ev.fallback
    assert ev.keep.all()


# --- strategies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "cpu", "mem", "weights", "target", "expected"),
    [
        (Strategy.LEAST_LOADED, 0.2, 0.4, {"cpu": 1, "memory": 1}, 0.6, 7),  # (8 + 6) / 2
        (Strategy.LEAST_LOADED, 0.2, 0.4, {"cpu": 3, "memory": 1}, 0.6, 8),  # 7.5 -> 8
        (Strategy.LEAST_LOADED, 0.0, 0.0, {"cpu": 1}, 0.6, 10),
        (Strategy.LEAST_LOADED, 1.5, 0.0, {"cpu": 1}, 0.6, 0),  # clipped, never negative
        (Strategy.MOST_LOADED, 0.2, 0.4, {"cpu": 1, "memory": 1}, 0.6, 3),
        (Strategy.MOST_LOADED, 0.9, 0.9, {"cpu": 1}, 0.6, 9),
        (Strategy.TARGET_LOAD, 0.6, 0.0, {"cpu": 1}, 0.6, 10),  # at target: best
        (Strategy.TARGET_LOAD, 0.0, 0.0, {"cpu": 1}, 0.6, 6),  # idle: the target
        (Strategy.TARGET_LOAD, 0.3, 0.0, {"cpu": 1}, 0.6, 8),  # 0.4*0.3/0.6+0.6 = 0.8
        (Strategy.TARGET_LOAD, 0.8, 0.0, {"cpu": 1}, 0.6, 3),  # 0.6*0.2/0.4 = 0.3
        (Strategy.TARGET_LOAD, 1.0, 0.0, {"cpu": 1}, 0.6, 0),
        (Strategy.BALANCED, 0.5, 0.5, {"cpu": 1, "memory": 1}, 0.6, 10),
        (Strategy.BALANCED, 0.9, 0.1, {"cpu": 1, "memory": 1}, 0.6, 6),  # std 0.4
        (Strategy.BALANCED, 0.9, 0.1, {"cpu": 1}, 0.6, 5),  # one signal: neutral
    ],
)
def test_strategy_scores(strategy, cpu, mem, weights, target, expected):
    snap = snapshot({"a": (cpu, mem)})
    r = rules(tier(strategy=strategy, weights=weights, target=target))
    ev = run(pod(cpu=0, memory=0), snap, r)
    assert ev.scores.tolist() == [expected]
    assert ev.scores.dtype.kind == "i"


def test_least_loaded_spreads_and_most_loaded_packs():
    snap = snapshot({"idle": (0.1, 0.1), "mid": (0.5, 0.5), "busy": (0.8, 0.8)})
    spread = run(pod(cpu=0, memory=0), snap, rules(tier(strategy=Strategy.LEAST_LOADED)))
    pack = run(pod(cpu=0, memory=0), snap, rules(tier(strategy=Strategy.MOST_LOADED)))
    assert list(np.argsort(-spread.scores)) == [0, 1, 2]
    assert list(np.argsort(-pack.scores)) == [2, 1, 0]


# --- bypass and explanation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "reason"),
    [
        (replace(pod(), owner_kinds=("DaemonSet",), pinned_node="a"), "daemonset"),
        (replace(pod(), owner_kinds=("DaemonSet",)), None),  # claims an owner, not pinned
        (pod(namespace="kube-system"), "namespace"),
        (replace(pod(), labels={"app": "priority-extender"}), "selector"),
        (pod(), None),
    ],
)
def test_bypass(p, reason):
    r = rules(
        tier(ceilings={"cpu": 0.0001}),
        bypass=Bypass(
            daemonsets=True,
            namespaces=frozenset({"kube-system"}),
            pod_selector=LabelSelector(match_labels={"app": "priority-extender"}),
        ),
    )
    ev = run(p, snapshot({"a": (0.5, 0.5)}), r)
    assert ev.bypass == reason
    assert ev.keep.tolist() == [reason is not None]
    if reason:
        assert ev.scores.tolist() == [5]
        assert ev.tier is None


def test_explain_carries_every_input():
    placements = [PlacedPod("a", 0.4, 0, NOW - 1)]
    snap = snapshot({"a": (0.5, 0.25)}, placements=placements)
    r = rules(tier("batch", ceilings={"cpu": 0.6}, weights={"cpu": 2, "memory": 1}))
    ev = run(pod(cpu=0.4, memory=2 * GiB), snap, r)
    x = ev.explain(0)
    assert x["tier"] == "batch"
    assert x["kept"] is False
    assert x["reason"] == "cpu load above batch tier ceiling"
    assert x["justPlaced"]["cpu"] == 0.4
    assert x["podEstimate"] == {"cpu": 0.4, "memory": 2 * GiB}
    cpu = x["signals"]["cpu"]
    assert cpu == {
        "sample": 0.5,
        "ageSeconds": 5.0,
        "fresh": True,
        "projected": 0.7,
        "ceiling": 0.6,
        "usedForScore": 0.7,
        "weight": 2.0,
    }
    assert x["signals"]["memory"]["ceiling"] is None  # no ceiling
    assert x["score"] == int(ev.scores[0])


def test_snapshot_is_immutable():
    snap = build_snapshot([node("a")], {}, [], signals=("cpu",), source_ok_at=None, window_s=0,
                          now=NOW)  # fmt: skip
    with pytest.raises(ValueError, match="read-only"):
        snap.values[0, 0] = 1.0


def test_request_based_utilization_does_not_count_just_placed_pods_twice():
    # requested (2 cores) already includes the pod bound 1 s ago; only the incoming pod is added
    nodes = [node("a", req_cpu=2.0, req_memory=0.0)]
    placements = [PlacedPod("a", cpu=1.0, memory=0, bound_at=NOW - 1)]
    snap = snapshot({"a": (0.1, 0.1)}, nodes=nodes, placements=placements, source_ok_at=None)
    ev = run(pod(cpu=1.0, memory=0), snap, rules(tier(weights={"cpu": 1})))
    assert ev.fallback
    assert ev.usage[0, 0] == pytest.approx((2.0 + 1.0) / 4)  # not (2 + 1 + 1) / 4

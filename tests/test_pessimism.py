"""Bounded pessimism, at exact values: the fade of just-placed estimates, the evidence of a
risen sample, the floor of must-run tiers, shadow mode, and what the operator sees of each."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from extender.core import Candidates, PlacedPod, evaluate
from extender.core.model import unseen_usage, visible_fraction
from extender.policy import load_text
from extender.server.metrics import Metrics
from extender.store import SnapshotStore
from extender.verbs import Verbs
from tests.builders import NOW, Clock, GiB, node, pod, rules, snapshot, tier

LAG, WINDOW = 30.0, 150.0


@pytest.mark.parametrize(
    ("age", "visible"),
    [
        (-5.0, 0.0),  # bound after the sample: nothing of it is in there
        (math.nan, 0.0),  # no sample: nothing is known to be in it
        (0.0, 0.0),
        (30.0, 0.0),  # the lag: the usage has not reached the metrics yet
        (60.0, 0.25),  # then linearly over the rate window (120 s)
        (90.0, 0.5),
        (120.0, 0.75),
        (150.0, 1.0),
        (600.0, 1.0),
    ],
)
def test_the_estimate_fades_in_over_the_rate_window_after_the_lag(age, visible):
    assert visible_fraction(age, LAG, WINDOW) == pytest.approx(visible)


def test_unseen_usage_without_evidence_is_the_fade():
    # Two pods of 1 core on a 4-core node, sampled 60 s and 90 s after their binds.
    got = unseen_usage([1.0, 1.0], [NOW - 90, NOW - 60], [math.nan] * 2, NOW, 0.5, 4.0, LAG, WINDOW)
    assert got == pytest.approx(0.5 + 0.75)


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        # Baseline 0.20 as both pods were first seen; 2 cores estimated; the fade leaves
        # 1 + (1 - 10/120) = 1.9167 (bound 10 s and 40 s before the sample).
        (0.20, 1 + 11 / 12),  # no rise: the fade decides
        (0.45, 1.0),  # risen by 0.25 x 4 = 1 core: only 2 - 1 = 1 core is unseen
        (0.70, 0.0),  # risen by 2 cores: both pods are in the sample, nothing counted twice
        (0.90, 0.0),  # risen by more than the pods: never below zero
        (0.10, 1 + 11 / 12),  # fallen: no evidence (other load left), the fade decides
    ],
)
def test_evidence_counts_only_what_the_rise_does_not_show(sample, expected):
    got = unseen_usage(
        [1.0, 1.0], [NOW - 10, NOW - 40], [0.20, 0.20], NOW, sample, 4.0, LAG, WINDOW
    )
    assert got == pytest.approx(expected)


def test_pods_bound_before_the_first_baseline_keep_their_fade():
    # The first pod has no baseline (bound before the extender saw samples): fade only, 1.0.
    # The second: baseline 0.2, sample 0.45 -> 1 core risen, covers its whole 1-core estimate.
    got = unseen_usage(
        [1.0, 1.0], [NOW - 20, NOW - 10], [math.nan, 0.2], NOW, 0.45, 4.0, LAG, WINDOW
    )
    assert got == pytest.approx(1.0)


def test_the_store_stamps_a_baseline_when_a_pod_is_first_seen():
    text = POLICY.format(floor=0, mode="enforce")
    clock = Clock()
    store = SnapshotStore(load_text(text, "p.yaml"), clock=clock)
    store.set_nodes([node("a")])
    store.set_samples({"a": {"cpu": _s(0.2), "memory": _s(0.1)}}, NOW)
    store.set_placements([PlacedPod("a", 1.0, GiB, NOW - 1, "u1")])
    assert store.current.snapshot.placed[0, 0] == pytest.approx(1.0)  # bound after the sample
    clock.now = NOW + 20
    # 20 s later the sample shows the pod's core (0.2 -> 0.45 of 4): nothing is unseen.
    store.set_samples({"a": {"cpu": _s(0.45, NOW + 20), "memory": _s(0.1, NOW + 20)}}, NOW + 20)
    assert store.current.snapshot.placed[0, 0] == pytest.approx(0.0)
    # Without evidence the full estimate would still count (the lag has not passed).
    store.set_placements([PlacedPod("a", 1.0, GiB, NOW - 1, "")])
    assert store.current.snapshot.placed[0, 0] == pytest.approx(1.0)


def test_a_resized_node_takes_its_evidence_again_with_the_same_pods_and_samples():
    # Only the node's allocatable changed in this publication: the rise its sample shows is
    # worth more cores, so less of the pod is unseen. (The build redoes that node's column
    # though its pods and the samples are the very ones of the last build.)
    clock = Clock()
    store = SnapshotStore(load_text(POLICY.format(floor=0, mode="enforce"), "p.yaml"), clock)
    placed = [PlacedPod("a", 1.0, GiB, NOW - 1, "u1")]
    store.set_samples({"a": {"cpu": _s(0.2), "memory": _s(0.1)}}, NOW)
    store.set_cluster([node("a")], placed)  # baseline 0.2
    clock.now = NOW + 20
    store.set_samples({"a": {"cpu": _s(0.3, NOW + 20), "memory": _s(0.1, NOW + 20)}}, NOW + 20)
    store.set_cluster([node("a")], placed)
    assert store.current.snapshot.placed[0, 0] == pytest.approx(0.6)  # 0.1 of 4 cores risen
    store.set_cluster([node("a", cpu=8.0)], placed)
    assert store.current.snapshot.placed[0, 0] == pytest.approx(0.2)  # 0.1 of 8 cores


def test_a_pod_placed_again_after_it_left_is_stamped_again():
    clock = Clock()
    store = SnapshotStore(load_text(POLICY.format(floor=0, mode="enforce"), "p.yaml"), clock)
    placed = [PlacedPod("a", 1.0, GiB, NOW - 1, "u1")]
    store.set_samples({"a": {"cpu": _s(0.2), "memory": _s(0.1)}}, NOW)
    store.set_cluster([node("a")], placed)  # baseline 0.2
    clock.now = NOW + 20
    store.set_samples({"a": {"cpu": _s(0.45, NOW + 20), "memory": _s(0.1, NOW + 20)}}, NOW + 20)
    assert store.current.snapshot.placed[0, 0] == pytest.approx(0.0)  # risen by its core
    store.set_cluster([node("a")], [])  # gone (a relist will bring it back)
    store.set_cluster([node("a")], placed)
    # First seen again now: its baseline is today's sample, which shows nothing of it yet.
    assert store.current.snapshot.placed[0, 0] == pytest.approx(1.0)


# --- the floor ---------------------------------------------------------------------------------


def _hot_snapshot():
    # Every node is above a 0.5 cpu ceiling, by different margins.
    return snapshot({"a": (0.9, 0.1), "b": (0.6, 0.1), "c": (0.7, 0.1), "d": (0.55, 0.1)})


def test_without_a_floor_every_node_is_rejected():
    ev = evaluate(pod(cpu=0.0), Candidates(list("abcd")), _hot_snapshot(), _rules(0), NOW)
    assert ev.keep.tolist() == [False] * 4
    assert ev.rejected_everywhere()
    assert not ev.floor_applied()


def test_the_floor_keeps_the_least_over_their_ceilings():
    ev = evaluate(pod(cpu=0.0), Candidates(list("abcd")), _hot_snapshot(), _rules(2), NOW)
    assert ev.keep.tolist() == [False, True, False, True]  # d (+0.05), b (+0.10)
    assert ev.floor_applied()
    assert not ev.rejected_everywhere()
    assert ev.failed() == dict.fromkeys("ac", "cpu load above t tier ceiling")
    x = ev.explain(1)
    assert x["kept"]
    assert x["keptByFloor"]
    assert x["reason"] == "cpu load above t tier ceiling"  # why it would have been rejected


def test_the_floor_stays_out_while_some_node_passes():
    snap = snapshot({"a": (0.9, 0.1), "b": (0.3, 0.1)})
    ev = evaluate(pod(cpu=0.0), Candidates(["a", "b"]), snap, _rules(3), NOW)
    assert ev.keep.tolist() == [False, True]
    assert not ev.floor_applied()


def test_the_floor_puts_nodes_without_fresh_data_last():
    snap = snapshot({"a": (0.9, 0.1), "b": (None, None)})
    r = _rules(1, on_stale_reject=True)
    ev = evaluate(pod(cpu=0.0), Candidates(["b", "a"]), snap, r, NOW)
    assert ev.keep.tolist() == [False, True]


def _rules(keep: int, *, observe: bool = False, on_stale_reject: bool = False):
    from extender.core import OnStale

    return rules(
        tier(
            ceilings={"cpu": 0.5},
            floor_keep=keep,
            observe=observe,
            on_stale=OnStale.REJECT if on_stale_reject else OnStale.ALLOW,
        )
    )


# --- shadow mode -------------------------------------------------------------------------------


def test_observe_mode_keeps_every_node_with_neutral_scores_and_records_the_verdict():
    snap = snapshot({"a": (0.9, 0.1), "b": (0.3, 0.1)})
    ev = evaluate(pod(cpu=0.0), Candidates(["a", "b"]), snap, _rules(0, observe=True), NOW)
    assert ev.observed
    assert ev.keep.tolist() == [True, True]
    assert ev.scores.tolist() == [5, 5]
    assert ev.verdict_keep.tolist() == [False, True]
    assert ev.verdict_scores.tolist() == [5, 8]
    assert ev.failed() == {}
    assert ev.explain(0)["verdict"] == {"kept": False, "score": 5}


# --- what the operator sees --------------------------------------------------------------------

POLICY = """\
apiVersion: priority-extender.io/v1alpha1
kind: PriorityPolicy
metrics: {{source: static, maxAge: 60s}}
mode: {mode}
tiers:
- name: prod
  filter: {{cpu: 0.5}}
  floor: {{keep: {floor}}}
"""


def _s(value: float, at: float = NOW):
    from extender.core import Sample

    return Sample(value, at)


def _verbs(floor: int, mode: str) -> tuple[Verbs, CollectorRegistry]:
    store = SnapshotStore(load_text(POLICY.format(floor=floor, mode=mode), "p.yaml"))
    store.set_static(
        [node("a"), node("b")],
        {"a": {"cpu": _s(0.9), "memory": _s(0.1)}, "b": {"cpu": _s(0.7), "memory": _s(0.1)}},
        NOW,
    )
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    verbs = Verbs(store, metrics, clock=lambda: NOW)
    metrics.observe_state(store, dict, lambda: NOW, lambda now: verbs.decisions.waiting(now, 300))
    return verbs, registry


BODY = (
    b'{"Pod":{"metadata":{"name":"p","namespace":"ns","uid":"u"},"spec":{"priority":5}},'
    b'"Nodes":null,"NodeNames":["a","b"]}'
)


def test_a_floor_is_counted_and_the_pod_is_not_waiting(caplog):
    verbs, registry = _verbs(1, "enforce")
    reply = verbs.filter(BODY)
    assert b'"NodeNames":["b"]' in reply.body
    assert registry.get_sample_value("priority_extender_floor_applied_total", {"tier": "prod"}) == 1
    assert registry.get_sample_value("priority_extender_pods_waiting", {"tier": "prod"}) == 0
    assert "its floor keeps the 1 least over their ceilings" in caplog.text


def test_rejected_everywhere_is_counted_and_the_pod_is_waiting():
    verbs, registry = _verbs(0, "enforce")
    reply = verbs.filter(BODY)
    assert b'"NodeNames":[]' in reply.body
    assert registry.get_sample_value("priority_extender_all_rejected_total", {"tier": "prod"}) == 1
    assert registry.get_sample_value("priority_extender_pods_waiting", {"tier": "prod"}) == 1
    # The same pod placed later is no longer waiting.
    verbs.store.set_static([node("a"), node("b")], {"b": {"cpu": _s(0.1)}}, NOW)
    verbs.filter(BODY)
    assert registry.get_sample_value("priority_extender_pods_waiting", {"tier": "prod"}) == 0


def test_observe_mode_exports_what_it_would_have_rejected():
    verbs, registry = _verbs(0, "observe")
    reply = verbs.filter(BODY)
    assert b'"NodeNames":["a","b"]' in reply.body
    would = registry.get_sample_value(
        "priority_extender_observed_rejections_total", {"reason": "live_load", "tier": "prod"}
    )
    assert would == 2
    enforced = registry.get_sample_value(
        "priority_extender_filter_rejections_total", {"reason": "live_load", "tier": "prod"}
    )
    assert enforced is None
    assert registry.get_sample_value("priority_extender_pods_waiting", {"tier": "prod"}) == 0
    prio = verbs.prioritize(BODY)
    assert prio.body == b'[{"Host":"a","Score":5},{"Host":"b","Score":5}]'
    (decision, _) = verbs.decisions.find("ns/p")[:2]
    assert decision.evaluation.observed
    assert not np.any(decision.evaluation.verdict_keep)


async def test_shadow_mode_over_http(scheduler_client, aiohttp_client):
    """A policy in observe mode, through both ports: every node kept, neutral scores, and the
    metrics and explain show what it would have rejected."""
    from extender.server.app import Extender

    store = SnapshotStore(load_text(POLICY.format(floor=0, mode="observe"), "p.yaml"))
    store.set_static(
        [node("a"), node("b")],
        {"a": {"cpu": _s(0.9), "memory": _s(0.1)}, "b": {"cpu": _s(0.7), "memory": _s(0.1)}},
        NOW,
    )
    ext = Extender(store, Metrics(CollectorRegistry()), clock=lambda: NOW)
    scheduler = await scheduler_client(ext)
    admin = await aiohttp_client(ext.admin_app())
    headers = {"Content-Type": "application/json"}

    resp = await scheduler.post("/filter", data=BODY, headers=headers)
    reply = await resp.json()
    assert (resp.status, reply["NodeNames"], reply["FailedAndUnresolvableNodes"]) == (
        200,
        ["a", "b"],
        {},
    )
    resp = await scheduler.post("/prioritize", data=BODY, headers=headers)
    assert await resp.json() == [{"Host": "a", "Score": 5}, {"Host": "b", "Score": 5}]

    metrics = await (await admin.get("/metrics")).text()
    assert (
        'priority_extender_observed_rejections_total{reason="live_load",tier="prod"} 2.0' in metrics
    )
    assert 'priority_extender_pods_waiting{tier="prod"} 0.0' in metrics
    explained = await (await admin.get("/decisions", params={"pod": "ns/p"})).json()
    filt = next(d for d in explained if d["verb"] == "filter")
    assert filt["observed"]["wouldReject"] == {"cpu load above prod tier ceiling": ["a", "b"]}
    assert filt["details"][0]["observed"] is True


def test_with_pod_copies_every_field_but_the_pod():
    import dataclasses

    ev = evaluate(pod(cpu=0.0), Candidates(list("abcd")), _hot_snapshot(), _rules(2), NOW)
    other = pod("other")
    copy = ev.with_pod(other)
    assert copy.pod is other
    for f in dataclasses.fields(ev):
        if f.name != "pod":
            assert getattr(copy, f.name) is getattr(ev, f.name), f.name

"""Visibility (issue 14): a just-placed pod with a fresh usage sample of its own, observed at
least the lag after its bind, is in its node's sample: no unseen estimate is added for it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from extender.core.model import PlacedPod, Sample, build_snapshot
from extender.core.podusage import PodUsage
from extender.policy import load_text
from extender.store import SnapshotStore
from tests.builders import NOW, GiB, node
from tests.pod_builders import Row, table

LAG, WINDOW, MAX_AGE = 30.0, 150.0, 60.0
BOUND = NOW - 50.0  # bound 50 s ago; the node's sample is 5 s old: 15 s past the lag
PLACED = PlacedPod("n1", cpu=1.0, memory=1 * GiB, bound_at=BOUND, uid="new")
FADE = 1.0 - (45.0 - LAG) / (WINDOW - LAG)  # what the fade still counts of the estimate


def placed(usage: PodUsage | None, node_age: float = 5.0, ok_at: float | None = NOW):
    snap = build_snapshot(
        [node("n1")],
        {"n1": {"cpu": Sample(0.5, NOW - node_age), "memory": Sample(0.5, NOW - node_age)}},
        [PLACED],
        signals=("cpu", "memory"),
        source_ok_at=NOW,
        window_s=WINDOW,
        now=NOW,
        lag_s=LAG,
        pod_usage=usage,
        pod_usage_ok_at=ok_at,
        max_age_s=MAX_AGE,
    )
    return snap.placed[:, 0].tolist()


OWN = Row("new", "n1", cpu=0.7, memory=0.5 * GiB, age=5.0)  # sampled 45 s after the bind


def test_without_per_pod_data_the_estimate_fades_as_today():
    assert placed(None) == pytest.approx([1.0 * FADE, 1 * GiB * FADE])


def test_a_pod_with_its_own_fresh_sample_adds_nothing():
    assert placed(table([OWN])) == [0.0, 0.0]


@pytest.mark.parametrize(
    ("why", "rows", "kw"),
    [
        ("sampled before bind + lag", [replace(OWN, age=25.0)], {}),
        ("its sample is stale", [replace(OWN, age=MAX_AGE + 1)], {}),
        ("another pod's sample", [replace(OWN, uid="other")], {}),
        ("the per-pod source is down", [OWN], {"ok_at": NOW - MAX_AGE - 1}),
    ],
)
def test_without_a_fresh_own_sample_the_estimate_still_counts(why, rows, kw):
    assert placed(table(rows), **kw) == pytest.approx([1.0 * FADE, 1 * GiB * FADE]), why


def test_a_node_sample_from_before_the_pod_could_show_in_it_keeps_the_estimate():
    # The node's sample is 25 s old (bound + 25 s < bound + lag): the pod is not in it yet,
    # whatever the pod's own sample says.
    assert placed(table([OWN]), node_age=25.0) == pytest.approx([1.0, 1 * GiB])


def test_per_resource_only_a_sampled_resource_is_visible():
    cpu_only = replace(OWN, memory=float("nan"))
    assert placed(table([cpu_only])) == pytest.approx([0.0, 1 * GiB * FADE])


POLICY = """
apiVersion: priority-extender.io/v1alpha1
kind: PriorityPolicy
metrics: {source: prometheus, maxAge: 60s}
tiers: [{name: all}]
"""


def test_the_store_feeds_the_table_into_the_snapshot():
    store = SnapshotStore(load_text(POLICY, "p.yaml"), clock=lambda: NOW)
    store.set_samples({"n1": {"cpu": Sample(0.5, NOW - 5), "memory": Sample(0.5, NOW - 5)}}, NOW)
    store.set_cluster([node("n1")], [PLACED])
    before = store.current.snapshot.placed[:, 0].tolist()
    assert before[0] > 0
    store.set_pod_usage(table([OWN]), ok_at=NOW)
    assert store.current.snapshot.placed[:, 0].tolist() == [0.0, 0.0]
    assert store.current.snapshot.pods is not None

"""Estimates from siblings (issue 14): a new pod whose controller has running pods with usage
samples is estimated at a percentile of their usage instead of requests x factor."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from extender.core.decide import Candidates, evaluate, pod_estimate
from extender.core.model import Sample, build_snapshot, estimate_pod
from extender.core.podusage import PodUsage
from extender.core.rules import Siblings
from extender.policy import load_text
from extender.store import SnapshotStore
from extender.verbs import Verbs
from extender.wire.codec import decode_pod
from tests.builders import NOW, GiB, node, pod, rules
from tests.pod_builders import Row, rs, table

WEB = rs("web-7d4f")
CPUS = [0.1, 0.2, 0.3, 0.4, 0.5]
ROWS = [Row(f"w{i}", "n1", cpu=c, memory=(i + 1) * GiB, owner=WEB) for i, c in enumerate(CPUS)] + [
    Row("other", "n1", cpu=3.0, memory=8 * GiB, owner=rs("db"))
]
NEW = replace(pod("new", cpu=1.0, memory=4 * GiB), owner=WEB)


def snap(usage: PodUsage | None, siblings: Siblings | None):
    return build_snapshot(
        [node("n1")],
        {"n1": {"cpu": Sample(0.2, NOW - 5), "memory": Sample(0.2, NOW - 5)}},
        [],
        signals=("cpu", "memory"),
        source_ok_at=NOW,
        window_s=150.0,
        now=NOW,
        pod_usage=usage,
        pod_usage_ok_at=NOW,
        siblings=siblings,
    )


def with_siblings(siblings: Siblings | None):
    r = rules()
    return replace(r, estimation=replace(r.estimation, siblings=siblings))


@pytest.mark.parametrize("q", [50.0, 90.0, 100.0])
def test_the_percentile_of_the_siblings_replaces_the_rule(q):
    rule = Siblings(percentile=q, min_pods=3)
    r = with_siblings(rule)
    got = pod_estimate(NEW, r, snap(table(ROWS), rule))
    assert got == pytest.approx(
        (np.percentile(CPUS, q), np.percentile([i * GiB for i in range(1, 6)], q))
    )
    ev = evaluate(NEW, Candidates(["n1"]), snap(table(ROWS), rule), r, NOW)
    assert ev.estimate == pytest.approx(got)


@pytest.mark.parametrize(
    ("why", "rows", "rule", "pod_"),
    [
        ("siblings off", ROWS, None, NEW),
        ("too few siblings", ROWS[:2], Siblings(90.0, 3), NEW),
        ("no owner", ROWS, Siblings(90.0, 3), replace(NEW, owner="")),
        ("another owner", ROWS, Siblings(90.0, 3), replace(NEW, owner=rs("api"))),
        ("stale siblings", [replace(r, age=600.0) for r in ROWS], Siblings(90.0, 3), NEW),
    ],
)
def test_otherwise_todays_rule(why, rows, rule, pod_):
    r = with_siblings(rule)
    assert pod_estimate(pod_, r, snap(table(rows), rule)) == estimate_pod(pod_, r.estimation), why


def test_a_resource_without_enough_samples_keeps_the_rule():
    rows = [replace(r, memory=float("nan")) for r in ROWS]
    rule = Siblings(90.0, 3)
    got = pod_estimate(NEW, with_siblings(rule), snap(table(rows), rule))
    assert got == pytest.approx((np.percentile(CPUS, 90), 4 * GiB))


def test_the_wire_decodes_the_controller_owner_and_preemption_policy():
    raw = {
        "metadata": {
            "name": "web-7d4f-abcde",
            "namespace": "default",
            "ownerReferences": [
                {"kind": "Other", "name": "x"},
                {"kind": "ReplicaSet", "name": "web-7d4f", "controller": True},
            ],
        },
        "spec": {"containers": [], "preemptionPolicy": "Never"},
    }
    got = decode_pod(json.dumps(raw).encode())
    assert got.owner == WEB
    assert got.preemption_policy == "Never"
    bare = decode_pod(b'{"metadata": {"name": "a"}, "spec": {}}')
    assert (bare.owner, bare.preemption_policy) == ("", "PreemptLowerPriority")


POLICY = """
apiVersion: priority-extender.io/v1alpha1
kind: PriorityPolicy
metrics: {source: prometheus, maxAge: 60s}
tiers: [{name: all, filter: {cpu: 0.5}}]
estimation:
  siblings: {percentile: 90, minPods: 3}
"""


def test_the_filter_verb_uses_the_siblings_estimate():
    """Over the verbs (the path kube-scheduler calls): a 2-core pod whose siblings' p90 is
    0.46 cores fits n1 at 0.2 under a 0.5 ceiling (0.2 + 0.46 / 4 = 0.315); the same pod without
    an owner is estimated at its 2-core request (0.2 + 2 / 4 = 0.7) and rejected."""
    store = SnapshotStore(load_text(POLICY, "p.yaml"), clock=lambda: NOW)
    store.set_samples({"n1": {"cpu": Sample(0.2, NOW - 5), "memory": Sample(0.2, NOW - 5)}}, NOW)
    store.set_cluster([node("n1")], [])
    store.set_pod_usage(table(ROWS), ok_at=NOW)
    verbs = Verbs(store, clock=lambda: NOW)

    def body(owner: bool) -> bytes:
        meta: dict[str, object] = {"name": "new", "namespace": "default", "uid": "u-new"}
        if owner:
            meta["ownerReferences"] = [
                {"kind": "ReplicaSet", "name": "web-7d4f", "controller": True}
            ]
        spec = {"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}
        return json.dumps({"Pod": {"metadata": meta, "spec": spec}, "NodeNames": ["n1"]}).encode()

    with_owner = json.loads(verbs.filter(body(True)).body)
    alone = json.loads(verbs.filter(body(False)).body)
    assert with_owner["NodeNames"] == ["n1"]
    assert alone["NodeNames"] == []

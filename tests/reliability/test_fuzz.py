"""Property-based fuzzing of both verbs through the verbs module the HTTP server calls.

Generated pods (odd quantities included), candidate lists (known, unknown, duplicate names),
snapshots and policies; every request either is rejected with a WireError naming the problem, or
gets a reply that keeps the contract: kept names a subset of the input, every input exactly once
in prioritize, integer scores 0..10, kept and failed disjoint, Error empty.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.core import NodeInfo, OnStale, Sample, Strategy
from extender.policy import load_text
from extender.store import SnapshotStore
from extender.verbs import Verbs
from tests.builders import NOW

NODES = [f"n{i}" for i in range(8)]

quantities = st.one_of(
    st.sampled_from(["1", "1.5", "1500m", "1Ki", "1e3", "0.5Gi", "100Mi", "0", "2k", "3u"]),
    st.sampled_from(["", "x", "-1", "1.2.3", "1e999", "NaN", "1 Gi", "Mi"]),  # invalid
    st.integers(-5, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
containers = st.lists(
    st.fixed_dictionaries(
        {"name": st.just("c")},
        optional={
            "resources": st.fixed_dictionaries(
                {},
                optional={
                    "requests": st.dictionaries(st.sampled_from(["cpu", "memory"]), quantities),
                    "limits": st.dictionaries(st.sampled_from(["cpu", "memory"]), quantities),
                },
            )
        },
    ),
    max_size=3,
)
pods = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {"name": st.just("p"), "namespace": st.sampled_from(["a", "kube-system"])}
        )
    },
    optional={
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "priority": st.one_of(st.integers(-(2**31), 2**31), st.none(), st.text(max_size=3)),
                "priorityClassName": st.sampled_from(["", "batch", "prod"]),
                "containers": containers,
            },
        )
    },
)
names = st.lists(st.sampled_from([*NODES, "ghost", "", "ü"]), max_size=12)

POLICY = """\
apiVersion: priority-extender.io/v1alpha1
kind: PriorityPolicy
metrics: {{source: none}}
tiers:
- name: low
  match: {{maxPriority: 100}}
  filter: {{cpu: {cpu}, memory: {mem}}}
  score: {{strategy: {strategy}}}
  onStale: {on_stale}
"""


@st.composite
def worlds(draw: Any) -> Verbs:
    text = POLICY.format(
        cpu=draw(st.sampled_from([0.3, 0.6, 0.9])),
        mem=draw(st.sampled_from([0.5, 0.9])),
        strategy=draw(st.sampled_from([s.value for s in Strategy])),
        on_stale=draw(st.sampled_from([s.value for s in OnStale])),
    )
    store = SnapshotStore(load_text(text, "p.yaml"), clock=lambda: NOW)
    known = draw(st.lists(st.sampled_from(NODES), unique=True))
    nodes = [NodeInfo(n, draw(st.sampled_from([None, 0.0, 4.0])), 16 * 2**30) for n in known]
    samples = {
        n: {"cpu": Sample(draw(st.floats(0, 1.2)), NOW - draw(st.sampled_from([1, 30, 600])))}
        for n in known
        if draw(st.booleans())
    }
    store.set_static(nodes, samples, NOW - draw(st.sampled_from([1, 600])))
    return Verbs(store, clock=lambda: NOW)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), pods, names, st.booleans())
def test_both_verbs_keep_the_contract(ext, pod, candidates, lower):
    body = json.dumps(
        {"pod": pod, "nodes": None, "nodenames": candidates}
        if lower
        else {"Pod": pod, "Nodes": None, "NodeNames": candidates}
    ).encode()
    answer = ext.filter(body)
    if answer.status != 200:
        assert answer.status == 400
        assert answer.outcome == "bad_request"
        assert json.loads(answer.body)["Error"]  # a message naming the problem
        assert ext.prioritize(body).status == 400
        return
    assert answer.outcome == "ok"
    reply = json.loads(answer.body)
    kept, failed = reply["NodeNames"], reply["FailedAndUnresolvableNodes"]
    assert reply["Error"] == ""
    assert set(kept) <= set(candidates)
    assert not set(kept) & set(failed)
    assert set(kept) | set(failed) == set(candidates)
    prio = json.loads(ext.prioritize(body).body)
    assert [e["Host"] for e in prio] == candidates
    assert all(type(e["Score"]) is int and 0 <= e["Score"] <= 10 for e in prio)

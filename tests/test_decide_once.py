"""Decide once per pod: what filter worked out is reused by the prioritize call that follows,
and repeated bytes are decoded once. Every reuse must give the answer (and the decision-log
entry, which explain renders) that deciding afresh gives."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.core import Sample
from extender.policy import load_text
from extender.store import SnapshotStore
from extender.verbs import Verbs
from extender.wire import codec, decode_args, decode_pod
from tests.builders import NOW, Clock, node

POLICY = """\
apiVersion: priority-extender.io/v1alpha1
kind: PriorityPolicy
metrics: {{source: static, maxAge: 60s}}
mode: {mode}
tiers:
- name: prod
  filter: {{cpu: {ceiling}, memory: 0.9}}
  floor: {{keep: {floor}}}
"""


def world(
    loads: list[tuple[float, float, float]], ceiling: float, floor: int, mode: str
) -> tuple[Verbs, Clock]:
    store = SnapshotStore(load_text(POLICY.format(ceiling=ceiling, floor=floor, mode=mode), "p"))
    store.set_static(
        [node(f"n{i}") for i in range(len(loads))],
        {
            f"n{i}": {"cpu": Sample(cpu, NOW - age), "memory": Sample(mem, NOW - age)}
            for i, (cpu, mem, age) in enumerate(loads)
        },
        NOW,
    )
    clock = Clock()
    return Verbs(store, clock=clock), clock


def body(names: list[str], uid: str = "u") -> bytes:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": uid},
        "spec": {
            "priority": 5,
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
        },
    }
    return json.dumps({"Pod": pod, "Nodes": None, "NodeNames": names}).encode()


def prioritize_body(filter_body: bytes, filter_reply: bytes) -> bytes:
    """What kube-scheduler sends next: the same pod bytes and the kept names as filter wrote
    them (spliced as bytes, so the NodeNames array is exactly the reply's)."""
    reply = filter_reply
    start = reply.index(b'"NodeNames":') + len(b'"NodeNames":')
    end = reply.index(b',"Nodes":', start)
    pod = json.dumps(json.loads(filter_body)["Pod"]).encode()
    return b'{"Pod":' + pod + b',"Nodes":null,"NodeNames":' + reply[start:end] + b"}"


def logged(verbs: Verbs, verb: str) -> list[dict[str, Any]]:
    (decision,) = [d for d in verbs.decisions.find("ns/p") if d.verb == verb][:1]
    ev = decision.evaluation
    return [ev.explain(i) for i in range(len(ev.names))]


loads = st.lists(
    st.tuples(
        st.floats(0.0, 1.2),
        st.floats(0.0, 1.0),
        st.sampled_from([0.0, 10.0, 59.0, 61.0, 200.0]),  # sample ages; maxAge is 60s
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    loads=loads,
    ceiling=st.sampled_from([0.3, 0.6, 0.95]),
    floor=st.integers(0, 2),
    mode=st.sampled_from(["enforce", "observe"]),
    picks=st.lists(st.integers(0, 14), min_size=0, max_size=16),
    later=st.sampled_from([0.0, 0.5, 1.5, 30.0]),
)
def test_prioritize_after_filter_is_the_fresh_decision(loads, ceiling, floor, mode, picks, later):
    """Names may repeat, be unknown (n12..n14 on smaller clusters) and come in any order; the
    prioritize call may come later, past some sample's freshness (ages 59 s + 1.5 s)."""
    names = [f"n{i}" for i in picks]
    verbs, clock = world(loads, ceiling, floor, mode)
    f_body = body(names)
    codec.forget_bytes()
    f_reply = verbs.filter(f_body)
    assert f_reply.status == 200
    assert f_reply.outcome == "ok"
    p_body = prioritize_body(f_body, f_reply.body)
    clock.now = NOW + later
    reused = verbs.prioritize(p_body)

    fresh, fresh_clock = world(loads, ceiling, floor, mode)
    fresh_clock.now = NOW + later
    codec.forget_bytes()
    again = fresh.prioritize(p_body)
    assert reused.outcome == again.outcome == "ok"
    assert reused.body == again.body
    assert logged(verbs, "prioritize") == logged(fresh, "prioritize")


def test_prioritize_gathers_from_filters_assessment_without_looking_it_up_again():
    verbs, _ = world([(0.2, 0.1, 0.0)] * 50, 0.6, 0, "enforce")
    looked_up = []
    get = verbs.assessments.get

    def counting(*args: Any) -> Any:
        looked_up.append(args[2])
        return get(*args)

    verbs.assessments.get = counting  # type: ignore[method-assign]
    f_body = body([f"n{i}" for i in range(50)])
    verbs.filter(f_body)
    assert len(looked_up) == 1
    verbs.prioritize(prioritize_body(f_body, verbs.filter(f_body).body))
    assert len(looked_up) == 2  # the second filter; prioritize reused it
    # Another pod (other bytes, other PodInfo) is looked up as before.
    verbs.prioritize(prioritize_body(body([], uid="other"), verbs.filter(f_body).body))
    assert len(looked_up) == 4


def test_the_kept_names_are_not_decoded_again():
    verbs, _ = world([(0.2, 0.1, 0.0), (0.9, 0.1, 0.0), (0.1, 0.1, 0.0)], 0.6, 0, "enforce")
    f_body = body(["n2", "n1", "zz", "n0"])
    reply = verbs.filter(f_body)
    p_body = prioritize_body(f_body, reply.body)
    remembered = codec.remembered_names()
    assert remembered is not None
    assert remembered[1] == ["n2", "zz", "n0"]  # what decoding the reply's array gives
    assert json.loads(remembered[0]) == remembered[1]
    args = decode_args(p_body)
    assert args.candidates.names is remembered[1]


def test_a_repeated_container_is_decoded_once_and_a_bad_one_fails_every_time():
    codec.forget_bytes()
    raw = json.loads(body(["a"]))["Pod"]
    a = decode_pod(json.dumps(raw).encode())
    raw["metadata"]["uid"] = "u2"
    b = decode_pod(json.dumps(raw).encode())
    assert a.uid != b.uid
    assert a.containers[0] is b.containers[0]
    assert a.containers[0].cpu_request == 1.0
    raw["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "lots"
    for _ in range(2):
        with pytest.raises(codec.WireError, match=r"Pod\.spec\.containers\[0\]\.resources"):
            decode_pod(json.dumps(raw).encode())


def test_the_container_memo_stays_bounded():
    codec.forget_bytes()
    raw = json.loads(body(["a"]))["Pod"]
    for i in range(codec.CONTAINERS_KEPT + 10):
        raw["spec"]["containers"][0]["name"] = f"c{i}"
        decode_pod(json.dumps(raw).encode())
        assert codec.containers_remembered() <= codec.CONTAINERS_KEPT


def test_the_log_keeps_the_slim_pod_without_copying_the_evaluation():
    verbs, _ = world([(0.2, 0.1, 0.0)], 0.6, 0, "enforce")
    verbs.filter(body(["n0"]))
    (decision,) = verbs.decisions.find("ns/p")
    assert decision.evaluation.pod.containers == ()  # slimmed: containers are not kept
    assert np.array_equal(decision.evaluation.keep, [True])


def test_thousands_of_names_are_found_from_the_request_bytes_exactly():
    """Past LOOKUP_JSON_MIN_NAMES the columns come from the raw NodeNames (NameTable.lookup_json):
    the logged decision's columns are the snapshot's dictionary lookup of the names."""
    import random

    from extender.wire.names import LOOKUP_JSON_MIN_NAMES

    rng = random.Random(5)
    verbs, _ = world([(rng.random(), 0.2, 0.0) for _ in range(800)], 0.6, 0, "enforce")
    names = [f"n{i}" for i in rng.sample(range(800), LOOKUP_JSON_MIN_NAMES + 100)]
    names += ["n8000", "n80", "n"]  # unknown, a known name again, a prefix of every name
    rng.shuffle(names)
    reply = verbs.filter(body(names))
    (decision,) = verbs.decisions.find("ns/p")
    snap = verbs.store.current.snapshot
    assert decision.evaluation.columns.tolist() == snap.lookup(names).tolist()
    kept = json.loads(reply.body)["NodeNames"]
    assert kept == [n for n, k in zip(names, decision.evaluation.keep, strict=True) if k]


def test_the_logs_byte_estimate_never_falls_below_counting_the_names():
    """The log bounds its bytes with the names' JSON length instead of a pass over them."""
    from extender.verbs.decisions import entry_bytes

    verbs, _ = world([(0.2, 0.1, 0.0)] * 3, 0.6, 0, "enforce")
    names = ["n0", "n1", "a-much-longer-name-of-an-unknown-node.example.com", "n2"]
    verbs.filter(body(names))
    (decision,) = verbs.decisions.find("ns/p")
    counted = entry_bytes(decision.evaluation)
    assert counted <= verbs.decisions.bytes <= counted + 4 * len(names) + 2  # quotes, ", "

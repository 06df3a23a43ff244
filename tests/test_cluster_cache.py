"""Decoding API objects into compact records, and the cache's bookkeeping (no network here)."""

from __future__ import annotations

import msgspec
import pytest

from extender.cluster import ClusterCache
from extender.cluster.decode import (
    DecodeError,
    PodDecoder,
    decode_event,
    decode_list,
    decode_node,
    decode_pod,
)
from extender.core import EstimateFrom, Estimation, NodeInfo, PlacedPod
from tests.builders import NOW, GiB
from tests.fake_apiserver import make_node, make_pod

enc = msgspec.json.encode
EST = Estimation()


def test_pod_record_keeps_what_decisions_need():
    raw = enc(make_pod("web-1", namespace="shop", node="n1", priority=1000, scheduled_at=NOW - 7))
    uid, rv, rec = decode_pod(raw, EST)
    assert uid == "uid-shop-web-1"
    assert rec is not None
    assert (rec.namespace, rec.name, rec.node, rec.priority) == ("shop", "web-1", "n1", 1000)
    assert (rec.cpu, rec.memory) == (0.5, 1 * GiB)
    assert (rec.request_mcpu, rec.request_memory) == (500, 1 * GiB)
    assert rec.bound_at == NOW - 7
    assert rec.daemonset is False
    assert rv == ""  # not yet stored by an API server


def test_bind_time_falls_back_to_creation_and_daemonsets_are_flagged():
    raw = enc(make_pod("agent", node="n1", created_at=NOW - 100, owner_kind="DaemonSet"))
    _, _, rec = decode_pod(raw, EST)
    assert rec is not None
    assert rec.bound_at == NOW - 100
    assert rec.daemonset is True


def test_requests_follow_the_scheduler_with_init_containers_and_sidecars():
    # app 500m + sidecar 100m run together; the 2-core init container runs alone before them.
    pod = make_pod("p", node="n1", init_cpu="2", sidecar_cpu="100m")
    _, _, rec = decode_pod(enc(pod), EST)
    assert rec is not None
    assert rec.request_mcpu == 2000
    # The sidecar (no memory request) gets the default memory estimate; the app 1Gi.
    assert rec.memory == 1 * GiB + EST.default_memory
    # Sidecar declared before the init container: it runs beside it.
    pod["spec"]["initContainers"].reverse()
    _, _, rec = decode_pod(enc(pod), EST)
    assert rec is not None
    assert rec.request_mcpu == 2100


def test_estimate_uses_the_policy_settings():
    raw = enc(make_pod("p", node="n1", cpu="250m", memory="1Gi"))  # limit: memory 1Gi
    _, _, rec = decode_pod(raw, Estimation(requests_factor=2.0))
    assert rec is not None
    assert (rec.cpu, rec.memory) == (0.5, 2 * GiB)
    _, _, rec = decode_pod(raw, Estimation(prefer=EstimateFrom.LIMITS))
    assert rec is not None
    assert (rec.cpu, rec.memory) == (0.25, 1 * GiB)  # no cpu limit: the request


@pytest.mark.parametrize(
    "tweak",
    [
        lambda p: p["spec"].pop("nodeName"),
        lambda p: p["status"].update(phase="Succeeded"),
        lambda p: p["status"].update(phase="Failed"),
    ],
)
def test_unbound_and_finished_pods_do_not_count(tweak):
    pod = make_pod("p", node="n1")
    tweak(pod)
    uid, _, rec = decode_pod(enc(pod), EST)
    assert uid == "uid-default-p"
    assert rec is None


def test_pods_of_one_shape_share_a_sizing():
    decoder = PodDecoder(EST)
    same = [decoder.decode(enc(make_pod(n, node="n1", cpu="1")))[2] for n in ("a", "b")]
    other = decoder.decode(enc(make_pod("c", node="n1", cpu="2")))[2]
    with_overhead = make_pod("d", node="n1", cpu="1")
    with_overhead["spec"]["overhead"] = {"cpu": "250m", "memory": "64Mi"}
    over = decoder.decode(enc(with_overhead))[2]
    assert [p.cpu for p in (*same, other, over)] == [1.0, 1.0, 2.0, 1.25]
    assert over is not None
    assert (over.request_mcpu, over.request_memory) == (1250, 1 * GiB + 64 * 2**20)
    assert decoder.shapes == 3  # a, b share one


def test_malformed_objects_name_the_problem():
    pod = make_pod("p", node="n1", cpu="lots")
    with pytest.raises(DecodeError, match="Pod default/p: invalid quantity 'lots'"):
        decode_pod(enc(pod), EST)
    with pytest.raises(DecodeError, match=r"metadata\.uid is missing"):
        decode_pod(b'{"metadata": {"name": "x"}}', EST)
    with pytest.raises(DecodeError, match="Node"):
        decode_node(b'{"metadata": {"name": 5}}')


def test_node_record():
    name, _, rec = decode_node(enc(make_node("n1", cpu="8", memory="32Gi", address="10.1.2.3")))
    assert name == "n1"
    assert (rec.allocatable_cpu, rec.allocatable_memory) == (8.0, 32 * GiB)
    assert rec.addresses == ("10.1.2.3", "n1")
    assert rec.labels["topology.kubernetes.io/zone"] == "eu-west-1a"


def test_envelopes():
    page = decode_list(b'{"metadata": {"resourceVersion": "7", "continue": "abc"}, "items": [{}]}')
    assert (page.resource_version, page.continue_token, len(page.items)) == ("7", "abc", 1)
    event = decode_event(b'{"type": "ADDED", "object": {"a": 1}}\n')
    assert (event.type, bytes(event.object)) == ("ADDED", b'{"a": 1}')
    with pytest.raises(DecodeError, match="'type' or 'object' is missing"):
        decode_event(b'{"kind": "Status", "code": 500}')
    with pytest.raises(DecodeError, match="watch event"):
        decode_event(b"not json")


# --- the cache ----------------------------------------------------------------------------------


def _pod(name, node, cpu="500m", at=NOW - 1, **kw):
    return decode_pod(enc(make_pod(name, node=node, cpu=cpu, scheduled_at=at, **kw)), EST)


def _cache(horizon=90.0):
    changes = []
    cache = ClusterCache(EST, horizon, clock=lambda: NOW, on_change=lambda: changes.append(1))
    for n in ("a", "b"):
        name, _, rec = decode_node(enc(make_node(n, cpu="4", memory="16Gi", address=f"ip-{n}")))
        cache.put_node(name, rec)
    cache.set_nodes_listed()
    return cache, changes


def test_request_totals_are_kept_incrementally_and_exactly():
    cache, _ = _cache()
    assert cache.requested("a") is None  # pods not listed yet: unknown, not zero
    for i in range(10):
        uid, _, rec = _pod(f"p{i}", "a", cpu="100m")
        cache.put_pod(uid, rec)
    cache.set_pods_listed()
    assert cache.requested("a") == (1.0, 10 * GiB)  # ten 0.1s add up to exactly 1.0
    assert cache.requested("b") == (0.0, 0.0)
    uid, _, rec = _pod("p0", "a", cpu="300m")
    cache.put_pod(uid, rec)  # replaced: 0.1 out, 0.3 in
    assert cache.requested("a") == (1.2, 10 * GiB)
    for i in range(10):
        cache.put_pod(f"uid-default-p{i}", None)
    assert cache.requested("a") == (0.0, 0.0)
    assert cache.pods == {}


def test_node_infos_rebuild_only_changed_nodes():
    cache, _ = _cache()
    cache.set_pods_listed()
    first = cache.node_infos()
    assert first == [NodeInfo("a", 4.0, 16 * GiB, 0.0, 0.0), NodeInfo("b", 4.0, 16 * GiB, 0.0, 0.0)]
    uid, _, rec = _pod("p", "b")
    cache.put_pod(uid, rec)
    second = cache.node_infos()
    assert second[0] is first[0]  # untouched node: the same object
    assert second[1] == NodeInfo("b", 4.0, 16 * GiB, 0.5, 1 * GiB)
    cache.put_node("a", None)
    assert [n.name for n in cache.node_infos()] == ["b"]
    assert cache.node_for_address("ip-b") == "b"
    assert cache.node_for_address("ip-a") is None


def test_placements_hold_recent_pods_only():
    cache, _ = _cache(horizon=90.0)
    for name, at in (("new", NOW - 5), ("old", NOW - 500), ("edge", NOW - 90)):
        uid, _, rec = _pod(name, "a", at=at)
        cache.put_pod(uid, rec)
    assert cache.placements(NOW) == [
        PlacedPod("a", 0.5, 1 * GiB, NOW - 5, "uid-default-new"),
        PlacedPod("a", 0.5, 1 * GiB, NOW - 90, "uid-default-edge"),
    ]
    assert not cache.expiring(NOW)
    assert cache.expiring(NOW + 1)
    assert cache.placements(NOW + 1) == [PlacedPod("a", 0.5, 1 * GiB, NOW - 5, "uid-default-new")]
    cache.put_pod("uid-default-new", None)  # finished or deleted: stops counting
    assert cache.placements(NOW + 1) == []
    assert len(cache.pods) == 2  # still bound: their requests count


def test_placements_are_the_same_objects_until_their_pod_changes():
    cache, _ = _cache(horizon=90.0)
    for name in ("p1", "p2", "p3"):
        uid, _, rec = _pod(name, "a", at=NOW - 5)
        cache.put_pod(uid, rec)
    first = cache.placements(NOW)
    assert all(x is y for x, y in zip(first, cache.placements(NOW), strict=True))
    uid, _, rec = _pod("p2", "a", cpu="2", at=NOW - 5)  # its estimate changed
    cache.put_pod(uid, rec)
    second = cache.placements(NOW)
    assert [p.uid for p in second] == [p.uid for p in first]  # it keeps its place
    assert second[0] is first[0]
    assert second[2] is first[2]
    assert second[1] == PlacedPod("a", 2.0, 1 * GiB, NOW - 5, "uid-default-p2")


def test_pods_leave_the_horizon_by_their_bind_times_whatever_order_they_came_in():
    cache, _ = _cache(horizon=90.0)
    for name, at in (("late", NOW - 10), ("early", NOW - 60), ("middle", NOW - 30)):
        uid, _, rec = _pod(name, "a", at=at)
        cache.put_pod(uid, rec)
    cache.put_pod("uid-default-early", None)  # gone before it expired: no expiry to publish
    assert not cache.expiring(NOW + 45)
    assert [p.uid for p in cache.placements(NOW + 45)] == ["uid-default-late", "uid-default-middle"]
    assert cache.expiring(NOW + 61)
    assert [p.uid for p in cache.placements(NOW + 61)] == ["uid-default-late"]
    assert not cache.expiring(NOW + 61)
    # the deletion is a departure, which leaves the horizon 90 s after it was seen (at NOW)
    assert cache.expiring(NOW + 91)
    assert [p.uid for p in cache.placements(NOW + 91)] == []
    assert cache.departures(NOW + 91) == []
    assert not cache.expiring(NOW + 1000)


def test_node_infos_follow_the_nodes_as_they_come_and_go():
    cache, _ = _cache()
    cache.set_pods_listed()
    cache.node_infos()
    name, _, rec = decode_node(enc(make_node("c", cpu="8", memory="16Gi")))
    cache.put_node(name, rec)
    cache.put_node("a", None)
    uid, _, pod = _pod("p", "b")
    cache.put_pod(uid, pod)
    infos = cache.node_infos()
    assert [n.name for n in infos] == ["b", "c"]
    assert infos[0] == NodeInfo("b", 4.0, 16 * GiB, 0.5, 1 * GiB)
    name, _, rec = decode_node(enc(make_node("a", cpu="2", memory="16Gi")))
    cache.put_node(name, rec)  # back, at the end
    infos[0] = infos[1]  # a caller's copy: the cache's own list is not touched
    assert [n.name for n in cache.node_infos()] == ["b", "c", "a"]
    assert cache.node_infos()[2].allocatable_cpu == 2.0


def test_unchanged_updates_are_not_changes():
    cache, changes = _cache()
    uid, _, rec = _pod("p", "a")
    cache.put_pod(uid, rec)
    before = len(changes)
    uid, _, again = _pod("p", "a")
    cache.put_pod(uid, again)  # a status-only MODIFIED event decodes to an equal record
    assert len(changes) == before
    cache.put_pod("uid-unknown", None)
    assert len(changes) == before


def test_lookup_by_uid():
    cache, _ = _cache()
    uid, _, rec = _pod("p", "a", cpu="2")
    cache.put_pod(uid, rec)
    assert cache.pod(uid) is rec
    assert cache.estimate(uid) == (2.0, 1 * GiB)
    assert cache.estimate("nope") is None

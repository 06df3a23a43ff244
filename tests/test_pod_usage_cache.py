"""The cluster cache's side of per-pod usage: owner keys, pod slots, matching, departures.

Pods are decoded from API-shaped JSON (``tests/fake_apiserver.make_pod``) and put into a real
:class:`ClusterCache`; publication goes through a real :class:`ClusterSource` into a real
:class:`SnapshotStore`. No network is needed for any of it.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from extender.cluster import ClusterCache, ClusterSource
from extender.cluster.cache import INITIAL_SLOTS
from extender.cluster.decode import decode_node, decode_pod
from extender.core import Estimation
from extender.core.podusage import Departure, PodSamples, owner_key
from extender.policy import embedded_default
from extender.store import SnapshotStore
from tests.builders import NOW, GiB
from tests.fake_apiserver import make_node, make_pod

enc = msgspec.json.encode
EST = Estimation()


def _decode(name, namespace="default", node="a", **kw):
    uid, _, rec = decode_pod(
        enc(make_pod(name, namespace=namespace, node=node, scheduled_at=NOW - 500, **kw)), EST
    )
    return uid, rec


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _cache(clock=None, horizon=90.0):
    cache = ClusterCache(EST, horizon, clock=clock or (lambda: NOW))
    for n in ("a", "b"):
        name, _, rec = decode_node(enc(make_node(n, cpu="4", memory="16Gi")))
        cache.put_node(name, rec)
    cache.set_nodes_listed()
    return cache


def _put(cache, name, namespace="default", node="a", **kw):
    uid, rec = _decode(name, namespace, node, **kw)
    cache.put_pod(uid, rec)
    return uid


def _samples(refs, values, at=NOW):
    keep = refs.slots >= 0
    n = int(keep.sum())
    return PodSamples(
        refs.slots[keep], refs.generations[keep], np.asarray(values, float)[keep], np.full(n, at)
    )


# --- owner keys -----------------------------------------------------------------------------------


def test_owner_key_is_the_controller_reference():
    _, rec = _decode("web-1", namespace="shop")
    assert rec is not None
    assert (
        rec.owner == owner_key("ReplicaSet", "shop", "web-abc123") == "ReplicaSet/shop/web-abc123"
    )
    _, sibling = _decode("web-2", namespace="shop")
    assert sibling is not None
    assert sibling.owner is rec.owner  # interned: siblings share one string


def test_owner_key_is_empty_without_a_controller():
    pod = make_pod("bare", node="a")
    pod["metadata"]["ownerReferences"][0]["controller"] = False  # an owner, not the controller
    _, _, rec = decode_pod(enc(pod), EST)
    assert rec is not None
    assert rec.owner == ""
    del pod["metadata"]["ownerReferences"]
    _, _, rec = decode_pod(enc(pod), EST)
    assert rec is not None
    assert rec.owner == ""


# --- slots and matching -----------------------------------------------------------------------------


def test_match_by_namespace_and_name():
    cache = _cache()
    shop = _put(cache, "db-0", namespace="shop")
    blog = _put(cache, "db-0", namespace="blog", node="b")  # the same name in another namespace
    refs = cache.match_pods(
        ["shop", "blog", "shop", "nowhere", ""], ["db-0", "db-0", "x", "db-0", ""]
    )
    slots = refs.slots.tolist()
    assert slots[2:] == [-1, -1, -1]
    assert slots[0] != slots[1]
    assert cache.columns.uids[slots[0]] == shop
    assert cache.columns.uids[slots[1]] == blog
    assert refs.generations.tolist()[2:] == [-1, -1, -1]


def test_pod_usage_takes_nodes_priority_requests_and_owner_from_the_cache():
    cache = _cache()
    web = _put(cache, "web-1", node="b", priority=1000, cpu="250m", memory="2Gi")
    _put(cache, "idle-1")  # bound, but without a sample: not in the table
    refs = cache.match_pods(["default", "default"], ["web-1", "gone-1"])
    usage = cache.pod_usage((_samples(refs, [0.2, 9.0]), None), oldest=NOW - 60, unknown=1)
    assert usage.uids == (web,)
    assert usage.nodes == ("b",)
    assert usage.priority.tolist() == [1000]
    assert usage.requests[:, 0].tolist() == [0.25, 2 * GiB]
    assert usage.usage[0, 0] == 0.2
    assert np.isnan(usage.usage[1, 0])  # no memory sample: NaN, not zero
    assert usage.sampled_at[0, 0] == NOW
    assert np.isnan(usage.sampled_at[1, 0])
    assert usage.owners == ("ReplicaSet/default/web-abc123",)
    assert usage.unknown == 1


def test_pod_usage_leaves_out_stale_samples_and_departed_pods():
    cache = _cache()
    for name in ("p-1", "p-2", "p-3"):
        _put(cache, name)
    refs = cache.match_pods(["default"] * 3, ["p-1", "p-2", "p-3"])
    cpu = PodSamples(refs.slots, refs.generations, np.array([0.1, 0.2, 0.3]), np.full(3, NOW))
    memory = PodSamples(
        refs.slots, refs.generations, np.array([1.0, 2.0, 3.0]), np.array([NOW, NOW - 61, NOW])
    )
    cache.put_pod("uid-default-p-3", None)  # deleted after the match
    usage = cache.pod_usage((cpu, memory), oldest=NOW - 60)
    assert usage.uids == ("uid-default-p-1", "uid-default-p-2")
    assert usage.usage[1].tolist()[0] == 1.0
    assert np.isnan(usage.usage[1, 1])  # 61 s old against maxAge 60: stale
    assert usage.usage[0].tolist() == [0.1, 0.2]


def test_a_reused_slot_does_not_inherit_the_old_pods_sample():
    cache = _cache()
    _put(cache, "old-1")
    refs = cache.match_pods(["default"], ["old-1"])
    cache.put_pod("uid-default-old-1", None)
    new = _put(cache, "new-1")
    assert cache.match_pods(["default"], ["new-1"]).slots[0] == refs.slots[0]  # slot reused
    assert len(cache.pod_usage((_samples(refs, [0.5]), None), oldest=0.0)) == 0
    fresh = cache.match_pods(["default"], ["new-1"])
    assert cache.pod_usage((_samples(fresh, [0.5]), None), oldest=0.0).uids == (new,)


def test_a_pod_keeps_its_slot_when_it_changes():
    cache = _cache()
    _put(cache, "p-1", cpu="100m")
    before = cache.match_pods(["default"], ["p-1"])
    _put(cache, "p-1", cpu="300m")  # MODIFIED: a new record, the same pod
    after = cache.match_pods(["default"], ["p-1"])
    assert before.slots.tolist() == after.slots.tolist()
    assert before.generations.tolist() == after.generations.tolist()
    usage = cache.pod_usage((_samples(after, [0.2]), None), oldest=0.0)
    assert usage.requests[0].tolist() == [0.3]


def test_slots_grow_past_the_first_allocation():
    cache = _cache()
    count = INITIAL_SLOTS + 10
    names = [f"p-{i}" for i in range(count)]
    for name in names:
        _put(cache, name, priority=7)
    refs = cache.match_pods(["default"] * count, names)
    assert (refs.slots >= 0).all()
    assert len(set(refs.slots.tolist())) == count
    usage = cache.pod_usage((_samples(refs, np.linspace(0, 1, count)), None), oldest=0.0)
    assert len(usage) == count
    assert set(usage.priority.tolist()) == {7}
    assert sorted(usage.uids) == sorted(f"uid-default-{n}" for n in names)


def test_same_name_arriving_before_the_old_pod_leaves():
    # A relist can put a recreated pod (new uid, same name) before it removes the old one.
    cache = _cache()
    _put(cache, "db-0", uid="old")
    new = _put(cache, "db-0", uid="new")
    cache.put_pod("old", None)
    refs = cache.match_pods(["default"], ["db-0"])
    assert cache.columns.uids[int(refs.slots[0])] == new


# --- departures -------------------------------------------------------------------------------------


def test_deleted_and_finished_pods_depart_for_the_horizon():
    clock = Clock(NOW)
    cache = _cache(clock, horizon=90.0)
    _put(cache, "gone-1", priority=5, cpu="2")
    _put(cache, "done-1", node="b")
    cache.put_pod("uid-default-gone-1", None)  # DELETED
    clock.now = NOW + 30
    uid, rec = _decode("done-1", node="b", phase="Succeeded")
    assert rec is None  # terminal pods decode to None: the same path
    cache.put_pod(uid, rec)
    assert cache.departures(NOW + 30) == [
        Departure("uid-default-gone-1", "a", NOW, 5, 2.0, 1 * GiB),
        Departure("uid-default-done-1", "b", NOW + 30, 0, 0.5, 1 * GiB),
    ]
    assert not cache.expiring(NOW + 90)
    assert cache.expiring(NOW + 91)
    assert [d.uid for d in cache.departures(NOW + 91)] == ["uid-default-done-1"]
    assert cache.departures(NOW + 121) == []


def test_a_pod_that_comes_back_is_no_departure():
    cache = _cache()
    uid = _put(cache, "p-1")
    cache.put_pod(uid, None)
    _put(cache, "p-1")  # a relist that saw it again
    assert cache.departures(NOW) == []


async def test_publication_hands_departures_to_the_store():
    clock = Clock(NOW)
    store = SnapshotStore(embedded_default(), clock)
    calls = []
    set_cluster = store.set_cluster

    def recording(nodes, placements, **kw):
        calls.append(kw.get("departures", ()))
        set_cluster(nodes, placements, **kw)

    store.set_cluster = recording  # type: ignore[method-assign]

    async def never(**_):
        raise AssertionError("not listed in this test")

    source = ClusterSource(store, never, never, clock=clock)
    for n in ("a", "b"):
        name, _, rec = decode_node(enc(make_node(n, cpu="4", memory="16Gi")))
        source.cache.put_node(name, rec)
    source.cache.set_nodes_listed()
    uid, rec = _decode("web-1")
    source.cache.put_pod(uid, rec)
    assert source.publish()
    assert calls[-1] == []
    source.cache.put_pod(uid, None)
    assert source.publish()
    assert [d.uid for d in calls[-1]] == [uid]
    clock.now = NOW + source.cache.horizon_s + 1
    assert source.publish()  # the departure expiring is a change to publish
    assert calls[-1] == []
    assert not source.publish()


@pytest.mark.parametrize("count", [0, 1])
def test_empty_and_single_tables(count):
    cache = _cache()
    if count:
        _put(cache, "p-1")
    refs = cache.match_pods(["default"] * count, ["p-1"] * count)
    usage = cache.pod_usage((_samples(refs, [0.1] * count), None), oldest=0.0)
    assert len(usage) == count
    assert usage.usage.shape == (2, count)


# --- reads from a worker thread: remembered matches, reused rows, the generation re-check -------


def test_a_repeated_answer_reuses_its_matches_and_still_sees_every_change():
    cache = _cache()
    uids = {name: _put(cache, name) for name in ("p-1", "p-2", "p-3")}
    keys = (["default"] * 4, ["p-1", "p-2", "p-3", "late-1"])
    first = cache.match_pods(*keys)
    assert first.slots[3] == -1
    again = cache.match_pods(*keys)  # remembered: same answer
    assert again.slots.tolist() == first.slots.tolist()
    assert again.generations.tolist() == first.generations.tolist()
    # A deleted pod, one re-created under the same name, and a pod that was unknown: each is
    # answered as a fresh match would be.
    cache.put_pod(uids["p-1"], None)
    _put(cache, "p-2-other")  # takes p-1's freed slot
    cache.put_pod(uids["p-2"], None)
    new_p2 = _put(cache, "p-2")
    late = _put(cache, "late-1")
    got = cache.match_pods(*keys)
    cache.forget_pod_reads()
    fresh = cache.match_pods(*keys)
    assert got.slots.tolist() == fresh.slots.tolist()
    assert got.generations.tolist() == fresh.generations.tolist()
    assert got.slots[0] == -1
    assert cache.columns.uids[int(got.slots[1])] == new_p2
    assert cache.columns.uids[int(got.slots[3])] == late


def test_a_name_moved_to_another_live_pod_voids_remembered_matches():
    cache = _cache()
    old = _put(cache, "db-0")
    keys = (["default"], ["db-0"])
    assert cache.columns.uids[int(cache.match_pods(*keys).slots[0])] == old
    # A relist sees the re-created pod before the old one's deletion: the name moves.
    uid, rec = _decode("db-0", uid="db-0-second")
    cache.put_pod(uid, rec)
    assert cache.columns.uids[int(cache.match_pods(*keys).slots[0])] == uid


def test_a_label_with_the_separator_is_matched_without_memory():
    cache = _cache()
    _put(cache, "p-1")
    keys = (["default", "default"], ["p-1", "a\0b"])
    assert cache.match_pods(*keys).slots.tolist()[1] == -1
    assert cache.match_pods(*keys).slots.tolist()[1] == -1


def test_reused_rows_follow_an_owner_change():
    cache = _cache()
    uid = _put(cache, "p-1")
    refs = cache.match_pods(["default"], ["p-1"])
    first = cache.pod_usage((_samples(refs, [0.1]), None), oldest=0.0)
    assert first.owners == (owner_key("ReplicaSet", "default", "p-abc123"),)
    assert cache.pod_usage((_samples(refs, [0.1]), None), oldest=0.0).owners == first.owners
    _, adopted = _decode("p-1", uid=uid, owner_kind="StatefulSet")  # same pod, new controller
    cache.put_pod(uid, adopted)
    again = cache.pod_usage((_samples(refs, [0.1]), None), oldest=0.0)
    assert again.owners == (owner_key("StatefulSet", "default", "p-abc123"),)
    assert again.uids == first.uids


class _FreedDuringTheBuild:
    """Columns whose slot 0 is freed (generation bumped, fields cleared) between the build's
    first read of the generations and its re-check: what the loop may do while a worker thread
    builds the table."""

    def __init__(self, columns):
        self._c = columns
        self._reads = 0
        self.uids, self.nodes, self.owners = columns.uids, columns.nodes, columns.owners
        self.priority, self.requests, self.edits = columns.priority, columns.requests, 0

    @property
    def generation(self):
        self._reads += 1
        if self._reads == 2:  # the re-check: the pod in slot 0 left meanwhile
            bumped = self._c.generation.copy()
            bumped[0] += 1
            return bumped
        return self._c.generation


def test_a_row_whose_pod_leaves_during_the_build_is_dropped_not_mixed():
    from extender.core.podusage import build_pod_table

    cache = _cache()
    uids = [_put(cache, f"p-{i}") for i in range(3)]
    refs = cache.match_pods(["default"] * 3, ["p-0", "p-1", "p-2"])
    assert refs.slots.tolist()[0] == 0
    table, rows = build_pod_table(
        _FreedDuringTheBuild(cache.columns),  # type: ignore[arg-type]
        (_samples(refs, [0.1, 0.2, 0.3]), None),
        oldest=0.0,
    )
    assert table.uids == tuple(uids[1:])
    assert table.usage[0].tolist() == [0.2, 0.3]
    assert rows.edits == -1  # not reusable

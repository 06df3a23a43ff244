"""A burst of pods placed one after another while metrics stand still.

Live samples lag placements by tens of seconds, so without knowing which pods were just bound,
every pod of a burst sees the same "idle" node and lands there. Here each pod is decided through
``extender.core.evaluate`` on the store's current snapshot, bound to the best-scored node by
writing it to the fake API server (as kube-scheduler's binding does), and the next pod is only
decided once the watch has delivered the binding and the cache has published it.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import msgspec
import numpy as np
from kubernetes.aio import client as k8s

from extender.cluster import ClusterSettings, cluster_source
from extender.core import Candidates, Sample, evaluate
from extender.policy import embedded_default
from extender.store import SnapshotStore
from extender.wire import decode_pod
from tests.builders import NOW
from tests.fake_apiserver import FakeApiServer, make_node, make_pod, rfc3339
from tests.support import until

NODES = {"big": ("16", "64Gi"), "small-1": ("8", "32Gi"), "small-2": ("8", "32Gi")}
BURST = 20


def choose(store: SnapshotStore, pod_json: bytes) -> str:
    """The node kube-scheduler would bind to if the extender's score decided alone."""
    state = store.current
    names = list(NODES)
    e = evaluate(decode_pod(pod_json), Candidates(names), state.snapshot, state.policy.rules, NOW)
    assert e.tier is not None
    assert e.tier.name == "production"
    scores = np.where(e.keep, e.scores, -1)
    return names[int(np.argmax(scores))]  # ties: the first, as a fixed (unfavourable) rule


def placed_cpu(store: SnapshotStore) -> float:
    return float(store.current.snapshot.placed[0, :-1].sum())


async def place_burst(api: FakeApiServer, store: SnapshotStore, follow: bool) -> Counter[str]:
    placed: Counter[str] = Counter()
    for i in range(BURST):
        pod = make_pod(f"web-{i}", cpu="500m", memory="1Gi", priority=5000)
        node = choose(store, msgspec.json.encode(pod))
        placed[node] += 1
        pod["spec"]["nodeName"] = node
        bound = {"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(NOW - 1)}
        pod["status"]["conditions"].insert(0, bound)  # bound after the samples were taken
        api.put("pods", pod)
        if follow:
            await until(lambda: placed_cpu(store) == 0.5 * sum(placed.values()))
    return placed


async def test_a_burst_spreads_by_estimates_instead_of_piling_up():
    api = FakeApiServer()
    await api.start()
    for name, (cpu, memory) in NODES.items():
        api.put("nodes", make_node(name, cpu=cpu, memory=memory))
    store = SnapshotStore(embedded_default(), clock=lambda: NOW)
    # Every node equally busy, sampled 10 s ago; the samples do not move during the burst.
    samples = {n: {"cpu": Sample(0.3, NOW - 10), "memory": Sample(0.3, NOW - 10)} for n in NODES}
    store.set_samples(samples, ok_at=NOW)
    source = cluster_source(
        store,
        k8s.Configuration(host=api.url),
        ClusterSettings(publish_interval_s=0.001, freeze_gc_after_sync=False),
        clock=lambda: NOW,
        rng=random.Random(3),
    )
    source.start()
    try:
        await until(lambda: source.synced and source.publications > 0)
        placed = await place_burst(api, store, follow=True)
    finally:
        for task in source.tasks:
            task.cancel()
        await asyncio.gather(*source.tasks, return_exceptions=True)
        await api.stop()

    assert sum(placed.values()) == BURST
    # Every node takes pods, the 16-core node the most; where scores tie (they are integers
    # 0..10) the first node wins, which favours "big" a little.
    assert placed == {"big": 12, "small-1": 4, "small-2": 4}
    # The burst evens out the projected cpu load (0.3 sampled + placed / allocatable) ...
    snap = store.current.snapshot
    projected = 0.3 + snap.placed[0, :-1] / snap.allocatable[0, :-1]
    assert projected.tolist() == [0.675, 0.55, 0.55]
    # ... where one pod adds 0.03 (big) or 0.06 (small): within two pods of each other.
    assert projected.max() - projected.min() <= 2 * 0.5 / 8
    # Every pod counted once in the just-placed projection and in the request totals.
    assert snap.placed[0, :-1].tolist() == [6.0, 2.0, 2.0]
    assert snap.requested[0, :-1].tolist() == [6.0, 2.0, 2.0]


async def test_without_the_cluster_cache_the_same_burst_piles_up():
    api = FakeApiServer()
    await api.start()
    store = SnapshotStore(embedded_default(), clock=lambda: NOW)
    samples = {n: {"cpu": Sample(0.3, NOW - 10), "memory": Sample(0.3, NOW - 10)} for n in NODES}
    store.set_samples(samples, ok_at=NOW)
    try:
        placed = await place_burst(api, store, follow=False)
    finally:
        await api.stop()
    assert placed == {"big": BURST}

"""List+watch against the fake API server, through the real ``kubernetes.aio`` client.

What a real kube-apiserver can serve (paging, a watch resumed from its resourceVersion, a continue
token expired by an etcd compaction) is tested against one in tests/e2e/test_cluster_watch_real.py;
what stays here needs the fake's fault knobs (streams cut or stalled, injected HTTP errors, 410s
and bookmarks on demand: kube-apiserver sends bookmarks without guarantee) or inspects the exact
requests made.

Waits poll a condition with a generous safety limit (never an assertion on elapsed time); the
retry waits go through an injected ``sleep`` that records each delay and returns at once, so
backoff is asserted exactly and costs nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from kubernetes.aio import client as k8s

from extender.cluster import POD_FIELD_SELECTOR, ClusterSettings, ClusterSource, cluster_source
from extender.cluster.cache import ClusterCache, NodeSink
from extender.cluster.reflector import Reflector
from extender.core import Candidates, Estimation, evaluate
from extender.policy import embedded_default
from extender.store import SnapshotStore
from extender.wire import decode_pod
from tests.builders import NOW, Clock, GiB
from tests.fake_apiserver import FakeApiServer, make_node, make_pod

FAST = ClusterSettings(
    publish_interval_s=0.001, tick_s=0.05, read_timeout_s=30.0, freeze_gc_after_sync=False
)


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait for a condition; the limit only keeps a broken test from hanging."""
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.002)


class Delays:
    """The retry waits: recorded, not slept (one loop turn each, so other tasks still run)."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.seen.append(delay)
        await asyncio.sleep(0)


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    for name in ("n1", "n2"):
        server.put("nodes", make_node(name, cpu="4", memory="16Gi"))
    yield server
    await server.stop()


class Running:
    def __init__(self, source: ClusterSource, store: SnapshotStore, delays: Delays) -> None:
        self.source = source
        self.store = store
        self.delays = delays

    @property
    def cache(self) -> ClusterCache:
        return self.source.cache

    def requested(self, node: str) -> tuple[float, float]:
        snap = self.store.current.snapshot
        col = snap.index.get(node, -1)
        return float(snap.requested[0, col]), float(snap.requested[1, col])

    def placed_cpu(self) -> float:
        return float(self.store.current.snapshot.placed[0, :-1].sum())


@pytest.fixture
async def run(api: FakeApiServer) -> AsyncIterator[Callable[..., Running]]:
    started: list[ClusterSource] = []

    def start(
        settings: ClusterSettings = FAST,
        store: SnapshotStore | None = None,
        clock: Callable[[], float] = lambda: NOW,
    ) -> Running:
        store = store or SnapshotStore(embedded_default(), clock=lambda: NOW)
        delays = Delays()
        source = cluster_source(
            store,
            k8s.Configuration(host=api.url),
            settings,
            clock=clock,
            sleep=delays,
            rng=random.Random(7),
        )
        source.start()
        started.append(source)
        return Running(source, store, delays)

    yield start
    for source in started:
        for task in source.tasks:
            task.cancel()
        await asyncio.gather(*[t for s in started for t in s.tasks], return_exceptions=True)


def bound(name: str, node: str, cpu: str = "500m") -> dict[str, Any]:
    """A pod bound a second ago."""
    return make_pod(name, node=node, cpu=cpu, memory="1Gi", scheduled_at=NOW - 1)


async def test_list_then_watch_builds_and_updates_the_cache(api, run):
    api.put("pods", bound("a", "n1"))
    api.put("pods", make_pod("pending"))  # not bound: the field selector leaves it out
    r = run()
    await until(lambda: r.source.synced and api.watchers("pods") == 1)
    await until(lambda: r.source.publications > 0)
    assert set(r.cache.nodes) == {"n1", "n2"}
    assert list(r.cache.pods) == ["uid-default-a"]
    assert r.requested("n1") == (0.5, 1 * GiB)
    assert r.requested("n2") == (0.0, 0.0)
    assert api.list_requests("pods")[0]["fieldSelector"] == POD_FIELD_SELECTOR
    watch = api.watch_requests("pods")[0]
    assert watch["allowWatchBookmarks"] == "true"
    assert watch["resourceVersion"] == r.source.pods.resource_version
    assert 300 <= int(watch["timeoutSeconds"]) < 600

    # ADDED
    api.put("pods", bound("b", "n2", cpu="1"))
    await until(lambda: r.requested("n2") == (1.0, 1 * GiB))
    # MODIFIED: a bigger request
    api.put("pods", bound("b", "n2", cpu="2"))
    await until(lambda: r.requested("n2") == (2.0, 1 * GiB))
    # the pending pod gets bound: it enters the selector, arriving as ADDED
    api.put("pods", bound("pending", "n2"))
    await until(lambda: r.requested("n2") == (2.5, 2 * GiB))
    # DELETED
    api.delete("pods", "default/b")
    await until(lambda: r.requested("n2") == (0.5, 1 * GiB))
    # a node changes and another goes away
    api.put("nodes", make_node("n1", cpu="8", memory="16Gi"))
    api.delete("nodes", "n2")
    await until(lambda: r.store.current.snapshot.names == ("n1",))
    assert r.store.current.snapshot.allocatable[0, 0] == 8.0
    assert r.source.pods.resource_version == str(api.rv - 2)  # the last pod event's
    assert r.source.status().lists == 2  # one list each, no relist
    assert r.delays.seen == []


async def test_pods_that_finish_or_are_deleted_stop_counting(api, run):
    for name in ("done", "failed", "gone", "stays"):
        api.put("pods", bound(name, "n1"))
    r = run()
    await until(lambda: r.requested("n1") == (2.0, 4 * GiB))
    assert r.placed_cpu() == 2.0  # all bound a second ago: just placed
    finished = bound("done", "n1")
    finished["status"]["phase"] = "Succeeded"
    api.put("pods", finished)  # leaves the selector: the watch says DELETED
    failed = bound("failed", "n1")
    failed["status"]["phase"] = "Failed"
    api.put("pods", failed)
    api.delete("pods", "default/gone")
    await until(lambda: r.requested("n1") == (0.5, 1 * GiB))
    assert r.placed_cpu() == 0.5
    assert set(r.cache.pods) == {"uid-default-stays"}


async def test_bookmark_advances_the_resource_version(api, run):
    r = run()
    await until(lambda: r.source.synced and api.watchers("pods") == 1)
    api.put("nodes", make_node("n3"))  # moves the resourceVersion on, no pod event
    api.bookmark("pods")
    await until(lambda: r.source.pods.resource_version == str(api.rv))
    assert r.cache.pods == {}
    # A resumed watch starts from the bookmark, not from the list.
    api.drop_watches("pods")
    await until(lambda: len(api.watch_requests("pods")) == 2)
    assert api.watch_requests("pods")[1]["resourceVersion"] == str(api.rv)
    assert len(api.list_requests("pods")) == 1


async def test_dropped_stream_resumes_from_the_last_resource_version(api, run):
    api.put("pods", bound("a", "n1"))
    r = run()
    await until(lambda: r.source.synced and api.watchers("pods") == 1)
    api.put("pods", bound("b", "n1"))
    await until(lambda: "uid-default-b" in r.cache.pods)
    last = r.source.pods.resource_version
    api.drop_watches("pods")
    api.put("pods", bound("c", "n2"))  # while the stream is down
    await until(lambda: "uid-default-c" in r.cache.pods)
    assert api.watch_requests("pods")[1]["resourceVersion"] == last
    assert len(api.list_requests("pods")) == 1  # resumed, not relisted
    assert len(r.delays.seen) == 1  # one short wait before resuming
    assert 0.4 <= r.delays.seen[0] <= 0.8
    assert r.source.status().errors == 1


async def test_stalled_stream_times_out_and_resumes(api, run):
    r = run(dataclasses.replace(FAST, read_timeout_s=0.2))
    await until(lambda: r.source.synced and api.watchers("pods") == 1)
    last = r.source.pods.resource_version
    api.stalled = True
    api.put("pods", bound("a", "n1"))  # held back by the silent stream
    await until(lambda: r.source.pods.stalls >= 1)
    assert "uid-default-a" not in r.cache.pods
    api.stalled = False
    await until(lambda: "uid-default-a" in r.cache.pods)
    assert api.watch_requests("pods")[1]["resourceVersion"] == last
    assert len(api.list_requests("pods")) == 1
    assert r.delays.seen == []  # a stall is not a failure: no backoff


async def test_a_stream_that_keeps_delivering_never_stalls(api, run):
    """The read deadline moves on as lines arrive (one deadline per stream, renewed at most
    every eighth of the read timeout): events 0.1 s apart over four read timeouts of 0.3 s."""
    r = run(dataclasses.replace(FAST, read_timeout_s=0.3))
    await until(lambda: r.source.synced and api.watchers("pods") == 1)
    for i in range(12):
        api.put("pods", bound(f"p{i}", "n1"))
        await asyncio.sleep(0.1)
    await until(lambda: "uid-default-p11" in r.cache.pods)
    assert r.source.pods.stalls == 0
    assert len(api.watch_requests("pods")) == 1  # the same stream all along


async def test_streams_cut_at_once_back_off_instead_of_spinning(api, run):
    r = run()
    await until(lambda: r.source.synced and api.watchers("pods") == api.watchers("nodes") == 1)
    api.watch_seconds = 0  # every new watch ends as soon as it starts (open ones stay)
    api.drop_watches("pods")
    await until(lambda: len(r.delays.seen) >= 4)
    caps = [0.8, 1.6, 3.2, 6.4]
    for delay, cap in zip(r.delays.seen, caps, strict=False):
        assert cap / 2 <= delay <= cap  # growing: a failure each time
    api.watch_seconds = None
    api.put("pods", bound("a", "n1"))
    await until(lambda: "uid-default-a" in r.cache.pods)
    assert len(api.list_requests("pods")) == 1  # resumed every time, never relisted


async def test_410_error_event_relists_and_drops_what_vanished(api, run):
    for name in ("a", "b"):
        api.put("pods", bound(name, "n1"))
    r = run()
    await until(lambda: r.source.synced and api.watchers("pods") == 1)
    api.expire_watches("pods")  # compacted: the watch ends with ERROR 410 ...
    api.delete("pods", "default/a")  # ... and never sees these
    api.put("pods", bound("c", "n2"))
    await until(lambda: r.source.pods.lists == 2 and len(api.watch_requests("pods")) == 2)
    assert set(r.cache.pods) == {"uid-default-b", "uid-default-c"}
    await until(lambda: r.requested("n1") == (0.5, 1 * GiB))
    assert api.watch_requests("pods")[-1]["resourceVersion"] == r.source.pods.resource_version
    assert r.delays.seen == []  # relisted at once


async def test_a_pod_a_relist_finds_gone_left_when_the_cache_was_last_current(api, run):
    """A deletion the watch missed happened at some moment after the reflector last knew the
    cache current: that is its departure time, not the relist's (the usage it takes off its
    node's sample would otherwise be subtracted for up to the whole gap longer)."""
    for name in ("a", "b"):
        api.put("pods", bound(name, "n1"))
    clock = Clock()
    r = run(clock=clock)
    await until(lambda: r.source.synced and api.watchers("pods") == 1)
    api.put("pods", bound("c", "n2"))
    await until(lambda: "uid-default-c" in r.cache.pods)  # an event: the cache is current
    assert r.source.pods.confirmed_at == NOW
    clock.now = NOW + 30  # the watch is cut; the deletion happens somewhere in the gap
    api.expire_watches("pods")
    api.delete("pods", "default/a")
    await until(lambda: r.source.pods.lists == 2)
    assert r.source.pods.listed_at == NOW + 30
    (gone,) = [d for d in r.cache.departures(clock.now) if d.uid == "uid-default-a"]
    assert gone.departed_at == NOW
    # A deletion the watch delivers is stamped when it arrives, as before.
    await until(lambda: api.watchers("pods") == 1)
    clock.now = NOW + 40
    api.delete("pods", "default/b")
    await until(lambda: "uid-default-b" not in r.cache.pods)
    (gone,) = [d for d in r.cache.departures(clock.now) if d.uid == "uid-default-b"]
    assert gone.departed_at == NOW + 40


async def test_http_410_on_resume_relists(api, run):
    api.put("pods", bound("a", "n1"))
    r = run()
    await until(lambda: r.source.synced and api.watchers("pods") == 1)
    api.gone_as_http = True
    api.put("nodes", make_node("n3"))
    api.compact()  # history before now is gone, the pods watch's resourceVersion with it
    api.drop_watches("pods")  # the resume finds its resourceVersion compacted away
    await until(lambda: r.source.pods.lists == 2)
    assert len(api.list_requests("pods")) == 2
    assert list(r.cache.pods) == ["uid-default-a"]


async def test_errors_back_off_exponentially_with_jitter(api, caplog):
    cache = ClusterCache(Estimation(), 90.0, clock=lambda: NOW)
    delays = Delays()
    api_client = k8s.ApiClient(k8s.Configuration(host=api.url))
    core = k8s.CoreV1Api(api_client)
    reflector = Reflector(
        "nodes",
        core.list_node_without_preload_content,
        NodeSink(cache),
        ClusterSettings(),
        sleep=delays,
        rng=random.Random(1),
    )
    api.fail_next = [500, 503, 429, 500, 500, 500, 500, 500, 500]
    task = asyncio.create_task(reflector.run())
    try:
        await until(lambda: cache.nodes_listed)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api_client.close()
    caps = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0]
    assert len(delays.seen) == len(caps)
    for delay, cap in zip(delays.seen, caps, strict=True):
        assert cap / 2 <= delay <= cap
    assert len(set(delays.seen)) == len(caps)  # jittered
    assert reflector.errors == 9
    assert reflector.last_error is None  # cleared by the successful list
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # Logged when the error changes, not on every retry.
    assert len(warnings) == 4
    assert "HTTP 500: injected failure" in warnings[0]


async def test_unknown_node_names_are_missing_data(api, run):
    api.put("pods", bound("ghost-pod", "ghost"))  # bound to a node the cache does not know
    r = run()
    await until(lambda: r.source.synced and r.source.publications > 0)
    snap = r.store.current.snapshot
    assert "ghost" not in snap.index
    assert r.placed_cpu() == 0.0
    rules = r.store.current.policy.rules
    pod = decode_pod(msgspec.json.encode(make_pod("incoming", priority=5000)))
    e = evaluate(pod, Candidates(["n1", "ghost"]), snap, rules, NOW)
    assert e.columns.tolist()[1] == -1
    assert bool(e.keep[1])  # not an error, not a rejection: no data
    assert e.explain(1)["known"] is False


async def test_estimation_change_relists_pods(api, run):
    api.put("pods", bound("a", "n1", cpu="1"))
    r = run()
    await until(lambda: r.source.synced)
    assert r.cache.estimate("uid-default-a") == (1.0, 1 * GiB)
    policy = embedded_default()
    rules = dataclasses.replace(policy.rules, estimation=Estimation(requests_factor=2.0))
    r.store.set_policy(dataclasses.replace(policy, rules=rules))
    await until(lambda: r.source.pods.lists == 2)
    assert r.cache.estimate("uid-default-a") == (2.0, 2 * GiB)
    assert r.source.nodes.lists == 1

"""The cluster cache's list+watch against the real kube-apiserver (part of issue 18): paging, a
watch that ends and resumes from its resourceVersion, and a list whose continue token expires
after an etcd compaction. (Bookmarks stay against the fake: kube-apiserver v1.28 sends them
without guarantee, and a watch here went 30 s without one.)

The cache's own ``kubernetes.aio`` list calls are wrapped only to record the arguments of each
request; everything else is the real API. Faults a real apiserver cannot be made to produce
(stalled or cut streams, injected HTTP errors) stay in tests/test_cluster_watch.py against
tests/fake_apiserver.py.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config

from extender.cluster import ClusterSettings, ClusterSource
from extender.policy import embedded_default
from extender.store import SnapshotStore
from tests.e2e.harness import Scenario, Session

FAST = ClusterSettings(
    publish_interval_s=0.001, tick_s=0.05, read_timeout_s=30.0, freeze_gc_after_sync=False
)
LIMIT_S = 30.0
"""Bound on each wait: the API answers in milliseconds; this only turns a hang into a failure."""
SSL_SHUTDOWN_S = 0.25
"""After closing an aiohttp client whose connections are TLS, the transports finish closing on
later loop turns; aiohttp's documentation ("Graceful Shutdown") gives them 250 ms before the loop
ends, or they are reported unclosed (a ResourceWarning, an error here)."""


async def until(
    condition: Callable[[], bool], limit: float = LIMIT_S, explain: Callable[[], str] = str
) -> None:
    try:
        async with asyncio.timeout(limit):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not true within {limit:g}s: {explain()}") from None


class Recorded:
    """A list call of the API, with the arguments of every request it made."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call
        self.requests: list[dict[str, Any]] = []
        self.before: Callable[[dict[str, Any]], Any] | None = None

    async def __call__(self, **kwargs: Any) -> Any:
        self.requests.append(kwargs)
        if self.before is not None:
            await self.before(kwargs)
        return await self.call(**kwargs)

    def lists(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if not r.get("watch")]

    def watches(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r.get("watch")]


@dataclasses.dataclass
class Running:
    source: ClusterSource
    pods_call: Recorded
    delays: list[float]

    def ours(self, namespace: str) -> set[str]:
        return {r.name for r in self.source.cache.pods.values() if r.namespace == namespace}


@pytest.fixture
async def run(e2e: Session) -> AsyncIterator[Callable[[ClusterSettings], Any]]:
    started: list[tuple[ClusterSource, k8s.ApiClient]] = []

    async def start(settings: ClusterSettings = FAST) -> Running:
        conf = k8s.Configuration()
        await k8s_config.load_kube_config(
            config_file=str(e2e.cp.kubeconfig), client_configuration=conf, persist_config=False
        )
        api = k8s.ApiClient(conf)
        core = k8s.CoreV1Api(api)
        pods_call = Recorded(core.list_pod_for_all_namespaces_without_preload_content)
        delays: list[float] = []

        async def sleep(delay: float) -> None:
            delays.append(delay)
            await asyncio.sleep(0)

        source = ClusterSource(
            SnapshotStore(embedded_default()),
            core.list_node_without_preload_content,
            pods_call,
            settings,
            sleep=sleep,
            rng=random.Random(7),
        )
        source.start()
        started.append((source, api))
        return Running(source, pods_call, delays)

    yield start
    for source, api in started:
        for task in source.tasks:
            task.cancel()
        await asyncio.gather(*source.tasks, return_exceptions=True)
        await api.close()
    if started:
        await asyncio.sleep(SSL_SHUTDOWN_S)


def _bound_pods(sc: Scenario, node: str, count: int, prefix: str = "p") -> list[str]:
    return sc.create_pods([(f"{prefix}{i}", "batch", {"node_name": node}) for i in range(count)])


async def test_real_list_in_pages_then_watch_updates_the_cache(scenario: Scenario, run) -> None:
    sc = scenario
    node = sc.node("n", 0.1)
    _bound_pods(sc, node, 5)
    sc.pod("pending", "batch", cpu="64")  # never fits: unbound, outside the field selector
    r = await run(dataclasses.replace(FAST, page_size=2))
    await until(lambda: r.source.synced and len(r.pods_call.watches()) == 1)
    assert r.ours(sc.namespace) == {f"p{i}" for i in range(5)}
    lists = r.pods_call.lists()
    assert len(lists) >= 3  # at least our 5 pods, two a page
    assert all(q["limit"] == 2 for q in lists)
    assert "_continue" not in lists[0]
    assert all(q.get("_continue") for q in lists[1:])
    assert r.source.pods.lists == 1

    sc.pod("added", "batch", node_name=node)  # ADDED
    await until(lambda: "added" in r.ours(sc.namespace))
    sc.core.delete_namespaced_pod("p0", sc.namespace, grace_period_seconds=0)  # DELETED
    await until(lambda: "p0" not in r.ours(sc.namespace))
    # A pod that finishes leaves the field selector: the watch says DELETED.
    sc.core.patch_namespaced_pod_status("p1", sc.namespace, {"status": {"phase": "Succeeded"}})
    await until(lambda: "p1" not in r.ours(sc.namespace))
    assert r.ours(sc.namespace) == {"p2", "p3", "p4", "added"}
    assert r.source.pods.lists == 1  # all through the watch
    assert r.delays == []


async def test_real_watch_ends_and_resumes_from_its_resource_version(
    scenario: Scenario, run
) -> None:
    sc = scenario
    node = sc.node("n", 0.1)
    # The API ends each watch after timeoutSeconds (2-3 s here); the cache resumes it.
    r = await run(dataclasses.replace(FAST, watch_timeout_s=2))
    await until(lambda: r.source.synced and len(r.pods_call.watches()) >= 2)
    _bound_pods(sc, node, 1, "later")
    await until(lambda: len(r.pods_call.watches()) >= 4 and "later0" in r.ours(sc.namespace))
    versions = [int(q["resource_version"]) for q in r.pods_call.watches()]
    assert versions == sorted(versions), versions  # each resumes where the last left off
    assert r.source.pods.lists == 1  # resumed, never relisted
    assert r.delays == []  # a stream the server ended is not a failure


async def test_real_continue_token_expired_by_compaction_restarts_the_list(
    e2e: Session, scenario: Scenario, run
) -> None:
    sc = scenario
    node = sc.node("n", 0.1)
    _bound_pods(sc, node, 5)
    compacted: list[int] = []

    async def compact_once(kwargs: dict[str, Any]) -> None:
        if kwargs.get("_continue") and not compacted:
            # A write moves etcd's revision past the token's; compacting to it expires the token.
            sc.touch_node(node)
            header = e2e.cp.etcd_post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
            revision = int(header["header"]["revision"])
            e2e.cp.etcd_post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
            compacted.append(revision)

    r = await run(dataclasses.replace(FAST, page_size=2))
    r.pods_call.before = compact_once
    await until(lambda: r.source.synced)
    pages = [q.get("_continue") for q in r.pods_call.lists()]
    assert compacted
    assert pages[0] is None
    assert pages[1] is not None  # page 2 came back 410: the token was compacted away ...
    assert pages[2] is None  # ... so the list started over, and completed
    assert r.ours(sc.namespace) == {f"p{i}" for i in range(5)}
    assert r.delays == []

"""The source interface: the registry, what each source is built from, and the cluster view.

The cluster view is the real cluster source, listing and watching the loopback API stand-in
(``tests/fake_apiserver.py``) through the real ``kubernetes.aio`` client.
"""

from __future__ import annotations

import asyncio
import logging
import random
import typing
from collections.abc import Mapping
from pathlib import Path

import pytest
from kubernetes.aio import client as k8s
from prometheus_client import CollectorRegistry

from extender.cluster import ClusterSettings, ClusterSource, cluster_source
from extender.policy import embedded_default, load_text
from extender.policy.model import MetricsSettings
from extender.sources.base import ClusterView, Collectors, SourceContext
from extender.sources.metrics_server import MetricsServerSource
from extender.sources.prometheus import PrometheusSource, PrometheusSourceMetrics
from extender.sources.registry import NO_SOURCE, SOURCES, build_source
from extender.sources.static import StaticSource
from extender.store import SnapshotStore
from tests.builders import NOW
from tests.fake_apiserver import FakeApiServer, make_node

FAST = ClusterSettings(
    publish_interval_s=0.001, tick_s=0.05, read_timeout_s=30.0, freeze_gc_after_sync=False
)


async def until(condition: typing.Callable[[], bool], limit: float = 10.0) -> None:
    """Poll a condition; the limit only keeps a broken build from hanging."""
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.002)


def context(source: str, cluster: ClusterView | None = None, **extra: object) -> SourceContext:
    settings = MetricsSettings.model_validate({"source": source, **extra})
    store = SnapshotStore(embedded_default(), clock=lambda: NOW)
    return SourceContext(
        store, settings, Path("/policies"), Collectors(CollectorRegistry()), cluster
    )


def test_the_registry_knows_every_source_the_policy_can_name():
    allowed = typing.get_args(MetricsSettings.model_fields["source"].annotation)
    assert set(SOURCES) | {NO_SOURCE} == set(allowed)


def test_each_source_is_built_from_the_context(caplog):
    static = build_source(context("static", static={"file": "m.yaml", "refreshInterval": "30s"}))
    assert isinstance(static, StaticSource)
    assert static.path == Path("/policies/m.yaml")  # relative to the policy's folder
    assert static.interval == 30.0
    prom = build_source(context("prometheus"))
    assert isinstance(prom, PrometheusSource)
    assert build_source(context(NO_SOURCE)) is None
    with caplog.at_level(logging.WARNING):
        assert build_source(context("metrics-server")) is None  # no Kubernetes API
    assert "metrics-server source needs the Kubernetes API" in caplog.text
    for source in (static, prom):  # that each is a Source is checked by mypy on the registry
        assert source.produces == {"nodes"}
        assert all(callable(getattr(source, m)) for m in ("start", "run", "close"))


def test_source_metrics_are_registered_once_per_registry():
    collectors = Collectors(CollectorRegistry())
    first = collectors.get(PrometheusSourceMetrics)
    assert collectors.get(PrometheusSourceMetrics) is first  # a second would raise: duplicate
    ctx = context("prometheus")
    ctx = SourceContext(ctx.store, ctx.settings, None, collectors)
    a, b = build_source(ctx), build_source(ctx)
    assert isinstance(a, PrometheusSource)
    assert isinstance(b, PrometheusSource)
    assert a.metrics is b.metrics is first


@pytest.fixture
async def api():
    server = FakeApiServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def cluster(api):
    store = SnapshotStore(embedded_default(), clock=lambda: NOW)
    source = cluster_source(
        store, k8s.Configuration(host=api.url), FAST, clock=lambda: NOW, rng=random.Random(7)
    )
    yield source
    for task in source.tasks:
        task.cancel()
    await asyncio.gather(*source.tasks, return_exceptions=True)


async def test_the_cluster_source_is_a_cluster_view(api, cluster: ClusterSource):
    view: ClusterView = cluster  # checked by mypy too
    assert isinstance(view.api_client, k8s.ApiClient)
    seen: list[Mapping[str, str]] = []
    unwatch = view.watch_addresses(seen.append)
    assert seen == []  # nothing published yet
    assert not await view.wait_nodes_published(0.01)

    api.put("nodes", make_node("n1", address="10.0.0.1"))
    cluster.start()
    assert await view.wait_nodes_published(10.0)
    await until(lambda: len(seen) == 1)
    assert seen[-1] == {"10.0.0.1": "n1", "n1": "n1"}  # InternalIP and Hostname

    # A label change is not an address change: no call. A new node is.
    api.put("nodes", make_node("n1", address="10.0.0.1", labels={"x": "y"}))
    api.put("nodes", make_node("n2", address="10.0.0.2"))
    await until(lambda: "n2" in cluster.cache.nodes and cluster.publications >= 2)
    await until(lambda: len(seen) == 2)
    assert seen[-1] == {"10.0.0.1": "n1", "n1": "n1", "10.0.0.2": "n2", "n2": "n2"}

    # A node that changes its address: the old one maps to nothing.
    api.put("nodes", make_node("n2", address="10.0.0.9"))
    await until(lambda: "10.0.0.9" in seen[-1])
    assert "10.0.0.2" not in seen[-1]

    # A late listener gets the map at once; after unwatch, no more calls.
    late: list[Mapping[str, str]] = []
    view.watch_addresses(late.append)
    assert late == [seen[-1]]
    unwatch()
    calls = len(seen)
    api.delete("nodes", "n2")
    await until(lambda: "10.0.0.9" not in late[-1])
    assert len(seen) == calls


async def test_prometheus_follows_the_cluster_addresses_until_closed(api, cluster):
    api.put("nodes", make_node("n1", address="10.0.0.1"))
    cluster.start()
    source = build_source(context("prometheus", cluster))
    assert isinstance(source, PrometheusSource)
    await until(lambda: source.addresses.get("10.0.0.1") == "n1")
    await source.close()
    await source.close()  # twice is fine
    api.put("nodes", make_node("n9", address="10.0.0.9"))
    await until(lambda: "n9" in cluster.cache.nodes and cluster.cache.addresses().get("n9") == "n9")
    await until(lambda: cluster.publications >= 2)
    assert "10.0.0.9" not in source.addresses  # no longer listening


async def test_metrics_server_is_built_on_the_clusters_api_client(cluster):
    source = build_source(context("metrics-server", cluster))
    assert isinstance(source, MetricsServerSource)
    assert source.fetch.func.__self__.api_client is cluster.api_client  # type: ignore[attr-defined]
    assert source.nodes_published == cluster.wait_nodes_published


async def test_the_server_restarts_the_source_only_when_the_metrics_settings_change():
    from extender.server.run import Sources

    static = embedded_default()
    text = (static.base_dir / "policy.yaml").read_text()  # type: ignore[operator]
    none = load_text(text.replace("source: static", "source: none"), "none.yaml")
    store = SnapshotStore(static, clock=lambda: NOW)
    sources = Sources(store, CollectorRegistry())
    await sources.start(static)
    first = sources.source
    assert isinstance(first, StaticSource)
    assert first.reads_ok == 1  # the first read is made before start() returns
    assert store.current.snapshot.source_ok_at is not None
    [task] = sources.tasks

    await sources.on_reload(static, static)  # same settings: nothing happens
    assert sources.source is first
    assert sources.tasks == [task]

    await sources.on_reload(static, none)
    assert sources.source is None
    assert sources.tasks == []
    assert task.cancelled()

    await sources.on_reload(none, static)
    assert isinstance(sources.source, StaticSource)
    assert sources.source is not first
    await sources.stop()
    assert sources.tasks == []

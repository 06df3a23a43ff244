"""Per-pod usage from metrics-server, through the real ``kubernetes.aio`` client.

A stand-in: there is no kube-apiserver aggregating a metrics-server on these machines, and a
real metrics-server cannot be told what usage to report. A loopback aiohttp server speaks the
two calls the source makes (``GET /apis/metrics.k8s.io/v1beta1/nodes`` and ``.../pods``, as
the metrics API serves them); the real client of the ``kubernetes`` package talks to it over
HTTP. Pods are matched to a real cluster cache (a :class:`ClusterSource` filled from API-shaped
pods) and the table goes to a real store.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import pytest
import yaml
from aiohttp import web
from kubernetes.aio import client as k8s

from extender.cluster import ClusterSource
from extender.cluster.decode import decode_node, decode_pod
from extender.core import Estimation
from extender.policy import API_VERSION, load_text
from extender.sources.metrics_server import MetricsServerSource, parse_pod_metrics
from extender.store import SnapshotStore
from tests.fake_apiserver import make_node, make_pod

NOW = 1_800_000_000.0
TS = datetime.fromtimestamp(NOW - 10, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
GiB = 2**30
MiB = 2**20


def pod_metrics(ns: str, name: str, *containers: tuple[str, str], ts: str = TS) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": ts},
        "timestamp": ts,
        "window": "15.2s",
        "containers": [
            {"name": f"c{i}", "usage": {"cpu": cpu, "memory": mem}}
            for i, (cpu, mem) in enumerate(containers)
        ],
    }


class MetricsAPI:
    """The stand-in metrics API: NodeMetrics and PodMetrics lists, or an error status."""

    def __init__(self) -> None:
        self.nodes = [
            {"metadata": {"name": "a"}, "timestamp": TS, "usage": {"cpu": "1", "memory": "4Gi"}}
        ]
        self.pods = [
            pod_metrics("shop", "web-1", ("250m", "300Mi"), ("50000000n", "50Mi")),
            pod_metrics("blog", "db-0", ("1500m", "4Gi")),
            pod_metrics("blog", "ghost-1", ("100m", "100Mi")),  # not in the cache
            pod_metrics("shop", "bad-1", ("lots", "1Gi")),  # a quantity that does not parse
        ]
        self.pod_status = 200

    async def nodes_handler(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "NodeMetricsList", "items": self.nodes})

    async def pods_handler(self, request: web.Request) -> web.Response:
        if self.pod_status != 200:
            return web.json_response({"kind": "Status", "message": "nope"}, status=self.pod_status)
        return web.json_response({"kind": "PodMetricsList", "items": self.pods})


def policy(enabled: bool = True) -> Any:
    doc = {
        "apiVersion": API_VERSION,
        "kind": "PriorityPolicy",
        "metrics": {
            "source": "metrics-server",
            "maxAge": "60s",
            "metricsServer": {"pods": {"enabled": enabled}},
        },
        "tiers": [{"name": "standard", "filter": {"cpu": 0.95}}],
    }
    return load_text(yaml.safe_dump(doc), "test-policy.yaml")


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def bed(aiohttp_server):
    api = MetricsAPI()
    app = web.Application()
    app.router.add_get("/apis/metrics.k8s.io/v1beta1/nodes", api.nodes_handler)
    app.router.add_get("/apis/metrics.k8s.io/v1beta1/pods", api.pods_handler)
    server = await aiohttp_server(app)
    api_client = k8s.ApiClient(k8s.Configuration(host=str(server.make_url("")).rstrip("/")))
    custom = k8s.CustomObjectsApi(api_client)
    fetch, fetch_pods = (
        functools.partial(
            custom.list_cluster_custom_object_without_preload_content,
            "metrics.k8s.io",
            "v1beta1",
            plural,
        )
        for plural in ("nodes", "pods")
    )
    clock = Clock()
    store = SnapshotStore(policy(), clock)
    tables: list[Any] = []
    set_pod_usage = store.set_pod_usage

    def recording(usage: Any, ok_at: float) -> None:
        tables.append(usage)
        set_pod_usage(usage, ok_at)

    store.set_pod_usage = recording  # type: ignore[method-assign]

    async def never(**_: Any) -> Any:
        raise AssertionError("nothing is listed here")

    cluster = ClusterSource(store, never, never, clock=clock)
    enc = msgspec.json.encode
    name, _, node = decode_node(enc(make_node("a", cpu="8", memory="32Gi")))
    cluster.cache.put_node(name, node)
    cluster.cache.set_nodes_listed()
    for ns, pod in (("shop", "web-1"), ("blog", "db-0"), ("shop", "bad-1")):
        uid, _, rec = decode_pod(enc(make_pod(pod, namespace=ns, node="a")), Estimation())
        cluster.cache.put_pod(uid, rec)
    cluster.publish()
    source = MetricsServerSource(
        store, fetch, 15, 5, clock=clock, fetch_pods=fetch_pods, cluster=cluster
    )
    yield api, source, store, tables, clock, cluster
    await api_client.close()


def _table(usage: Any) -> dict[str, tuple[float, float]]:
    return {
        uid.removeprefix("uid-"): (float(usage.usage[0, i]), float(usage.usage[1, i]))
        for i, uid in enumerate(usage.uids)
    }


async def test_pod_metrics_are_summed_over_containers_and_matched(bed):
    _api, source, _store, tables, _clock, _ = bed
    assert await source.refresh()
    table = _table(tables[-1])
    assert set(table) == {"shop-web-1", "blog-db-0", "shop-bad-1"}
    assert table["shop-web-1"] == pytest.approx((0.3, 350.0 * MiB))
    assert table["blog-db-0"] == pytest.approx((1.5, 4.0 * GiB))
    cpu, memory = table["shop-bad-1"]
    assert math.isnan(cpu)  # its cpu did not parse: rejected; its memory stands
    assert memory == 1.0 * GiB
    assert tables[-1].unknown == 2  # ghost-1, once per resource
    assert tables[-1].sampled_at[0, 0] == NOW - 10
    assert source.pods.results == {"cpu": "ok", "memory": "ok"}


async def test_a_failed_pod_list_keeps_nodes_and_ages_the_pods(bed):
    api, source, _store, tables, clock, _ = bed
    assert await source.refresh()
    api.pod_status = 503
    assert await source.refresh()  # the node samples refresh regardless
    assert source.pods_error is not None
    assert "503" in source.pods_error
    assert len(tables[-1]) == 3  # the last good samples, still fresh
    clock.now = NOW + 51  # the samples were taken at NOW - 10: now 61 s old
    assert await source.refresh()
    assert len(tables[-1]) == 0


async def test_stale_pod_metrics_are_rejected(bed):
    api, source, _store, tables, _clock, _ = bed
    old = datetime.fromtimestamp(NOW - 120, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    api.pods = [pod_metrics("shop", "web-1", ("1", "1Gi"), ts=old)]
    assert await source.refresh()
    assert len(tables[-1]) == 0
    assert source.pods.results["cpu"] == "ok"  # answered; its one sample was stale


async def test_switched_off_makes_no_pod_call(bed):
    api, source, store, tables, _clock, _ = bed
    store.set_policy(policy(enabled=False))
    api.pod_status = 500  # would be an error if it were called
    assert await source.refresh()
    assert tables == []
    assert source.pods_error is None


def test_parse_rejects_what_is_not_a_pod_metrics_list():
    from extender.sources.metrics_server import MetricsServerError

    with pytest.raises(MetricsServerError, match="not a PodMetricsList"):
        parse_pod_metrics(b'{"items": 5}')
    empty = parse_pod_metrics(b'{"items": []}')
    assert empty.names == []


async def test_the_pod_list_is_decoded_and_matched_in_a_worker_thread(bed, monkeypatch):
    import threading

    from extender.sources import metrics_server

    _api, source, _store, tables, _clock, _ = bed
    threads: list[int] = []
    parse = metrics_server.parse_pod_metrics

    def watched(body: bytes) -> Any:
        threads.append(threading.get_ident())
        return parse(body)

    monkeypatch.setattr(metrics_server, "parse_pod_metrics", watched)
    assert await source.refresh()
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()  # not the event loop's thread
    assert set(_table(tables[-1])) == {"shop-web-1", "blog-db-0", "shop-bad-1"}


def test_a_pod_list_decoded_in_pieces_is_the_list_decoded_whole(monkeypatch):
    from extender.sources import metrics_server, pods

    items = [
        pod_metrics(
            f"ns-{i % 5}", f"p-{i}", (f"{i}m", f"{i}Mi"), ("1m", "bad" if i == 7 else "1Mi")
        )
        for i in range(400)
    ]
    items[3]["containers"] = []  # no containers: no usage
    body = msgspec.json.encode({"kind": "PodMetricsList", "items": items})
    monkeypatch.setattr(pods.split_array, "__defaults__", (512,))
    spans: list[Any] = []

    def split(*args: Any) -> Any:
        spans.append(pods.split_array(*args))
        return spans[-1]

    monkeypatch.setattr(metrics_server, "split_array", split)
    pieces = metrics_server.parse_pod_metrics(body)
    assert spans[0] is not None
    assert len(spans[0]) > 100  # decoded in pieces indeed
    monkeypatch.setattr(metrics_server, "split_array", lambda *a, **k: None)
    whole = metrics_server.parse_pod_metrics(body)
    for field in ("namespaces", "names"):
        assert getattr(pieces, field) == getattr(whole, field)
    for field in ("cpu", "memory", "timestamps", "bad_cpu", "bad_memory"):
        assert np.array_equal(getattr(pieces, field), getattr(whole, field), equal_nan=True)
    assert whole.bad_memory.tolist().count(True) == 1
    assert math.isnan(whole.cpu[3])


async def test_a_pod_list_of_megabytes_is_read_whole(bed):
    # ``content.read(n)`` returns what has arrived so far: a list bigger than the first chunks
    # used to be cut short and fail to decode. 4,000 pods are about 1.3 MB.
    api, source, _store, tables, _clock, _ = bed
    api.pods += [pod_metrics("filler", f"p-{i}", ("1m", "1Mi")) for i in range(4000)]
    assert await source.refresh()
    assert source.pods_error is None
    assert set(_table(tables[-1])) == {"shop-web-1", "blog-db-0", "shop-bad-1"}
    assert tables[-1].unknown == 2 * (1 + 4000)  # ghost-1 and the fillers, once per resource

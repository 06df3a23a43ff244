"""The metrics-server source, through the real ``kubernetes.aio`` client.

There is no kube-apiserver (nor metrics-server) on these machines: a loopback aiohttp server
stands in for ``GET /apis/metrics.k8s.io/v1beta1/nodes``, the only call the source makes, and the
real client of the ``kubernetes`` package talks to it over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes.aio import client as k8s
from prometheus_client import CollectorRegistry

from extender.core import NodeInfo, Sample
from extender.policy import embedded_default, load_file
from extender.sources.metrics_server import MetricsServerSource, parse_node_metrics
from extender.store import SnapshotStore
from tests.builders import NOW, GiB, fixture_json

TS = "2027-01-15T08:00:00Z"
TS_EPOCH = 1_800_000_000.0  # the same instant, in seconds since the epoch


def node_metrics(name: str, cpu: str, memory: str, ts: str = TS) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": ts},
        "timestamp": ts,
        "window": "20.05s",
        "usage": {"cpu": cpu, "memory": memory},
    }


class MetricsAPI:
    def __init__(self) -> None:
        self.items = [
            node_metrics("a", "1500m", "4Gi"),
            node_metrics("b", "250000000n", "8388608Ki"),
            node_metrics("unknown", "1", "1Gi"),  # no allocatable known: no sample
        ]
        self.status = 200
        self.hang = asyncio.Event()
        self.hanging = False
        self.calls = 0
        self.error_text = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.hanging:
            await self.hang.wait()
        if self.status != 200:
            if self.error_text:
                return web.Response(text=self.error_text, status=self.status)
            return web.json_response({"kind": "Status", "message": "nope"}, status=self.status)
        return web.json_response({"kind": "NodeMetricsList", "items": self.items})


@pytest.fixture
async def api(aiohttp_server):
    m = MetricsAPI()
    app = web.Application()
    app.router.add_get("/apis/metrics.k8s.io/v1beta1/nodes", m.handle)
    server = await aiohttp_server(app)
    conf = k8s.Configuration(host=str(server.make_url("")).rstrip("/"))
    api_client = k8s.ApiClient(conf)
    custom = k8s.CustomObjectsApi(api_client)
    m.fetch = functools.partial(  # type: ignore[attr-defined]
        custom.list_cluster_custom_object_without_preload_content,
        "metrics.k8s.io",
        "v1beta1",
        "nodes",
    )
    yield m
    m.hang.set()
    await api_client.close()


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll a condition; the limit only keeps a broken build from hanging."""
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.002)


def store() -> SnapshotStore:
    s = SnapshotStore(embedded_default(), clock=lambda: NOW)
    s.set_nodes([NodeInfo("a", 4.0, 16 * GiB), NodeInfo("b", 2.0, 32 * GiB)])
    return s


async def test_refresh_turns_usage_into_utilization(api):
    st = store()
    source = MetricsServerSource(st, api.fetch, 15, 5, clock=lambda: NOW)
    assert await source.refresh()
    snap = st.current.snapshot
    a, b = snap.index["a"], snap.index["b"]
    assert snap.values[:, a].tolist() == [1.5 / 4, 4 / 16]
    assert snap.values[:, b].tolist() == [0.25 / 2, 8 / 32]
    assert snap.sampled_at[0, a] == TS_EPOCH  # the sample's own time, for staleness
    assert snap.source_ok_at == NOW
    assert "unknown" not in snap.index
    assert source.skipped == {"unknown_allocatable": 1}


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("status", "HTTP 503"),
        ("garbage", "not a NodeMetricsList"),
        ("empty", "no usable node metrics"),
        ("hang", "TimeoutError"),
    ],
)
async def test_faults_keep_the_last_samples(api, fault, message, caplog):
    st = store()
    source = MetricsServerSource(st, api.fetch, 15, 0.3, clock=lambda: NOW)
    assert await source.refresh()
    good = st.current
    if fault == "status":
        api.status = 503
    elif fault == "garbage":
        api.items = [{"metadata": {"name": 5}}]
    elif fault == "empty":
        api.items = []
    else:
        api.hanging = True
    assert not await source.refresh()
    assert st.current is good
    assert message in (source.last_error or "")
    assert "keeping the last samples" in caplog.text


def test_parse_checks_every_item():
    alloc = {"a": (4.0, 16.0 * GiB), "b": (2.0, 8.0 * GiB), "c": (2.0, 8.0 * GiB)}
    body = json.dumps(
        {
            "items": [
                node_metrics("a", "2", "8Gi"),
                node_metrics("b", "lots", "1Gi"),  # bad cpu: memory still counts
                node_metrics("c", "100", "1Gi"),  # 50 x allocatable: broken
                node_metrics("a", "1", "1Gi"),  # duplicate: both dropped
                node_metrics("d", "1", "1Gi", ts="yesterday"),
                {"metadata": {}, "usage": {}},
            ]
        }
    ).encode()
    samples, skipped = parse_node_metrics(body, alloc.get)
    assert samples == {
        "b": {"memory": Sample(1 / 8, TS_EPOCH)},
        "c": {"memory": Sample(1 / 8, TS_EPOCH)},
    }
    assert skipped == {
        "bad_quantity": 1,
        "out_of_range": 1,
        "duplicate": 1,
        "bad_timestamp": 1,
        "no_name": 1,
    }


async def test_run_refreshes_on_its_interval_with_jitter(api):
    st = store()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise asyncio.CancelledError

    source = MetricsServerSource(
        st, api.fetch, 10, 5, sleep=sleep, rand=iter([0.0, 0.5, 1.0]).__next__
    )
    with pytest.raises(asyncio.CancelledError):
        await source.run()
    assert waits == pytest.approx([9.0, 10.0, 11.0])
    assert source.refreshes_ok == 2


async def test_the_first_refresh_waits_for_the_node_list(api):
    """No fixed delay: start() leaves the first read to run(), which makes it as soon as the
    cluster's node list is in the store, not before."""
    st = store()
    listed = asyncio.Event()
    waiting: list[float] = []

    async def nodes_published(timeout: float) -> bool:
        waiting.append(timeout)
        await listed.wait()
        return True

    async def sleep(seconds: float) -> None:
        await asyncio.Event().wait()  # the loop's next wait: park here

    source = MetricsServerSource(st, api.fetch, 15, 5, sleep=sleep, nodes_published=nodes_published)
    await source.start()
    assert api.calls == 0  # start-up does not wait for the Kubernetes API
    task = asyncio.create_task(source.run())
    try:
        await until(lambda: waiting == [30.0])  # NODES_WAIT_S: bounded
        assert api.calls == 0
        assert source.refreshes_ok == 0
        listed.set()
        await until(lambda: source.refreshes_ok == 1)
        assert api.calls == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_node_list_that_never_comes_is_logged_and_the_refresh_made(api, caplog):
    st = store()

    async def never(timeout: float) -> bool:
        return False  # what ClusterSource.wait_nodes_published says when the bound expires

    async def stop(seconds: float) -> None:
        raise asyncio.CancelledError

    source = MetricsServerSource(st, api.fetch, 15, 5, sleep=stop, nodes_published=never)
    with caplog.at_level(logging.WARNING), pytest.raises(asyncio.CancelledError):
        await source.run()
    assert "no node list from the Kubernetes API after 30s" in caplog.text
    assert api.calls == 1
    assert source.refreshes_ok == 1  # this store knows the nodes anyway


async def test_an_error_body_is_logged_short_and_escaped(api, caplog):
    st = store()
    source = MetricsServerSource(st, api.fetch, 15, 5, clock=lambda: NOW)
    api.status = 500
    api.error_text = "line one\n\x1b[31mERROR forged line\x1b[0m\r\n" + "x" * 5000
    with caplog.at_level(logging.ERROR):
        assert not await source.refresh()
    logged = caplog.records[-1].getMessage()
    assert "\n" not in logged
    assert "\x1b" not in logged
    assert "\\x1b[31m" in logged
    assert len(logged) < 400


class ApiWithMetrics:
    """Stand-in for kube-apiserver with metrics-server's API registered (aggregated)."""

    @staticmethod
    def make(usage: dict[str, tuple[str, str]]):
        from tests.fake_apiserver import FakeApiServer

        class Fake(FakeApiServer):
            def app(self) -> web.Application:
                app = super().app()

                async def metrics(request: web.Request) -> web.Response:
                    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    items = [node_metrics(n, c, m, now) for n, (c, m) in usage.items()]
                    return web.json_response({"kind": "NodeMetricsList", "items": items})

                app.router.add_get("/apis/metrics.k8s.io/v1beta1/nodes", metrics)
                return app

        return Fake()


async def test_end_to_end_through_the_server(tmp_path, monkeypatch):
    """With the cluster cache (allocatable) and metrics-server (usage), a batch pod's filter
    rejects the node whose usage puts it over the tier ceiling; the process opens one API
    client for both and closes it once."""
    from extender.server.app import ServerSettings
    from extender.server.run import running
    from tests.fake_apiserver import make_node
    from tests.support import kubeconfig

    opened: list[object] = []
    closed: list[object] = []
    real_init, real_close = k8s.ApiClient.__init__, k8s.ApiClient.close

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        opened.append(self)
        real_init(self, *args, **kwargs)

    async def counting_close(self: Any) -> None:
        closed.append(self)
        await real_close(self)

    monkeypatch.setattr(k8s.ApiClient, "__init__", counting_init)
    monkeypatch.setattr(k8s.ApiClient, "close", counting_close)
    api = ApiWithMetrics.make({"hot": ("15", "8Gi"), "cool": ("2", "8Gi")})
    await api.start()
    for name in ("hot", "cool"):
        api.put("nodes", make_node(name, cpu="16", memory="64Gi"))
    text = (embedded_default().base_dir / "policy.yaml").read_text()  # type: ignore[operator]
    (tmp_path / "policy.yaml").write_text(text.replace("source: static", "source: metrics-server"))
    policy = load_file(tmp_path / "policy.yaml")
    settings = ServerSettings(
        host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0,
        kubernetes="auto", kubeconfig=str(kubeconfig(tmp_path, api.url)),
    )  # fmt: skip
    body = fixture_json("filter-nodecache-true.json")
    body["NodeNames"] = ["hot", "cool"]
    try:
        async with (
            running(policy, settings, CollectorRegistry()) as state,
            aiohttp.ClientSession() as http,
        ):
            store = state.extender.store
            await until(lambda: store.current.snapshot.source_ok_at is not None)
            url = f"http://127.0.0.1:{state.ports['scheduler']}/filter"
            async with http.post(url, json=body) as resp:
                reply = await resp.json()
            assert reply["NodeNames"] == ["cool"]
            assert reply["FailedAndUnresolvableNodes"] == {
                "hot": "cpu load above batch tier ceiling"
            }
            assert len(opened) == 1  # the cluster cache's, shared by metrics-server
            assert opened == [state.cluster.api_client]  # type: ignore[union-attr]
        assert closed == opened
    finally:
        await api.stop()

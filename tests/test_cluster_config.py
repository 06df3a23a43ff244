"""Where the API configuration comes from, and the cluster source inside the running server."""

from __future__ import annotations

import asyncio
import gc
import logging

import aiohttp
import pytest
from kubernetes.aio.config import incluster_config
from prometheus_client import CollectorRegistry

from extender.cluster import ClusterConfigError, load_configuration
from extender.policy import embedded_default
from extender.server.run import running
from tests.fake_apiserver import FakeApiServer, make_node, make_pod
from tests.support import kubeconfig, loopback_settings, until


@pytest.fixture
def no_cluster_env(tmp_path, monkeypatch):
    """Neither in a pod nor with a kubeconfig, whatever the machine running the tests has."""
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "no-token"))


async def test_off_and_nothing_found_mean_no_cluster_source(no_cluster_env, tmp_path):
    assert await load_configuration("off", str(kubeconfig(tmp_path, "http://x"))) is None
    assert await load_configuration("auto", environ={}) is None


async def test_explicit_kubeconfig(no_cluster_env, tmp_path):
    conf = await load_configuration("auto", str(kubeconfig(tmp_path, "http://127.0.0.1:1234")))
    assert conf is not None
    assert conf.host == "http://127.0.0.1:1234"
    with pytest.raises(ClusterConfigError, match=r"^kubeconfig .*missing: no such file$"):
        await load_configuration("auto", str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("")
    with pytest.raises(ClusterConfigError, match=r"^kubeconfig .*empty: "):
        await load_configuration("auto", str(tmp_path / "empty"))


async def test_default_kubeconfig_locations(no_cluster_env, tmp_path, monkeypatch):
    (tmp_path / ".kube").mkdir()
    kubeconfig(tmp_path / ".kube", "http://127.0.0.1:1")
    (tmp_path / ".kube" / "kubeconfig").rename(tmp_path / ".kube" / "config")
    conf = await load_configuration("auto", environ={})
    assert conf is not None
    assert conf.host == "http://127.0.0.1:1"
    other = kubeconfig(tmp_path, "http://127.0.0.1:2")
    conf = await load_configuration("auto", environ={"KUBECONFIG": str(other)})
    assert conf is not None
    assert conf.host == "http://127.0.0.1:2"


async def test_in_a_pod_without_a_token_runs_without(no_cluster_env, caplog):
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with caplog.at_level(logging.WARNING):
        assert await load_configuration("auto", environ=env) is None
    assert "service account is not usable" in caplog.text


async def test_server_is_ready_after_the_first_node_list(no_cluster_env, tmp_path):
    api = FakeApiServer()
    await api.start()
    api.put("nodes", make_node("n1"))
    api.put("pods", make_pod("p", node="n1", cpu="2"))
    api.hold_lists = asyncio.Event()  # the API server is slow to answer the lists
    settings = loopback_settings(kubernetes="auto", kubeconfig=str(kubeconfig(tmp_path, api.url)))
    try:
        async with (
            running(embedded_default(), settings, CollectorRegistry()) as state,
            aiohttp.ClientSession() as http,
        ):
            url = f"http://127.0.0.1:{state.ports['admin']}/readyz"
            async with http.get(url) as resp:
                assert resp.status == 503
                assert "first node list" in (await resp.json())["reason"]
            api.hold_lists.set()
            assert state.cluster is not None
            cluster = state.cluster
            await until(lambda: cluster.synced)
            async with http.get(url) as resp:
                assert resp.status == 200
            assert state.extender.victim_lookup("uid-default-p") == (2.0, 2**30)
            status = cluster.status()
            assert (status.nodes, status.pods, status.lists) == (1, 1, 2)
            assert status.age(status.synced_at or 0) == 0.0
            assert cluster.sizes()["cluster_pods"] == 1
            metrics_url = f"http://127.0.0.1:{state.ports['admin']}/metrics"
            async with http.get(metrics_url) as resp:
                text = await resp.text()
            assert "priority_extender_cluster_synced 1.0" in text
            assert "priority_extender_cluster_lists_total 2.0" in text
            assert "priority_extender_cluster_errors_total 0.0" in text
            assert "priority_extender_cluster_cache_age_seconds " in text
            assert 'priority_extender_cache_entries{cache="cluster_pods"} 1.0' in text
            await until(lambda: gc.get_freeze_count() > 0)  # once synced (the default)
        assert all(t.done() for t in cluster.tasks)
    finally:
        gc.unfreeze()
        await api.stop()

"""The cluster cache's PriorityClass reflector against a real kube-apiserver (etcd and
kube-apiserver v1.28.7 from ../shared/kube, started here): the list, then the watch's additions
and deletions, and what a manifest without ``spec.priority`` would be given. Without the
binaries the test is skipped with how to get them; under CI (``CI=true``) it fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config

from extender.cluster import ClusterSettings, ClusterSource
from extender.policy import embedded_default
from extender.store import SnapshotStore
from tests.e2e import assets
from tests.e2e.controlplane import ControlPlane, running_control_plane

#: Bound on each wait: the API answers in milliseconds; this only turns a hang into a failure.
LIMIT_S = 30.0
#: After closing a client whose connections are TLS, aiohttp's documented grace for the
#: transports to finish closing ("Graceful Shutdown"), or they are reported unclosed.
SSL_SHUTDOWN_S = 0.25
FAST = ClusterSettings(
    publish_interval_s=0.001, tick_s=0.05, freeze_gc_after_sync=False, priority_classes=True
)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    why = assets.missing()
    if why is not None:
        if assets.in_ci():
            pytest.fail(why)
        pytest.skip(why)
    with running_control_plane(Path(tmp_path_factory.mktemp("plane"))) as cp:
        yield cp


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(LIMIT_S):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
async def api(plane: ControlPlane) -> AsyncIterator[k8s.ApiClient]:
    conf = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(plane.kubeconfig), client_configuration=conf, persist_config=False
    )
    client = k8s.ApiClient(conf)
    yield client
    await client.close()
    await asyncio.sleep(SSL_SHUTDOWN_S)


def _priority_class(name: str, value: int, default: bool = False) -> k8s.V1PriorityClass:
    return k8s.V1PriorityClass(
        metadata=k8s.V1ObjectMeta(name=name), value=value, global_default=default
    )


async def test_priority_classes_are_listed_and_watched(api: k8s.ApiClient) -> None:
    scheduling = k8s.SchedulingV1Api(api)
    core = k8s.CoreV1Api(api)
    await scheduling.create_priority_class(_priority_class("production-high", 1000000))
    source = ClusterSource(
        SnapshotStore(embedded_default()),
        core.list_node_without_preload_content,
        core.list_pod_for_all_namespaces_without_preload_content,
        FAST,
        list_priority_classes=scheduling.list_priority_class_without_preload_content,
    )
    classes = source.priority_classes
    assert classes.resolve("production-high") is None  # nothing known before the list
    task = source.start()
    try:
        await until(lambda: classes.synced)
        assert classes.resolve("production-high") == 1000000
        # the API's own classes come with the list
        assert classes.resolve("system-cluster-critical") == 2000000000
        assert classes.resolve("nope") is None  # admission would refuse such a pod
        assert classes.resolve("") == 0  # no globalDefault class: admission gives 0
        # the watch: a globalDefault class added, then production-high deleted
        await scheduling.create_priority_class(_priority_class("standard", 500, default=True))
        await until(lambda: classes.resolve("") == 500)
        await scheduling.delete_priority_class("production-high")
        await until(lambda: classes.resolve("production-high") is None)
        assert source.classes is not None
        assert source.classes.lists == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await scheduling.delete_priority_class("standard")


def test_off_by_default_and_then_no_third_reflector() -> None:
    assert ClusterSettings().priority_classes is False

    async def never(**_: object) -> object:
        raise AssertionError("not called")

    source = ClusterSource(SnapshotStore(embedded_default()), never, never)
    assert source.classes is None
    assert source.priority_classes.resolve("") is None

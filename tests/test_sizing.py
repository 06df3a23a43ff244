"""One pod-sizing rule: kube-scheduler's, used by the wire codec, the cluster cache, the preempt
decoder and the simulator's capture alike (``extender.core.pod_footprint``)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from extender.cluster.decode import PodDecoder
from extender.core import ContainerResources, Estimation, PodInfo, estimate_pod, pod_requests
from extender.simulate.capture import pod_requests as capture_requests
from extender.wire import decode_pod, decode_preempt

GiB = 2**30
MiB = 2**20
EST = Estimation()


def _c(cpu: float, mem: float = 0.0, restartable: bool = False) -> ContainerResources:
    return ContainerResources(cpu_request=cpu, memory_request=mem, restartable=restartable)


@pytest.mark.parametrize(
    ("containers", "init", "expected"),
    [
        # App containers add up.
        ([_c(1), _c(0.5)], [], 1.5),
        # An ordinary init container runs alone: the larger of it and the app containers.
        ([_c(1)], [_c(2)], 2.0),
        ([_c(1)], [_c(0.5)], 1.0),
        # A sidecar runs beside the app containers: it adds up with them.
        ([_c(1)], [_c(0.5, restartable=True)], 1.5),
        # An init container after a sidecar runs beside it: 0.5 + 2 = 2.5 > 1 + 0.5.
        ([_c(1)], [_c(0.5, restartable=True), _c(2)], 2.5),
        # An init container before the sidecar runs alone: max(2, 1 + 0.5).
        ([_c(1)], [_c(2), _c(0.5, restartable=True)], 2.0),
        # Two sidecars, then an init step: 0.25 + 0.25 + 1.6 = 2.1 > 1 + 0.5.
        ([_c(1)], [_c(0.25, restartable=True), _c(0.25, restartable=True), _c(1.6)], 2.1),
    ],
)
def test_pod_requests_follow_kube_scheduler(containers, init, expected):
    pod = PodInfo("ns", "p", containers=tuple(containers), init_containers=tuple(init))
    assert pod_requests(pod)[0] == pytest.approx(expected)
    assert estimate_pod(pod, EST)[0] == pytest.approx(expected)  # requests times 1.0


def test_overhead_is_added_on_top():
    pod = PodInfo(
        "ns",
        "p",
        containers=(_c(1, GiB),),
        init_containers=(_c(0.5, 64 * MiB, restartable=True),),
        overhead_cpu=0.25,
        overhead_memory=32 * MiB,
    )
    assert pod_requests(pod) == pytest.approx((1.75, GiB + 96 * MiB))


def _sidecar_pod() -> dict[str, Any]:
    """App 1 CPU + a native sidecar of 500m (the issue's example)."""
    return {
        "metadata": {"name": "web", "namespace": "ns", "uid": "u-1"},
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "app", "resources": {"requests": {"cpu": "1"}}}],
            "initContainers": [
                {
                    "name": "proxy",
                    "restartPolicy": "Always",
                    "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}},
                },
                {"name": "migrate", "resources": {"requests": {"cpu": "200m"}}},
            ],
        },
        "status": {"phase": "Pending"},
    }


def test_a_sidecar_pod_is_sized_the_same_everywhere():
    """Before: 1.0 core as the incoming pod (wire), 1.5 once bound (cluster cache)."""
    raw = json.dumps(_sidecar_pod()).encode()
    incoming = estimate_pod(decode_pod(raw), EST)
    _, _, bound = PodDecoder(EST).decode(raw)
    assert bound is not None
    assert incoming[0] == pytest.approx(1.5)
    assert bound.cpu == pytest.approx(1.5)
    assert bound.request_mcpu == 1500
    assert incoming[1] == pytest.approx(bound.memory)

    spec = _sidecar_pod()["spec"]
    captured = capture_requests(
        SimpleNamespace(
            containers=[_ns(c) for c in spec["containers"]],
            initContainers=[_ns(c) for c in spec["initContainers"]],
            overhead=None,
        )
    )
    assert captured == (1500, 64 * MiB)


def test_a_preemption_victim_with_a_sidecar_frees_its_whole_footprint():
    body = json.dumps(
        {
            "Pod": _sidecar_pod(),
            "NodeNameToVictims": {"n1": {"Pods": [_sidecar_pod()], "NumPDBViolations": 0}},
            "NodeNameToMetaVictims": None,
        }
    ).encode()
    args = decode_preempt(body, EST, lambda uid: None)
    (victim,) = args.candidates[0].victims
    assert victim.cpu == pytest.approx(1.5)


def _ns(c: dict[str, Any]) -> SimpleNamespace:
    res = c.get("resources")
    return SimpleNamespace(
        restartPolicy=c.get("restartPolicy"),
        resources=SimpleNamespace(requests=res.get("requests"), limits=None) if res else None,
    )

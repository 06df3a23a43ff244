"""``simulate capture`` against a loopback stand-in for kube-apiserver and Prometheus.

There is no cluster here: a tiny aiohttp app serves what the capture reads, in the shape the real
services answer. ``/api/v1/nodes`` and ``/api/v1/pods`` stand in for kube-apiserver (lists, paged
with ``limit``/``continue``, reached through ``kubernetes.aio`` and a kubeconfig that points at
the loopback port); ``/api/v1/query`` stands in for Prometheus' instant-query API.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from extender.simulate import cli
from extender.simulate.capture import capture_scenario
from extender.simulate.engine import Simulation
from extender.simulate.scenario import load_scenario, load_text
from extender.simulate.workload import build_workload
from tests.support import cli as run_cli

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
GiB = 2**30
SEEN = web.AppKey("seen", dict)


def _node(name: str, cpu: str, memory: str, address: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": address}],
        },
    }


def _pod(
    name: str,
    node: str | None,
    cpu: str,
    memory: str,
    *,
    pcn: str = "",
    priority: int = 0,
    phase: str = "Running",
    created: str = "2027-01-15T06:00:00Z",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
        "priority": priority,
    }
    if pcn:
        spec["priorityClassName"] = pcn
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
        "spec": spec,
        "status": {"phase": phase},
    }


NODES = [
    _node("node-a", "8", "32Gi", "10.0.0.1"),
    _node("node-b", "8", "32Gi", "10.0.0.2"),
    _node("node-c", "16", "64Gi", "10.0.0.3"),
]
PODS = [
    _pod("web-1", "node-a", "2", "4Gi", pcn="production", priority=10000),
    _pod("web-2", "node-a", "2", "4Gi", pcn="production", priority=10000),
    _pod("web-3", "node-b", "1", "2Gi", pcn="production", priority=10000),
    # Created within the last hour (two of them), one of which already finished.
    _pod("job-1", "node-c", "4", "8Gi", priority=0, created="2027-01-15T07:30:00Z"),
    _pod(
        "job-2", "node-c", "4", "8Gi", priority=0, phase="Succeeded", created="2027-01-15T07:45:00Z"
    ),
    _pod("pending", None, "1", "1Gi", pcn="production", priority=10000),
]
CPU = {"node-a": 0.70, "node-b": 0.20}  # node-c only by its instance label, below
MEMORY = {"node-a": 0.40, "node-b": 0.30, "node-c": 0.50}


def fake_cluster() -> web.Application:
    seen: dict[str, Any] = {"auth": [], "queries": []}

    def page(items: list[dict[str, Any]], request: web.Request) -> dict[str, Any]:
        seen["auth"].append(request.headers.get("Authorization"))
        limit = int(request.query.get("limit", "500"))
        start = int(request.query.get("continue") or 0)
        chunk = items[start : start + limit]
        more = start + limit < len(items)
        return {
            "kind": "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "7", "continue": str(start + limit) if more else ""},
            "items": chunk,
        }

    async def nodes(request: web.Request) -> web.Response:
        return web.json_response(page(NODES, request))

    async def pods(request: web.Request) -> web.Response:
        return web.json_response(page(PODS, request))

    async def query(request: web.Request) -> web.Response:
        q = request.query["query"]
        seen["queries"].append(q)
        if q == "cpu_query":
            result = [{"metric": {"node": n}, "value": [NOW, str(v)]} for n, v in CPU.items()] + [
                {"metric": {"instance": "10.0.0.3:9100"}, "value": [NOW, "0.9"]}
            ]
        elif q == "memory_query":
            result = [{"metric": {"node": n}, "value": [NOW, str(v)]} for n, v in MEMORY.items()]
        else:
            return web.json_response(
                {"status": "error", "errorType": "bad_data", "error": "parse error"}, status=400
            )
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    app = web.Application()
    app[SEEN] = seen
    app.router.add_get("/api/v1/nodes", nodes)
    app.router.add_get("/api/v1/pods", pods)
    app.router.add_get("/api/v1/query", query)
    return app


@pytest.fixture
async def stand_in(aiohttp_server, tmp_path):
    server = await aiohttp_server(fake_cluster())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""\
apiVersion: v1
kind: Config
clusters:
- name: loop
  cluster: {{server: "http://127.0.0.1:{server.port}"}}
users:
- name: tester
  user: {{token: test-token}}
contexts:
- name: loop
  context: {{cluster: loop, user: tester}}
current-context: loop
"""
    )
    return server, kubeconfig


async def test_capture_turns_the_cluster_into_a_valid_scenario(stand_in, monkeypatch):
    server, kubeconfig = stand_in
    monkeypatch.setattr("extender.simulate.capture.PAGE_SIZE", 2)  # exercise paging
    text = await capture_scenario(
        kubeconfig=str(kubeconfig),
        context=None,
        prometheus=f"http://127.0.0.1:{server.port}",
        cpu_query="cpu_query",
        memory_query="memory_query",
        window_s=3600,
        duration_s=1800,
        now=NOW,
    )
    seen = server.app[SEEN]
    assert seen["auth"]
    assert all(a == "Bearer test-token" for a in seen["auth"])
    assert seen["queries"] == ["cpu_query", "memory_query"]

    sc = load_text(text, "captured.yaml").document
    assert sc.duration == 1800
    groups = {g.name: (g.names, g.cpu, g.memory) for g in sc.cluster.nodes}
    assert groups == {
        "shape-0": (["node-a", "node-b"], 8.0, 32 * GiB),
        "shape-1": (["node-c"], 16.0, 64 * GiB),
    }
    tiers = {t.name: t for t in sc.tiers}
    assert set(tiers) == {"production", "priority-0"}
    assert tiers["production"].priority == 10000
    # Request shapes of the class, pending pods included, weighted by how often they occur.
    assert [(o.cpu, o.memory, o.weight) for o in tiers["production"].requests] == [
        (2.0, 4 * GiB, 2),
        (1.0, 2 * GiB, 1),
        (1.0, 1 * GiB, 1),
    ]
    assert tiers["production"].arrivals == []  # created two hours before the capture
    rate = tiers["priority-0"].arrivals[0].perMinute
    assert rate == pytest.approx(2 / 60, abs=1e-4)  # two jobs created within the hour
    pinned = {(p.tier, p.node, p.cpu, p.count) for p in sc.pods}
    assert pinned == {
        ("production", "node-a", 2.0, 2),
        ("production", "node-b", 1.0, 1),
        ("priority-0", "node-c", 4.0, 1),  # the finished job is not running
    }
    bg = sc.background.nodes
    # Hidden load = measured utilization - requests on the node / allocatable.
    assert bg["node-a"].cpu == pytest.approx(0.70 - 4 / 8)
    assert bg["node-b"].cpu == pytest.approx(0.20 - 1 / 8)
    assert bg["node-c"].cpu == pytest.approx(0.90 - 4 / 16)  # matched by instance address
    assert bg["node-a"].memory == pytest.approx(0.40 - 8 / 32)

    # The captured scenario replays.
    wl = build_workload(sc, 1)
    assert sum(1 for p in wl.pods if p.node >= 0) == 4
    run = Simulation(sc, wl, 1, None).run()
    assert run.submitted >= 4


async def test_capture_command_writes_the_file_and_reports_failures(stand_in, tmp_path, capsys):
    server, kubeconfig = stand_in
    out = tmp_path / "scenario.yaml"
    base = [
        "simulate",
        "capture",
        "--kubeconfig",
        str(kubeconfig),
        "--prometheus",
        f"http://127.0.0.1:{server.port}",
        "--memory-query",
        "memory_query",
        "--out",
        str(out),
    ]
    # asyncio.run inside the command needs a thread of its own; the stand-in serves from here.
    code = await asyncio.to_thread(cli.main, [*base, "--cpu-query", "cpu_query"])
    assert code == 0, capsys.readouterr().err
    assert load_scenario(out).document.cluster.nodes
    assert out.read_text().startswith("# Captured by `priority-extender simulate capture`")

    code = await asyncio.to_thread(cli.main, [*base, "--cpu-query", "broken("])
    assert code == 1
    assert "query 'broken(' failed: parse error" in capsys.readouterr().err


def test_capture_without_a_kubeconfig_is_one_error_line(tmp_path):
    # The client library only logs "Config not found" for a missing file, which reached the
    # terminal as a second line; the file is checked first now.
    run = run_cli(
        "simulate",
        "capture",
        "--kubeconfig",
        str(tmp_path / "nope"),
        "--prometheus",
        "http://127.0.0.1:1",
        env={"HOME": str(tmp_path)},
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        f"error: capture failed: kubeconfig {tmp_path / 'nope'}: no such file"
    ]

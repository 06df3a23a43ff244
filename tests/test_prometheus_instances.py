"""Series that name their node only by scrape address: ``instance="10.0.0.1:9100"``, no ``node``.

kube-prometheus-stack-style data, end to end: a real Prometheus holds backfilled gauges labelled
only with ``instance`` (an InternalIP and node_exporter's port), the cluster cache lists Nodes
with those InternalIPs from the loopback API stand-in (``tests/fake_apiserver.py``: there is no
kube-apiserver here), and the running extender must map each series to its node: in the
snapshot, in a filter decision over HTTP, and again after a node with a new address joins.

Before the cluster's addresses were connected to the Prometheus source, every such series was
"unmapped" and the snapshot stayed empty.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry

from extender.core import Snapshot
from extender.policy import API_VERSION, LoadedPolicy, load_text
from extender.server.run import running
from tests import prometheus_server as real
from tests.builders import fixture_json, samples_of
from tests.fake_apiserver import FakeApiServer, make_node
from tests.support import kubeconfig, loopback_settings

#: Node name -> (InternalIP, cpu ratio, memory ratio). Distinct values, so a series mapped to
#: the wrong node shows.
NODES = {
    "node-a": ("10.0.0.1", 0.91, 0.30),  # hot by cpu
    "node-b": ("10.0.0.2", 0.20, 0.40),
    "node-c": ("10.0.0.3", 0.35, 0.88),  # hot by memory
}
LATE = ("node-d", "10.0.0.4", 0.15, 0.25)
"""A node that joins after start-up: its series is in Prometheus from the start, unmapped."""
STRANGER = ("10.9.9.9", 0.5, 0.5)
"""A series whose address no node lists: counted as unmapped, never guessed."""
PORT = 9100
STEP_S = 30
"""Seconds between backfilled samples; the last is at start-up, well within the lookback."""
SPAN_S = 300
DEADLINE_S = 30.0
"""Bound on waiting for a condition (a refresh every second makes it true in one or two)."""

TIERS = [
    {
        "name": "batch",
        "match": {"maxPriority": 100},
        "filter": {"cpu": 0.6, "memory": 0.75},
        "onStale": "reject",
    },
    {"name": "standard", "filter": {"cpu": 0.95, "memory": 0.95}},
]


def openmetrics(end: int) -> str:
    series = [(ip, cpu, mem) for ip, cpu, mem in NODES.values()]
    series += [LATE[1:], STRANGER]
    out = []
    for metric, column in (("test_node_cpu_ratio", 1), ("test_node_memory_ratio", 2)):
        out += [f"# HELP {metric} Busy fraction.", f"# TYPE {metric} gauge"]
        for row in series:
            labels = f'instance="{row[0]}:{PORT}",job="node-exporter"'
            out += [
                f"{metric}{{{labels}}} {row[column]!r} {t}"
                for t in range(end - SPAN_S, end + 1, STEP_S)
            ]
    return "\n".join([*out, "# EOF"]) + "\n"


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def _series_count(url: str, promql: str) -> int:
    query = urllib.parse.urlencode({"query": promql})
    with _OPENER.open(f"{url}/api/v1/query?{query}", timeout=5) as resp:
        body = json.loads(resp.read())
    return len(body["data"]["result"])


@contextmanager
def instance_prometheus(folder: Path) -> Iterator[str]:
    """A real Prometheus with the instance-only gauges backfilled; yields its URL."""
    data = folder / "data"
    data.mkdir()
    om = folder / "series.om"
    om.write_text(openmetrics(int(time.time())))
    subprocess.run(
        [real.PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (folder / "prometheus.yml").write_text(yaml.safe_dump({"global": {}}))
    url, process, _ = real.start_prometheus(folder, data)
    try:
        deadline = time.monotonic() + real.READY_TIMEOUT_S
        expected = len(NODES) + 2
        while True:
            assert process.poll() is None, (folder / "prometheus.log").read_text()[-2000:]
            try:
                if _series_count(url, "test_node_cpu_ratio") == expected:
                    break
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline, (folder / "prometheus.log").read_text()[-2000:]
            time.sleep(0.1)
        yield url
    finally:
        real.stop_prometheus(process)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = real.binaries_missing()
    if missing:
        pytest.skip(missing)
    with instance_prometheus(tmp_path_factory.mktemp("prometheus-instances")) as url:
        yield url


def make_policy(url: str) -> LoadedPolicy:
    doc = {
        "apiVersion": API_VERSION,
        "kind": "PriorityPolicy",
        "metrics": {
            "source": "prometheus",
            "maxAge": "60s",
            "signals": {"cpu": "test_node_cpu_ratio", "memory": "test_node_memory_ratio"},
            # nodeLabel stays "node": no series has it, so each falls back to its instance.
            "prometheus": {"url": url, "refreshInterval": "1s", "timeout": "2s"},
        },
        "tiers": TIERS,
        "defaultTier": "standard",
    }
    return load_text(yaml.safe_dump(doc, sort_keys=False), "instances-policy.yaml")


async def until(condition: Any, what: str) -> None:
    """Poll ``condition`` until true; the deadline only keeps a broken build from hanging."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


def values(snap: Snapshot) -> dict[str, tuple[float, float]]:
    got = samples_of(snap)
    return {n: (per["cpu"].value, per["memory"].value) for n, per in got.items() if len(per) == 2}


async def test_instance_addresses_map_to_the_cluster_nodes(prometheus, tmp_path):
    api = FakeApiServer()
    await api.start()
    for name, (ip, _, _) in NODES.items():
        api.put("nodes", make_node(name, address=ip))
    settings = loopback_settings(kubernetes="auto", kubeconfig=str(kubeconfig(tmp_path, api.url)))
    registry = CollectorRegistry()
    expected = {name: (cpu, mem) for name, (_, cpu, mem) in NODES.items()}
    body = fixture_json("filter-nodecache-true.json")  # a priority-100 pod: tier batch
    body["NodeNames"] = list(NODES)
    try:
        async with (
            running(make_policy(prometheus), settings, registry) as state,
            aiohttp.ClientSession() as http,
        ):
            store = state.extender.store
            await until(
                lambda: values(store.current.snapshot) == expected,
                "every instance series mapped to its node",
            )
            async with http.post(
                f"http://127.0.0.1:{state.ports['scheduler']}/filter", json=body
            ) as resp:
                assert resp.status == 200
                reply = await resp.json()
            assert reply["NodeNames"] == ["node-b"]
            assert set(reply["FailedAndUnresolvableNodes"]) == {"node-a", "node-c"}
            assert "cpu" in reply["FailedAndUnresolvableNodes"]["node-a"]
            assert "memory" in reply["FailedAndUnresolvableNodes"]["node-c"]
            # The stranger and the node not yet listed are counted, not guessed.
            unmapped = "priority_extender_prometheus_unmapped_series_total"
            assert (registry.get_sample_value(unmapped, {"signal": "cpu"}) or 0) > 0

            # A node joins with the address of a series Prometheus had all along.
            name, ip, cpu, mem = LATE
            api.put("nodes", make_node(name, address=ip))
            await until(
                lambda: values(store.current.snapshot).get(name) == (cpu, mem),
                "the new node's series mapped once its address is known",
            )
            assert values(store.current.snapshot) == {**expected, name: (cpu, mem)}
    finally:
        await api.stop()

"""Per-pod usage from a real Prometheus: cAdvisor-shaped series, our recording rules, the source.

The Prometheus (``tests/e2e/cadvisor.py``) holds backfilled cAdvisor series -- containers, the
pause container, the ``container=""`` aggregates, a kubelet scraped twice -- and node_exporter
series for the node signals, and evaluates ``config/prometheus-rules.yaml``. The source matches
its answers to a real cluster cache (a :class:`ClusterSource` whose cache is filled from
API-shaped pods, no API server needed for that) and hands the table to a real store. Bad,
partial and missing data come from real queries that return them.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import msgspec
import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from extender.cluster import ClusterSource
from extender.cluster.decode import decode_node, decode_pod
from extender.core import Estimation
from extender.policy import API_VERSION, LoadedPolicy, load_text
from extender.sources.pods import PodUsageMetrics
from extender.sources.prometheus import PrometheusSource, PrometheusSourceMetrics
from extender.store import SnapshotStore
from tests import prometheus_server as real
from tests.e2e import cadvisor
from tests.e2e.cadvisor import PodLoad

GiB = 2**30
MiB = 2**20
CPU_RULE, MEM_RULE = cadvisor.POD_RULES
NODE_CPU = "node:cpu_utilization:ratio"
NODE_MEM = "node:memory_utilization:ratio"

PODS = [
    PodLoad("shop", "web-1", (("app", 0.25, 300.0 * MiB), ("sidecar", 0.05, 50.0 * MiB))),
    PodLoad("shop", "web-2", (("app", 0.5, 1.0 * GiB),), duplicate_scrape=True),
    PodLoad("blog", "db-0", (("postgres", 1.5, 4.0 * GiB),)),
    PodLoad("batch", "db-0", (("postgres", 0.125, 512.0 * MiB),)),  # same name, other namespace
    PodLoad("blog", "ghost-1", (("app", 0.1, 100.0 * MiB),)),  # not in the cluster cache
]
BY_KEY = {(p.namespace, p.name): p for p in PODS}
CACHED = {  # (namespace, name) -> node
    ("shop", "web-1"): "node-00000",
    ("shop", "web-2"): "node-00000",
    ("blog", "db-0"): "node-00001",
    ("batch", "db-0"): "node-00002",
    ("shop", "idle-1"): "node-00002",  # bound, but no series
}
NODES = 3


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    missing = real.binaries_missing()
    if missing:
        pytest.skip(missing)
    nodes = real.synthetic_nodes(NODES)
    with cadvisor.running_prometheus(tmp_path_factory.mktemp("cadvisor"), PODS, nodes) as server:
        yield server


def make_policy(url: str, *, pods: dict[str, Any] | None = None) -> LoadedPolicy:
    doc = {
        "apiVersion": API_VERSION,
        "kind": "PriorityPolicy",
        "metrics": {
            "source": "prometheus",
            "maxAge": "60s",
            "signals": {"cpu": NODE_CPU, "memory": NODE_MEM},
            "prometheus": {
                "url": url,
                "timeout": "5s",
                "pods": {"enabled": True} if pods is None else pods,
            },
        },
        "tiers": [{"name": "standard", "filter": {"cpu": 0.95, "memory": 0.95}}],
    }
    return load_text(yaml.safe_dump(doc, sort_keys=False), "test-policy.yaml")


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Bed:
    """A real store, a cluster source whose cache holds :data:`CACHED`, and the source."""

    def __init__(self, url: str, pods: dict[str, Any] | None = None) -> None:
        self.clock = Clock()
        self.store = SnapshotStore(make_policy(url, pods=pods), self.clock)
        self.tables: list[Any] = []
        set_pod_usage = self.store.set_pod_usage

        def recording(usage: Any, ok_at: float) -> None:
            self.tables.append(usage)
            set_pod_usage(usage, ok_at)

        self.store.set_pod_usage = recording  # type: ignore[method-assign]

        async def never(**_: Any) -> Any:
            raise AssertionError("nothing is listed in these tests")

        self.cluster = ClusterSource(self.store, never, never, clock=self.clock)
        enc = msgspec.json.encode
        from tests.fake_apiserver import make_node, make_pod

        for i in range(NODES):
            name, _, node = decode_node(enc(make_node(f"node-{i:05d}", cpu="8", memory="32Gi")))
            self.cluster.cache.put_node(name, node)
        self.cluster.cache.set_nodes_listed()
        self.uids = {}
        for (ns, name), node_name in CACHED.items():
            uid, _, rec = decode_pod(
                enc(make_pod(name, namespace=ns, node=node_name, priority=100)), Estimation()
            )
            self.cluster.cache.put_pod(uid, rec)
            self.uids[(ns, name)] = uid
        self.cluster.cache.set_pods_listed()
        self.cluster.publish()
        self.registry = CollectorRegistry()
        self.source = PrometheusSource(
            self.store,
            PrometheusSourceMetrics(self.registry),
            clock=self.clock,
            pod_metrics=PodUsageMetrics(self.registry),
        )
        self.source.follow(self.cluster)

    def table(self) -> dict[tuple[str, str], tuple[str, float, float]]:
        """The last published table as (namespace, name) -> (node, cpu, memory)."""
        usage = self.tables[-1]
        by_uid = {uid: key for key, uid in self.uids.items()}
        return {
            by_uid[uid]: (usage.nodes[i], float(usage.usage[0, i]), float(usage.usage[1, i]))
            for i, uid in enumerate(usage.uids)
        }

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def test_recording_rules_pass_promtool():
    missing = real.binaries_missing()
    if missing:
        pytest.skip(missing)
    done = subprocess.run(
        [real.PROMTOOL, "check", "rules", str(real.RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout


def test_rules_sum_containers_without_pause_or_aggregates(prometheus):
    for rule, attr in ((CPU_RULE, "cpu"), (MEM_RULE, "memory")):
        got = {
            (s["metric"]["namespace"], s["metric"]["pod"]): float(s["value"][1])
            for s in prometheus.query(rule)
        }
        assert set(got) == set(BY_KEY), rule  # no pod="" series from the node's slices
        for key, value in got.items():
            assert value == pytest.approx(getattr(BY_KEY[key], attr), rel=1e-9), (rule, key)
        labels = {tuple(sorted(s["metric"])) for s in prometheus.query(rule)}
        assert labels == {("__name__", "namespace", "pod")}


async def test_source_publishes_the_table_value_by_value(prometheus):
    bed = Bed(prometheus.url)
    async with bed.source:
        assert await bed.source.refresh(startup=True)
    assert bed.source.produces == {"nodes"}  # built by hand here; build() adds "pods"
    table = bed.table()
    assert set(table) == set(CACHED) - {("shop", "idle-1")}
    for key, (node, cpu, memory) in table.items():
        assert node == CACHED[key]
        assert cpu == pytest.approx(BY_KEY[key].cpu, rel=1e-9), key
        assert memory == pytest.approx(BY_KEY[key].memory, rel=1e-9), key
    usage = bed.tables[-1]
    assert usage.unknown == 2  # blog/ghost-1, once per resource
    assert set(usage.priority.tolist()) == {100}
    assert (
        bed.metric(
            "priority_extender_pod_usage_unknown_samples_total", source="prometheus", resource="cpu"
        )
        == 1
    )
    assert bed.metric("priority_extender_pod_usage_pods", source="prometheus") == len(table)
    # The node signals are untouched by all this.
    assert set(bed.store.current.snapshot.names) >= {f"node-{i:05d}" for i in range(NODES)}
    assert bed.source.results == {"cpu": "ok", "memory": "ok"}


async def test_a_failed_pod_query_fails_alone(prometheus):
    bed = Bed(prometheus.url, pods={"enabled": True, "cpuQuery": "1 - ("})
    async with bed.source:
        assert await bed.source.refresh()
    assert bed.source.results == {"cpu": "ok", "memory": "ok"}  # node signals
    assert bed.source.pods.results == {"cpu": "failed", "memory": "ok"}
    table = bed.table()
    assert len(table) == 4
    assert all(np.isnan(cpu) for _, cpu, _ in table.values())
    assert (
        bed.metric(
            "priority_extender_pod_usage_queries_total",
            source="prometheus",
            resource="cpu",
            result="failed",
        )
        == 1
    )


@pytest.mark.parametrize(
    ("query", "reason", "left"),
    [
        (
            f'-1 * {CPU_RULE}{{namespace="blog"}} or {CPU_RULE}{{namespace!="blog"}}',
            "out_of_range",
            {("shop", "web-1"), ("shop", "web-2"), ("batch", "db-0")},
        ),
        (f"{CPU_RULE} * 0 / 0", "nan", set()),
        (f"sum by (namespace) ({CPU_RULE})", "missing_label", set()),
        (
            "sum by (namespace, pod, container) "
            '(rate(container_cpu_usage_seconds_total{container!=""}[2m]))',
            "duplicate",
            set(),
        ),
    ],
)
async def test_bad_samples_are_counted_and_left_out(prometheus, query, reason, left):
    bed = Bed(prometheus.url, pods={"enabled": True, "cpuQuery": query})
    async with bed.source:
        assert await bed.source.refresh()
    with_cpu = {k for k, (_, cpu, _) in bed.table().items() if not np.isnan(cpu)}
    assert with_cpu == left
    assert len(bed.table()) == 4  # memory still there for every known pod
    rejected = bed.metric(
        "priority_extender_pod_usage_rejected_samples_total",
        source="prometheus",
        resource="cpu",
        reason=reason,
    )
    assert rejected is not None
    assert rejected > 0


async def test_an_empty_answer_keeps_the_previous_samples_until_stale(prometheus):
    bed = Bed(prometheus.url)
    async with bed.source:
        assert await bed.source.refresh()
        assert len(bed.table()) == 4
        empty = f'{CPU_RULE}{{namespace="nowhere"}}'
        bed.store.set_policy(make_policy(prometheus.url, pods={"enabled": True, "cpuQuery": empty}))
        assert await bed.source.refresh()
        assert bed.source.pods.results["cpu"] == "empty"
        assert all(not np.isnan(cpu) for _, cpu, _ in bed.table().values())  # kept
        bed.clock.offset = 61.0  # every sample is older than maxAge (60s) by our clock now
        await bed.source.refresh()
        assert len(bed.tables[-1]) == 0  # stale: no per-pod data, today's behaviour


async def test_a_deleted_pod_leaves_the_table_at_the_next_build(prometheus):
    bed = Bed(prometheus.url)
    async with bed.source:
        assert await bed.source.refresh()
        bed.cluster.cache.put_pod(bed.uids[("shop", "web-1")], None)
        assert await bed.source.refresh()
    assert ("shop", "web-1") not in bed.table()
    assert bed.tables[-1].unknown == 4  # web-1's samples now match no pod, and ghost-1's


async def test_switched_off_is_todays_behaviour(prometheus):
    bed = Bed(prometheus.url, pods={"enabled": False})
    async with bed.source:
        assert await bed.source.refresh()
        assert bed.tables == []  # nothing handed to the store at all
        bed.store.set_policy(make_policy(prometheus.url))
        assert await bed.source.refresh()
        assert len(bed.tables[-1]) == 4
        bed.store.set_policy(make_policy(prometheus.url, pods={"enabled": False}))
        assert await bed.source.refresh()
        assert len(bed.tables[-1]) == 0  # turned off: the table is emptied once
        calls = len(bed.tables)
        assert await bed.source.refresh()
        assert len(bed.tables) == calls


# --- off the event loop ---------------------------------------------------------------------


class LoopProbe:
    """Counts its own wake-ups on the event loop: ticks that happen while something runs prove
    that the loop was not held by it."""

    def __init__(self) -> None:
        self.ticks = 0
        self.stop = False
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self.stop:
            self.ticks += 1
            await asyncio.sleep(0)

    def ticked_since(self, ticks: int, timeout: float = 10.0) -> bool:
        """Wait (in the calling thread) until the probe ticks past ``ticks``; False at the
        deadline (as it must be if the caller holds the loop)."""
        deadline = time.monotonic() + timeout
        while self.ticks == ticks and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.ticks != ticks


async def test_the_per_pod_refresh_runs_beside_the_loop_not_on_it(prometheus, monkeypatch):
    """Each per-pod decode and the table build wait, in their own thread, until the loop has
    run the probe: on the loop that wait could only time out (the probe would never run)."""
    import threading

    from extender.sources import prometheus as prom_module

    bed = Bed(prometheus.url)
    probe = LoopProbe()
    seen: list[tuple[str, int, bool]] = []
    parse, pod_usage = prom_module.parse_pod_vector, bed.cluster.pod_usage

    def watched_parse(body: bytes) -> Any:
        seen.append(("parse", threading.get_ident(), probe.ticked_since(probe.ticks)))
        return parse(body)

    def watched_build(*args: Any, **kw: Any) -> Any:
        seen.append(("build", threading.get_ident(), probe.ticked_since(probe.ticks)))
        return pod_usage(*args, **kw)

    monkeypatch.setattr(prom_module, "parse_pod_vector", watched_parse)
    monkeypatch.setattr(bed.cluster, "pod_usage", watched_build)
    try:
        async with bed.source:
            assert await bed.source.refresh()
    finally:
        probe.stop = True
        await probe.task
    loop_thread = threading.get_ident()
    assert sorted(step for step, _, _ in seen) == ["build", "parse", "parse"]
    for step, thread, ticked in seen:
        assert thread != loop_thread, step
        assert ticked, f"the loop did not run while the {step} did"
    assert len(bed.table()) == 4  # and the result is the same


def _vector(series: list[dict[str, Any]], **envelope: Any) -> bytes:
    doc = {"status": "success", "data": {"resultType": "vector", "result": series}, **envelope}
    return msgspec.json.encode(doc)


def _series(ns: str, pod: str, value: str = "0.5", **extra: str) -> dict[str, Any]:
    return {"metric": {"namespace": ns, "pod": pod, **extra}, "value": [1700000000.5, value]}


def _columns(vector: Any) -> tuple[Any, ...]:
    bad = None if vector.bad_value is None else vector.bad_value.tolist()
    return (
        vector.namespaces,
        vector.names,
        [repr(v) for v in vector.values.tolist()],
        vector.timestamps.tolist(),
        bad,
    )


def _whole(body: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    from extender.sources import prometheus as prom_module

    with monkeypatch.context() as m:
        m.setattr(prom_module, "split_array", lambda *a, **k: None)
        return _columns(prom_module.parse_pod_vector(body))


MANY = [_series(f"ns-{i % 7}", f"pod-{i}", repr(i / 3)) for i in range(3000)]


@pytest.mark.parametrize(
    "body",
    [
        _vector(MANY),
        _vector([*MANY[:1500], _series("x", "y", "+Inf"), *MANY[1500:]]),  # text values
        _vector([*MANY, _series("a", '},{"metric":{"namespace":"evil"},"value":[1,"9"]}')]),
        _vector(MANY, warnings=["odd }] text"]),
        _vector(MANY[:1]),
        _vector([]),
        msgspec.json.format(_vector(MANY[:50]), indent=2),  # not compact: decoded whole
    ],
    ids=["plain", "text-values", "label-looks-like-a-cut", "warnings", "one", "empty", "indented"],
)
def test_decoding_in_pieces_gives_the_columns_of_the_whole(body, monkeypatch):
    from extender.sources import pods
    from extender.sources.prometheus import parse_pod_vector

    monkeypatch.setattr(
        pods.split_array, "__defaults__", (1024,)
    )  # the size default: many pieces even for these small bodies
    assert _columns(parse_pod_vector(body)) == _whole(body, monkeypatch)


def test_a_decoy_result_key_is_not_taken_for_the_answer(monkeypatch):
    from extender.sources import pods
    from extender.sources.prometheus import PrometheusError, parse_pod_vector

    monkeypatch.setattr(pods.split_array, "__defaults__", (256,))
    real_series = msgspec.json.encode(MANY[:20]).decode()
    decoy = msgspec.json.encode([_series("decoy", "d-1")]).decode()
    body = (
        '{"status":"success","data":{"resultType":"vector","x\\"result":'
        + decoy
        + ',"result":'
        + real_series
        + "}}"
    ).encode()
    got = parse_pod_vector(body)
    assert "decoy" not in got.namespaces
    assert got.names == [s["metric"]["pod"] for s in MANY[:20]]
    with pytest.raises(PrometheusError) as err:
        parse_pod_vector(body.replace(b'"vector"', b'"matrix"'))
    assert err.value.result == "bad_response"


def test_an_answer_read_in_chunks_is_assembled_to_the_same_columns(monkeypatch):
    from extender.sources.pods import assemble
    from extender.sources.prometheus import parse_pod_vector

    body = _vector(MANY)
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    whole = assemble(chunks)
    assert len(whole) == len(body)
    assert whole[:] == body
    assert _columns(parse_pod_vector(whole)) == _whole(body, monkeypatch)
    assert assemble([body]) is body
    assert assemble([b"", b""]) == b""

"""The Prometheus source: against a real Prometheus for data, a scripted one for faults.

The real server (``tests/prometheus_server.py``) holds backfilled node_exporter series for
1,200 nodes and evaluates ``config/prometheus-rules.yaml``; its answers are checked value by
value and, end to end, through the extender's HTTP filter. Faults that a real Prometheus does not
produce on demand (garbage, 429/503, hangs, truncation, huge bodies, bad samples) come from a
scripted aiohttp server on loopback. Time-dependent behaviour runs on an injected clock and sleep:
no test waits for an interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from extender.core import REASON_STALE, Candidates, Sample, evaluate
from extender.policy import API_VERSION, LoadedPolicy, PolicyError, load_text
from extender.server.app import ServerSettings
from extender.server.run import running
from extender.sources.prometheus import (
    MAX_RETRY_AFTER_S,
    MIN_INTERVAL_S,
    RESULTS,
    PrometheusError,
    PrometheusSource,
    PrometheusSourceMetrics,
    parse_vector,
)
from extender.store import SnapshotStore
from tests import prometheus_server as real
from tests.builders import NOW, fixture_json, pod, samples_of

CPU = "node:cpu_utilization:ratio"
MEM = "node:memory_utilization:ratio"
HOT_REASON = "cpu+memory load above batch tier ceiling"
TIERS = [
    {
        "name": "batch",
        "match": {"maxPriority": 100},
        "filter": {"cpu": 0.6, "memory": 0.75},
        "onStale": "reject",
    },
    {"name": "standard", "filter": {"cpu": 0.95, "memory": 0.95}},
]


def make_policy(url: str, *, signals: dict[str, str] | None = None, **prom: Any) -> LoadedPolicy:
    settings = {"url": url, "refreshInterval": "15s", "timeout": "2s", **prom}
    doc = {
        "apiVersion": API_VERSION,
        "kind": "PriorityPolicy",
        "metrics": {
            "source": "prometheus",
            "maxAge": "60s",
            "signals": signals or {"cpu": CPU, "memory": MEM},
            "prometheus": settings,
        },
        "tiers": TIERS,
        "defaultTier": "standard",
    }
    return load_text(yaml.safe_dump(doc, sort_keys=False), "test-policy.yaml")


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# --- a scripted /api/v1/query ---------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answer(data: bytes, status: int = 200, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=data, status=status, headers={"Content-Type": "application/json", **headers}
        )

    return handler


def vector_body(*series: tuple[dict[str, str], float, str]) -> bytes:
    result = [{"metric": labels, "value": [ts, value]} for labels, ts, value in series]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})


def vector(values: dict[str, float | str], ts: float = NOW - 1.0) -> Handler:
    """One series per node, labelled ``node``, as a recording rule answers."""
    return answer(
        vector_body(
            *(
                ({"__name__": "x", "node": n}, ts, v if isinstance(v, str) else repr(v))
                for n, v in values.items()
            )
        ).encode()
    )


class FakePrometheus:
    """Answers each PromQL text with the handler scripted for it; counts calls in flight."""

    def __init__(self) -> None:
        self.url = ""
        self.answers: dict[str, Handler] = {}
        self.calls: dict[str, int] = {}
        self.inflight: dict[str, int] = {}
        self.max_inflight: dict[str, int] = {}
        self.release = asyncio.Event()
        """Set at teardown: ends every handler still hanging."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        q = request.query.get("query", "")
        self.calls[q] = self.calls.get(q, 0) + 1
        self.inflight[q] = self.inflight.get(q, 0) + 1
        self.max_inflight[q] = max(self.max_inflight.get(q, 0), self.inflight[q])
        try:
            handler = self.answers.get(q)
            if handler is None:
                error = {"status": "error", "errorType": "bad_data", "error": f"unscripted {q}"}
                return web.json_response(error, status=400)
            return await handler(request)
        finally:
            self.inflight[q] -= 1

    def hang(self) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            await self.release.wait()
            return web.json_response({})

        return handler


@pytest.fixture
async def fake(aiohttp_server: Any) -> Any:
    fp = FakePrometheus()
    app = web.Application()
    app.router.add_get("/api/v1/query", fp.handle)
    server = await aiohttp_server(app)
    fp.url = str(server.make_url("")).rstrip("/")
    yield fp
    fp.release.set()


async def streamed_huge(request: web.Request) -> web.StreamResponse:
    """4 MiB of valid JSON, chunked, no Content-Length: the cap must stop the read itself."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        await resp.write(b'{"status":"success","data":{"resultType":"vector","result":[')
        for _ in range(64):
            await resp.write(b" " * 65536)
        await resp.write(b"]}}")
    return resp


async def cut_short(request: web.Request) -> web.StreamResponse:
    """Promises 100 KB, sends the start of a vector, drops the connection."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = 100_000
    await resp.prepare(request)
    await resp.write(b'{"status":"success","data":{"resultType":"vector","result":[')
    assert request.transport is not None
    request.transport.close()
    return resp


OK_CPU = vector_body(({"node": "a"}, NOW, "0.5"))
PROM_ERROR = json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"})
FAULTS: dict[str, tuple[Callable[[FakePrometheus], Handler], str]] = {
    "garbage": (lambda fp: answer(b"\x00\xffnot json at all"), "bad_response"),
    "html_page_200": (lambda fp: answer(b"<html>sign in to the proxy</html>"), "bad_response"),
    "truncated_json": (lambda fp: answer(OK_CPU[: len(OK_CPU) // 2].encode()), "bad_response"),
    "scalar_result": (
        lambda fp: answer(b'{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}'),
        "bad_response",
    ),
    "status_error_in_200": (lambda fp: answer(PROM_ERROR.encode()), "query_error"),
    "bad_promql_400": (lambda fp: answer(PROM_ERROR.encode(), 400), "query_error"),
    "http_429": (lambda fp: answer(b"slow down", 429), "rate_limited"),
    "http_503": (lambda fp: answer(b"", 503), "unavailable"),
    "http_500_html": (lambda fp: answer(b"<h1>oops</h1>", 500), "http_error"),
    "too_large_declared": (lambda fp: answer(b" " * (2 << 20) + OK_CPU.encode()), "too_large"),
    "too_large_streamed": (lambda fp: streamed_huge, "too_large"),
    "cut_short": (lambda fp: cut_short, "connection_error"),
    "hang": (lambda fp: fp.hang(), "timeout"),
    "empty_vector": (lambda fp: vector({}), "empty"),
    "every_sample_invalid": (lambda fp: vector({"a": "NaN", "b": "-4"}), "no_valid_samples"),
}


# --- parsing: every sample checked ----------------------------------------------------------------


def test_parse_checks_every_sample():
    t = NOW - 3.0
    body = vector_body(
        ({"node": "ok"}, t, "0.5"),
        ({"node": "nan"}, t, "NaN"),
        ({"node": "inf"}, t, "+Inf"),
        ({"node": "neg-inf"}, t, "-Inf"),
        ({"node": "negative"}, t, "-0.5"),
        ({"node": "above"}, t, "1.5"),
        ({"node": "jitter-low"}, t, "-0.003"),
        ({"node": "jitter-high"}, t, "1.01"),
        ({"node": "text"}, t, "high"),
        ({"node": "epoch"}, 0.0, "0.5"),
        ({"node": "twice"}, t, "0.2"),
        ({"node": "twice"}, t, "0.3"),
        ({"node": "thrice"}, t, "NaN"),
        ({"node": "thrice"}, t, "0.3"),
        ({"node": "thrice"}, t, "0.4"),
        ({"__name__": "x"}, t, "0.5"),
        ({"node": ""}, t, "0.5"),
        ({"instance": "10.0.0.7:9100"}, t, "0.7"),
        ({"instance": "10.0.0.8"}, t, "0.8"),
        ({"instance": "[fd00::9]:9100"}, t, "0.9"),
        ({"instance": "10.9.9.9:9100"}, t, "0.1"),
        ({"node": "wins", "instance": "10.0.0.7:9100"}, t, "0.6"),
    ).encode()
    addresses = {"10.0.0.7": "node-7", "10.0.0.8": "node-8", "fd00::9": "node-9"}
    vec = parse_vector(body, node_label="node", addresses=addresses)
    assert vec.samples == {
        "ok": Sample(0.5, t),
        "jitter-low": Sample(0.0, t),
        "jitter-high": Sample(1.0, t),
        "node-7": Sample(0.7, t),
        "node-8": Sample(0.8, t),
        "node-9": Sample(0.9, t),
        "wins": Sample(0.6, t),
    }
    assert vec.rejected == {
        "nan": 2,  # "nan", and the first "thrice"
        "infinite": 2,
        "out_of_range": 2,
        "bad_value": 1,
        "bad_timestamp": 1,
        "missing_label": 2,
        "duplicate": 4,  # both "twice", the two later "thrice"
    }
    assert vec.unmapped == 1
    assert vec.series == 22
    assert "10.9.9.9:9100" in vec.examples["unmapped"]


def test_parse_uses_the_configured_label_and_range():
    body = vector_body(
        ({"kubernetes_node": "a"}, NOW, "12.5"),
        ({"kubernetes_node": "b"}, NOW, "70"),
        ({"kubernetes_node": "c"}, NOW, "65"),  # within 2% of the span above 64: clamped
        ({"node": "d"}, NOW, "1"),  # not the configured label
    ).encode()
    vec = parse_vector(body, node_label="kubernetes_node", value_range=(0.0, 64.0))
    assert vec.samples == {"a": Sample(12.5, NOW), "c": Sample(64.0, NOW)}
    assert vec.rejected == {"out_of_range": 1, "missing_label": 1}


def test_parse_with_node_names_in_instance():
    """kube-prometheus-stack writes the node name into ``instance``: ``nodeLabel: instance``."""
    body = vector_body(
        ({"instance": "node-a", "node": "ignored"}, NOW, "0.25"),
        ({"job": "node-exporter"}, NOW, "0.5"),
    ).encode()
    vec = parse_vector(body, node_label="instance", addresses={"node-a": "not used"})
    assert vec.samples == {"node-a": Sample(0.25, NOW)}
    assert vec.rejected == {"missing_label": 1}
    assert vec.examples["missing_label"] == "a series has no 'instance' label"


@pytest.mark.parametrize(
    ("body", "result", "message"),
    [
        (b"", "bad_response", "not a Prometheus API answer"),
        (b"<html>", "bad_response", "not a Prometheus API answer"),
        (
            b'{"status":"success","data":{"resultType":"vector","result":[',
            "bad_response",
            "truncated",
        ),
        (PROM_ERROR.encode(), "query_error", "bad_data: parse error"),
        (b'{"status":"success"}', "bad_response", "without 'data'"),
        (
            b'{"status":"success","data":{"resultType":"matrix","result":[]}}',
            "bad_response",
            "not an instant vector",
        ),
        (
            b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}',
            "bad_response",
            "malformed vector",
        ),
        (
            b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},'
            b'"value":[1,0.5]}]}}',
            "bad_response",
            "malformed vector",
        ),
    ],
)
def test_unusable_answers_raise_with_a_bounded_result(body, result, message):
    with pytest.raises(PrometheusError, match=message) as err:
        parse_vector(body)
    assert err.value.result == result
    assert err.value.result in RESULTS


def test_policy_ranges_are_validated():
    policy = make_policy("http://p", ranges={"cpu": [0, 1.5]})
    assert policy.document.metrics.prometheus.ranges == {"cpu": (0.0, 1.5)}
    with pytest.raises(PolicyError, match="the minimum is above the maximum"):
        make_policy("http://p", ranges={"cpu": [1, 0]})
    with pytest.raises(PolicyError, match="maxResponseBytes"):
        make_policy("http://p", maxResponseBytes=10)


# --- faults from a scripted server ----------------------------------------------------------------


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_failed_query_keeps_its_signal_while_the_others_refresh(fake, fault, caplog):
    make, expected = FAULTS[fault]
    clock = Clock()
    registry = CollectorRegistry()
    store = SnapshotStore(make_policy(fake.url, timeout=0.2, maxResponseBytes=1 << 20), clock)
    fake.answers = {
        CPU: vector({"a": 0.5, "b": 0.7}, ts=NOW - 1),
        MEM: vector({"a": 0.2, "b": 0.3}, ts=NOW - 1),
    }
    async with PrometheusSource(store, PrometheusSourceMetrics(registry), clock=clock) as source:
        assert await source.refresh()
        clock.now = NOW + 15
        fake.answers = {CPU: make(fake), MEM: vector({"a": 0.25, "b": 0.35}, ts=NOW + 14)}
        assert await source.refresh()  # memory succeeded, so the source counts as refreshed

    snap = store.current.snapshot
    assert snap.source_ok_at == NOW + 15
    assert samples_of(snap) == {
        "a": {"cpu": Sample(0.5, NOW - 1), "memory": Sample(0.25, NOW + 14)},
        "b": {"cpu": Sample(0.7, NOW - 1), "memory": Sample(0.35, NOW + 14)},
    }
    assert source.results == {"cpu": expected, "memory": "ok"}
    queries = "priority_extender_prometheus_queries_total"
    assert metric(registry, queries, signal="cpu", result=expected) == 1
    assert metric(registry, queries, signal="cpu", result="ok") == 1
    assert metric(registry, queries, signal="memory", result="ok") == 2
    assert f"signal 'cpu' query failed ({expected})" in caplog.text


async def test_down_longer_than_max_age_falls_back_to_requests(fake):
    clock = Clock()
    store = SnapshotStore(make_policy(fake.url), clock)
    fake.answers = {
        CPU: vector({"hot": 0.9, "cool": 0.2}, ts=NOW - 1),
        MEM: vector({"hot": 0.3, "cool": 0.3}, ts=NOW - 1),
    }
    batch = pod(priority=0)

    def verdict() -> tuple[bool, dict[str, str]]:
        state = store.current
        ev = evaluate(
            batch, Candidates(["hot", "cool"]), state.snapshot, state.policy.rules, clock()
        )
        return ev.fallback, ev.failed()

    async with PrometheusSource(store, clock=clock) as source:
        assert await source.refresh()
        assert verdict() == (False, {"hot": "cpu load above batch tier ceiling"})

        fake.answers = {CPU: answer(b"", 503), MEM: answer(b"", 503)}
        clock.now = NOW + 45
        before = store.current
        assert not await source.refresh()
        assert store.current is before  # nothing swapped: the last snapshot keeps serving
        assert verdict() == (False, {"hot": "cpu load above batch tier ceiling"})

        clock.now = NOW + 61  # maxAge (60 s) since the last success
        assert not await source.refresh()
        assert store.current.snapshot.source_ok_at == NOW
        # Fallback: nothing rejected for load; batch (onStale: reject) waits for live data.
        assert verdict() == (True, {"hot": REASON_STALE, "cool": REASON_STALE})


async def test_samples_age_by_their_own_timestamps(fake):
    """A signal whose query keeps failing goes stale while the source itself stays up."""
    clock = Clock()
    store = SnapshotStore(make_policy(fake.url), clock)
    fake.answers = {CPU: vector({"n": 0.3}, ts=NOW - 1), MEM: vector({"n": 0.3}, ts=NOW - 1)}
    async with PrometheusSource(store, clock=clock) as source:
        assert await source.refresh()
        fake.answers[CPU] = answer(PROM_ERROR.encode(), 422)
        for step in (30, 60):
            clock.now = NOW + step
            fake.answers[MEM] = vector({"n": 0.3}, ts=NOW + step - 1)
            assert await source.refresh()

    state = store.current
    assert state.snapshot.source_ok_at == NOW + 60
    assert samples_of(state.snapshot)["n"]["cpu"] == Sample(0.3, NOW - 1)  # 61 s old: stale
    ev = evaluate(pod(priority=0), Candidates(["n"]), state.snapshot, state.policy.rules, clock())
    assert not ev.fallback
    assert ev.failed() == {"n": REASON_STALE}  # batch: onStale reject


async def test_a_missing_node_is_missing_not_kept(fake):
    """A successful answer replaces its signal whole: Prometheus already applied its lookback."""
    clock = Clock()
    store = SnapshotStore(make_policy(fake.url), clock)
    fake.answers = {CPU: vector({"a": 0.1, "b": 0.2}), MEM: vector({"a": 0.1, "b": 0.2})}
    async with PrometheusSource(store, clock=clock) as source:
        assert await source.refresh()
        fake.answers = {CPU: vector({"a": 0.15}), MEM: vector({"a": 0.1, "b": 0.25})}
        assert await source.refresh()
    got = samples_of(store.current.snapshot)
    assert got["a"]["cpu"].value == 0.15
    assert got["b"] == {"memory": Sample(0.25, NOW - 1)}


async def test_nothing_reachable_changes_nothing(unused_tcp_port):
    clock = Clock()
    registry = CollectorRegistry()
    store = SnapshotStore(make_policy(f"http://127.0.0.1:{unused_tcp_port}"), clock)
    before = store.current
    async with PrometheusSource(store, PrometheusSourceMetrics(registry), clock=clock) as source:
        assert not await source.refresh(startup=True)
    assert store.current is before
    assert source.results == {"cpu": "connection_error", "memory": "connection_error"}
    assert metric(registry, "priority_extender_prometheus_last_success_timestamp_seconds") == 0


async def test_an_unexpected_error_is_contained(fake, caplog):
    class BrokenStore(SnapshotStore):
        def set_samples(self, samples, ok_at):  # type: ignore[no-untyped-def]
            raise RuntimeError("bug in the store")

    store = BrokenStore(make_policy(fake.url))
    fake.answers = {CPU: vector({"a": 0.1}), MEM: vector({"a": 0.1})}
    async with PrometheusSource(store) as source:
        assert not await source.refresh()
    assert "refresh failed unexpectedly" in caplog.text
    assert "bug in the store" in caplog.text


# --- pacing, in virtual time ----------------------------------------------------------------------


class Stop(Exception):
    pass


async def test_run_refreshes_every_interval_with_jitter(fake):
    clock = Clock()
    store = SnapshotStore(make_policy(fake.url), clock)
    fake.answers = {CPU: vector({"a": 0.1}), MEM: vector({"a": 0.1})}
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 4:
            raise Stop
        clock.now += seconds

    rand = iter([0.0, 0.5, 1.0, 0.5]).__next__
    source = PrometheusSource(store, clock=clock, sleep=sleep, rand=rand)
    assert await source.refresh(startup=True)
    with pytest.raises(Stop):
        await source.run()
    assert delays == pytest.approx([13.5, 15.0, 16.5, 15.0])  # 15 s ± 10%
    assert fake.calls == {CPU: 4, MEM: 4}  # the first refresh, then one after each wait
    assert store.current.snapshot.source_ok_at == NOW + 45.0
    assert source.refreshes_ok == 4


async def test_retry_after_stretches_the_next_wait(fake):
    store = SnapshotStore(make_policy(fake.url))
    async with PrometheusSource(store, rand=lambda: 0.5) as source:
        fake.answers = {
            CPU: answer(b"slow down", 429, **{"Retry-After": "120"}),
            MEM: answer(b"", 503, **{"Retry-After": "30"}),
        }
        assert not await source.refresh()
        assert source.next_delay() == 120.0

        fake.answers[CPU] = answer(b"", 429, **{"Retry-After": "86400"})
        assert not await source.refresh()
        assert source.next_delay() == MAX_RETRY_AFTER_S

        fake.answers = {CPU: vector({"a": 0.1}), MEM: vector({"a": 0.1})}
        assert await source.refresh()
        assert source.next_delay() == 15.0

    # The policy refuses an interval under 1 s; the jitter below it still meets the floor.
    with pytest.raises(PolicyError, match="refreshInterval"):
        make_policy(fake.url, refreshInterval="100ms")
    eager = PrometheusSource(
        SnapshotStore(make_policy(fake.url, refreshInterval="1s")), rand=lambda: 0.0
    )
    assert eager.next_delay() == MIN_INTERVAL_S  # 0.9 s with the jitter, floored


async def test_refreshes_never_overlap(fake):
    store = SnapshotStore(make_policy(fake.url))
    gate = asyncio.Event()
    entered = asyncio.Event()
    ok = vector({"a": 0.1})

    async def slow(request: web.Request) -> web.StreamResponse:
        entered.set()
        await gate.wait()
        return await ok(request)

    fake.answers = {CPU: slow, MEM: slow}
    async with PrometheusSource(store) as source:
        first = asyncio.create_task(source.refresh())
        second = asyncio.create_task(source.refresh())
        await entered.wait()
        await asyncio.sleep(0.05)  # room for a second refresh to send, if it could
        assert fake.calls == {CPU: 1, MEM: 1}
        gate.set()
        assert await first
        assert await second
    assert fake.calls == {CPU: 2, MEM: 2}
    assert fake.max_inflight == {CPU: 1, MEM: 1}


# --- start-up check, addresses, ranges ------------------------------------------------------------


async def test_startup_warns_loudly_about_a_query_with_no_series(fake, caplog):
    caplog.set_level(logging.INFO, logger="extender.sources.prometheus")
    registry = CollectorRegistry()
    store = SnapshotStore(make_policy(fake.url))
    fake.answers = {CPU: vector({}), MEM: vector({"a": 0.2})}
    async with PrometheusSource(store, PrometheusSourceMetrics(registry)) as source:
        assert await source.refresh(startup=True)
        loud = [r for r in caplog.records if "NO DATA at start-up" in r.getMessage()]
        assert len(loud) == 1
        assert loud[0].levelno == logging.WARNING
        assert "'cpu'" in loud[0].getMessage()
        assert CPU in loud[0].getMessage()
        assert "recording rule" in loud[0].getMessage()
        series = "priority_extender_prometheus_query_series"
        assert metric(registry, series, signal="cpu") == 0
        assert metric(registry, series, signal="memory") == 1

        caplog.clear()
        assert await source.refresh()
        ours = [r.getMessage() for r in caplog.records if r.name == "extender.sources.prometheus"]
        assert not [m for m in ours if "'cpu'" in m]  # the same problem is logged once

        fake.answers[CPU] = vector({"a": 0.4})
        assert await source.refresh()
        assert "signal 'cpu' healthy again" in caplog.text
    assert (
        metric(registry, "priority_extender_prometheus_queries_total", signal="cpu", result="empty")
        == 2
    )


async def test_instance_addresses_map_to_node_names_once_known(fake):
    registry = CollectorRegistry()
    store = SnapshotStore(make_policy(fake.url))
    by_instance = answer(
        vector_body(
            ({"instance": "10.0.0.1:9100"}, NOW, "0.1"),
            ({"instance": "10.0.0.2:9100"}, NOW, "0.2"),
        ).encode()
    )
    fake.answers = {CPU: by_instance, MEM: by_instance}
    async with PrometheusSource(store, PrometheusSourceMetrics(registry)) as source:
        assert not await source.refresh()  # nothing maps yet: no samples, not refreshed
        assert (
            metric(registry, "priority_extender_prometheus_unmapped_series_total", signal="cpu")
            == 2
        )
        source.set_addresses({"10.0.0.1": "node-a", "10.0.0.2:9100": "node-b"})
        assert await source.refresh()
    assert samples_of(store.current.snapshot) == {
        "node-a": {"cpu": Sample(0.1, NOW), "memory": Sample(0.1, NOW)},
        "node-b": {"cpu": Sample(0.2, NOW), "memory": Sample(0.2, NOW)},
    }


async def test_declared_ranges_and_rejections_are_counted(fake):
    registry = CollectorRegistry()
    policy = make_policy(
        fake.url,
        signals={"cpu": CPU, "memory": MEM, "load": "node_load1"},
        ranges={"load": [0, 64]},
    )
    store = SnapshotStore(policy)
    fake.answers = {
        CPU: vector({"a": 0.1, "b": 1.5, "c": "NaN"}),
        MEM: vector({"a": 0.1, "b": 0.2, "c": 0.3}),
        "node_load1": vector({"a": 12.5, "b": 70.0}),
    }
    async with PrometheusSource(store, PrometheusSourceMetrics(registry)) as source:
        assert await source.refresh()
    got = samples_of(store.current.snapshot)
    assert {n: {s: x.value for s, x in per.items()} for n, per in got.items()} == {
        "a": {"cpu": 0.1, "memory": 0.1, "load": 12.5},
        "b": {"memory": 0.2},
        "c": {"memory": 0.3},
    }
    rejected = "priority_extender_prometheus_rejected_samples_total"
    assert metric(registry, rejected, signal="cpu", reason="out_of_range") == 1
    assert metric(registry, rejected, signal="cpu", reason="nan") == 1
    assert metric(registry, rejected, signal="load", reason="out_of_range") == 1
    assert metric(registry, rejected, signal="memory", reason="duplicate") == 0


# --- a real Prometheus ----------------------------------------------------------------------------

NODES = 1200
HOT = {7, 100, 555, 1199}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Any:
    missing = real.binaries_missing()
    if missing:
        pytest.skip(missing)
    nodes = real.synthetic_nodes(NODES, HOT)
    with real.running_prometheus(tmp_path_factory.mktemp("prometheus"), nodes) as server:
        yield server


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
    assert "SUCCESS: 4 rules found" in done.stdout  # 2 node rules, 2 per-pod rules


async def test_real_prometheus_snapshot_value_by_value(prometheus):
    clock = Clock(1_000.0)  # ok_at comes from our clock, sample timestamps from Prometheus
    registry = CollectorRegistry()
    store = SnapshotStore(make_policy(prometheus.url), clock)
    before = time.time()
    async with PrometheusSource(store, PrometheusSourceMetrics(registry), clock=clock) as source:
        assert await source.refresh(startup=True)
    after = time.time()

    snap = store.current.snapshot
    assert snap.source_ok_at == 1_000.0
    got = samples_of(snap)
    assert set(got) == {n.name for n in prometheus.nodes}
    for n in prometheus.nodes:
        assert got[n.name]["cpu"].value == pytest.approx(n.cpu, abs=1e-9), n.name
        assert got[n.name]["memory"].value == pytest.approx(n.memory, abs=1e-12), n.name
    # Each query is evaluated once, at Prometheus' now (millisecond resolution).
    stamps = {s.timestamp for per in got.values() for s in per.values()}
    assert len(stamps) <= 2
    assert all(before - 0.001 <= t <= after + 0.001 for t in stamps)

    assert source.results == {"cpu": "ok", "memory": "ok"}
    for signal in ("cpu", "memory"):
        series = "priority_extender_prometheus_query_series"
        assert metric(registry, series, signal=signal) == NODES
        rejected = "priority_extender_prometheus_rejected_samples_total"
        for reason in ("missing_label", "duplicate", "nan", "out_of_range"):
            assert metric(registry, rejected, signal=signal, reason=reason) == 0
    last = metric(registry, "priority_extender_prometheus_last_success_timestamp_seconds")
    assert last == 1_000.0


async def test_real_prometheus_bad_queries_fail_alone(prometheus, caplog):
    signals = {
        "cpu": CPU,
        "memory": "1 - (",  # not PromQL: HTTP 400 bad_data
        "disk": "node:disk_utilization:ratio",  # no such recording rule
        "raw": 'rate(node_cpu_seconds_total{mode="idle"}[2m])',  # one series per core
        "bytes": "node_memory_MemTotal_bytes",  # not a ratio
        "scalar": "scalar(vector(1))",
    }
    registry = CollectorRegistry()
    store = SnapshotStore(make_policy(prometheus.url, signals=signals))
    async with PrometheusSource(store, PrometheusSourceMetrics(registry)) as source:
        assert await source.refresh(startup=True)
    assert source.results == {
        "cpu": "ok",
        "memory": "query_error",
        "disk": "empty",
        "raw": "no_valid_samples",
        "bytes": "no_valid_samples",
        "scalar": "bad_response",
    }
    got = samples_of(store.current.snapshot)
    assert len(got) == NODES
    assert all(set(per) == {"cpu"} for per in got.values())
    rejected = "priority_extender_prometheus_rejected_samples_total"
    assert metric(registry, rejected, signal="raw", reason="duplicate") == 2 * NODES
    assert metric(registry, rejected, signal="bytes", reason="out_of_range") == NODES
    assert "signal 'disk' has NO DATA at start-up" in caplog.text
    assert "parse error" in caplog.text


async def test_end_to_end_filter_rejects_exactly_the_hot_nodes(prometheus):
    registry = CollectorRegistry()
    settings = ServerSettings(host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0)
    names = [n.name for n in prometheus.nodes]
    hot = {prometheus.nodes[i].name for i in HOT}
    request = fixture_json("filter-nodecache-true.json")  # a priority-100 pod: tier batch
    request["NodeNames"] = names
    async with (
        running(make_policy(prometheus.url), settings, registry) as state,
        aiohttp.ClientSession() as http,
    ):
        scheduler = f"http://127.0.0.1:{state.ports['scheduler']}"
        async with http.post(f"{scheduler}/filter", json=request) as resp:
            assert resp.status == 200
            reply = await resp.json()
        async with http.get(f"http://127.0.0.1:{state.ports['admin']}/metrics") as resp:
            exposition = await resp.text()

    assert reply["Error"] == ""
    assert reply["FailedAndUnresolvableNodes"] == dict.fromkeys(sorted(hot), HOT_REASON)
    assert reply["NodeNames"] == [n for n in names if n not in hot]
    assert 'priority_extender_prometheus_queries_total{result="ok",signal="cpu"} 1.0' in exposition
    assert "priority_extender_prometheus_refresh_duration_seconds_count 1.0" in exposition

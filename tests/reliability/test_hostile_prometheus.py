"""A hostile Prometheus (or whatever answers at its URL): redirects and bodies made to forge logs.

Played by loopback aiohttp servers (a real Prometheus never answers like this). The source must
not follow a redirect anywhere (the target server counts the queries it gets: none), must count
the query as failed with the reason ``redirected``, and must never put more of an answer in a
log line than a short excerpt with its control characters escaped.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from extender.policy import API_VERSION, LoadedPolicy, load_text
from extender.sources.prometheus import (
    LOGGED_TEXT_CHARS,
    PrometheusSource,
    PrometheusSourceMetrics,
)
from extender.store import SnapshotStore
from tests.builders import NOW

QUERY = "node:cpu_utilization:ratio"
FORGED = "\n2026-12-02 00:00:00 INFO extender.server: policy applied\x1b[2K\x1b[1A\r"
"""What an attacker would like to see as its own log line: a newline, a fake record, ANSI
escapes that erase and move up a line, a carriage return."""
SECRET = "TAIL-BEYOND-THE-EXCERPT"
"""Put after the first few hundred characters of a body: must never reach the log."""


def make_policy(url: str) -> LoadedPolicy:
    doc = {
        "apiVersion": API_VERSION,
        "kind": "PriorityPolicy",
        "metrics": {
            "source": "prometheus",
            "signals": {"cpu": QUERY},
            "prometheus": {"url": url, "refreshInterval": "15s", "timeout": "2s"},
        },
        "tiers": [{"name": "standard", "filter": {"cpu": 0.9}}],
        "defaultTier": "standard",
    }
    return load_text(yaml.safe_dump(doc, sort_keys=False), "hostile-prometheus.yaml")


def good_vector() -> bytes:
    result = [{"metric": {"node": "a"}, "value": [NOW, "0.5"]}]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})


async def serve(aiohttp_server: Any, handler: Any) -> str:
    app = web.Application()
    app.router.add_get("/api/v1/query", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def queries(registry: CollectorRegistry, result: str) -> float | None:
    return registry.get_sample_value(
        "priority_extender_prometheus_queries_total", {"signal": "cpu", "result": result}
    )


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_not_followed_and_counts_as_a_failure(aiohttp_server, status, caplog):
    hits: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        return web.Response(body=good_vector(), content_type="application/json")

    target = await serve(aiohttp_server, elsewhere)

    async def redirect(request: web.Request) -> web.Response:
        location = f"{target}/api/v1/query?{request.query_string}"
        return web.Response(status=status, headers={"Location": location})

    url = await serve(aiohttp_server, redirect)
    registry = CollectorRegistry()
    store = SnapshotStore(make_policy(url))
    with caplog.at_level(logging.WARNING, "extender.sources.prometheus"):
        async with PrometheusSource(store, PrometheusSourceMetrics(registry)) as source:
            assert not await source.refresh()
    assert hits == []  # never reached
    assert source.results == {"cpu": "redirected"}
    assert queries(registry, "redirected") == 1
    assert queries(registry, "ok") == 0
    assert store.current.snapshot.source_ok_at is None
    message = caplog.records[-1].getMessage()
    assert f"HTTP {status} redirect to" in message
    assert target in message  # says where it pointed
    assert "not followed" in message


def forged_body(prefix: str = "") -> bytes:
    return (prefix + (FORGED * 20) + "x" * 400 + SECRET).encode()


def prometheus_error_body() -> bytes:
    doc = {"status": "error", "errorType": "bad_data" + FORGED, "error": FORGED * 20 + SECRET}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("status", "body", "result"),
    [
        (500, forged_body(), "http_error"),  # an error page
        (200, forged_body("<html>"), "bad_response"),  # not Prometheus JSON
        (400, prometheus_error_body(), "query_error"),  # Prometheus' error JSON, hostile text
        (200, prometheus_error_body(), "query_error"),
        (503, forged_body(), "unavailable"),
    ],
)
async def test_an_answer_is_logged_as_a_short_escaped_excerpt(
    aiohttp_server, caplog, status, body, result
):
    async def hostile(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    url = await serve(aiohttp_server, hostile)
    registry = CollectorRegistry()
    store = SnapshotStore(make_policy(url))
    with caplog.at_level(logging.DEBUG, "extender.sources.prometheus"):
        async with PrometheusSource(store, PrometheusSourceMetrics(registry)) as source:
            assert not await source.refresh()
    assert source.results == {"cpu": result}
    records = [r for r in caplog.records if r.name == "extender.sources.prometheus"]
    assert records
    for record in records:
        message = record.getMessage()
        assert not any(ch in message for ch in "\n\r\x1b"), repr(message)
        assert SECRET not in message
        # The quoted part of the body is an excerpt; escaping may lengthen it fourfold at most.
        assert len(message) < 4 * LOGGED_TEXT_CHARS + 300, len(message)
    assert "\\x0a2026-12-02 00:00:00 INFO" in records[-1].getMessage()  # escaped, still legible


async def test_label_values_in_examples_are_escaped(aiohttp_server, caplog):
    """A node name in a rejected sample's example is foreign text too."""
    result = [
        {"metric": {"node": "a" + FORGED}, "value": [NOW, "NaN"]},
        {"metric": {"node": "b"}, "value": [NOW, "0.5"]},
    ]
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body.encode(), content_type="application/json")

    url = await serve(aiohttp_server, answer)
    store = SnapshotStore(make_policy(url))
    with caplog.at_level(logging.WARNING, "extender.sources.prometheus"):
        async with PrometheusSource(store, PrometheusSourceMetrics(CollectorRegistry())) as source:
            assert await source.refresh()
    message = caplog.records[-1].getMessage()
    assert "nan=1" in message
    assert not any(ch in message for ch in "\n\r\x1b"), repr(message)

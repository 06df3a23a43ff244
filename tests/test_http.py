"""The HTTP service over real loopback sockets (aiohttp's test server binds 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json

import pytest

from extender.server.app import Extender
from tests.builders import fixture_bytes, fixture_json
from tests.support import make_extender

# With the embedded policy's static metrics, a batch pod (cpu 500m of 4 cores) is refused by:
EXPECTED_REJECTED = {
    "node-002": "cpu load above batch tier ceiling",  # cpu 0.82
    "node-003": "node metrics stale or missing",  # no samples; batch rejects stale
    "node-005": "memory load above batch tier ceiling",  # memory 0.80
    "node-009": "cpu load above batch tier ceiling",  # 0.66
    "node-014": "cpu+memory load above batch tier ceiling",  # 0.92 / 0.93
    "node-017": "cpu load above batch tier ceiling",  # 0.52 + 0.5/4 = 0.645 > 0.60
}


@pytest.fixture
async def ext() -> Extender:
    return await make_extender()


@pytest.fixture
async def client(scheduler_client, ext):
    return await scheduler_client(ext)


async def post(client, path: str, body: bytes, ctype: str = "application/json"):
    resp = await client.post(path, data=body, headers={"Content-Type": ctype})
    return resp.status, await resp.json()


async def test_filter_names(client):
    status, reply = await post(
        client, "/filter", fixture_bytes("filter-nodecache-true-20nodes.json")
    )
    assert status == 200
    sent = fixture_json("filter-nodecache-true-20nodes.json")["NodeNames"]
    assert reply["Error"] == ""
    assert reply["FailedNodes"] == {}
    assert reply["FailedAndUnresolvableNodes"] == EXPECTED_REJECTED
    assert reply["NodeNames"] == [n for n in sent if n not in EXPECTED_REJECTED]
    assert reply["Nodes"] is None


async def test_filter_full_nodes_returns_kept_node_objects(client):
    sent = fixture_json("filter-nodecache-false-20nodes.json")
    status, reply = await post(
        client, "/filter", fixture_bytes("filter-nodecache-false-20nodes.json")
    )
    assert status == 200
    kept = [n for n in sent["Nodes"]["items"] if n["metadata"]["name"] not in EXPECTED_REJECTED]
    assert reply["Nodes"]["items"] == kept
    assert reply["NodeNames"] is None
    assert reply["FailedAndUnresolvableNodes"] == EXPECTED_REJECTED


@pytest.mark.parametrize(
    "name", ["prioritize-nodecache-true-20nodes.json", "prioritize-nodecache-false-20nodes.json"]
)
async def test_prioritize(client, name):
    status, reply = await post(client, "/prioritize", fixture_bytes(name))
    assert status == 200
    raw = fixture_json(name)
    sent = raw["NodeNames"] or [n["metadata"]["name"] for n in raw["Nodes"]["items"]]
    assert [e["Host"] for e in reply] == sent
    assert all(type(e["Score"]) is int and 0 <= e["Score"] <= 10 for e in reply)
    scores = {e["Host"]: e["Score"] for e in reply}
    # batch fills towards 50%: node-006 (cpu .36 + .125, memory .36) scores 9, while the
    # idler node-001 (cpu .13 + .125, memory .41) scores 8.
    assert (scores["node-006"], scores["node-001"]) == (9, 8)


async def test_url_prefix(scheduler_client):
    ext = await make_extender(url_prefix="/scheduler/")
    client = await scheduler_client(ext)
    status, _ = await post(client, "/scheduler/filter", fixture_bytes("filter-nodecache-true.json"))
    assert status == 200
    status, _ = await post(client, "/filter", fixture_bytes("filter-nodecache-true.json"))
    assert status == 404


@pytest.mark.parametrize("path", ["/filter", "/prioritize"])
@pytest.mark.parametrize(
    ("body", "ctype", "status", "message"),
    [
        (b"not json", "application/json", 400, "malformed JSON"),
        (b"", "application/json", 400, "empty request body"),
        (b'{"Pod": null, "NodeNames": []}', "application/json", 400, "Pod is missing or null"),
        (b"{}", "text/plain", 415, "unsupported Content-Type 'text/plain'"),
    ],
)
async def test_malformed_requests_get_a_4xx_naming_the_problem(
    client, path, body, ctype, status, message
):
    got_status, reply = await post(client, path, body, ctype)
    assert got_status == status
    assert message in reply["Error"]


async def test_wrong_method_and_path_answer_json(client):
    resp = await client.get("/filter")
    assert resp.status == 405
    assert "take POST" in (await resp.json())["Error"]
    resp = await client.post("/nope", data=b"{}")
    assert resp.status == 404
    assert (await resp.json())["Error"] == "Not Found: POST /nope"


async def test_oversized_body_gets_413_with_advice(scheduler_client):
    ext = await make_extender(max_request_bytes=4096)
    client = await scheduler_client(ext)
    body = fixture_bytes("filter-nodecache-false.json")  # 10 KB
    status, reply = await post(client, "/filter", body)
    assert status == 413
    assert "request body too large (10337 bytes): the limit is 4096 bytes" in reply["Error"]
    assert "nodeCacheCapable: true" in reply["Error"]

    async def chunks():  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    resp = await client.post("/filter", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert "the limit is 4096 bytes" in (await resp.json())["Error"]
    # and the server still answers normally afterwards
    status, _ = await post(client, "/filter", fixture_bytes("filter-nodecache-true.json"))
    assert status == 200


async def test_internal_failure_fails_open(scheduler_client, caplog):
    def broken_clock() -> float:
        raise RuntimeError("clock exploded")

    ext = await make_extender(clock=broken_clock)
    client = await scheduler_client(ext)
    body = fixture_bytes("filter-nodecache-true-20nodes.json")
    status, reply = await post(client, "/filter", body)
    assert status == 200
    assert reply["Error"] == ""  # a non-empty Error would fail the pod's scheduling attempt
    assert reply["NodeNames"] == fixture_json("filter-nodecache-true-20nodes.json")["NodeNames"]
    assert reply["FailedAndUnresolvableNodes"] == {}
    status, scores = await post(client, "/prioritize", body)
    assert status == 200
    assert {e["Score"] for e in scores} == {5}
    assert "clock exploded" in caplog.text
    assert "Traceback" not in json.dumps(reply)
    registry = ext.metrics.registry
    for verb in ("filter", "prioritize"):
        labels = {"verb": verb, "outcome": "fail_open"}
        assert registry.get_sample_value("priority_extender_requests_total", labels) == 1


async def test_admin_probes_and_metrics(scheduler_client, aiohttp_client, ext):
    sched = await scheduler_client(ext)
    admin = await aiohttp_client(ext.admin_app())
    assert (await admin.get("/livez")).status == 200
    assert (await admin.get("/readyz")).status == 503  # not ready until started
    ext.ready = True
    resp = await admin.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["nodes"] == 20
    await post(sched, "/filter", fixture_bytes("filter-nodecache-true-20nodes.json"))
    await post(sched, "/filter", b"garbage")
    text = await (await admin.get("/metrics")).text()
    assert 'priority_extender_requests_total{outcome="ok",verb="filter"} 1.0' in text
    assert 'priority_extender_requests_total{outcome="bad_request",verb="filter"} 1.0' in text
    assert 'priority_extender_filter_rejections_total{reason="live_load",tier="batch"} 5.0' in text
    assert 'priority_extender_filter_rejections_total{reason="stale",tier="batch"} 1.0' in text
    assert 'priority_extender_request_duration_seconds_count{verb="filter"} 1.0' in text
    assert "priority_extender_fallback_active 0.0" in text


async def test_burst_of_32_callers_is_shed_fast_not_queued(scheduler_client):
    # The four admitted callers hold their slots with slow bodies: a long body deadline keeps
    # them admitted on a loaded machine.
    ext = await make_extender(max_inflight=4, body_timeout=30.0)
    client = await scheduler_client(ext)
    body = fixture_bytes("filter-nodecache-true.json")
    release = asyncio.Event()

    async def slow_body():  # callers that hold their request open until released
        yield body[:100]
        await release.wait()
        yield body[100:]

    async def call():
        resp = await client.post(
            "/filter", data=slow_body(), headers={"Content-Type": "application/json"}
        )
        return resp.status, await resp.json()

    tasks = [asyncio.create_task(call()) for _ in range(32)]
    # 28 are refused while the first 4 are still reading their bodies
    deadline = asyncio.get_running_loop().time() + 10
    while sum(t.done() for t in tasks) < 28:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*tasks)
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] * 4 + [503] * 28
    shed = next(r for s, r in results if s == 503)
    assert shed["Error"].startswith("overloaded: 4 requests in flight (limit 4)")
    sample = ext.metrics.registry.get_sample_value
    assert (
        sample("priority_extender_requests_total", {"verb": "filter", "outcome": "overloaded"})
        == 28
    )
    # and once the burst is over, requests are served again
    status, _ = await post(client, "/filter", body)
    assert status == 200

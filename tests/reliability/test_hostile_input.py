"""Hostile and odd input over real loopback HTTP: a clear 4xx or a correct answer, never a 500.

Every case also checks that the server keeps answering normally afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.builders import fixture_bytes, fixture_json
from tests.support import make_extender

BASE = fixture_json("filter-nodecache-true.json")
GOOD = fixture_bytes("filter-nodecache-true.json")


def args(**changes: Any) -> bytes:
    doc = json.loads(GOOD)
    doc.update(changes)
    return json.dumps(doc).encode()


def pod_with(**spec: Any) -> bytes:
    doc = json.loads(GOOD)
    doc["Pod"]["spec"].update(spec)
    return json.dumps(doc).encode()


def quantity(cpu: Any) -> bytes:
    doc = json.loads(GOOD)
    doc["Pod"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = cpu
    return json.dumps(doc).encode()


@pytest.fixture
async def client(scheduler_client):
    ext = await make_extender()
    return await scheduler_client(ext)


async def call(client, body: bytes, ctype: str = "application/json", path: str = "/filter"):
    resp = await client.post(path, data=body, headers={"Content-Type": ctype})
    return resp.status, json.loads(await resp.read())


REJECTED = [
    ("empty body", b"", "empty request body"),
    ("truncated", GOOD[: len(GOOD) // 2], "malformed JSON"),
    ("not JSON", b"<html>hello</html>", "malformed JSON"),
    ("JSON array", b"[1, 2]", "invalid ExtenderArgs"),
    ("both null", args(NodeNames=None, Nodes=None), "both Nodes and NodeNames are null"),
    ("both set", args(Nodes={"items": []}), "both Nodes and NodeNames are set"),
    ("string priority", pod_with(priority="high"), "Expected `int | null`, got `str`"),
    ("names not strings", args(NodeNames=[{"a": 1}]), "Expected `str`, got `object`"),
    ("invalid quantity", quantity("1.5 cores"), "invalid quantity '1.5 cores'"),
    ("negative quantity", quantity("-1"), "invalid quantity '-1'"),
    ("huge exponent", quantity("1e999"), "invalid quantity '1e999'"),
    ("NaN quantity", quantity("NaN"), "invalid quantity 'NaN'"),
    ("boolean quantity", quantity(True), "Expected `int | float | str`, got `bool`"),
]


@pytest.mark.parametrize(("case", "body", "message"), REJECTED, ids=[c[0] for c in REJECTED])
@pytest.mark.parametrize("path", ["/filter", "/prioritize"])
async def test_rejected_with_a_clear_4xx(client, case, body, message, path):
    status, reply = await call(client, body, path=path)
    assert status == 400, reply
    assert message in reply["Error"]
    status, _ = await call(client, GOOD, path=path)
    assert status == 200


async def test_wrong_content_type_and_method(client):
    status, reply = await call(client, GOOD, ctype="application/x-www-form-urlencoded")
    assert (status, reply["Error"][:24]) == (415, "unsupported Content-Type")
    resp = await client.get("/prioritize")
    assert resp.status == 405
    assert "take POST" in (await resp.json())["Error"]


def _names(names: list[str]) -> bytes:
    return args(NodeNames=names)


ANSWERED = [
    ("duplicate names", ["node-000", "node-000", "node-002"]),
    ("empty name", ["", "node-001"]),
    ("253-character name", ["a" * 253, "node-001"]),
    ("unicode names", ["nœud-ü", "节点", "node-001"]),
    ("no names", []),
]


@pytest.mark.parametrize(("case", "names"), ANSWERED, ids=[c[0] for c in ANSWERED])
async def test_odd_names_get_a_correct_answer(client, case, names):
    status, reply = await call(client, _names(names))
    assert status == 200
    assert reply["Error"] == ""
    kept, failed = reply["NodeNames"], reply["FailedAndUnresolvableNodes"]
    assert set(kept) | set(failed) == set(names)
    assert not set(kept) & set(failed)
    # unknown names are missing data; the batch tier rejects nodes without data
    for name in names:
        if not name.startswith("node-"):
            assert failed[name] == "node metrics stale or missing"
    status, scores = await call(client, _names(names), path="/prioritize")
    assert status == 200
    assert [e["Host"] for e in scores] == names
    assert all(type(e["Score"]) is int and 0 <= e["Score"] <= 10 for e in scores)


async def test_fifty_thousand_names(client):
    names = [f"node-{i:03d}" for i in range(20)] + [f"ghost-{i}" for i in range(49_980)]
    status, reply = await call(client, _names(names), path="/prioritize")
    assert status == 200
    assert len(reply) == 50_000
    status, reply = await call(client, _names(names))
    assert status == 200
    assert len(reply["NodeNames"]) + len(reply["FailedAndUnresolvableNodes"]) == 50_000


@pytest.mark.parametrize(
    "body",
    [
        pod_with(priority=2**62),  # huge
        pod_with(priority=-(2**31)),  # negative
        pod_with(containers=[{"name": "c"}, {"name": "d", "resources": {}}]),  # no resources
        pod_with(containers=None, initContainers=None),
    ],
    ids=["huge priority", "negative priority", "containers without resources", "no containers"],
)
async def test_odd_pods_get_a_correct_answer(client, body):
    status, reply = await call(client, body)
    assert status == 200
    assert reply["Error"] == ""
    assert len(reply["NodeNames"]) + len(reply["FailedAndUnresolvableNodes"]) == 3


async def test_pod_without_spec(client):
    doc = json.loads(GOOD)
    del doc["Pod"]["spec"]
    status, reply = await call(client, json.dumps(doc).encode())
    assert status == 200
    assert reply["Error"] == ""


@pytest.mark.parametrize(
    ("cpu", "cores"),
    [("1.5", 1.5), ("1500m", 1.5), ("1Ki", 1024), ("1e3", 1000), ("0.5Gi", 2**29),
     ("100u", 1e-4), ("2k", 2000), (".5", 0.5), ("+1", 1), ("1E-3", 0.001), (2, 2), (0.25, 0.25)],
)  # fmt: skip
async def test_every_quantity_spelling(scheduler_client, cpu, cores):
    ext = await make_extender()
    client = await scheduler_client(ext)
    status, _ = await call(client, quantity(cpu))
    assert status == 200
    (decision,) = ext.decisions.find(f"{BASE['Pod']['metadata']['namespace']}/pod-000")
    assert decision.evaluation.estimate[0] == pytest.approx(cores)

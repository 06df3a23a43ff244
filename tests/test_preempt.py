"""The preempt verb: drop candidates where the preemptor would still be rejected after eviction."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from extender.core import OnStale, PreemptCandidate, Victim, decide_preemption
from extender.core.preempt import DROP_CAPPED, DROP_NO_VICTIMS
from extender.policy import embedded_default, load_text
from extender.server.app import Extender, ServerSettings
from extender.server.metrics import Metrics
from extender.store import SnapshotStore
from extender.wire import WireError, decode_preempt
from tests.builders import NOW, GiB, fixture_bytes, fixture_json, pod, rules, snapshot, tier

PROD = tier("prod", ceilings={"cpu": 0.8, "memory": 0.9}, on_stale=OnStale.REJECT)


def cand(node: str, *victims: tuple[float, float]) -> PreemptCandidate:
    return PreemptCandidate(
        node, tuple(Victim(f"{node}-v{i}", c, m) for i, (c, m) in enumerate(victims))
    )


def test_hot_node_dropped_cool_node_kept_with_the_same_victims():
    snap = snapshot({"hot": (0.95, 0.3), "cool": (0.40, 0.3)})
    victims = [(0.5, GiB)]  # 0.5 of 4 cores = 0.125
    offered = [cand("hot", *victims), cand("cool", *victims)]
    d = decide_preemption(pod(cpu=0.5, memory=GiB), offered, snap, rules(PROD), NOW)
    assert [c.node for c in d.kept] == ["cool"]
    assert d.kept[0] == offered[1]  # victims exactly as offered
    # hot: 0.95 - 0.125 + 0.125 = 0.95 > 0.8
    assert d.dropped == {"hot": "cpu load above prod tier ceiling"}


def test_node_made_cool_enough_by_its_victims_is_kept():
    snap = snapshot({"a": (0.85, 0.3)})
    # without eviction: 0.85 + 0.125 = 0.975 > 0.8; evicting 1.5 cores: 0.975 - 0.375 = 0.6
    d = decide_preemption(pod(cpu=0.5), [cand("a", (1.0, 0), (0.5, 0))], snap, rules(PROD), NOW)
    assert [c.node for c in d.kept] == ["a"]
    assert d.evaluation.projection[0, 0] == pytest.approx(0.6)
    d = decide_preemption(pod(cpu=0.5), [cand("a", (0.1, 0))], snap, rules(PROD), NOW)
    assert d.kept == ()


def test_empty_victims_and_stale_nodes_are_dropped():
    snap = snapshot({"a": (0.1, 0.1)})
    offered = [cand("a"), cand("ghost", (0.5, 0))]
    d = decide_preemption(pod(), offered, snap, rules(PROD), NOW)
    assert d.kept == ()
    assert d.dropped == {"a": DROP_NO_VICTIMS, "ghost": "node metrics stale or missing"}


def test_unknown_victim_usage_is_not_subtracted():
    snap = snapshot({"a": (0.75, 0.1)})
    offered = [PreemptCandidate("a", (Victim("uid-x"),))]
    d = decide_preemption(pod(cpu=0.5), offered, snap, rules(PROD), NOW)
    assert d.dropped == {"a": "cpu load above prod tier ceiling"}  # 0.75 + 0.125


def test_cap_per_node():
    snap = snapshot({"a": (0.1, 0.1), "b": (0.1, 0.1)})
    offered = [cand("a", (0.5, 0)), cand("b", (0.5, 0))]
    d = decide_preemption(pod(), offered, snap, rules(PROD), NOW, {"a": 2, "b": 1}, 2)
    assert [c.node for c in d.kept] == ["b"]
    assert d.dropped == {"a": DROP_CAPPED}


# --- wire ----------------------------------------------------------------------------------------


def test_fixtures_decode():
    est = embedded_default().rules.estimation
    known = {"76599ae5-2f34-417b-90da-ebb6bcec43fb": (0.5, 256 * 2**20)}
    meta = decode_preempt(fixture_bytes("preempt-nodecache-true.json"), est, known.get)
    assert meta.pod.name == "high-000"
    assert meta.pod.priority == 1000
    assert [c.node for c in meta.candidates] == ["node-000", "node-001", "node-002", "node-003"]
    assert meta.candidates[0].victims == (
        Victim("76599ae5-2f34-417b-90da-ebb6bcec43fb", 0.5, 256 * 2**20),
    )
    assert meta.unknown_victims == 3
    full = decode_preempt(fixture_bytes("preempt-nodecache-false.json"), est, known.get)
    raw = fixture_json("preempt-nodecache-false.json")["NodeNameToVictims"]
    for c in full.candidates:
        assert [v.uid for v in c.victims] == [p["metadata"]["uid"] for p in raw[c.node]["Pods"]]
        assert all(v.cpu == 0.5 for v in c.victims)
    assert full.unknown_victims == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty request body"),
        (b"{", "malformed JSON"),
        (
            b'{"Pod": {}, "NodeNameToVictims": null, "NodeNameToMetaVictims": null}',
            "both NodeNameToVictims and NodeNameToMetaVictims are null",
        ),
        (b'{"NodeNameToMetaVictims": {}}', "Pod is missing or null"),
        (
            b'{"Pod": {}, "NodeNameToMetaVictims": {"a": {"Pods": [{"UID": ""}]}}}',
            "NodeNameToMetaVictims['a'].Pods[0]: UID is missing",
        ),
        (
            b'{"Pod": {}, "NodeNameToVictims": {"a": {"Pods": [{"metadata": {}}]}}}',
            "NodeNameToVictims['a'].Pods[0]: metadata.uid is missing",
        ),
        (
            b'{"Pod": {}, "NodeNameToMetaVictims": {"a": {"Pods": 3}}}',
            "Expected `array | null`, got `int`",
        ),
    ],
)
def test_malformed(body, message):
    with pytest.raises(WireError) as err:
        decode_preempt(body, embedded_default().rules.estimation, lambda uid: None)
    assert message in str(err.value)


# --- HTTP ----------------------------------------------------------------------------------------

POLICY = """\
apiVersion: priority-extender.io/v1alpha1
kind: PriorityPolicy
metrics: {source: static, static: {file: m.yaml}}
tiers:
- name: production
  match: {minPriority: 1000}
  filter: {cpu: 0.8}
preemption: {maxPerNode: 1, window: 30s}
"""
METRICS = """\
nodes:
  node-000: {cpu: 0.95, memory: 0.2, allocatable: {cpu: "4", memory: 16Gi}}
  node-001: {cpu: 0.30, memory: 0.2, allocatable: {cpu: "4", memory: 16Gi}}
  node-002: {cpu: 0.30, memory: 0.2, allocatable: {cpu: "4", memory: 16Gi}}
  node-003: {cpu: 0.30, memory: 0.2, allocatable: {cpu: "4", memory: 16Gi}}
"""


async def test_preempt_over_http(scheduler_client, tmp_path):
    from extender.sources.static import StaticSource

    (tmp_path / "m.yaml").write_text(METRICS)
    policy = load_text(POLICY, "p.yaml", tmp_path)
    store = SnapshotStore(policy, clock=lambda: NOW)
    await StaticSource(store, tmp_path / "m.yaml", 15, lambda: NOW).refresh()
    now = [NOW]
    ext = Extender(store, Metrics(CollectorRegistry()), ServerSettings(), lambda: now[0])
    client = await scheduler_client(ext)

    async def preempt(name: str) -> dict[str, object]:
        resp = await client.post(
            "/preempt", data=fixture_bytes(name), headers={"Content-Type": "application/json"}
        )
        assert resp.status == 200
        return await resp.json()

    reply = await preempt("preempt-nodecache-false.json")
    sent = fixture_json("preempt-nodecache-false.json")["NodeNameToVictims"]
    # node-000 is hot: 0.95 - 0.125 + 0.125 > 0.8. The others keep their victims, by UID.
    assert reply == {
        "NodeNameToMetaVictims": {
            n: {
                "Pods": [{"UID": p["metadata"]["uid"]} for p in sent[n]["Pods"]],
                "NumPDBViolations": 0,
            }
            for n in ("node-001", "node-002", "node-003")
        }
    }
    # The cap (1 per node per 30 s) now drops every node; after the window they come back.
    assert (await preempt("preempt-nodecache-true.json")) == {"NodeNameToMetaVictims": {}}
    now[0] += 31  # (still within maxAge: 60 s, so live data is fresh)
    reply = await preempt("preempt-nodecache-true.json")
    assert sorted(reply["NodeNameToMetaVictims"]) == ["node-001", "node-002", "node-003"]
    sample = ext.metrics.registry.get_sample_value
    assert (
        sample("priority_extender_preempt_candidates_total", {"result": "dropped_live_load"}) == 3
    )
    assert sample("priority_extender_preempt_candidates_total", {"result": "dropped_capped"}) == 3
    assert sample("priority_extender_preempt_candidates_total", {"result": "kept"}) == 6
    assert sample("priority_extender_preempt_unknown_victims_total") == 8

    resp = await client.post("/preempt", data=b"nope", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert "malformed JSON" in json.loads(await resp.read())["Error"]

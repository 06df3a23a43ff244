"""The wire contract, checked against payloads captured from a real kube-scheduler (v1.28.7)."""

from __future__ import annotations

import json

import msgspec
import pytest

from extender.core import REASON_STALE, Candidates, empty_snapshot, evaluate
from extender.policy import embedded_default
from extender.wire import (
    WireError,
    decode_args,
    encode_error,
    encode_filter,
    encode_filter_pass_all,
    encode_filter_result,
    encode_priorities,
)
from tests.builders import FIXTURES, NOW, fixture_bytes, fixture_json

VERB_FIXTURES = sorted(
    p.name for p in FIXTURES.glob("*.json") if p.name.startswith(("filter", "prioritize"))
)


@pytest.mark.parametrize("name", VERB_FIXTURES)
def test_fixture_decodes(name):
    raw = fixture_json(name)
    args = decode_args(fixture_bytes(name))
    spec = raw["Pod"]["spec"]
    assert args.pod.name == raw["Pod"]["metadata"]["name"]
    assert args.pod.namespace == raw["Pod"]["metadata"]["namespace"]
    assert args.pod.priority == spec["priority"]
    assert args.pod.priority_class_name == spec["priorityClassName"]
    assert args.pod.containers[0].cpu_request == 0.5
    assert args.pod.containers[0].memory_request == 256 * 2**20
    if "nodecache-true" in name:
        assert raw["Nodes"] is None
        assert list(args.candidates.names) == raw["NodeNames"]
        assert args.full_nodes is None
    else:
        assert raw["NodeNames"] is None
        items = raw["Nodes"]["items"]
        assert list(args.candidates.names) == [n["metadata"]["name"] for n in items]
        assert args.candidates.allocatable is not None
        assert args.candidates.allocatable[0].tolist() == [4.0] * len(items)
        assert args.candidates.allocatable[1].tolist() == [16 * 2**30] * len(items)


@pytest.mark.parametrize("name", [n for n in VERB_FIXTURES if n.startswith("filter")])
def test_filter_reply_round_trips_the_request_shape(name):
    raw = fixture_json(name)
    args = decode_args(fixture_bytes(name))
    names = list(args.candidates.names)
    kept = [i for i in range(len(names)) if i % 3 != 1]
    failed = {
        names[i]: "cpu load above batch tier ceiling" for i in range(len(names)) if i % 3 == 1
    }
    body = encode_filter_result(args, kept, {}, failed)
    reply = json.loads(body)
    assert list(reply) == [
        *(["NodeNames", "Nodes"] if args.full_nodes is None else ["Nodes", "NodeNames"]),
        "FailedNodes",
        "FailedAndUnresolvableNodes",
        "Error",
    ]
    assert reply["Error"] == ""
    assert reply["FailedAndUnresolvableNodes"] == failed
    if args.full_nodes is None:
        assert reply["Nodes"] is None
        assert reply["NodeNames"] == [names[i] for i in kept]
    else:
        assert reply["NodeNames"] is None
        # The kept Node objects come back whole, equal to what was sent.
        assert reply["Nodes"]["items"] == [raw["Nodes"]["items"][i] for i in kept]
        assert reply["Nodes"]["metadata"] == raw["Nodes"]["metadata"]


def test_full_nodes_pass_through_byte_for_byte():
    body = fixture_bytes("filter-nodecache-false.json")
    args = decode_args(body)
    reply = encode_filter_pass_all(args)
    # Each node's original bytes appear verbatim in the reply: nothing was re-encoded.
    assert args.full_nodes is not None
    for item in args.full_nodes:
        assert bytes(item) in body
        assert bytes(item) in reply


def test_decision_on_fixture_with_the_embedded_policy():
    policy = embedded_default()
    args = decode_args(fixture_bytes("filter-nodecache-false-20nodes.json"))
    ev = evaluate(args.pod, args.candidates, empty_snapshot(now=NOW), policy.rules, NOW)
    assert ev.tier is not None
    assert ev.tier.name == "batch"  # priority 100, class batch-low
    reply = json.loads(encode_filter(args, ev))
    # No live data yet: fallback rejects nothing for load, but batch says onStale: reject, so
    # it waits for the live source rather than being placed by requests.
    assert reply["Nodes"]["items"] == []
    assert set(reply["FailedAndUnresolvableNodes"].values()) == {REASON_STALE}
    assert len(reply["FailedAndUnresolvableNodes"]) == 20


def test_priorities_exact_shape():
    body = encode_priorities(["a", "b"], [0, 10])
    assert body == b'[{"Host":"a","Score":0},{"Host":"b","Score":10}]'


def test_lower_case_keys_of_older_clients():
    raw = fixture_json("filter-nodecache-true.json")
    lower = {"pod": raw["Pod"], "nodes": None, "nodenames": raw["NodeNames"]}
    args = decode_args(json.dumps(lower).encode())
    assert list(args.candidates.names) == raw["NodeNames"]
    assert args.pod.name == raw["Pod"]["metadata"]["name"]
    full = fixture_json("filter-nodecache-false.json")
    lower = {"pod": full["Pod"], "nodes": full["Nodes"], "nodenames": None}
    args = decode_args(json.dumps(lower).encode())
    assert len(args.candidates.names) == 3


def _with(**changes):
    raw = fixture_json("filter-nodecache-true.json")
    raw.update(changes)
    return json.dumps(raw).encode()


def _bad_quantity():
    raw = fixture_json("filter-nodecache-true.json")
    raw["Pod"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "12 cores"
    return json.dumps(raw).encode()


def _bad_node_quantity():
    raw = fixture_json("filter-nodecache-false.json")
    raw["Nodes"]["items"][1]["status"]["allocatable"]["memory"] = "-1Gi"
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty request body"),
        (b"{", "malformed JSON"),
        (b"[]", "invalid ExtenderArgs"),
        (b'"Pod"', "invalid ExtenderArgs"),
        (fixture_bytes("filter-nodecache-true.json")[:-40], "malformed JSON"),
        (_with(Pod=None), "Pod is missing or null"),
        (_with(NodeNames=None), "both Nodes and NodeNames are null"),
        (_with(Nodes={"items": []}), "both Nodes and NodeNames are set"),
        (_with(NodeNames=[1, 2]), "Expected `str`, got `int` - at `$.NodeNames[0]`"),
        (_with(NodeNames="node-a"), "Expected `array | null`, got `str` - at `$.NodeNames`"),
        (_bad_quantity(), "Pod.spec.containers[0].resources.requests.cpu: invalid quantity"),
        (_bad_node_quantity(), "Nodes.items[1].status.allocatable.memory: invalid quantity"),
    ],
)
def test_malformed_requests_name_the_problem(body, message):
    with pytest.raises(WireError) as err:
        decode_args(body)
    assert message in str(err.value)


def test_error_body_is_filter_shaped():
    reply = json.loads(encode_error("bad thing"))
    assert reply == {
        "NodeNames": None,
        "Nodes": None,
        "FailedNodes": {},
        "FailedAndUnresolvableNodes": {},
        "Error": "bad thing",
    }


def test_empty_node_names_give_an_empty_answer():
    args = decode_args(_with(NodeNames=[]))
    assert json.loads(encode_filter_pass_all(args))["NodeNames"] == []
    ev = evaluate(args.pod, Candidates([]), empty_snapshot(), embedded_default().rules, NOW)
    assert ev.scores.tolist() == []


def test_decode_skips_fields_it_does_not_need():
    # Unknown and oddly typed fields outside what decisions read are ignored, not errors.
    raw = fixture_json("filter-nodecache-false.json")
    raw["Nodes"]["items"][0]["status"]["images"] = [{"weird": [1, {"x": None}]}]
    raw["Pod"]["spec"]["somethingNew"] = {"a": 1}
    args = decode_args(msgspec.json.encode(raw))
    assert len(args.candidates.names) == 3


def test_the_same_pod_bytes_are_decoded_once_and_other_bytes_afresh():
    """filter then prioritize carry the same pod: the second decode is a byte comparison that
    hands back the very same PodInfo; any other pod is decoded from its own bytes."""
    from extender.wire import decode_args

    body = fixture_bytes("filter-nodecache-true.json")
    first = decode_args(body).pod
    again = decode_args(body.replace(b'"NodeNames":[', b'"NodeNames": [', 1)).pod
    assert again is first
    other = json.loads(body)
    other["Pod"]["metadata"]["name"] = "someone-else"
    changed = decode_args(json.dumps(other).encode()).pod
    assert changed.name == "someone-else"
    assert changed is not first
    assert decode_args(body).pod == first  # back to the first pod: decoded again, equal

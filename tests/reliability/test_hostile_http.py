"""Hostile callers on the scheduler port: stalls, compressed bodies, deep JSON, huge numbers,
large bodies, forged DaemonSet pods, odd methods.

Everything runs against a real server on loopback: :class:`~tests.support.ServeProcess` (the
``serve`` process) or :func:`extender.server.run.running` (the same server in this process, so a
test can set a setting or watch a thread). Stalling callers are raw sockets: no HTTP client lets
a test send headers and then stop. Nothing here asserts a duration: a stalled caller must be cut
(its socket sees an answer or EOF within a hang detector's limit) and counted, and legitimate
calls must be answered while the stallers are still connected.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from extender.core import Candidates, evaluate
from extender.policy import embedded_default
from extender.server.app import Extender, ServerSettings
from extender.server.run import Running, running
from extender.verbs.decisions import DecisionLog
from extender.wire import decode_args, decode_pod
from tests.builders import NOW, fixture_bytes
from tests.support import ServeProcess, wait_for

BODY = fixture_bytes("filter-nodecache-true-20nodes.json")
"""A legitimate names-only filter call (20 nodes)."""
#: A hang detector for a cut that must happen within the body deadline (0.5 s); generous for a
#: loaded 2-core machine. Never a performance claim.
CUT_LIMIT_S = 15.0
#: How many callers stall at once: the default ``max_inflight``, every slot.
STALLERS = 16
HEAD = b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def _stall_requests() -> list[bytes]:
    """Three ways to send headers and stop: a slow body, an unfilled Content-Length, and a
    chunked body that never ends."""
    return [
        HEAD + b"Content-Length: 10000\r\n\r\n" + BODY[:10],
        HEAD + b"Content-Length: 10000\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"a\r\n" + BODY[:10] + b"\r\n",
    ]


def _open(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=CUT_LIMIT_S)
    sock.sendall(data)
    return sock


def _answer_or_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; fails (timeout) if it never does."""
    out = bytearray()
    while chunk := sock.recv(65536):
        out += chunk
    return bytes(out)


def _post(
    port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One request on its own connection; (status, decoded JSON or raw text)."""
    hdr = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in hdr.items()) + "\r\n"
    with _open(port, head.encode() + body) as sock:
        raw = _answer_or_eof(sock)
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    status = int(status_line.split()[1])
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode(errors="replace")


# --- 1. body deadlines, slots and readiness -------------------------------------------------------


@pytest.mark.parametrize("kind", range(3), ids=["slow-body", "unfilled-length", "endless-chunked"])
def test_stalled_callers_are_cut_counted_and_never_block_the_filter(kind):
    with ServeProcess("--kubernetes", "off") as proc:
        stallers = [_open(proc.port, _stall_requests()[kind]) for _ in range(STALLERS)]
        try:
            # While they are still connected (not one of them has been closed by its client),
            # a legitimate call is answered: the first ones may be refused while every slot is
            # reading a stalled body, but only until the deadline cuts them.
            got: list[tuple[int, Any]] = []

            def answered() -> bool:
                got.append(_post(proc.port, "/filter", BODY))
                assert got[-1][0] in (200, 503), got[-1]
                return got[-1][0] == 200

            wait_for(answered, CUT_LIMIT_S, "a legitimate filter answered while stalled")
            assert got[-1][1]["Error"] == ""
            # every staller got an answer (408, JSON) and its connection closed
            for sock in stallers:
                raw = _answer_or_eof(sock)
                assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
                assert b"body not received within" in raw
        finally:
            for sock in stallers:
                sock.close()
        wait_for(
            lambda: (
                proc.metric("priority_extender_requests_total", '{outcome="timeout",verb="filter"}')
                == STALLERS
            ),
            what="16 timeouts counted",
        )
        assert "Traceback" not in proc.output()


@asynccontextmanager
async def serve_in_process(**settings: Any) -> AsyncIterator[Running]:
    """The real server (both ports on loopback) in this process, with ``settings``."""
    base = ServerSettings(host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0)
    merged = ServerSettings(
        **{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **settings}
    )
    async with running(embedded_default(), merged, CollectorRegistry()) as state:
        yield state


async def _readyz(session: aiohttp.ClientSession, state: Running) -> tuple[int, Any]:
    async with session.get(f"http://127.0.0.1:{state.ports['admin']}/readyz") as resp:
        return resp.status, await resp.json()


async def _until(condition: Callable[[], Any], limit: float = CUT_LIMIT_S) -> None:
    async with asyncio.timeout(limit):
        while not await condition():
            await asyncio.sleep(0.01)


async def test_readiness_says_so_while_every_slot_is_busy_beyond_the_deadline():
    release = threading.Event()
    async with serve_in_process(max_inflight=2, offload_bytes=0) as state:
        ext: Extender = state.extender
        real = ext.verbs.call

        def slow(verb: str, body: bytes) -> Any:  # decisions that take longer than the deadline
            release.wait(CUT_LIMIT_S)
            return real(verb, body)

        ext.verbs.call = slow  # type: ignore[method-assign]
        port = state.ports["scheduler"]
        async with aiohttp.ClientSession() as s:
            assert (await _readyz(s, state))[0] == 200
            calls = [
                asyncio.create_task(asyncio.to_thread(_post, port, "/filter", BODY))
                for _ in range(2)
            ]

            async def unready() -> bool:
                status, body = await _readyz(s, state)
                return status == 503 and "scheduler port saturated" in body["reason"]

            await _until(unready)
            release.set()
            assert [s for s, _ in await asyncio.gather(*calls)] == [200, 200]

            async def ready() -> bool:
                return (await _readyz(s, state))[0] == 200

            await _until(ready)


# --- 2. Content-Encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "gzip, identity"])
def test_compressed_bodies_are_refused_with_415_before_inflating(encoding):
    squeezed = gzip.compress(BODY) if encoding.startswith("gzip") else zlib.compress(BODY)
    with ServeProcess("--kubernetes", "off") as proc:
        status, reply = _post(proc.port, "/filter", squeezed, {"Content-Encoding": encoding})
        assert status == 415, reply
        assert "Content-Encoding" in reply["Error"]
        assert "identity" in reply["Error"]
        # the admin port's dry run: the same refusal
        status, reply = _post(proc.admin, "/dry-run", squeezed, {"Content-Encoding": encoding})
        assert status == 415, reply
        assert "Content-Encoding" in reply["error"]
        # identity is what kube-scheduler sends (when it says anything)
        status, reply = _post(proc.port, "/filter", BODY, {"Content-Encoding": "identity"})
        assert status == 200
        assert reply["Error"] == ""
        assert (
            proc.metric("priority_extender_requests_total", '{outcome="bad_request",verb="filter"}')
            == 1
        )


# --- 3. deep JSON and huge numbers ------------------------------------------------------------------

DEEP = b"[" * 1000 + b"]" * 1000
HUGE = b"1" + b"0" * 400
POD = b'{"metadata":{"name":"p","namespace":"default","uid":"u1"},"spec":{"containers":[]}}'


def _args(pod: bytes = POD, extra: bytes = b"") -> bytes:
    return b'{"Pod":' + pod + b',"NodeNames":["node-001"]' + extra + b"}"


NODE = b'{"metadata":{"name":"n1"},"status":{"allocatable":{"cpu":"4","memory":"16Gi"}}'

HOSTILE_JSON = {
    "deep-unknown-field": ("/filter", _args(extra=b',"x":' + DEEP), "nested too deeply"),
    "deep-pod-spec": ("/filter", _args(POD[:-2] + b',"x":' + DEEP + b"}}"), "nested too deeply"),
    "deep-preempt-args": (
        "/preempt",
        b'{"Pod":' + POD + b',"NodeNameToMetaVictims":{"n1":{"Pods":[],"x":' + DEEP + b"}}}",
        "nested too deeply",
    ),
    "deep-full-node": (
        "/filter",
        b'{"Pod":' + POD + b',"Nodes":{"items":[' + NODE + b',"x":' + DEEP + b"}]}}",
        "nested too deeply",
    ),
    "huge-integer-quantity": (
        "/filter",
        _args(POD.replace(b'"containers":[]', b'"overhead":{"cpu":' + HUGE + b"}")),
        "out of range",
    ),
    "huge-integer-allocatable": (
        "/filter",
        b'{"Pod":' + POD + b',"Nodes":{"items":[{"metadata":{"name":"n1"},"status":'
        b'{"allocatable":{"memory":' + HUGE + b"}}}]}}",
        "out of range",
    ),
    "huge-priority": (
        "/filter",
        _args(POD.replace(b'{"containers', b'{"priority":' + HUGE + b',"containers')),
        "priority",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
async def test_deep_json_and_huge_numbers_are_400s_naming_the_problem(case, caplog):
    path, body, message = HOSTILE_JSON[case]
    caplog.set_level(logging.INFO)
    async with serve_in_process() as state:
        status, reply = await asyncio.to_thread(_post, state.ports["scheduler"], path, body)
        sample = state.extender.metrics.registry.get_sample_value
        verb = path.strip("/")
        assert status == 400, reply
        assert message in reply["Error"], reply
        assert (
            sample("priority_extender_requests_total", {"verb": verb, "outcome": "bad_request"})
            == 1
        )
    assert "Traceback" not in caplog.text
    assert not any(r.exc_info for r in caplog.records)


def test_the_decoders_turn_nesting_and_overflow_into_wire_errors():
    from extender.wire import WireError

    for body in (
        _args(extra=b',"x":' + DEEP),
        _args(POD.replace(b'"containers":[]', b'"overhead":{"cpu":' + HUGE + b"}")),
    ):
        with pytest.raises(WireError):
            decode_args(body)
    with pytest.raises(WireError, match="nested too deeply"):
        decode_pod(b'{"spec":{"x":' + DEEP + b"}}")


# --- 4. large bodies off the loop, in-flight body bytes bounded ------------------------------------


async def test_a_large_body_is_decided_in_a_worker_thread_and_a_small_one_on_the_loop():
    async with serve_in_process(offload_bytes=4096) as state:
        ext = state.extender
        real = ext.verbs.call
        seen: list[bool] = []
        loop_thread = threading.get_ident()

        def spy(verb: str, body: bytes) -> Any:
            seen.append(threading.get_ident() == loop_thread)
            return real(verb, body)

        ext.verbs.call = spy  # type: ignore[method-assign]
        port = state.ports["scheduler"]
        big = json.loads(BODY)
        big["NodeNames"] = [f"node-{i:05d}" for i in range(1000)]
        for body in (BODY, json.dumps(big).encode()):
            status, reply = await asyncio.to_thread(_post, port, "/filter", body)
            assert status == 200
            assert reply["Error"] == ""
        assert len(BODY) < 4096 < len(json.dumps(big))
        assert seen == [True, False]


async def test_in_flight_body_bytes_are_bounded():
    budget = 64 << 10
    # Small bodies (under offload_bytes, 256 here) keep 16 x 256 = 4 KiB of the budget to
    # themselves; larger ones fill it up to 60 KiB. body_timeout 30 s: the holder below must
    # stay within its deadline while the test runs.
    settings = {
        "max_body_bytes_in_flight": budget,
        "max_request_bytes": budget - 4096,
        "offload_bytes": 256,
        "body_timeout": 30.0,
    }
    async with serve_in_process(**settings) as state:
        port = state.ports["scheduler"]
        sample = state.extender.metrics.registry.get_sample_value
        # one caller holds 40 KiB of a 60 KiB body (slow, within its deadline: a long one here)
        holder = await asyncio.to_thread(
            _open, port, HEAD + b"Content-Length: 61440\r\n\r\n" + b" " * 40960
        )
        try:

            async def held() -> bool:
                return state.extender.body_bytes_in_flight >= 40960

            await _until(held)
            # a declared body that would cross the budget: a fast 503 before it is read
            status, reply = await asyncio.to_thread(_post, port, "/filter", b" " * 30000 + BODY)
            assert status == 503, reply
            assert "request bodies in flight" in reply["Error"]
            # a chunked body that crosses it while streaming: cut with the same 503
            chunked = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
            chunk = b" " * 8192
            stream = chunked + b"".join(b"2000\r\n" + chunk + b"\r\n" for _ in range(4))
            sock = await asyncio.to_thread(_open, port, stream)
            with sock:
                raw = await asyncio.to_thread(_answer_or_eof, sock)
            assert raw.startswith(b"HTTP/1.1 503"), raw[:200]
            # a second large caller fills the budget of large bodies (40 + 20 of 60 KiB) ...
            second = await asyncio.to_thread(
                _open, port, HEAD + b"Content-Length: 20480\r\n\r\n" + b" " * 20000
            )

            async def full() -> bool:
                return state.extender.body_bytes_in_flight >= 60960

            await _until(full)
            # ... and a small call (under offload_bytes) still fits in the headroom kept for it
            tiny = b'{"Pod":{"metadata":{"name":"p"}},"NodeNames":["node-001"]}'
            status, reply = await asyncio.to_thread(_post, port, "/filter", tiny)
            assert status == 200, reply
            second.close()
        finally:
            holder.close()
        assert (
            sample("priority_extender_requests_total", {"verb": "filter", "outcome": "overloaded"})
            == 2
        )

        async def released() -> bool:
            return state.extender.body_bytes_in_flight == 0

        await _until(released)


def test_the_byte_budget_cannot_be_below_one_request():
    with pytest.raises(ValueError, match="max_body_bytes_in_flight"):
        ServerSettings(max_request_bytes=2 << 20, max_body_bytes_in_flight=1 << 20)


# --- 5. the decision log is bounded in bytes ---------------------------------------------------------

LABEL_BYTES = 256 << 10


def _fat_pod(i: int) -> bytes:
    labels = {f"k{j}": ("v" * 60) + f"{i:06d}{j:03d}" for j in range(LABEL_BYTES // 80)}
    return json.dumps(
        {"metadata": {"name": f"fat-{i}", "namespace": "default", "uid": f"u{i}", "labels": labels}}
    ).encode()


def test_the_decision_log_keeps_bounded_bytes_of_each_pod_and_in_total():
    policy = embedded_default()
    from extender.store import SnapshotStore

    store = SnapshotStore(policy, clock=lambda: NOW)
    snap, rules = store.current.snapshot, store.current.policy.rules
    log = DecisionLog()
    # Traced from before the pods exist, so that what the log keeps of them after the request
    # is gone (the pods deleted) is what stays allocated.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        pods = [decode_pod(_fat_pod(i)) for i in range(200)]  # 200 x 256 KiB of labels
        for pod in pods:
            log.add("filter", evaluate(pod, Candidates(["node-001"]), snap, rules, NOW), NOW)
        del pods, pod
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"\ndecision log: 200 pods with 256 KiB of labels each keep {kept / 1e6:.2f} MB")
    assert len(log) == 200
    assert kept < 8 << 20  # before: the pods' 50 MiB of labels were kept
    assert log.bytes <= log.max_bytes
    found = log.find("default/fat-7")
    assert found
    assert "labels" in (found[0].note or "")
    assert len(found[0].evaluation.pod.labels) < 200


def test_the_decision_log_drops_the_oldest_over_its_byte_budget():
    policy = embedded_default()
    from extender.store import SnapshotStore

    store = SnapshotStore(policy, clock=lambda: NOW)
    snap, rules = store.current.snapshot, store.current.policy.rules
    log = DecisionLog(max_bytes=1 << 20)
    names = [f"node-{i:05d}-{'x' * 200}" for i in range(2000)]  # ~900 KB an entry
    for i in range(5):
        pod = decode_pod(b'{"metadata":{"name":"p%d","namespace":"d"}}' % i)
        log.add("filter", evaluate(pod, Candidates(names), snap, rules, NOW), NOW)
        assert log.bytes <= log.max_bytes or len(log) == 1
    assert len(log) == 1
    assert log.find("d/p4")


# --- 6. the DaemonSet bypass -------------------------------------------------------------------------

DS_OWNER = {"ownerReferences": [{"kind": "DaemonSet", "name": "agent", "controller": True}]}
PINNED = {
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": ["node-001"]}
                        ]
                    }
                ]
            }
        }
    }
}


def _ds_pod(spec: dict[str, Any]) -> bytes:
    meta = {"name": "agent-x", "namespace": "default", **DS_OWNER}
    return json.dumps({"metadata": meta, "spec": {"containers": [], **spec}}).encode()


def _bypass(body: bytes) -> str | None:
    from extender.core import bypass_reason

    return bypass_reason(decode_pod(body), embedded_default().rules)


def test_only_pods_the_daemonset_controller_pinned_are_bypassed():
    assert decode_pod(_ds_pod(PINNED)).pinned_node == "node-001"
    assert _bypass(_ds_pod(PINNED)) == "daemonset"
    assert _bypass(_ds_pod({})) is None  # an owner reference alone is a claim, not evidence
    two = json.loads(json.dumps(PINNED))
    term = two["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    term["nodeSelectorTerms"][0]["matchFields"][0]["values"] = ["node-001", "node-002"]
    assert _bypass(_ds_pod(two)) is None  # the controller pins to exactly one node
    by_label = json.loads(json.dumps(PINNED))
    term = by_label["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    term["nodeSelectorTerms"][0]["matchFields"][0]["key"] = "metadata.labels"
    assert _bypass(_ds_pod(by_label)) is None
    extra = json.loads(json.dumps(PINNED))
    terms = extra["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    terms["nodeSelectorTerms"].append({"matchExpressions": [{"key": "a", "operator": "Exists"}]})
    assert _bypass(_ds_pod(extra)) is None  # ORed terms: not pinned to one node


# --- 7. odd methods --------------------------------------------------------------------------------


def _raw_status(port: int, data: bytes) -> tuple[bytes, bytes]:
    with _open(port, data) as sock:
        raw = _answer_or_eof(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


async def test_an_unknown_method_gets_a_json_400_from_the_scheduler_port():
    from tests.support import make_extender

    ext = await make_extender()
    port = await ext.port.start("127.0.0.1", 0)
    try:
        head, body = await asyncio.to_thread(
            _raw_status, port, b"FOO /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
    finally:
        await ext.port.stop(1.0)
    assert head.split()[1] == b"400", head
    assert b"application/json" in head
    assert "method" in json.loads(body)["Error"].lower()


def test_an_unknown_method_gets_a_json_400_from_serve():
    with ServeProcess("--kubernetes", "off") as proc:
        head, body = _raw_status(
            proc.port, b"FOO /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
    assert head.split()[1] == b"400", head
    assert json.loads(body)["Error"]


# --- 4b. what one request may carry: at most what kube-scheduler can send --------------------------


def _names_body(n: int, width: int = 10) -> bytes:
    names = [f"n{i:0{width - 1}d}" for i in range(n)]
    return json.dumps({"Pod": json.loads(POD), "NodeNames": names}).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_names_body(100_001), "at most 100000 are accepted"),
        (_names_body(40_000, 250), "NodeNames is "),
        (_args(POD[:-2] + b',"x":"' + b"y" * (4 << 20) + b'"}}'), "bytes of Pod"),
        (
            b'{"Pod":'
            + POD
            + b',"NodeNameToMetaVictims":'
            + json.dumps({f"n{i}": {"Pods": []} for i in range(100_001)}).encode()
            + b"}",
            "at most 100000 are accepted",
        ),
    ],
    ids=["too-many-names", "names-too-long", "pod-over-4MiB", "too-many-preempt-candidates"],
)
def test_a_request_carries_at_most_what_kube_scheduler_can_send(body, message):
    from extender.store import SnapshotStore
    from extender.verbs import Verbs

    ext_verbs = Verbs(SnapshotStore(embedded_default()))
    verb = "preempt" if b"NodeNameToMetaVictims" in body else "filter"
    reply = ext_verbs.call(verb, body)
    assert reply.status == 400, reply.body[:300]
    assert reply.outcome == "bad_request"
    assert message in json.loads(reply.body)["Error"]

"""Operating the extender: hot reload, explain, metrics, logs, TLS and the SIGTERM lifecycle.

Everything runs through real sockets, real files and the real process where it matters:
reloads are driven by an emulated kubelet ``..data`` symlink swap, TLS by certificates that the
test makes with the ``openssl`` command, and shutdown by SIGTERM to a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry

from extender.core import snapshot_from_dict, snapshot_to_dict
from extender.logs import JsonFormatter, bind_pod
from extender.policy import embedded_default, load_file
from extender.server.app import Extender, ServerSettings
from extender.server.metrics import Metrics
from extender.server.reload import PolicyReloader
from extender.server.run import running
from extender.server.tls import CertReloader, TLSConfigError, TLSFiles, server_context
from extender.store import SnapshotStore
from tests.builders import NOW, fixture_bytes, fixture_json
from tests.support import ROOT, ServeProcess, make_extender, wait_for

POLICY_V1 = (ROOT / "config" / "policy-static.yaml").read_text()
#: Bounded wait for the inotify-driven reload; a poll of the store, never a fixed sleep.
RELOAD_WAIT_S = 20.0


# --- hot reload ----------------------------------------------------------------------------------


class Kubelet:
    """Writes a ConfigMap volume the way the kubelet does: a timestamped directory, a ``..data``
    symlink swapped atomically, and the file as a symlink through ``..data``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.version = 0

    def publish(self, files: dict[str, str]) -> None:
        self.version += 1
        data = self.folder / f"..2026_11_27_{self.version:04d}"
        data.mkdir()
        for name, text in files.items():
            (data / name).write_text(text)
        tmp = self.folder / "..data_tmp"
        tmp.symlink_to(data.name)
        tmp.replace(self.folder / "..data")
        for name in files:
            link = self.folder / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")


def _metrics_file() -> str:
    return (ROOT / "config" / "static-metrics.yaml").read_text()


async def _until(predicate, timeout: float = RELOAD_WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_reload_through_configmap_symlink_swap(tmp_path, caplog):
    kubelet = Kubelet(tmp_path)
    kubelet.publish({"policy.yaml": POLICY_V1, "static-metrics.yaml": _metrics_file()})
    path = tmp_path / "policy.yaml"
    policy = load_file(path)
    store = SnapshotStore(policy)
    metrics = Metrics(CollectorRegistry())
    ext = Extender(store, metrics, ServerSettings())
    ext.ready = True
    reloads = []

    async def on_reload(old, new):
        reloads.append((old.sha256, new.sha256))

    reloader = PolicyReloader(path, store, metrics, on_reload, interval=3600)
    task = asyncio.create_task(reloader.run())
    try:
        await asyncio.wait_for(reloader.watching.wait(), RELOAD_WAIT_S)
        # 1. a valid change: batch ceiling 0.60 -> 0.30
        kubelet.publish(
            {
                "policy.yaml": POLICY_V1.replace("cpu: 0.60", "cpu: 0.30"),
                "static-metrics.yaml": _metrics_file(),
            }
        )
        await _until(lambda: store.policy.sha256 != policy.sha256)
        batch = next(t for t in store.current.policy.rules.tiers if t.name == "batch")
        assert batch.ceilings["cpu"] == 0.30
        assert reloads == [(policy.sha256, store.policy.sha256)]
        good = store.policy

        # 2. invalid YAML: the last good policy stays, the error is logged with line:column
        kubelet.publish(
            {
                "policy.yaml": POLICY_V1.replace("tiers:", "tiers: [\n"),
                "static-metrics.yaml": _metrics_file(),
            }
        )
        await _until(
            lambda: (
                metrics.registry.get_sample_value("priority_extender_policy_reload_failing") == 1
            )
        )
        assert store.policy is good
        assert "policy reload failed, keeping the policy in force" in caplog.text
        assert f"{path}:" in caplog.text
        sample = metrics.registry.get_sample_value
        assert sample("priority_extender_policy_reloads_total", {"result": "error"}) == 1

        # 3. a semantic error, then an empty file: still the last good policy, still ready
        kubelet.publish(
            {"policy.yaml": POLICY_V1.replace("defaultTier: standard", "defaultTier: nope")}
        )
        await _until(
            lambda: sample("priority_extender_policy_reloads_total", {"result": "error"}) == 2
        )
        assert "defaultTier 'nope' is not one of the tiers" in caplog.text
        kubelet.publish({"policy.yaml": ""})
        await _until(
            lambda: sample("priority_extender_policy_reloads_total", {"result": "error"}) == 3
        )
        assert "the document is empty" in caplog.text
        assert store.policy is good
        readyz = await ext.readyz(make_mocked_request("GET", "/readyz"))
        assert readyz.status == 200

        # 4. deleted: kept; then restored: reloaded and the failing flag clears
        (tmp_path / "policy.yaml").unlink()
        assert await reloader.check() == "error"
        assert "cannot read" in caplog.text
        kubelet.publish({"policy.yaml": POLICY_V1})
        await _until(lambda: store.policy.sha256 == policy.sha256)
        assert metrics.registry.get_sample_value("priority_extender_policy_reload_failing") == 0
        assert sample("priority_extender_policy_reloads_total", {"result": "success"}) == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_reload_poll_is_a_safety_net(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(
        POLICY_V1.replace(
            "file: static-metrics.yaml", f"file: {ROOT / 'config/static-metrics.yaml'}"
        )
    )
    store = SnapshotStore(load_file(path))
    reloader = PolicyReloader(path, store, Metrics(CollectorRegistry()), interval=3600)
    assert await reloader.check() == "unchanged"
    path.write_text(path.read_text().replace("cpu: 0.85", "cpu: 0.8"))
    assert await reloader.check() == "success"
    assert await reloader.check() == "unchanged"


async def test_reload_restarts_the_source_when_metrics_settings_change(tmp_path):
    (tmp_path / "a.yaml").write_text("nodes: {a1: {cpu: 0.1, memory: 0.1}}\n")
    (tmp_path / "b.yaml").write_text("nodes: {b1: {cpu: 0.1, memory: 0.1}}\n")
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_V1.replace("file: static-metrics.yaml", "file: a.yaml"))
    settings = ServerSettings(
        host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0, reload_interval=3600
    )
    async with running(load_file(path), settings, CollectorRegistry(), path) as state:
        store = state.extender.store
        assert store.current.snapshot.names == ("a1",)
        path.write_text(POLICY_V1.replace("file: static-metrics.yaml", "file: b.yaml"))
        await _until(lambda: store.current.snapshot.names == ("b1",))


# --- explain -------------------------------------------------------------------------------------


async def test_decisions_dry_run_and_snapshot_endpoints(scheduler_client, aiohttp_client):
    ext = await make_extender()
    sched = await scheduler_client(ext)
    admin = await aiohttp_client(ext.admin_app())
    body = fixture_bytes("filter-nodecache-true-20nodes.json")
    await sched.post("/filter", data=body, headers={"Content-Type": "application/json"})
    pod = fixture_json("filter-nodecache-true-20nodes.json")["Pod"]
    key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"

    resp = await admin.get("/decisions", params={"pod": key, "top": "2"})
    assert resp.status == 200
    (d,) = await resp.json()
    assert d["verb"] == "filter"
    assert d["tier"] == "batch"
    assert d["ranking"][0] == {"node": "node-008", "score": 10}
    assert d["rejected"]["cpu load above batch tier ceiling"] == [
        "node-009",
        "node-017",
        "node-002",
    ]
    assert [x["node"] for x in d["details"]] == ["node-008", "node-004"]
    assert d["details"][0]["signals"]["cpu"]["sample"] == 0.34
    assert d["details"][0]["signals"]["cpu"]["projected"] == 0.465  # 0.34 + 0.5 / 4
    by_uid = await (await admin.get("/decisions", params={"pod": pod["metadata"]["uid"]})).json()
    assert by_uid[0]["pod"] == key
    resp = await admin.get("/decisions", params={"pod": "nope/nope"})
    assert resp.status == 404

    # dry run: a YAML manifest of a production pod against two nodes; nothing is recorded
    manifest = "metadata: {name: web, namespace: shop}\nspec:\n  priority: 5000\n  containers:\n  - resources: {requests: {cpu: '1'}}\n"
    resp = await admin.post("/dry-run", data=manifest, params={"nodes": "node-000,node-014"})
    assert resp.status == 200
    dry = await resp.json()
    assert dry["tier"] == "production"
    assert dry["rejected"] == {"cpu+memory load above production tier ceiling": ["node-014"]}
    # cpu 0.25 + 1/4 = 0.5 (weight 2), memory 0.26 + 200Mi/16Gi (weight 1): (10 + 7.3) / 3
    assert dry["ranking"] == [{"node": "node-000", "score": 6}]
    assert ext.decisions.find("shop/web") == []
    resp = await admin.post("/dry-run", data=b"- not a pod\n")
    assert resp.status == 400
    assert "not a Pod manifest" in (await resp.json())["error"]

    # snapshot: round-trips into the same decision
    snap_doc = await (await admin.get("/snapshot")).json()
    assert snap_doc["nodes"]["node-002"]["samples"]["cpu"] == {"value": 0.82, "timestamp": NOW}
    snap = snapshot_from_dict(snap_doc)
    original = ext.store.current.snapshot
    assert snap.names == original.names
    assert snapshot_to_dict(snap, NOW) == snapshot_to_dict(original, NOW)


def test_offline_explain_prints_the_table(tmp_path):
    async def take() -> dict:
        ext = await make_extender()
        return snapshot_to_dict(ext.store.current.snapshot, NOW)

    (tmp_path / "snap.json").write_text(json.dumps(asyncio.run(take())))
    (tmp_path / "pod.json").write_text(
        json.dumps(fixture_json("filter-nodecache-true.json")["Pod"])
    )
    res = subprocess.run(
        [sys.executable, "-m", "extender", "explain", "--snapshot", str(tmp_path / "snap.json"),
         "--policy", "config/policy-static.yaml", "--pod-file", str(tmp_path / "pod.json"),
         "--nodes", "node-000,node-002,node-003", "--top", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "priority 100 (batch-low)" in out
    assert "tier: batch" in out
    assert "Ranking (1 kept, best first):\n    8  node-000" in out
    assert "1  cpu load above batch tier ceiling: node-002" in out
    assert "1  node metrics stale or missing: node-003" in out
    assert "node-000             cpu       25.0%      0    37.5%    60.0%" in out


# --- metrics and logs ----------------------------------------------------------------------------


async def test_state_metrics_at_scrape_time(scheduler_client, aiohttp_client):
    ext = await make_extender()
    sched = await scheduler_client(ext)
    admin = await aiohttp_client(ext.admin_app())
    reply = await sched.post(
        "/prioritize",
        data=fixture_bytes("prioritize-nodecache-true-20nodes.json"),
        headers={"Content-Type": "application/json"},
    )
    given = sum(p["Score"] for p in await reply.json())
    text = await (await admin.get("/metrics")).text()
    assert f'priority_extender_scores_sum{{tier="batch"}} {float(given)}' in text
    assert "priority_extender_source_age_seconds 0.0" in text
    assert 'priority_extender_nodes{data="fresh"} 19.0' in text
    assert 'priority_extender_nodes{data="missing"} 1.0' in text
    assert 'priority_extender_cache_entries{cache="snapshot_nodes"} 20.0' in text
    assert 'priority_extender_cache_entries{cache="decision_log"} 1.0' in text
    assert 'priority_extender_policy_info{sha256="' in text
    assert 'priority_extender_scores_count{tier="batch"} 16.0' in text
    # 0 (node-014), 5 (node-009, node-002, and node-003 without data)
    assert 'priority_extender_scores_bucket{le="5.0",tier="batch"} 4.0' in text
    assert "priority_extender_fallback_active 0.0" in text


def test_json_logs_carry_the_pod():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "decided %s", ("ok",), None)
    with bind_pod("ns", "web-1", "uid-1"):
        line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "decided ok"
    assert (line["pod"], line["podUID"]) == ("ns/web-1", "uid-1")
    assert "pod" not in json.loads(JsonFormatter().format(record))


async def test_abandoned_request_is_dropped():
    """A caller that goes away mid-body (its httpTimeout) is counted and never decided."""
    ext = await make_extender()
    port = await ext.port.start("127.0.0.1", 0)
    try:
        body = fixture_bytes("filter-nodecache-true.json")
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        sample = ext.metrics.registry.get_sample_value
        labels = {"verb": "filter", "outcome": "abandoned"}
        async with asyncio.timeout(10):
            while sample("priority_extender_requests_total", labels) != 1:
                await asyncio.sleep(0.01)
        assert len(ext.decisions) == 0
        assert ext.body_bytes_in_flight == 0
        assert ext.port.inflight == 0
    finally:
        await ext.port.stop(1.0)


# --- TLS -----------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=folder)  # fmt: skip


def make_cert(folder: Path, name: str, ca: str, cn: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=folder)  # fmt: skip
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", f"{name}.crt", cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    make_cert(folder, "server", "ca", "extender-1")
    make_cert(folder, "server2", "ca", "extender-2")
    make_cert(folder, "scheduler", "ca", "kube-scheduler")
    make_cert(folder, "intruder", "other-ca", "intruder")
    return folder


def _client_ctx(pki: Path, cert: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki / "ca.crt")
    if cert:
        ctx.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    return ctx


async def _post_tls(port: int, ctx: ssl.SSLContext) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://127.0.0.1:{port}/filter",
            data=fixture_bytes("filter-nodecache-true.json"),
            headers={"Content-Type": "application/json"},
            ssl=ctx,
        ) as resp,
    ):
        return resp.status, (await resp.json())["Error"]


async def _peer_cn(port: int, ctx: ssl.SSLContext) -> str:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    cert = writer.get_extra_info("peercert")
    writer.close()
    await writer.wait_closed()
    return dict(x[0] for x in cert["subject"])["commonName"]


async def test_tls_and_mutual_tls(pki):
    files = TLSFiles(pki / "server.crt", pki / "server.key", pki / "ca.crt")
    settings = ServerSettings(
        host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0, tls=files
    )
    async with running(embedded_default(), settings, CollectorRegistry()) as state:
        port = state.ports["scheduler"]
        assert await _post_tls(port, _client_ctx(pki, "scheduler")) == (200, "")
        for cert in ("intruder", None):  # wrong CA, and no client certificate
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                await _post_tls(port, _client_ctx(pki, cert))
        # the admin port stays plain HTTP
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{state.ports['admin']}/livez") as r,
        ):
            assert r.status == 200


async def test_certificate_rotation(pki, tmp_path):
    for name in ("server.crt", "server.key"):
        (tmp_path / name).write_bytes((pki / name).read_bytes())
    files = TLSFiles(tmp_path / "server.crt", tmp_path / "server.key")
    ctx = server_context(files)
    reloader = CertReloader(ctx, files)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    client = _client_ctx(pki, None)
    try:
        assert await _peer_cn(port, client) == "extender-1"
        assert not reloader.check()  # nothing changed
        # a broken pair is refused and the old one stays
        (tmp_path / "server.crt").write_bytes((pki / "server2.crt").read_bytes())
        os.utime(tmp_path / "server.crt", (time.time() + 5, time.time() + 5))
        assert not reloader.check()
        assert await _peer_cn(port, client) == "extender-1"
        (tmp_path / "server.key").write_bytes((pki / "server2.key").read_bytes())
        assert reloader.check()
        assert await _peer_cn(port, client) == "extender-2"
    finally:
        server.close()
        await server.wait_closed()


def test_bad_tls_files_refuse_to_start(tmp_path):
    (tmp_path / "c.pem").write_text("not a certificate")
    with pytest.raises(TLSConfigError, match="cannot load certificate"):
        server_context(TLSFiles(tmp_path / "c.pem", tmp_path / "c.pem"))


# --- lifecycle -----------------------------------------------------------------------------------


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_sigterm_drains_then_exits(tmp_path):
    server = ServeProcess(
        "--drain-seconds", "30", "--shutdown-timeout", "5", "--log-format", "json"
    )  # fmt: skip
    try:
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: _get(f"http://127.0.0.1:{server.admin}/readyz") == 503, 20, "503")
        # still answering the scheduler while draining
        assert server.post("filter", fixture_bytes("filter-nodecache-true.json"))["Error"] == ""
        assert server.proc.poll() is None  # the drain lasts 30 s ...
        assert server.terminate() == 0  # ... unless a second signal cuts it short
    finally:
        server.kill()
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert "shutting down: draining for 30.0 s" in messages
    assert messages[-1] == "stopped"


def test_the_decision_log_slims_a_repeated_pod_once_and_sizes_it_the_same():
    """filter and prioritize decide the very same PodInfo: the log slims it once, and both
    entries weigh what a fresh computation says."""
    from extender.core import Candidates, evaluate
    from extender.verbs.decisions import DecisionLog, entry_bytes
    from tests.builders import pod, rules, snapshot

    log = DecisionLog()
    ext_pod = pod("web-1")
    ev = evaluate(ext_pod, Candidates(["n1"]), snapshot({"n1": (0.2, 0.3)}), rules(), NOW)
    log.add("filter", ev, NOW)
    log.add("prioritize", ev, NOW + 1)
    first, second = log.find(f"{ext_pod.namespace}/{ext_pod.name}")[::-1]
    assert first.evaluation.pod is second.evaluation.pod
    assert first.evaluation.pod.containers == ()
    assert log.bytes == 2 * entry_bytes(first.evaluation)

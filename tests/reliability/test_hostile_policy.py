"""Hostile policy files and manifests (issue 17: items 3, 7, 10 and the low items on refresh
floors and the watcher): each bad input is a counted, placed error and never stops the extender.

Reloads are exercised on a real ``serve`` process over loopback (metrics and ``/readyz`` read
over HTTP), with files written and swapped on disk the way an editor or the kubelet does. No
fixed sleeps: every wait polls a condition under a deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry

from extender.policy import PolicyError, load_file, load_text
from extender.server.app import Extender, ServerSettings
from extender.server.metrics import Metrics
from extender.server.reload import PolicyReloader, file_digest
from extender.store import SnapshotStore
from tests.support import ROOT, ServeProcess

#: Upper bound on waiting for a reload or a restart to show over HTTP: generous for a loaded
#: 2-core machine; a hang detector, never a performance claim.
WAIT_S = 30.0
#: Upper bound on a SIGTERM'd process exiting (drain 0 s, then in-flight work): a hang detector.
EXIT_WAIT_S = 20.0

STATIC = ROOT / "config" / "static-metrics.yaml"
GOOD = (
    (ROOT / "config" / "policy-static.yaml")
    .read_text()
    .replace("file: static-metrics.yaml", f"file: {STATIC}")
)
GOOD_B = GOOD.replace("cpu: 0.85", "cpu: 0.80")
GOOD_C = GOOD.replace("cpu: 0.85", "cpu: 0.70")
assert GOOD not in (GOOD_B, GOOD_C)


def bomb(levels: int) -> str:
    """ "Billion laughs" in YAML: each level is nine aliases of the one before, so the last
    expands to 9 ** (levels + 1) values."""
    return "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"b{i}: &b{i} [" + ",".join([f"*b{i - 1}" if i else "*a"] * 9) + "]\n"
        for i in range(levels)
    )


#: Under 500 bytes; 3.5 billion values once expanded. Only ever given to the bounded reader.
BOMB = bomb(9)


def replace_file(path: Path, text: str) -> None:
    """Write the way an editor saves: a temporary file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in time: {what}"
        time.sleep(0.05)


async def until_async(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in time: {what}"
        await asyncio.sleep(0.02)


def sha(text: str) -> str:
    return load_text(text, "x.yaml").sha256


class Server(ServeProcess):
    """``priority-extender serve`` on a policy file, as a subprocess on loopback ports."""

    def __init__(self, policy: Path, state_dir: Path | None = None) -> None:
        args = [
            "--policy", str(policy), "--kubernetes", "off", "--log-format", "json",
            "--drain-seconds", "0",
        ]  # fmt: skip
        if state_dir is not None:
            args += ["--state-dir", str(state_dir)]
        super().__init__(*args)

    def readyz(self) -> dict[str, object]:
        doc: dict[str, object] = json.loads(self.get("/readyz"))
        return doc

    def reload_errors(self) -> float:
        return self.metric("priority_extender_policy_reloads_total", '{result="error"}')

    def failing(self) -> float:
        return self.metric("priority_extender_policy_reload_failing")

    def stderr(self) -> str:
        return self.output()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(policy: Path, state_dir: Path | None = None) -> Server:
        server = Server(policy, state_dir)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


# --- item 3: YAML aliases and nesting ----------------------------------------------------------


def policy_issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_text(text, "p.yaml")
    return info.value.issues


def test_the_alias_bomb_is_refused_at_the_alias_that_crosses_the_bound():
    assert len(BOMB) < 500
    issues = policy_issues(BOMB)
    # Refused while composing, at the line and column of the alias, not after expanding.
    assert issues == ["p.yaml:6:10: b4[0]: alias *b3 expands the document past 100000 values"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "".join(f"k{i}: &a{i} 1\nv{i}: *a{i}\n" for i in range(101)),
            "p.yaml:202:7: v100: more than 100 aliases in one document",
        ),
        ("a: &x [1, {b: *x}]\n", "p.yaml:1:15: a[1].b: alias *x is inside its own anchor &x"),
        (
            "apiVersion: x\ntiers: " + "[" * 500 + "]" * 500 + "\n",
            "p.yaml:2:71: tiers" + "[0]" * 63 + ": nested more than 64 levels deep",
        ),
        (
            "tiers:\n" + "".join(" " * i + f"- k{i}:\n" for i in range(0, 200, 2)),
            "p.yaml:33:65: tiers"
            + "".join(f"[0].k{i}" for i in range(0, 62, 2))
            + "[0]: nested more than 64 levels deep",
        ),
    ],
    ids=["too-many-aliases", "recursive-alias", "deep-flow", "deep-block"],
)
def test_aliases_and_nesting_are_bounded_with_a_place(text, expected):
    assert policy_issues(text) == [expected]


def test_manifests_are_parsed_with_the_same_bounds():
    from extender.policy.yamlpos import ManifestError, manifest_json

    pod = b"apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: prod}\nspec: {}\n"
    assert json.loads(manifest_json(pod)) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {},
    }
    as_json = b'{"kind": "Pod", "metadata": {"name": "web"}}'
    assert manifest_json(as_json) == as_json  # JSON is passed on untouched
    cases = {
        BOMB.encode(): "manifest:6:10: b4[0]: alias *b3 expands the document past 100000 values",
        b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}": "manifest:1:69: (document): nested more "
        "than 64 levels deep",
        b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}": "manifest:1:70: (document): nested more than "
        "64 levels deep",
        b'{"kind": "Pod",\n "spec": tru}': "manifest:2:14: (document): not valid JSON: JSON is "
        "malformed: invalid character (byte 29)",
        b"x" * (1 << 20) + b"x": "manifest:0:0: (file): larger than 1048576 bytes",
    }
    for body, expected in cases.items():
        with pytest.raises(ManifestError) as info:
            manifest_json(body)
        assert info.value.issues == [expected]
    many = b"".join(b"k: 1\n" for _ in range(1000))
    with pytest.raises(ManifestError) as info:
        manifest_json(many)
    assert len(info.value.issues) == 21
    assert info.value.issues[-1] == "manifest: ... and 979 more"


async def test_dry_run_refuses_the_alias_bomb(aiohttp_client):
    from tests.support import make_extender

    client = await aiohttp_client((await make_extender()).admin_app())
    # A small one (531,441 values, a few MB expanded): today's /dry-run does expand it.
    resp = await client.post("/dry-run", data=bomb(5).encode())
    body = await resp.json()
    assert resp.status == 400
    assert "alias *b3 expands the document past 100000 values" in body["error"]


# --- item 7: reload survives any input ---------------------------------------------------------


def test_a_deeply_nested_policy_is_a_counted_error_and_the_next_good_one_applies(tmp_path, serve):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    server = serve(path)
    deep = GOOD.replace("tiers:", "xtra: " + "[" * 500 + "]" * 500 + "\ntiers:")
    replace_file(path, deep)
    until(lambda: server.failing() == 1, "reload_failing 1 after a policy nested 500 deep")
    assert server.reload_errors() == 1
    assert "nested more than 64 levels deep" in server.stderr()
    replace_file(path, GOOD_B)
    until(lambda: server.readyz()["policySha256"] == sha(GOOD_B), "the next good policy")
    assert server.failing() == 0
    assert server.terminate() == 0
    assert "Traceback" not in server.stderr()


def test_a_fifo_in_place_of_the_policy_is_refused_without_blocking(tmp_path, serve):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    server = serve(path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fifo.replace(path)
    until(lambda: server.reload_errors() == 1, "the FIFO counted as a reload error")
    assert server.failing() == 1
    assert "not a regular file (a FIFO)" in server.stderr()
    replace_file(path, GOOD_B)
    until(lambda: server.readyz()["policySha256"] == sha(GOOD_B), "the next good policy")
    assert server.terminate() == 0
    assert "Traceback" not in server.stderr()


def load_in_thread(path: Path) -> BaseException | None:
    """``load_file(path)`` in a thread, its exception; a FIFO it blocks on is opened for writing
    (which releases the blocked open) and the test fails, instead of hanging the suite."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            load_file(path)
            outcome.append(None)
        except BaseException as exc:  # the outcome is checked by the caller
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT_S)
    if thread.is_alive():
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(WAIT_S)
        pytest.fail(f"load_file blocked on {path}")
    return outcome[0]


def test_non_regular_files_are_refused_by_the_loader(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (tmp_path, "a directory"), (Path("/dev/zero"), None)):
        exc = load_in_thread(path)
        assert isinstance(exc, PolicyError), exc
        [issue] = exc.issues
        assert "not a regular file" in issue
        if kind is not None:
            assert kind in issue


async def test_an_unexpected_failure_while_loading_is_counted_and_the_loop_goes_on(
    tmp_path, monkeypatch, caplog
):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    store = SnapshotStore(load_file(path))
    metrics = Metrics(CollectorRegistry())
    reloader = PolicyReloader(path, store, metrics, interval=3600)

    def broken(_path: object) -> object:
        raise ZeroDivisionError("a loader bug")

    monkeypatch.setattr("extender.server.reload.load_file", broken)
    path.write_text(GOOD_B)
    assert await reloader.check() == "error"
    assert await reloader.check() == "unchanged"  # logged and counted once
    sample = metrics.registry.get_sample_value
    assert sample("priority_extender_policy_reloads_total", {"result": "error"}) == 1
    assert sample("priority_extender_policy_reload_failing") == 1
    assert f"{path}:0:0: (file): cannot be loaded: ZeroDivisionError: a loader bug" in caplog.text
    monkeypatch.undo()
    path.write_text(GOOD_C)
    assert await reloader.check() == "success"
    assert sample("priority_extender_policy_reload_failing") == 0


async def test_the_periodic_check_survives_any_exception(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    store = SnapshotStore(load_file(path))
    metrics = Metrics(CollectorRegistry())
    # The content check alone (no watcher), every 20 ms: it must outlive a failure.
    calls = 0

    def flaky(p: Path) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RecursionError("maximum recursion depth exceeded")
        return file_digest(p)

    reloader = PolicyReloader(path, store, metrics, interval=0.02, digest=flaky, watch=False)
    task = asyncio.create_task(reloader.run())
    try:
        await until_async(lambda: calls >= 1, "the first check")
        path.write_text(GOOD_B)
        await until_async(lambda: store.policy.sha256 == sha(GOOD_B), "a check after the failure")
        errors = metrics.registry.get_sample_value(
            "priority_extender_policy_reloads_total", {"result": "error"}
        )
        assert errors == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- item 10: the last good policy survives a restart ------------------------------------------


def test_a_restart_while_the_policy_is_invalid_starts_from_the_last_good_one(tmp_path, serve):
    folder = tmp_path / "config"
    folder.mkdir()
    path = folder / "policy.yaml"
    state = tmp_path / "state"
    path.write_text(GOOD)
    server = serve(path, state)
    until((state / "last-good-policy.json").exists, "the last good policy kept")
    replace_file(path, GOOD.replace("defaultTier: standard", "defaultTier: nope"))
    until(lambda: server.failing() == 1, "the bad edit reported")
    server.proc.send_signal(signal.SIGKILL)  # an OOM kill during the bad edit
    server.proc.wait(timeout=EXIT_WAIT_S)

    restarted = serve(path, state)  # before: exit 1, a crash loop
    ready = restarted.readyz()
    assert ready["policySha256"] == sha(GOOD)
    assert ready["policy"] == str(path)
    assert restarted.failing() == 1
    assert restarted.reload_errors() == 1
    err = restarted.stderr()
    assert "starting from the last good policy" in err
    assert "defaultTier 'nope' is not one of the tiers" in err
    # Still watching: the fix is picked up, and kept in its turn.
    replace_file(path, GOOD_B)
    until(lambda: restarted.readyz()["policySha256"] == sha(GOOD_B), "the fixed policy")
    assert restarted.failing() == 0
    # Kept once applied (written in a worker thread after the swap, atomically: wait for it).
    kept_file = state / "last-good-policy.json"
    until(lambda: json.loads(kept_file.read_text())["sha256"] == sha(GOOD_B), "the fix kept")
    assert restarted.terminate() == 0


def test_without_a_usable_last_good_copy_an_invalid_policy_still_exits_1(tmp_path):
    from extender.policy.loader import load_last_good, save_last_good

    good, other = tmp_path / "good.yaml", tmp_path / "other.yaml"
    good.write_text(GOOD)
    state = tmp_path / "state"
    save_last_good(state, load_file(good))
    assert load_last_good(state, other) is None  # kept for another file
    kept = load_last_good(state, good)
    assert kept is not None
    assert kept.origin == "last-good"
    assert kept.sha256 == sha(GOOD)

    other.write_text("kind: nope\n")
    cmd = [sys.executable, "-m", "extender", "serve", "--policy", str(other), "--state-dir",
           str(state), "--kubernetes", "off", "--port", "0", "--admin-port", "0"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert f"no last good copy of {other}" in done.stderr

    doc = json.loads((state / "last-good-policy.json").read_text())
    doc["text"] = doc["text"].replace("cpu: 0.85", "cpu: 0.1")  # damaged: digest mismatch
    (state / "last-good-policy.json").write_text(json.dumps(doc))
    with pytest.raises(PolicyError, match="its text does not match its digest"):
        load_last_good(state, good)


async def test_the_policy_origin_is_visible(tmp_path):
    from extender.policy.loader import load_last_good, save_last_good

    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    save_last_good(tmp_path / "state", load_file(path))
    kept = load_last_good(tmp_path / "state", path)
    assert kept is not None
    metrics = Metrics(CollectorRegistry())
    store = SnapshotStore(kept)
    PolicyReloader(path, store, metrics, interval=3600)  # counts the start as a failed reload
    assert metrics.registry.get_sample_value("priority_extender_policy_reload_failing") == 1
    assert store.policy.origin == "last-good"


async def test_readyz_says_where_the_policy_came_from(tmp_path):
    from extender.policy.loader import load_last_good, save_last_good

    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    save_last_good(tmp_path / "state", load_file(path))
    kept = load_last_good(tmp_path / "state", path)
    assert kept is not None
    ext = Extender(SnapshotStore(kept), Metrics(CollectorRegistry()), ServerSettings())
    ext.ready = True
    resp = await ext.readyz(make_mocked_request("GET", "/readyz"))
    assert resp.body is not None
    assert json.loads(bytes(resp.body))["policyFrom"] == "last-good"  # type: ignore[arg-type]


# --- low: floors on refresh intervals ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "interval", "floor"),
    [("static", "1ms", "1s"), ("prometheus", "500ms", "1s"), ("metricsServer", "5s", "10s")],
)
def test_every_source_has_a_floor_on_its_refresh_interval(source, interval, floor):
    text = GOOD.replace("metrics:\n", f"metrics:\n  {source}: {{refreshInterval: {interval}}}\n")
    if source == "static":
        text = GOOD.replace("refreshInterval: 15s", f"refreshInterval: {interval}")
    [issue] = policy_issues(text)
    assert re.fullmatch(
        rf"p\.yaml:\d+:\d+: metrics\.{source}\.refreshInterval: \S+ is below this source's "
        rf"floor of {floor}: .*",
        issue,
    ), issue
    load_text(text.replace(interval, floor), "p.yaml")  # the floor itself is fine


# --- low: the watcher re-arms after its directory comes back -----------------------------------


async def test_the_watcher_rearms_when_its_directory_is_recreated(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="extender.server.reload")
    folder = tmp_path / "config"
    folder.mkdir()
    path = folder / "policy.yaml"
    path.write_text(GOOD)
    store = SnapshotStore(load_file(path))
    # An hour between content checks: only the watcher can pick up the changes below.
    reloader = PolicyReloader(path, store, Metrics(CollectorRegistry()), interval=3600)
    task = asyncio.create_task(reloader.run())
    try:
        # Until the watcher is armed, a change is not seen; rewrite until it is.
        deadline = time.monotonic() + WAIT_S
        while store.policy.sha256 != sha(GOOD_B):
            assert time.monotonic() < deadline, "the watcher never saw a change"
            replace_file(path, GOOD_B)
            await asyncio.sleep(0.1)
        shutil.rmtree(folder)
        await until_async(lambda: "is missing" in caplog.text, "a warning while it is missing")
        folder.mkdir()
        replace_file(path, GOOD_C)
        await until_async(lambda: store.policy.sha256 == sha(GOOD_C), "the recreated directory")
        assert "watching it again" in caplog.text
        missing = [r for r in caplog.records if "is missing" in r.getMessage()]
        assert len(missing) == 1
        assert missing[0].levelno == logging.WARNING
        replace_file(path, GOOD)  # and it keeps watching
        await until_async(lambda: store.policy.sha256 == sha(GOOD), "a later edit")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

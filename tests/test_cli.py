"""The real process: `priority-extender serve` and `policy check` as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.builders import fixture_bytes

ROOT = Path(__file__).parent.parent
#: Upper bound on waiting for the process to listen; generous for a loaded 2-core CI machine.
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extender", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_policy_check_ok_and_errors(tmp_path):
    ok = cli("policy", "check", "config/policy.yaml", "config/policy-static.yaml")
    assert ok.returncode == 0, ok.stderr
    assert (
        "config/policy.yaml: ok (tiers: system-critical, production, batch, standard" in ok.stdout
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: priority-extender.io/v1alpha1\nkind: PriorityPolicy\ntiers: []\n")
    res = cli("policy", "check", "config/policy.yaml", str(bad))
    assert res.returncode == 1
    assert f"{bad}:3:8: tiers: List should have at least 1 item after validation" in res.stderr
    assert f"{bad}: 1 error(s)" in res.stderr


def test_policy_schema_prints_json():
    res = cli("policy", "schema")
    assert res.returncode == 0
    assert json.loads(res.stdout)["title"] == "PriorityPolicy"


def test_serve_refuses_an_invalid_policy(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: PriorityPolicy\n")
    res = cli("serve", "--policy", str(bad), "--port", "0", "--admin-port", "0")
    assert res.returncode == 1
    assert "required field 'apiVersion' is missing" in res.stderr


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "extender exited during start-up"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    pytest.fail("extender did not become ready")


def test_serve_embedded_default_end_to_end():
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "extender", "serve", "--host", "127.0.0.1"],
        cwd=ROOT,
        env={
            **os.environ,
            "PRIORITY_EXTENDER_PORT": str(port),  # flags can come from the environment
            "PRIORITY_EXTENDER_ADMIN_PORT": str(admin),
            "PRIORITY_EXTENDER_ADMIN_HOST": "127.0.0.1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(admin, proc)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/filter",
            data=fixture_bytes("filter-nodecache-true-20nodes.json"),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            reply = json.loads(r.read())
        assert len(reply["NodeNames"]) == 14
        assert len(reply["FailedAndUnresolvableNodes"]) == 6
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    assert b"shutting down" in out

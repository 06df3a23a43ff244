"""Helpers shared by the test modules: the extender as a real process, polling, small servers.

Test modules import these from here (fixtures live in ``conftest.py``), never from each other.
Servers bind port 0 and report the port they got, so no test races another for a port: the
extender logs ``priority-extender ready: scheduler port N, admin port M`` once both listen, and
:class:`ServeProcess` reads the ports from that line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from extender.policy import embedded_default
from extender.server.app import Extender, ServerSettings
from extender.server.metrics import Metrics
from extender.sources.static import StaticSource, static_path
from extender.store import SnapshotStore
from tests.builders import NOW

ROOT = Path(__file__).parent.parent
#: Upper bound on waiting for the process to listen; generous for a loaded 2-core CI machine.
START_TIMEOUT_S = 30.0
#: Upper bound on a clean exit after SIGTERM (drain 0 plus in-flight requests).
EXIT_TIMEOUT_S = 30.0

_READY = re.compile(rb"priority-extender ready: scheduler port (\d+), admin port (\d+)")


class ServeProcess:
    """``python -m extender serve ARGS`` on loopback ports it picks itself.

    Output (stdout and stderr together) is collected by a thread, so the pipe never fills;
    :meth:`output` returns it so far. ``--port``/``--admin-port`` default to 0 and the hosts to
    127.0.0.1 unless ``args`` or ``env`` set them.
    """

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, wait: bool = True
    ) -> None:
        given = " ".join(args) + " " + " ".join(env or {})
        defaults: list[str] = []
        for flag, var, value in (
            ("--port", "PRIORITY_EXTENDER_PORT", "0"),
            ("--admin-port", "PRIORITY_EXTENDER_ADMIN_PORT", "0"),
            ("--host", "PRIORITY_EXTENDER_HOST", "127.0.0.1"),
            ("--admin-host", "PRIORITY_EXTENDER_ADMIN_HOST", "127.0.0.1"),
        ):
            if f"{flag} " not in f"{given} " and var not in given:
                defaults += [flag, value]
        self.args = [sys.executable, "-m", "extender", "serve", *args, *defaults]
        self.proc = subprocess.Popen(
            self.args,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._out = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = self.admin = 0
        if wait:
            self.wait_ready()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self._out += line

    def output(self) -> str:
        with self._lock:
            return self._out.decode(errors="replace")

    def wait_ready(self) -> None:
        """Until the ports are known and ``/readyz`` answers 200; fails if the process exits."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close()
                raise AssertionError(f"extender exited during start-up:\n{self.output()}")
            with self._lock:
                found = _READY.search(bytes(self._out))
            if found and self.get_status("/readyz", int(found[2])) == 200:
                self.port, self.admin = int(found[1]), int(found[2])
                return
            time.sleep(0.05)
        raise AssertionError(f"extender did not become ready:\n{self.output()}")

    @staticmethod
    def get_status(path: str, port: int) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0

    def get(self, path: str) -> bytes:
        """GET on the admin port."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=5) as r:
            body: bytes = r.read()
            return body

    def post(self, verb: str, body: bytes) -> dict[str, object]:
        """POST a verb on the scheduler port; the decoded JSON reply."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/{verb}",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            reply: dict[str, object] = json.loads(r.read())
            return reply

    def metric(self, name: str, labels: str = "") -> float:
        text = self.get("/metrics").decode()
        found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
        assert found, f"{name}{labels} not exported"
        return float(found[1])

    def terminate(self) -> int:
        """SIGTERM, then the exit code (which must come within :data:`EXIT_TIMEOUT_S`)."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=EXIT_TIMEOUT_S)
        self._close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=EXIT_TIMEOUT_S)
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m extender ARGS`` to completion, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "extender", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait for a condition; the limit only keeps a broken test from hanging."""
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.002)


def wait_for(condition: Callable[[], bool], limit: float = 10.0, what: str = "condition") -> None:
    """The blocking form of :func:`until`, for tests that drive processes."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached in {limit} s"
        time.sleep(0.02)


async def make_extender(clock: Callable[[], float] = lambda: NOW, **settings: object) -> Extender:
    """An in-process extender on the embedded policy and its static demo metrics."""
    policy = embedded_default()
    store = SnapshotStore(policy, clock=lambda: NOW)
    static = policy.document.metrics.static
    source = StaticSource(store, static_path(static.file, policy.base_dir), 15, lambda: NOW)
    assert await source.refresh()
    return Extender(store, Metrics(CollectorRegistry()), ServerSettings(**settings), clock)  # type: ignore[arg-type]


def loopback_settings(**overrides: object) -> ServerSettings:
    """Both ports on 127.0.0.1, port 0 (the OS picks), plus ``overrides``."""
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "admin_host": "127.0.0.1",
        "admin_port": 0,
    }
    return ServerSettings(**{**base, **overrides})  # type: ignore[arg-type]


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "URL"}}]
users: [{name: me, user: {token: test-token}}]
contexts: [{name: here, context: {cluster: fake, user: me}}]
current-context: here
"""


def kubeconfig(tmp_path: Path, url: str) -> Path:
    """A kubeconfig for a loopback API server at ``url`` (token auth, no TLS)."""
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.replace("URL", url))
    return path


__all__: Sequence[str] = [
    "ROOT",
    "ServeProcess",
    "cli",
    "kubeconfig",
    "loopback_settings",
    "make_extender",
    "until",
    "wait_for",
]

"""The extender as a real subprocess: ``priority-extender serve`` on loopback ports chosen once.

The scheduler port is fixed for the session (kube-scheduler's ``urlPrefix`` points at it), so a
restart with another policy or with TLS keeps the scheduler's configuration valid. The policy is
written in a ConfigMap volume's layout (``policy.yaml -> ..data/policy.yaml``, ``..data ->
..<timestamp>/``) so that :meth:`Extender.swap_policy` can update it the way the kubelet does.

:func:`e2e_policy` is config/policy.yaml with the metrics source pointed at the session's
Prometheus and refreshed every second.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.e2e import assets
from tests.e2e.procs import Proc, StartError, free_port, http_get, https_context

READY_S = 60.0
"""The extender is ready within about two seconds (imports, then its first node list)."""
START_ATTEMPTS = 3


def e2e_policy(prometheus_url: str, **metrics: Any) -> dict[str, Any]:
    """The shipped policy reading ``prometheus_url`` every second; ``metrics`` overrides keys of
    its ``metrics`` section (e.g. ``maxAge="5s"``)."""
    doc: dict[str, Any] = yaml.safe_load(assets.config_file("policy.yaml").read_text())
    prom = doc["metrics"]["prometheus"]
    prom["url"] = prometheus_url
    prom["refreshInterval"] = "1s"  # the session's Prometheus scrapes and evaluates every 1 s
    prom["timeout"] = "1s"
    doc["metrics"].update(metrics)
    return doc


@dataclass(frozen=True, slots=True)
class Tls:
    """Files for ``--tls-cert-file``/``--tls-key-file``/``--tls-client-ca-file``."""

    cert: Path
    key: Path
    client_ca: Path | None
    ca: Path
    """The CA that signed ``cert`` (for this harness's own probes)."""


class Extender:
    def __init__(self, folder: Path, kubeconfig: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = kubeconfig
        self.port = free_port()
        self.admin_port = free_port()
        self.policy_dir = folder / "policy"
        self.policy_dir.mkdir(exist_ok=True)
        self.policy: dict[str, Any] | None = None
        self.tls: Tls | None = None
        self.proc: Proc | None = None
        self._versions = 0

    @property
    def url_prefix(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def policy_path(self) -> Path:
        return self.policy_dir / "policy.yaml"

    # --- policy files -----------------------------------------------------------------------

    def _write_version(self, doc: dict[str, Any]) -> str:
        self._versions += 1
        version = f"..2026_12_02_00_00_{self._versions:02d}.{os.getpid()}"
        (self.policy_dir / version).mkdir()
        (self.policy_dir / version / "policy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return version

    def swap_policy(self, doc: dict[str, Any]) -> str:
        """Update the policy as the kubelet updates a ConfigMap volume: a new timestamped folder,
        then ``..data`` swapped to it by an atomic rename. Returns the new file's sha256."""
        version = self._write_version(doc)
        tmp = self.policy_dir / "..data_tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(version)
        tmp.replace(self.policy_dir / "..data")
        if not self.policy_path.is_symlink():
            self.policy_path.symlink_to("..data/policy.yaml")
        self.policy = copy.deepcopy(doc)
        return hashlib.sha256(self.policy_path.read_bytes()).hexdigest()

    # --- process ----------------------------------------------------------------------------

    def start(self, policy: dict[str, Any], tls: Tls | None = None) -> Extender:
        self.stop()
        self.swap_policy(policy)
        self.tls = tls
        command, extra_env = assets.extender_command()
        argv = [
            *command,
            "serve",
            f"--kubeconfig={self.kubeconfig}",
            f"--policy={self.policy_path}",
            "--host=127.0.0.1",
            f"--port={self.port}",
            "--admin-host=127.0.0.1",
            f"--admin-port={self.admin_port}",
            "--log-format=json",
            "--drain-seconds=0",
        ]
        if tls is not None:
            argv += [f"--tls-cert-file={tls.cert}", f"--tls-key-file={tls.key}"]
            if tls.client_ca is not None:
                argv.append(f"--tls-client-ca-file={tls.client_ca}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRIORITY_EXTENDER_")}
        env.update(extra_env)
        for attempt in range(START_ATTEMPTS):
            self.proc = Proc(
                "priority-extender",
                argv,
                self.folder / "extender.log",
                env=env,
                cwd=assets.extender_tree() or self.folder,  # `-m extender` imports from cwd first
            )
            self.proc.start()
            try:
                self.proc.wait_ready("ready", lambda: self.readyz()[0] == 200, READY_S)
                return self
            except StartError:
                self.proc.stop()
                if (
                    attempt == START_ATTEMPTS - 1
                    or "address already in use" not in self.proc.tail()
                ):
                    raise
                self.port, self.admin_port = free_port(), free_port()  # taken meanwhile
                argv = [a for a in argv if not a.startswith(("--port=", "--admin-port="))]
                argv += [f"--port={self.port}", f"--admin-port={self.admin_port}"]
        return self

    def ensure(self, policy: dict[str, Any], tls: Tls | None = None) -> Extender:
        """Running with this policy and TLS setting: restarted only if not."""
        if self.alive() and self.policy == policy and self.tls == tls:
            return self
        return self.start(policy, tls)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def stop(self) -> None:
        """SIGTERM (with --drain-seconds=0 it exits at once)."""
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        """SIGKILL: gone without a goodbye, as a crashed or OOM-killed sidecar."""
        if self.proc is not None:
            self.proc.signal(signal.SIGKILL)
            assert self.proc.process is not None
            self.proc.process.wait()

    # --- admin port -------------------------------------------------------------------------

    def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body = http_get(self.admin_url + "/readyz", timeout=2)
        return status, json.loads(body) if body else {}

    def snapshot(self) -> dict[str, Any]:
        status, body = http_get(self.admin_url + "/snapshot")
        if status != 200:
            raise AssertionError(f"extender /snapshot: HTTP {status}: {body[:300]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def decisions(self, pod: str) -> list[dict[str, Any]]:
        """The extender's recent decisions for ``namespace/name`` ([] if it made none)."""
        status, body = http_get(self.admin_url + "/decisions?pod=" + pod)
        if status == 404:
            return []
        if status != 200:
            raise AssertionError(f"extender /decisions: HTTP {status}: {body[:300]!r}")
        result: list[dict[str, Any]] = json.loads(body)
        return result

    def log(self) -> str:
        try:
            return (self.folder / "extender.log").read_text(errors="replace")
        except OSError:
            return ""

    def client_context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        assert self.tls is not None
        return https_context(self.tls.ca, cert, key)

"""Child processes of the harness: started with their output in a log file, polled for readiness
with a deadline, stopped with SIGTERM then SIGKILL; plus free loopback ports and HTTPS probes.

Every start-up failure raises :class:`StartError` with the tail of the process's log, so that a
broken control plane says why in the test output.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

STOP_TIMEOUT_S = 10.0
"""Grace after SIGTERM before SIGKILL: every process here shuts down in well under a second."""
POLL_S = 0.05
"""Readiness poll period: short against start-ups of 0.5-5 s, cheap against a local socket."""
LOG_TAIL_LINES = 40

_NO_PROXY = urllib.request.ProxyHandler({})


class StartError(RuntimeError):
    """A process did not become ready; the message carries its log tail."""


def free_port() -> int:
    """A loopback port that was free a moment ago (for processes that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """One child process with its output in ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # a Ctrl-C of pytest does not hit it before teardown
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        """Poll ``check`` until true; raise :class:`StartError` if the process exits or the
        deadline passes. Exceptions of ``check`` count as not ready yet."""
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while True:
            if not self.alive():
                code = self.process.returncode if self.process else None
                raise StartError(
                    f"{self.name} exited ({code}) before {what}; log {self.log_path}:\n"
                    + self.tail()
                )
            try:
                if check():
                    return
            except Exception as exc:  # not listening yet, TLS not up yet, 5xx
                last = exc
            if time.monotonic() > deadline:
                raise StartError(
                    f"{self.name} not {what} within {timeout:g}s (last: {last!r}); "
                    f"log {self.log_path}:\n" + self.tail()
                )
            time.sleep(POLL_S)

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the process."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the process dies without any shutdown of its own."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def https_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context trusting ``ca`` (or nothing checked, for self-signed serving certificates
    made by the process itself), presenting ``cert``/``key`` when given."""
    if ca is not None:
        ctx = ssl.create_default_context(cafile=str(ca))
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def http_get(
    url: str, *, context: ssl.SSLContext | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """GET over loopback (no proxy): status and body, HTTP errors included."""
    handlers: list[urllib.request.BaseHandler] = [_NO_PROXY]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()

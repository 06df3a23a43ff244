"""TLS for the scheduler port: server certificate, optional client certificates, rotation.

kube-scheduler can authenticate itself to an extender only with a client certificate (its
``tlsConfig``), so requiring one signed by a given CA is how the scheduler port is closed to
everyone else. Certificates rotate (cert-manager renews them) without a restart: the files are
checked every ``interval`` seconds and loaded into the same ``SSLContext``, which applies them to
new handshakes. A broken new pair is logged and the old one stays in use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from extender.errors import ConfigError

log = logging.getLogger(__name__)

#: How often certificate files are checked for rotation. cert-manager renews well before
#: expiry, so a minute is plenty.
DEFAULT_INTERVAL_S = 60.0


class TLSConfigError(ConfigError, ValueError):
    """Certificate, key or CA files that cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None
    """When set, clients must present a certificate signed by this CA (mutual TLS)."""


def _fingerprint(files: TLSFiles) -> tuple[float, ...]:
    out: list[float] = []
    for p in (files.cert, files.key, files.client_ca):
        if p is None:
            continue
        try:
            st = os.stat(p)  # follows symlinks: a Secret volume swaps ..data like a ConfigMap
        except OSError:
            out.append(-1.0)
            continue
        out += [st.st_mtime, float(st.st_size), float(st.st_ino)]
    return tuple(out)


def _load(ctx: ssl.SSLContext, files: TLSFiles) -> None:
    # A failed load_cert_chain can leave a context with the new certificate and the old key,
    # so the pair is proven on a throwaway context before the live one is touched.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.cert, files.key)
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"cannot load certificate {files.cert} / key {files.key}: {exc}"
        ) from exc
    if files.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=files.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"cannot load client CA {files.client_ca}: {exc}") from exc


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """An SSLContext for the scheduler port; raises :class:`TLSConfigError`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, files)
    return ctx


class CertReloader:
    def __init__(
        self, ctx: ssl.SSLContext, files: TLSFiles, interval: float = DEFAULT_INTERVAL_S
    ) -> None:
        self.ctx = ctx
        self.files = files
        self.interval = interval
        self._seen = _fingerprint(files)
        self.reloads = 0

    def check(self) -> bool:
        """Load the files again if they changed; True when new ones were loaded."""
        now = _fingerprint(self.files)
        if now == self._seen:
            return False
        self._seen = now
        try:
            _load(self.ctx, self.files)
        except TLSConfigError as exc:
            log.error("TLS files changed but cannot be used; keeping the previous ones: %s", exc)
            return False
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.files.cert)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            # On the loop thread: the context is not safe to change while another thread
            # starts handshakes with it, and reading a few KB of PEM takes microseconds.
            self.check()

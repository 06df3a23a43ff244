"""Process lifecycle: load the policy, start the sources and both ports, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry

from extender.policy import LoadedPolicy
from extender.server.app import Extender, ServerSettings
from extender.server.metrics import Metrics
from extender.sources.static import StaticSource, static_path
from extender.store import SnapshotStore

log = logging.getLogger(__name__)


@dataclass
class Running:
    extender: Extender
    runners: list[web.AppRunner]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    """Bound ports by name (``scheduler``, ``admin``): useful when started on port 0."""


def _bound_port(runner: web.AppRunner) -> int:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise RuntimeError("site not started")


async def start_sources(store: SnapshotStore, policy: LoadedPolicy) -> list[asyncio.Task[None]]:
    """Start the metrics source the policy names. Its first read completes before returning."""
    metrics = policy.document.metrics
    if metrics.source == "static":
        source = StaticSource(
            store,
            static_path(metrics.static.file, policy.base_dir),
            metrics.static.refreshInterval,
        )
        await source.refresh()
        return [asyncio.create_task(source.run())]
    if metrics.source in ("prometheus", "metrics-server"):
        log.warning(
            "metrics source %r is not implemented in this version; "
            "using request-based scoring (fallback) until it is",
            metrics.source,
        )
    return []


@contextlib.asynccontextmanager
async def running(
    policy: LoadedPolicy,
    settings: ServerSettings,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[Running]:
    """Everything started; stopped in reverse order on exit."""
    store = SnapshotStore(policy)
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    extender = Extender(store, metrics, settings)
    tasks = await start_sources(store, policy)
    runners: list[web.AppRunner] = []
    state = Running(extender, runners, tasks)
    try:
        for name, app, host, port in (
            ("scheduler", extender.scheduler_app(), settings.host, settings.port),
            ("admin", extender.admin_app(), settings.admin_host, settings.admin_port),
        ):
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port).start()
            state.ports[name] = _bound_port(runner)
        metrics.snapshot_nodes.set(len(store.current.snapshot.names))
        extender.ready = True
        log.info(
            "priority-extender ready: scheduler port %d, admin port %d, policy %s",
            state.ports["scheduler"],
            state.ports["admin"],
            policy.source,
        )
        yield state
    finally:
        extender.ready = False
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in reversed(runners):
            await runner.cleanup()


async def serve(policy: LoadedPolicy, settings: ServerSettings) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(policy, settings):
        await stop.wait()
        log.info("shutting down")

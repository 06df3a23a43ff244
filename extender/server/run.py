"""Process lifecycle: load the policy, start the sources and both ports, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from extender.cluster import ClusterSource, start_cluster
from extender.cluster.settings import DEFAULT_SETTINGS, ClusterSettings
from extender.policy import LoadedPolicy
from extender.server.admin import AdminCluster
from extender.server.app import Extender, ServerSettings
from extender.server.metrics import ClusterCollector, Metrics
from extender.server.reload import PolicyReloader
from extender.server.tls import CertReloader, server_context
from extender.sources.base import ClusterView, Collectors, Source, SourceContext
from extender.sources.registry import build_source
from extender.store import SnapshotStore

log = logging.getLogger(__name__)


@dataclass
class Running:
    extender: Extender
    runners: list[web.AppRunner]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    """Bound ports by name (``scheduler``, ``admin``): useful when started on port 0."""
    cluster: ClusterSource | None = None
    """The Kubernetes API cache, when enabled and configured."""


def _loop_name() -> str:
    """``uvloop`` or ``asyncio``: which event loop is serving (``--event-loop``)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def _bound_port(runner: web.AppRunner) -> int:
    """The port the runner's site listens on (the one the OS chose when asked for 0)."""
    for address in runner.addresses:
        return int(address[1])
    raise RuntimeError("site not started")


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Sources:
    """The running metrics source, rebuilt when a reload changes the metrics settings.

    Which source, and how it is built, is the registry's business (:mod:`extender.sources`);
    here it is only started, run and stopped. ``cluster`` is the Kubernetes API cache, when the
    extender has one: the sources that need it share its API client.
    """

    def __init__(
        self,
        store: SnapshotStore,
        registry: CollectorRegistry,
        cluster: ClusterView | None = None,
    ) -> None:
        self.store = store
        self.collectors = Collectors(registry)
        self.cluster = cluster
        self.source: Source | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()  # a reload during start-up waits, never runs two sources

    async def start(self, policy: LoadedPolicy) -> None:
        """Build the source the policy names and make its first refresh (bounded by the
        source); then run it in the background. A source already running is stopped first."""
        async with self._lock:
            await self._stop()
            await self._start(policy)

    async def _start(self, policy: LoadedPolicy) -> None:
        context = SourceContext(
            self.store, policy.document.metrics, policy.base_dir, self.collectors, self.cluster
        )
        source = build_source(context)
        if source is None:
            return
        try:
            await source.start()
        except BaseException:  # cancelled during start-up: no run() task will close it
            await source.close()
            raise
        self.source = source
        self.tasks = [asyncio.create_task(_run_source(source), name=f"source-{source.name}")]

    async def stop(self) -> None:
        async with self._lock:
            await self._stop()

    async def _stop(self) -> None:
        await _cancel(self.tasks)
        self.tasks = []
        if self.source is not None:  # a task cancelled before its first step never closed it
            source, self.source = self.source, None
            await source.close()

    async def on_reload(self, old: LoadedPolicy, new: LoadedPolicy) -> None:
        if old.document.metrics == new.document.metrics and old.base_dir == new.base_dir:
            return
        log.info("metrics settings changed: restarting the %s source", new.document.metrics.source)
        await self.start(new)


async def _run_source(source: Source) -> None:
    try:
        await source.run()
    finally:
        await source.close()


@contextlib.asynccontextmanager
async def running(
    policy: LoadedPolicy,
    settings: ServerSettings,
    registry: CollectorRegistry | None = None,
    policy_path: Path | None = None,
    state_dir: Path | None = None,
    cluster_settings: ClusterSettings = DEFAULT_SETTINGS,
) -> AsyncIterator[Running]:
    """Everything started; stopped in reverse order on exit.

    With ``policy_path`` the policy is reloaded when the file changes; with ``state_dir`` too,
    every policy that loads is kept there for a restart while the file is invalid.
    """
    ssl_context = None
    cert_reloader = None
    if settings.tls is not None:
        ssl_context = server_context(settings.tls)  # TLSConfigError: refuse to start
        cert_reloader = CertReloader(ssl_context, settings.tls)
    store = SnapshotStore(policy)
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    extender = Extender(store, metrics, settings)
    sources = Sources(store, metrics.registry)
    tasks: list[asyncio.Task[None]] = []
    if policy_path is not None:
        reloader = PolicyReloader(
            policy_path,
            store,
            metrics,
            sources.on_reload,
            settings.reload_interval,
            state_dir=state_dir,
        )
        tasks.append(asyncio.create_task(reloader.run()))
    if cert_reloader is not None:
        tasks.append(asyncio.create_task(cert_reloader.run()))
    runners: list[web.AppRunner] = []
    state = Running(extender, runners, tasks)
    scheduler_listening = False
    try:
        cluster = await start_cluster(
            store, settings.kubernetes, settings.kubeconfig, cluster_settings
        )
        if cluster is not None:
            state.cluster = cluster
            sources.cluster = cluster
            extender.readiness_checks.append(cluster.not_ready)
            extender.size_providers.append(cluster.sizes)
            extender.victim_lookup = cluster.estimate
            metrics.registry.register(ClusterCollector(cluster.status))
            # The admin port's authorizer reviews tokens through the cluster's API client;
            # dry runs and /snapshot read its PriorityClasses when they are watched.
            extender.settings = dataclasses.replace(
                extender.settings,
                admin_cluster=AdminCluster(
                    cluster.api_client,
                    cluster.priority_classes if cluster.classes is not None else None,
                ),
            )
        # After the cluster (metrics-server shares its API client and waits for its node
        # list), before the ports. The store's policy: a reload may already have replaced it.
        await sources.start(store.policy)
        state.ports["scheduler"] = await extender.port.start(
            settings.host, settings.port, ssl_context
        )
        scheduler_listening = True
        runner = web.AppRunner(
            extender.admin_app(), access_log=None, shutdown_timeout=settings.shutdown_timeout
        )
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, settings.admin_host, settings.admin_port).start()
        state.ports["admin"] = _bound_port(runner)
        extender.ready = True
        log.info(
            "priority-extender ready: scheduler port %d, admin port %d, policy %s, event loop %s",
            state.ports["scheduler"],
            state.ports["admin"],
            policy.source,
            _loop_name(),
        )
        yield state
    finally:
        extender.ready = False
        await _cancel(tasks)
        await sources.stop()
        if state.cluster is not None:  # last: it closes the API client the sources shared
            await _cancel(state.cluster.tasks)
        # Stops listening, lets in-flight requests finish within shutdown_timeout, then closes.
        if scheduler_listening:
            await extender.port.stop(settings.shutdown_timeout)
        for runner in reversed(runners):
            await runner.cleanup()


async def serve(
    policy: LoadedPolicy,
    settings: ServerSettings,
    policy_path: Path | None = None,
    state_dir: Path | None = None,
    cluster_settings: ClusterSettings = DEFAULT_SETTINGS,
) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop within the configured grace.

    On the first signal readiness turns 503 at once, so the Service stops routing new calls
    here; requests keep being answered for ``drain_seconds`` (endpoint removal takes a moment
    to reach every node), then in-flight ones get ``shutdown_timeout`` to finish. A second
    signal skips the drain.
    """
    stop = asyncio.Event()
    hurry = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    async with running(
        policy, settings, policy_path=policy_path, state_dir=state_dir,
        cluster_settings=cluster_settings,
    ) as state:  # fmt: skip
        await stop.wait()
        state.extender.ready = False
        log.info("shutting down: draining for %.1f s", settings.drain_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), settings.drain_seconds)
    log.info("stopped")

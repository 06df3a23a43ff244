"""Process lifecycle: load the policy, start the sources and both ports, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from kubernetes.aio import client as k8s
from prometheus_client import CollectorRegistry

from extender.cluster import ClusterSource, start_cluster
from extender.cluster.connect import KubernetesMode, load_configuration
from extender.policy import LoadedPolicy
from extender.server.app import Extender, ServerSettings
from extender.server.metrics import ClusterCollector, Metrics
from extender.server.reload import PolicyReloader
from extender.server.tls import CertReloader, server_context
from extender.sources.metrics_server import MetricsServerSource
from extender.sources.prometheus import PrometheusSource, PrometheusSourceMetrics
from extender.sources.static import StaticSource, static_path
from extender.store import SnapshotStore

log = logging.getLogger(__name__)

#: The first Prometheus refresh is bounded by the query timeout (queries run in parallel) plus
#: this margin for decoding and the snapshot swap, so start-up never hangs on a slow Prometheus.
STARTUP_MARGIN_S = 2.0


@dataclass
class Running:
    extender: Extender
    runners: list[web.AppRunner]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    """Bound ports by name (``scheduler``, ``admin``): useful when started on port 0."""
    cluster: ClusterSource | None = None
    """The Kubernetes API cache, when enabled and configured."""


def _bound_port(runner: web.AppRunner) -> int:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise RuntimeError("site not started")


async def start_sources(
    store: SnapshotStore,
    policy: LoadedPolicy,
    registry: CollectorRegistry | None = None,
    prom_metrics: PrometheusSourceMetrics | None = None,
    kubernetes: KubernetesMode = "off",
    kubeconfig: str | None = None,
) -> list[asyncio.Task[None]]:
    """Start the metrics source the policy names. Its first read completes before returning.

    ``prom_metrics`` is reused across restarts (a collector registers only once per registry).
    """
    metrics = policy.document.metrics
    if metrics.source == "prometheus":
        prom = PrometheusSource(
            store,
            prom_metrics
            or PrometheusSourceMetrics(registry if registry is not None else CollectorRegistry()),
        )
        try:
            await asyncio.wait_for(
                prom.refresh(startup=True), metrics.prometheus.timeout + STARTUP_MARGIN_S
            )
        except TimeoutError:
            log.warning("prometheus: first refresh did not finish in time; retrying in background")
        except BaseException:  # cancelled during start-up: no run() task will close the session
            await prom.close()
            raise
        return [asyncio.create_task(prom.run())]
    if metrics.source == "static":
        source = StaticSource(
            store,
            static_path(metrics.static.file, policy.base_dir),
            metrics.static.refreshInterval,
        )
        await source.refresh()
        return [asyncio.create_task(source.run())]
    if metrics.source == "metrics-server":
        configuration = await load_configuration(kubernetes, kubeconfig)
        if configuration is None:
            log.warning(
                "metrics-server source needs the Kubernetes API (--kubernetes auto and a "
                "kubeconfig or in-cluster config); using request-based scoring instead"
            )
            return []
        return [asyncio.create_task(_metrics_server(store, configuration, policy))]
    return []


#: The first metrics-server read waits for the cluster cache's first node list, which supplies
#: the allocatable that usage is divided by (a second or two on large clusters).
METRICS_SERVER_FIRST_DELAY_S = 3.0


async def _metrics_server(
    store: SnapshotStore, configuration: k8s.Configuration, policy: LoadedPolicy
) -> None:
    settings = policy.document.metrics.metricsServer
    api_client = k8s.ApiClient(configuration)
    custom = k8s.CustomObjectsApi(api_client)
    fetch = functools.partial(
        custom.list_cluster_custom_object_without_preload_content,
        "metrics.k8s.io",
        "v1beta1",
        "nodes",
    )
    source = MetricsServerSource(store, fetch, settings.refreshInterval, settings.timeout)
    try:
        await asyncio.sleep(METRICS_SERVER_FIRST_DELAY_S)
        await source.refresh()
        await source.run()
    finally:
        await api_client.close()  # type: ignore[no-untyped-call]


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Sources:
    """The running metrics source, restarted when a reload changes the metrics settings."""

    def __init__(
        self,
        store: SnapshotStore,
        registry: CollectorRegistry,
        kubernetes: KubernetesMode = "off",
        kubeconfig: str | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.prom_metrics = PrometheusSourceMetrics(registry)
        self.kubernetes: KubernetesMode = kubernetes
        self.kubeconfig = kubeconfig
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, policy: LoadedPolicy) -> None:
        self.tasks = await start_sources(
            self.store,
            policy,
            self.registry,
            self.prom_metrics,
            self.kubernetes,
            self.kubeconfig,
        )

    async def stop(self) -> None:
        await _cancel(self.tasks)
        self.tasks = []

    async def on_reload(self, old: LoadedPolicy, new: LoadedPolicy) -> None:
        if old.document.metrics == new.document.metrics and old.base_dir == new.base_dir:
            return
        log.info("metrics settings changed: restarting the %s source", new.document.metrics.source)
        await self.stop()
        await self.start(new)


@contextlib.asynccontextmanager
async def running(
    policy: LoadedPolicy,
    settings: ServerSettings,
    registry: CollectorRegistry | None = None,
    policy_path: Path | None = None,
) -> AsyncIterator[Running]:
    """Everything started; stopped in reverse order on exit.

    With ``policy_path`` the policy is reloaded when the file changes.
    """
    ssl_context = None
    cert_reloader = None
    if settings.tls is not None:
        ssl_context = server_context(settings.tls)  # TLSConfigError: refuse to start
        cert_reloader = CertReloader(ssl_context, settings.tls)
    store = SnapshotStore(policy)
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    extender = Extender(store, metrics, settings)
    sources = Sources(store, metrics.registry, settings.kubernetes, settings.kubeconfig)
    await sources.start(policy)
    tasks: list[asyncio.Task[None]] = []
    if policy_path is not None:
        reloader = PolicyReloader(
            policy_path, store, metrics, sources.on_reload, settings.reload_interval
        )
        tasks.append(asyncio.create_task(reloader.run()))
    if cert_reloader is not None:
        tasks.append(asyncio.create_task(cert_reloader.run()))
    runners: list[web.AppRunner] = []
    state = Running(extender, runners, tasks)
    try:
        cluster = await start_cluster(store, settings.kubernetes, settings.kubeconfig)
        if cluster is not None:
            state.cluster = cluster
            tasks.extend(cluster.tasks)
            extender.readiness_checks.append(cluster.not_ready)
            extender.size_providers.append(cluster.sizes)
            extender.victim_lookup = cluster.estimate
            metrics.registry.register(ClusterCollector(cluster.status))
        for name, app, host, port, ctx in (
            ("scheduler", extender.scheduler_app(), settings.host, settings.port, ssl_context),
            ("admin", extender.admin_app(), settings.admin_host, settings.admin_port, None),
        ):
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port, ssl_context=ctx).start()
            state.ports[name] = _bound_port(runner)
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
        await _cancel(tasks)
        await sources.stop()
        # Stops listening, lets in-flight requests finish within shutdown_timeout, then closes.
        for runner in reversed(runners):
            await runner.cleanup()


async def serve(
    policy: LoadedPolicy, settings: ServerSettings, policy_path: Path | None = None
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
    async with running(policy, settings, policy_path=policy_path) as state:
        await stop.wait()
        state.extender.ready = False
        log.info("shutting down: draining for %.1f s", settings.drain_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), settings.drain_seconds)
    log.info("stopped")

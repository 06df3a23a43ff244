"""Finding the Kubernetes API and starting the cluster source.

Where the configuration comes from, first match wins:

1. an explicit kubeconfig file (``--kubeconfig``): a file that cannot be loaded is an error;
2. in-cluster: ``KUBERNETES_SERVICE_HOST``/``_PORT`` set (every pod has them) and the service
   account token mounted;
3. ``$KUBECONFIG`` or ``~/.kube/config`` when present.

With ``kubernetes: off``, or when nothing is found (or the in-cluster token is not mounted, or the
found kubeconfig does not load: logged), the extender runs without the cluster source: node names
from kube-scheduler are then only known through the metrics source.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Literal

from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config

from extender import __version__
from extender.cluster.settings import DEFAULT_SETTINGS, ClusterSettings
from extender.cluster.source import ClusterSource
from extender.errors import ConfigError
from extender.store import SnapshotStore

log = logging.getLogger(__name__)

KubernetesMode = Literal["auto", "off"]


class ClusterConfigError(ConfigError):
    """An explicitly given kubeconfig that cannot be used; the message says why."""


def _default_kubeconfig(environ: Mapping[str, str]) -> str | None:
    paths = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if paths:
        return environ["KUBECONFIG"] if any(Path(p).is_file() for p in paths) else None
    default = Path.home() / ".kube" / "config"
    return str(default) if default.is_file() else None


async def _from_kubeconfig(path: str, context: str | None = None) -> k8s.Configuration:
    conf = k8s.Configuration()
    await k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=path, context=context, client_configuration=conf, persist_config=False
    )
    return conf


async def kubeconfig_configuration(
    path: str | None, context: str | None = None, environ: Mapping[str, str] = os.environ
) -> k8s.Configuration:
    """The client configuration of kubeconfig ``path`` (None: ``$KUBECONFIG``, else
    ``~/.kube/config``) and ``context`` (None: its current one).

    Raises :class:`ClusterConfigError`, its message naming the file, for a file that is not
    there (checked here: the client library would only log "Config not found" and then fail
    on the empty configuration it read) or that cannot be used.
    """
    shown = path or environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    found = path if path else _default_kubeconfig(environ)
    if found is None or not any(Path(p).is_file() for p in found.split(os.pathsep) if p):
        raise ClusterConfigError(f"kubeconfig {shown}: no such file")
    try:
        return await _from_kubeconfig(found, context)
    except Exception as exc:  # the loader raises anything from OSError to YAML errors
        raise ClusterConfigError(f"kubeconfig {shown}: {exc}") from exc


async def load_configuration(
    mode: KubernetesMode,
    kubeconfig: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> k8s.Configuration | None:
    """The client configuration to use, or None to run without the cluster source."""
    if mode == "off":
        log.info("kubernetes: off; running without the cluster cache")
        return None
    if kubeconfig:
        return await kubeconfig_configuration(kubeconfig, environ=environ)
    if environ.get("KUBERNETES_SERVICE_HOST") and environ.get("KUBERNETES_SERVICE_PORT"):
        conf = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException as exc:
            log.warning(
                "kubernetes: in a pod but the service account is not usable (%s); "
                "running without the cluster cache",
                exc,
            )
            return None
        log.info("kubernetes: in-cluster configuration, API at %s", conf.host)
        return conf
    found = _default_kubeconfig(environ)
    if found is None:
        log.info(
            "kubernetes: no in-cluster environment and no kubeconfig; "
            "running without the cluster cache"
        )
        return None
    try:
        conf = await _from_kubeconfig(found)
    except Exception as exc:
        log.warning("kubernetes: kubeconfig %s not usable (%s); running without it", found, exc)
        return None
    log.info("kubernetes: kubeconfig %s, API at %s", found, conf.host)
    return conf


def cluster_source(
    store: SnapshotStore,
    configuration: k8s.Configuration,
    settings: ClusterSettings = DEFAULT_SETTINGS,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> ClusterSource:
    """A source that talks to the API the configuration names (not started), on one API client
    that the Kubernetes-backed metrics sources share and the source closes when it stops.
    ``clock``, ``sleep`` (the waits between retries) and ``rng`` (jitter) are seams for tests."""
    api_client = k8s.ApiClient(configuration)
    api_client.user_agent = f"priority-extender/{__version__}"
    core = k8s.CoreV1Api(api_client)
    scheduling = k8s.SchedulingV1Api(api_client)
    return ClusterSource(
        store,
        core.list_node_without_preload_content,
        core.list_pod_for_all_namespaces_without_preload_content,
        settings,
        clock=clock,
        sleep=sleep,
        rng=rng,
        close=api_client.close,
        api_client=api_client,
        list_priority_classes=(
            scheduling.list_priority_class_without_preload_content
            if settings.priority_classes
            else None
        ),
    )


async def start_cluster(
    store: SnapshotStore,
    mode: KubernetesMode = "auto",
    kubeconfig: str | None = None,
    settings: ClusterSettings = DEFAULT_SETTINGS,
) -> ClusterSource | None:
    """Start the cluster source in the background if the API is configured; see the module doc.

    Returns at once (the first lists run in the background: readiness waits for the node list);
    the source's task is in ``source.tasks``. Raises :class:`ClusterConfigError` for an explicit
    kubeconfig that cannot be loaded.
    """
    configuration = await load_configuration(mode, kubeconfig)
    if configuration is None:
        return None
    source = cluster_source(store, configuration, settings)
    source.start()
    return source

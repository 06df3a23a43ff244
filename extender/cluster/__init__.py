"""Cluster state from the Kubernetes API: nodes and bound pods, by list+watch, in compact form."""

from extender.cluster.cache import ClusterCache
from extender.cluster.connect import (
    ClusterConfigError,
    KubernetesMode,
    cluster_source,
    load_configuration,
    start_cluster,
)
from extender.cluster.decode import NodeRecord, PodRecord
from extender.cluster.reflector import ApiError, Gone, Reflector, StreamError
from extender.cluster.settings import POD_FIELD_SELECTOR, ClusterSettings
from extender.cluster.source import ClusterSource, ClusterStatus
from extender.errors import ClusterError

__all__ = [
    "POD_FIELD_SELECTOR",
    "ApiError",
    "ClusterCache",
    "ClusterConfigError",
    "ClusterError",
    "ClusterSettings",
    "ClusterSource",
    "ClusterStatus",
    "Gone",
    "KubernetesMode",
    "NodeRecord",
    "PodRecord",
    "Reflector",
    "StreamError",
    "cluster_source",
    "load_configuration",
    "start_cluster",
]

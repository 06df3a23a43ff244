"""Realistic Kubernetes objects for benchmarks: Nodes of 10-15 KB, a Pod, static metrics.

A Node of a production cluster carries about fifteen labels, a few annotations, managedFields
from the kubelet and controllers, five conditions, its addresses, nodeInfo, and the list of
images cached on it, which is most of its size. The generator reproduces that shape so that
full-node requests cost what they cost for real (about 77 MB at 5,000 nodes).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent
FIXTURE_POD = ROOT / "tests" / "fixtures" / "kube-scheduler" / "filter-nodecache-true.json"
TIME = "2026-11-27T23:17:42Z"


def node_name(i: int) -> str:
    return f"node-{i:05d}"


def node_object(i: int, rng: random.Random) -> dict[str, Any]:
    name = node_name(i)
    zone = f"europe-west4-{'abc'[i % 3]}"
    labels = {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/instance-type": "n2-standard-16",
        "beta.kubernetes.io/os": "linux",
        "cloud.google.com/gke-boot-disk": "pd-balanced",
        "cloud.google.com/gke-container-runtime": "containerd",
        "cloud.google.com/gke-nodepool": f"pool-{i % 4}",
        "cloud.google.com/gke-os-distribution": "cos",
        "cloud.google.com/machine-family": "n2",
        "failure-domain.beta.kubernetes.io/region": "europe-west4",
        "failure-domain.beta.kubernetes.io/zone": zone,
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "n2-standard-16",
        "topology.kubernetes.io/region": "europe-west4",
        "topology.kubernetes.io/zone": zone,
    }
    images = [
        {
            "names": [
                f"europe-docker.pkg.dev/project/team-{j}/service-{j}@sha256:{rng.getrandbits(256):064x}",
                f"europe-docker.pkg.dev/project/team-{j}/service-{j}:v1.{j}.{rng.randrange(100)}",
            ],
            "sizeBytes": rng.randrange(10_000_000, 900_000_000),
        }
        for j in range(24)
    ]
    conditions = [
        {
            "type": t,
            "status": "True" if t == "Ready" else "False",
            "lastHeartbeatTime": TIME,
            "lastTransitionTime": TIME,
            "reason": f"Kubelet{t}",
            "message": f"kubelet reports {t}",
        }
        for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable", "Ready")
    ]
    managed = [
        {
            "manager": manager,
            "operation": "Update",
            "apiVersion": "v1",
            "time": TIME,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {f"f:{k}": {} for k in labels}}},
        }
        for manager in ("kubelet", "node-controller", "gke-node-labeler")
    ]
    return {
        "metadata": {
            "name": name,
            "uid": f"{rng.getrandbits(128):032x}",
            "resourceVersion": str(100000 + i),
            "creationTimestamp": TIME,
            "labels": labels,
            "annotations": {
                "container.googleapis.com/instance_id": str(rng.getrandbits(60)),
                "csi.volume.kubernetes.io/nodeid": json.dumps({"pd.csi.storage.gke.io": name}),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "managedFields": managed,
        },
        "spec": {
            "podCIDR": f"10.{i // 256 % 256}.{i % 256}.0/24",
            "podCIDRs": [f"10.{i // 256 % 256}.{i % 256}.0/24"],
            "providerID": f"gce://project/{zone}/{name}",
        },
        "status": {
            "capacity": {
                "cpu": "16",
                "ephemeral-storage": "98831908Ki",
                "memory": "65851336Ki",
                "pods": "110",
            },
            "allocatable": {
                "cpu": "15890m",
                "ephemeral-storage": "47060071478",
                "memory": "61255624Ki",
                "pods": "110",
            },
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": f"10.164.{i // 256 % 256}.{i % 256}"},
                {"type": "ExternalIP", "address": f"34.90.{i // 256 % 256}.{i % 256}"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": f"{rng.getrandbits(128):032x}",
                "systemUUID": f"{rng.getrandbits(128):032x}",
                "bootID": f"{rng.getrandbits(128):032x}",
                "kernelVersion": "6.1.100+",
                "osImage": "Container-Optimized OS from Google",
                "containerRuntimeVersion": "containerd://1.7.22",
                "kubeletVersion": "v1.30.5-gke.1014001",
                "kubeProxyVersion": "v1.30.5-gke.1014001",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "images": images,
        },
    }


def pod_object() -> dict[str, Any]:
    """The batch pod captured from kube-scheduler (priority 100), as the scheduler sends it."""
    pod: dict[str, Any] = json.loads(FIXTURE_POD.read_bytes())["Pod"]
    return pod


def _go_json(value: object) -> bytes:
    """JSON as kube-scheduler's encoding/json writes it: compact, no spaces."""
    return json.dumps(value, separators=(",", ":")).encode()


def names_body(names: list[str]) -> bytes:
    return _go_json({"Pod": pod_object(), "Nodes": None, "NodeNames": names})


def nodes_body(nodes: list[dict[str, Any]]) -> bytes:
    items = {"metadata": {"resourceVersion": "1"}, "items": nodes}
    return _go_json({"Pod": pod_object(), "Nodes": items, "NodeNames": None})


def write_static_cluster(folder: Path, count: int, seed: int = 42) -> Path:
    """A static metrics file for ``count`` nodes (a third of them hot) and a policy reading it.

    Returns the policy path. Node shapes match :func:`node_object` (16 cores, ~58 GiB).
    """
    rng = random.Random(seed)
    lines = ["nodes:"]
    for i in range(count):
        hot = i % 3 == 0
        cpu = rng.uniform(0.65, 0.95) if hot else rng.uniform(0.05, 0.5)
        mem = rng.uniform(0.2, 0.7)
        lines.append(
            f"  {node_name(i)}: {{cpu: {cpu:.3f}, memory: {mem:.3f}, "
            "allocatable: {cpu: 15890m, memory: 61255624Ki}, requested: {cpu: '4', memory: 16Gi}}"
        )
    (folder / "metrics.yaml").write_text("\n".join(lines) + "\n")
    policy = (ROOT / "config" / "policy-static.yaml").read_text()
    policy = policy.replace("file: static-metrics.yaml", f"file: {folder / 'metrics.yaml'}")
    # Read once; samples stay fresh for the whole run (the file's values count as observed at
    # each read, so a long benchmark must not age them into the request-based fallback).
    policy = policy.replace("refreshInterval: 15s", "refreshInterval: 1h")
    policy = policy.replace("maxAge: 60s", "maxAge: 2h")
    path = folder / "policy.yaml"
    path.write_text(policy)
    return path

"""Kubernetes objects and waits for the end-to-end tests, through the ``kubernetes`` client.

:class:`Kubelet` stands in for the kubelet, which cannot run here (no container runtime): it
force-deletes terminating pods (what a kubelet confirms once containers stop), and tells a
callback about each pod bound to a node, with the instant it saw the binding.

Builders make Nodes (created, then their status patched Ready with capacity and allocatable) and
Pods (a nodeSelector on the test's own label, a PriorityClass per tier). Waits poll with a
deadline and report what they saw when it passes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

TEST_LABEL = "e2e.priority-extender.io/test"
"""Label on a test's nodes, and the nodeSelector of its pods: no pod lands on another test's
nodes even if that test's cleanup lags."""
PREPLACED_LABEL = "e2e.priority-extender.io/preplaced"
"""Pods created already bound (spec.nodeName), whose load the test put into the node's base."""
IMAGE = "registry.invalid/e2e/pause:3.9"
"""Never pulled: nothing runs containers here."""
WAIT_S = 60.0
"""Bound on waiting for the scheduler: it binds a pod within a second or two; retries after an
error wait for backoff (1-10 s). The bound only turns a hang into a failure that says why."""
POLL_S = 0.1
WATCH_TIMEOUT_S = 10
"""Server-side timeout of the stand-in kubelet's watch; it is renewed at once. Short, because
stopping the kubelet waits for the current watch to end (a blocked read cannot be interrupted)."""
STOP_JOIN_S = 2.0
"""How long :meth:`Kubelet.stop` waits for the watch thread; it is a daemon thread, so one still
blocked in a read after that dies with the process."""

PRIORITY_CLASSES = {
    # class name -> (value, the test policy's tier that value falls into)
    "critical": (1_000_000_000, "system-critical"),  # the highest user-definable priority
    "production": (10_000, "production"),
    "standard": (500, "standard"),
    "batch": (50, "batch"),
}
"""One PriorityClass per tier of config/policy.yaml (names starting with ``system-`` are reserved
for Kubernetes, hence ``critical``)."""
TIER_OF_CLASS = {name: tier for name, (_, tier) in PRIORITY_CLASSES.items()}


def api_client(kubeconfig: Path) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.proxy = None
    return client.ApiClient(cfg)


def create_priority_classes(api: client.ApiClient) -> None:
    sched = client.SchedulingV1Api(api)
    for name, (value, tier) in PRIORITY_CLASSES.items():
        body = {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": value,
            "description": f"e2e: the {tier} tier of config/policy.yaml",
        }
        with contextlib.suppress(ApiException):  # already there from an earlier call
            sched.create_priority_class(body)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_manifest(name: str, test_id: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, TEST_LABEL: test_id, **(labels or {})},
        },
    }


def ready_status(cpu: str, memory: str, pods: int) -> dict[str, Any]:
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    now = _now()
    return {
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "e2e stand-in kubelet",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        }
    }


def create_ready_node(
    core: client.CoreV1Api,
    name: str,
    test_id: str,
    *,
    cpu: str,
    memory: str,
    pods: int = 110,
    labels: dict[str, str] | None = None,
) -> None:
    """Create a Node and patch its status Ready with capacity = allocatable, as a kubelet would,
    then drop the ``node.kubernetes.io/not-ready`` taint that admission (TaintNodesByCondition)
    puts on every new node and the node lifecycle controller would remove."""
    core.create_node(node_manifest(name, test_id, labels))
    core.patch_node_status(name, ready_status(cpu, memory, pods))
    core.patch_node(name, {"spec": {"taints": []}})


def pod_manifest(
    name: str,
    test_id: str,
    *,
    priority_class: str | None,
    cpu: str = "100m",
    memory: str = "128Mi",
    cpu_limit: str | None = None,
    node_name: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}}
    if cpu_limit is not None:
        resources["limits"] = {"cpu": cpu_limit}
    spec: dict[str, Any] = {
        "nodeSelector": {TEST_LABEL: test_id},
        "containers": [{"name": "main", "image": IMAGE, "resources": resources}],
    }
    if priority_class is not None:
        spec["priorityClassName"] = priority_class
    if node_name is not None:
        spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {TEST_LABEL: test_id, **(labels or {})}},
        "spec": spec,
    }


def quantity_cores(value: str) -> float:
    """``500m`` -> 0.5, ``2`` -> 2.0 (the cpu quantities these tests use)."""
    return float(value[:-1]) / 1000.0 if value.endswith("m") else float(value)


# --- the stand-in kubelet -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Binding:
    namespace: str
    name: str
    node: str
    seen_at: float
    """Epoch seconds at which the stand-in kubelet saw the pod bound."""
    labels: dict[str, str]
    cpu: float
    """Cores the pod uses (its limits, else requests; summed over containers)."""


def _pod_cpu(pod: Any) -> float:
    """The cores a pod uses when it runs, by this emulation: its cpu limit, else its request."""
    total = 0.0
    for c in pod.spec.containers or []:
        limits = (c.resources.limits or {}) if c.resources else {}
        req = (c.resources.requests or {}) if c.resources else {}
        value = limits.get("cpu") or req.get("cpu")
        if value:
            total += quantity_cores(value)
    return total


class Kubelet:
    """Watches every pod: force-deletes terminating ones, reports bindings to ``on_bound`` (once
    per pod UID) and deletions to ``on_gone``."""

    def __init__(
        self,
        kubeconfig: Path,
        on_bound: Callable[[Binding], None],
        on_gone: Callable[[Binding], None],
    ) -> None:
        self.api = api_client(kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.on_bound = on_bound
        self.on_gone = on_gone
        self.bound: dict[str, Binding] = {}
        self.force_deleted: list[tuple[str, str, str]] = []
        """(namespace, name, node) of every pod this kubelet confirmed the deletion of."""
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stand-in-kubelet", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> Kubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STOP_JOIN_S)

    def _handle(self, kind: str, pod: Any) -> None:
        uid = pod.metadata.uid
        node = pod.spec.node_name
        if kind == "DELETED":
            with self._lock:
                gone = self.bound.pop(uid, None)
            if gone is not None:
                self.on_gone(gone)
            return
        if node and uid not in self.bound:
            b = Binding(
                pod.metadata.namespace,
                pod.metadata.name,
                node,
                time.time(),
                dict(pod.metadata.labels or {}),
                _pod_cpu(pod),
            )
            with self._lock:
                self.bound[uid] = b
            self.on_bound(b)
        if pod.metadata.deletion_timestamp is not None:
            try:
                self.core.delete_namespaced_pod(
                    pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                )
                self.force_deleted.append((pod.metadata.namespace, pod.metadata.name, node or ""))
            except ApiException as exc:
                if exc.status != 404:
                    self.errors.append(f"force delete {pod.metadata.name}: {exc.status}")

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    listed = self.core.list_pod_for_all_namespaces()
                    for pod in listed.items:
                        self._handle("ADDED", pod)
                    rv = listed.metadata.resource_version
                w = watch.Watch()
                for event in w.stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=rv,
                    timeout_seconds=WATCH_TIMEOUT_S,
                    allow_watch_bookmarks=True,
                    _request_timeout=WATCH_TIMEOUT_S + 10,
                ):
                    if self._stop.is_set():
                        w.stop()
                        break
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        rv = None  # 410: relist
                        break
                    rv = obj.metadata.resource_version
                    if event["type"] != "BOOKMARK":
                        self._handle(event["type"], obj)
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                else:
                    self.errors.append(f"watch: {exc.status} {exc.reason}")
                    self._stop.wait(0.5)
            except Exception as exc:  # connection errors; anything while the API goes away
                if not self._stop.is_set():
                    self.errors.append(f"watch: {exc!r}")
                    self._stop.wait(0.5)


# --- reading pods and events --------------------------------------------------------------------


def scheduled_condition(pod: Any) -> Any | None:
    for cond in (pod.status.conditions or []) if pod.status else []:
        if cond.type == "PodScheduled":
            return cond
    return None


def failed_scheduling(core: client.CoreV1Api, namespace: str, name: str | None = None) -> list[str]:
    """FailedScheduling event messages in ``namespace`` (of pod ``name`` if given)."""
    selector = "reason=FailedScheduling"
    if name is not None:
        selector += f",involvedObject.name={name}"
    events = core.list_namespaced_event(namespace, field_selector=selector).items
    return [e.message or "" for e in sorted(events, key=lambda e: e.metadata.creation_timestamp)]


def describe_pods(core: client.CoreV1Api, namespace: str, names: Iterable[str]) -> str:
    """One line a pod: where it is bound, or its PodScheduled condition, and its last events."""
    lines = []
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
    for name in names:
        p = pods.get(name)
        if p is None:
            lines.append(f"{name}: (gone)")
            continue
        cond = scheduled_condition(p)
        state = (
            f"bound to {p.spec.node_name}"
            if p.spec.node_name
            else (f"{cond.status}/{cond.reason}: {cond.message}" if cond else "no condition yet")
        )
        lines.append(f"{name}: {state}")
    events = failed_scheduling(core, namespace)
    if events:
        lines.append("FailedScheduling events (latest 5):")
        lines.extend(f"  {m}" for m in events[-5:])
    return "\n".join(lines)


def wait_for(
    what: str, check: Callable[[], bool], explain: Callable[[], str], timeout: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{explain()}")
        time.sleep(POLL_S)

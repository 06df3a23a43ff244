"""The end-to-end test bed: one :class:`Session` per test run, one :class:`Scenario` per test.

A :class:`Session` starts the control plane (etcd, kube-apiserver; kube-scheduler on demand), the
node_exporter emulation, a real Prometheus scraping it through the project's recording rules, the
stand-in kubelet, the PriorityClasses of the test policy's tiers, and owns the extender
subprocess (started on demand with a policy). :meth:`Session.ensure` gives a test the extender
policy and scheduler configuration it needs, restarting only what differs.

A :class:`Scenario` is one test's world: its own namespace, its own nodes (unique names, a label
its pods select), its pods, waits on what the real scheduler did, and the emulated ground truth
at each binding. :meth:`Scenario.cleanup` force-deletes its pods and deletes its nodes. (Its
namespace stays: without a controller-manager nothing would finish deleting it.)

Usable without pytest (``with Session.running(folder) as s: ...``), e.g. from ``benchmarks/``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.e2e import kube
from tests.e2e.controlplane import ControlPlane, scheduler_config, shipped_extender_stanza
from tests.e2e.extender_proc import Extender, Tls, e2e_policy
from tests.e2e.kube import PREPLACED_LABEL, TIER_OF_CLASS, Binding, Kubelet
from tests.e2e.node_exporter import GiB, Load, NodeExporter
from tests.e2e.prometheus import LivePrometheus

SAMPLE_TOLERANCE = 0.01
"""How close the extender's sample must be to the emulated truth to count as "seen": the
emulation's timestamps make rate() exact; 0.01 only absorbs float formatting."""
SEE_WAIT_S = 60.0
"""A fresh node has a rule value after two scrapes and one evaluation (about 2-3 s), and the
extender reads it within its 1 s refresh; the bound only catches a broken pipeline."""
CREATE_THREADS = 8
"""Parallel API calls when creating many objects: 40 pods are created within a fraction of a
second, and a 2-core machine gains nothing from more."""
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class BoundAt:
    """A pod's binding as the stand-in kubelet saw it, with the node's ground truth just before
    (the load the scheduler's decision was made against)."""

    binding: Binding
    truth: Load | None


class Session:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cp = ControlPlane(folder / "controlplane")
        self.exporter = NodeExporter()
        self.prometheus = LivePrometheus(folder / "prometheus", "")
        self.extender: Extender | None = None
        self.kubelet: Kubelet | None = None
        self.api: client.ApiClient | None = None
        self.follow: dict[str, int] = {}
        """Nodes whose emulated cpu load rises by each bound pod's request / cores."""
        self.bound_at: dict[tuple[str, str], BoundAt] = {}
        self._lock = threading.Lock()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Session:
        try:
            self.cp.start()
            self.exporter.start()
            self.prometheus = LivePrometheus(self.folder / "prometheus", self.exporter.address)
            self.prometheus.start()
            self.api = kube.api_client(self.cp.kubeconfig)
            kube.create_priority_classes(self.api)
            self.kubelet = Kubelet(self.cp.kubeconfig, self._on_bound, self._on_gone).start()
            self.extender = Extender(self.folder / "extender", self.cp.kubeconfig)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self.extender is not None:
            self.extender.stop()
        self.cp.stop_scheduler()
        if self.kubelet is not None:
            self.kubelet.stop()
        self.prometheus.stop()
        self.exporter.stop()
        self.cp.stop()
        if self.api is not None:
            self.api.close()

    @classmethod
    @contextlib.contextmanager
    def running(cls, folder: Path) -> Iterator[Session]:
        session = cls(folder)
        try:
            yield session.start()
        finally:
            session.close()

    @property
    def core(self) -> client.CoreV1Api:
        assert self.api is not None
        return client.CoreV1Api(self.api)

    @property
    def ext(self) -> Extender:
        assert self.extender is not None
        return self.extender

    # --- configurations ---------------------------------------------------------------------

    def policy(self, **metrics: Any) -> dict[str, Any]:
        """The test policy (config/policy.yaml reading the session's Prometheus)."""
        return e2e_policy(self.prometheus.url, **metrics)

    def scheduler_config(
        self,
        *,
        extender: bool = True,
        ignorable: bool = False,
        tls_config: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The shipped extender stanza pointed at the session's extender (or none: stock)."""
        if not extender:
            return scheduler_config(self.cp.kubeconfig, [])
        overrides: dict[str, Any] = {"ignorable": ignorable}
        prefix = f"http://127.0.0.1:{self.ext.port}"
        if tls_config is not None:
            prefix = f"https://127.0.0.1:{self.ext.port}"
            overrides.update(enableHTTPS=True, tlsConfig=tls_config)
        return scheduler_config(self.cp.kubeconfig, [shipped_extender_stanza(prefix, **overrides)])

    def ensure(
        self,
        policy: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        tls: Tls | None = None,
    ) -> None:
        """The extender running ``policy`` (default: :meth:`policy`) and kube-scheduler with
        ``scheduler`` (default: the shipped extender stanza), restarting only what differs."""
        self.ext.ensure(policy if policy is not None else self.policy(), tls)
        self.cp.ensure_scheduler(scheduler if scheduler is not None else self.scheduler_config())

    # --- the kubelet's reports --------------------------------------------------------------

    def _on_bound(self, b: Binding) -> None:
        with self._lock:
            truth = self.exporter.truth(b.node) if b.node in self.exporter.nodes() else None
            cores = self.follow.get(b.node)
            if cores and PREPLACED_LABEL not in b.labels:
                self.exporter.add_load(b.node, cpu=b.cpu / cores)
            self.bound_at[(b.namespace, b.name)] = BoundAt(b, truth)

    def _on_gone(self, b: Binding) -> None:
        with self._lock:
            cores = self.follow.get(b.node)
            if cores and PREPLACED_LABEL not in b.labels and b.node in self.exporter.nodes():
                self.exporter.add_load(b.node, cpu=-b.cpu / cores)


def ceilings(policy: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per tier name, its filter ceilings (``{"cpu": 0.85, "memory": 0.9}``)."""
    return {t["name"]: dict(t.get("filter", {})) for t in policy["tiers"]}


class Scenario:
    """One test's namespace, nodes and pods; see the module doc."""

    def __init__(self, session: Session, name: str) -> None:
        self.s = session
        slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:20].strip("-")
        self.id = f"{slug}-{next(_ids)}-{os.getpid() % 10000}"
        self.namespace = f"e2e-{self.id}"
        self.nodes: list[str] = []
        self.pods: list[str] = []
        self.core = session.core
        self.core.create_namespace({"metadata": {"name": self.namespace}})

    # --- nodes ------------------------------------------------------------------------------

    def node(
        self,
        suffix: str,
        cpu: float,
        memory: float = 0.3,
        *,
        cores: int = 8,
        memory_gib: int = 32,
        pods: int = 110,
        follow: bool = False,
    ) -> str:
        """A Ready node whose emulated utilization starts at ``cpu``/``memory``. With ``follow``,
        each pod bound to it adds its cpu request / cores to the emulated load."""
        name = f"{self.id}-{suffix}"
        self.s.exporter.add(name, cpu, memory, cores=cores, mem_total=memory_gib * GiB)
        if follow:
            self.s.follow[name] = cores
        kube.create_ready_node(
            self.core, name, self.id, cpu=str(cores), memory=f"{memory_gib}Gi", pods=pods
        )
        self.nodes.append(name)
        return name

    def touch_node(self, name: str) -> None:
        """A cluster event (a label change on a node) that makes kube-scheduler retry pods."""
        self.core.patch_node(
            name,
            {"metadata": {"labels": {"e2e.priority-extender.io/touched": str(time.time_ns())}}},
        )

    # --- pods -------------------------------------------------------------------------------

    def pod(
        self,
        name: str,
        priority_class: str | None,
        *,
        cpu: str = "100m",
        memory: str = "128Mi",
        cpu_limit: str | None = None,
        node_name: str | None = None,
    ) -> str:
        labels = {PREPLACED_LABEL: "true"} if node_name else None
        manifest = kube.pod_manifest(
            name,
            self.id,
            priority_class=priority_class,
            cpu=cpu,
            memory=memory,
            cpu_limit=cpu_limit,
            node_name=node_name,
            labels=labels,
        )
        self.core.create_namespaced_pod(self.namespace, manifest)
        self.pods.append(name)
        return name

    def create_pods(self, specs: Sequence[tuple[str, str | None, dict[str, Any]]]) -> list[str]:
        """Create ``(name, priorityClass, kwargs)`` pods in parallel (a burst); returns names."""
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(lambda spec: self.pod(spec[0], spec[1], **spec[2]), specs))
        return [name for name, _, _ in specs]

    def create_nodes(self, specs: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            return list(pool.map(lambda spec: self.node(spec[0], **spec[1]), specs))

    def _pods(self) -> dict[str, Any]:
        return {p.metadata.name: p for p in self.core.list_namespaced_pod(self.namespace).items}

    def bindings(self, names: Iterable[str] | None = None) -> dict[str, str | None]:
        """Pod name -> node it is bound to (None: pending), for ``names`` or every pod."""
        pods = self._pods()
        wanted = list(names) if names is not None else list(pods)
        return {n: (pods[n].spec.node_name if n in pods else None) for n in wanted}

    def describe(self, names: Iterable[str]) -> str:
        return kube.describe_pods(self.core, self.namespace, names)

    def wait_bound(self, names: Sequence[str], timeout: float = kube.WAIT_S) -> dict[str, str]:
        """Wait until every pod is bound; returns where. Fails with each pod's state."""
        kube.wait_for(
            f"{len(names)} pods bound",
            lambda: all(self.bindings(names).values()),
            lambda: self.describe(names),
            timeout,
        )
        return {k: v for k, v in self.bindings(names).items() if v}

    def unschedulable(self, name: str, pod: Any | None = None) -> tuple[str, str] | None:
        """(reason, message) of a pod's PodScheduled=False condition, or None."""
        if pod is None:
            pod = self._pods().get(name)
        if pod is None or pod.spec.node_name:
            return None
        cond = kube.scheduled_condition(pod)
        if cond is not None and cond.status == "False":
            return (cond.reason or "", cond.message or "")
        return None

    def wait_settled(self, names: Sequence[str], timeout: float = kube.WAIT_S) -> None:
        """Wait until every pod is either bound or has a PodScheduled=False condition (the
        scheduler has tried each at least once)."""

        def settled() -> bool:
            pods = self._pods()
            return all(
                n in pods and (pods[n].spec.node_name or self.unschedulable(n, pods[n]))
                for n in names
            )

        kube.wait_for(f"{len(names)} pods tried", settled, lambda: self.describe(names), timeout)

    def wait_unschedulable(
        self, names: Sequence[str], reason: str | None = None, timeout: float = kube.WAIT_S
    ) -> dict[str, tuple[str, str]]:
        """Wait until every pod has PodScheduled=False (with ``reason`` if given)."""

        def done() -> bool:
            pods = self._pods()
            for n in names:
                got = self.unschedulable(n, pods.get(n))
                if got is None or (reason is not None and got[0] != reason):
                    return False
            return True

        kube.wait_for(
            f"{len(names)} pods PodScheduled=False" + (f" ({reason})" if reason else ""),
            done,
            lambda: self.describe(names),
            timeout,
        )
        pods = self._pods()
        return {n: got for n in names if (got := self.unschedulable(n, pods.get(n)))}

    def events(self, name: str | None = None) -> list[str]:
        """FailedScheduling messages of the test's pods (of ``name`` if given), oldest first."""
        return kube.failed_scheduling(self.core, self.namespace, name)

    def bound_at(self, name: str, timeout: float = 10.0) -> BoundAt:
        """The stand-in kubelet's record of a bound pod's binding (it sees it within ms)."""
        key = (self.namespace, name)
        kube.wait_for(
            f"the kubelet to see {name} bound",
            lambda: key in self.s.bound_at,
            lambda: self.describe([name]),
            timeout,
        )
        return self.s.bound_at[key]

    def evicted(self) -> list[tuple[str, str]]:
        """(pod, node) of this test's pods deleted by someone else than the test (preemption)."""
        return (
            [(n, node) for ns, n, node in self.s.kubelet.force_deleted if ns == self.namespace]
            if self.s.kubelet
            else []
        )

    # --- what the extender sees ------------------------------------------------------------

    def wait_extender_sees(
        self,
        nodes: Sequence[str] | None = None,
        requested_cpu: dict[str, float] | None = None,
        timeout: float = SEE_WAIT_S,
    ) -> dict[str, Any]:
        """Wait until the extender's snapshot has each node with a cpu and memory sample equal
        to the emulated truth (and the given requested cores); returns the snapshot."""
        nodes = list(nodes if nodes is not None else self.nodes)
        last: dict[str, Any] = {}

        def seen() -> bool:
            nonlocal last
            last = self.s.ext.snapshot()
            for n in nodes:
                entry = last["nodes"].get(n)
                if entry is None:
                    return False
                truth = self.s.exporter.truth(n)
                samples = entry["samples"]
                for sig, want in (("cpu", truth.cpu), ("memory", truth.memory)):
                    got = samples.get(sig, {}).get("value")
                    if got is None or abs(got - want) > SAMPLE_TOLERANCE:
                        return False
                if (
                    requested_cpu
                    and n in requested_cpu
                    and not math.isclose(entry["requested"]["cpu"], requested_cpu[n], abs_tol=1e-6)
                ):
                    return False
            return True

        def explain() -> str:
            rows = []
            for n in nodes:
                entry = last.get("nodes", {}).get(n)
                rows.append(f"{n}: truth {self.s.exporter.truth(n)}, extender {entry}")
            return "\n".join(rows) + f"\nprometheus: {self.s.prometheus.values()}"

        kube.wait_for(f"the extender to see {len(nodes)} nodes' samples", seen, explain, timeout)
        return last

    # --- ground truth -----------------------------------------------------------------------

    def above_ceiling(self, names: Iterable[str], policy: dict[str, Any]) -> list[str]:
        """Pods bound on a node whose emulated load, at the instant of binding, was above the
        ceiling of the pod's tier (one line each); [] when none was."""
        limits = ceilings(policy)
        pods = self._pods()
        out = []
        for name in names:
            pod = pods.get(name)
            if pod is None or not pod.spec.node_name:
                continue
            tier = TIER_OF_CLASS.get(pod.spec.priority_class_name or "", policy.get("defaultTier"))
            at = self.bound_at(name)
            if at.truth is None:
                continue
            for sig, ceiling in limits.get(tier or "", {}).items():
                value = getattr(at.truth, sig, None)
                if value is not None and value > ceiling:
                    out.append(
                        f"{name} ({tier}) bound on {at.binding.node} at {sig} {value:.3f} > {ceiling}"
                    )
        return out

    # --- cleanup ----------------------------------------------------------------------------

    def cleanup(self) -> None:
        with contextlib.suppress(ApiException):
            self.core.delete_collection_namespaced_pod(self.namespace, grace_period_seconds=0)
        for name in self.nodes:
            with contextlib.suppress(ApiException):
                self.core.delete_node(name)
            self.s.follow.pop(name, None)
        self.s.exporter.remove(*self.nodes)


def wait_until(
    what: str,
    check: Callable[[], bool],
    explain: Callable[[], str] = lambda: "",
    timeout: float = kube.WAIT_S,
) -> None:
    """Poll ``check`` until true; after ``timeout`` fail with ``what`` and ``explain()``."""
    kube.wait_for(what, check, explain, timeout)


OUTAGE_MAX_AGE_S = 5.0
"""A policy ``maxAge`` small enough that an outage turns into the fallback within seconds."""
FRESH_S = 3.0
"""A source that refreshes every second has succeeded within this long when it is up."""


def source_age(snap: dict[str, Any]) -> float:
    """Seconds since the extender's live source last refreshed, from its /snapshot."""
    ok = snap.get("sourceOkAt")
    return float("inf") if ok is None else float(snap["takenAt"]) - float(ok)


def stop_prometheus_until_fallback(sc: Scenario) -> None:
    """Stop the session's Prometheus and wait until the extender counts its source as down
    (the policy's ``maxAge`` must be :data:`OUTAGE_MAX_AGE_S`)."""
    sc.s.prometheus.stop()
    wait_until(
        "the extender to count the source as down",
        lambda: source_age(sc.s.ext.snapshot()) > OUTAGE_MAX_AGE_S,
        lambda: str(sc.s.ext.snapshot().get("sourceOkAt")),
    )

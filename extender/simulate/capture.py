"""A scenario from a live cluster: nodes and pods from the Kubernetes API, load from Prometheus.

What is captured, and how it maps onto a scenario:

* **nodes** (``GET /api/v1/nodes``): allocatable cpu, memory and pods; nodes of the same shape
  form one group that lists their names, in the API's order.
* **running pods** (``GET /api/v1/pods``, bound and not finished): pinned to their nodes
  (``pods:``) with the requests the scheduler counts (:func:`extender.core.pod_requests`: app
  containers and sidecars summed, an init step if larger, plus overhead); usage is assumed to
  equal requests.
* **tiers**: one per priority class (or bare priority), with the request shapes seen in it
  (the ten most common, weighted by count), and an arrival rate from the pods of that class
  created within ``window`` before the capture (finished pods included).
* **hidden load** (``background.nodes``): per node, the utilization Prometheus reports minus the
  requests of the pods on it, as a share of allocatable. Negative where pods use less than they
  request. Series are matched to nodes by the ``node`` label, else by the ``instance`` label's
  host against the nodes' addresses.

Lifetimes are not captured (``forever``): edit them, and the rates, before comparing policies.
The API and Prometheus are only read. Uses ``kubernetes.aio`` with its kubeconfig loading, and
aiohttp for Prometheus.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import msgspec
import yaml
from kubernetes.aio import client as k8s

from extender import __version__
from extender.cluster.connect import ClusterConfigError, kubeconfig_configuration
from extender.core import ContainerResources, PodInfo, QuantityError, parse_quantity
from extender.core import pod_requests as core_pod_requests
from extender.errors import SimulationError
from extender.simulate.scenario import API_VERSION, KIND

#: Objects per list page: the API server's own recommendation for large lists.
PAGE_SIZE = 500
#: Request shapes kept per tier; rarer shapes fold into the most common ones.
MAX_SHAPES = 10


class CaptureError(SimulationError):
    """The cluster or Prometheus could not be read; the message says which and why."""


# --- the fields read from the API -----------------------------------------------------------


class _Meta(msgspec.Struct):
    name: str = ""
    namespace: str = ""
    creationTimestamp: str | None = None


class _Address(msgspec.Struct):
    address: str = ""


class _NodeStatus(msgspec.Struct):
    allocatable: dict[str, str | int | float] | None = None
    addresses: list[_Address] | None = None


class _Node(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)
    status: _NodeStatus = msgspec.field(default_factory=_NodeStatus)


class _Resources(msgspec.Struct):
    requests: dict[str, str | int | float] | None = None


class _Container(msgspec.Struct):
    resources: _Resources | None = None
    restartPolicy: str | None = None
    """``Always`` on an init container makes it a native sidecar."""


class _PodSpec(msgspec.Struct):
    nodeName: str | None = None
    priority: int | None = None
    priorityClassName: str | None = None
    containers: list[_Container] | None = None
    initContainers: list[_Container] | None = None
    overhead: dict[str, str | int | float] | None = None


class _PodStatus(msgspec.Struct):
    phase: str | None = None


class _Pod(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)
    spec: _PodSpec = msgspec.field(default_factory=_PodSpec)
    status: _PodStatus = msgspec.field(default_factory=_PodStatus)


class _ListMeta(msgspec.Struct):
    # ``continue`` is a Python keyword.
    continue_: str | None = msgspec.field(default=None, name="continue")


class _NodeList(msgspec.Struct):
    items: list[_Node] = msgspec.field(default_factory=list)
    metadata: _ListMeta = msgspec.field(default_factory=_ListMeta)


class _PodList(msgspec.Struct):
    items: list[_Pod] = msgspec.field(default_factory=list)
    metadata: _ListMeta = msgspec.field(default_factory=_ListMeta)


class _Series(msgspec.Struct):
    metric: dict[str, str]
    value: tuple[float, str]


class _QueryData(msgspec.Struct):
    resultType: str
    result: list[_Series]


class _QueryReply(msgspec.Struct):
    status: str
    data: _QueryData | None = None
    error: str | None = None


# --- reading ------------------------------------------------------------------------------------


def _qty(value: str | int | float | None) -> float:
    if value is None:
        return 0.0
    try:
        return parse_quantity(value)
    except QuantityError:
        return 0.0


def _resources(c: _Container) -> ContainerResources:
    req = (c.resources.requests or {}) if c.resources else {}
    return ContainerResources(
        cpu_request=_qty(req.get("cpu")),
        memory_request=_qty(req.get("memory")),
        restartable=c.restartPolicy == "Always",
    )


def pod_requests(spec: Any) -> tuple[int, int]:
    """(millicores, bytes) the scheduler counts for a pod spec (core's one sizing rule)."""
    overhead = spec.overhead or {}
    cpu, mem = core_pod_requests(
        PodInfo(
            namespace="",
            name="",
            containers=tuple(_resources(c) for c in spec.containers or ()),
            init_containers=tuple(_resources(c) for c in spec.initContainers or ()),
            overhead_cpu=_qty(overhead.get("cpu")),
            overhead_memory=_qty(overhead.get("memory")),
        )
    )
    return round(cpu * 1000), round(mem)


async def _list_all(call: Any, decoder: msgspec.json.Decoder[Any], timeout_s: float) -> list[Any]:
    items: list[Any] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": PAGE_SIZE, "_request_timeout": timeout_s}
        if token:
            kwargs["_continue"] = token
        resp = await call(**kwargs)
        try:
            if resp.status != 200:
                body = (await resp.read())[:300].decode("utf-8", "replace")
                raise CaptureError(f"Kubernetes API {resp.url}: HTTP {resp.status}: {body}")
            page = decoder.decode(await resp.read())
        finally:
            resp.release()
        items.extend(page.items)
        token = page.metadata.continue_
        if not token:
            return items


async def read_cluster(
    kubeconfig: str | None, context: str | None, timeout_s: float
) -> tuple[list[_Node], list[_Pod]]:
    try:
        conf = await kubeconfig_configuration(kubeconfig, context)
    except ClusterConfigError as exc:
        raise CaptureError(str(exc)) from exc
    api = k8s.ApiClient(conf)
    api.user_agent = f"priority-extender-capture/{__version__}"
    try:
        core = k8s.CoreV1Api(api)
        nodes = await _list_all(
            core.list_node_without_preload_content, msgspec.json.Decoder(_NodeList), timeout_s
        )
        pods = await _list_all(
            core.list_pod_for_all_namespaces_without_preload_content,
            msgspec.json.Decoder(_PodList),
            timeout_s,
        )
    except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as exc:
        raise CaptureError(f"Kubernetes API at {conf.host}: {exc}") from exc
    finally:
        await api.close()  # type: ignore[no-untyped-call]
    return nodes, pods


async def query_prometheus(
    session: aiohttp.ClientSession, base: str, query: str, timeout_s: float
) -> list[_Series]:
    url = base.rstrip("/") + "/api/v1/query"
    try:
        async with session.get(
            url, params={"query": query}, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CaptureError(f"Prometheus {url}: {exc}") from exc
    try:
        reply = msgspec.json.decode(body, type=_QueryReply)
    except msgspec.DecodeError as exc:
        raise CaptureError(f"Prometheus {url}: not a query answer ({exc})") from exc
    if reply.status != "success" or reply.data is None:
        detail = reply.error or body[:200].decode("utf-8", "replace")
        raise CaptureError(f"Prometheus {url}: query {query!r} failed: {detail}")
    if reply.data.resultType != "vector":
        raise CaptureError(f"query {query!r} returned a {reply.data.resultType}, not a vector")
    return reply.data.result


def _per_node(
    series: list[_Series], label: str, names: set[str], by_address: dict[str, str]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in series:
        node = s.metric.get(label)
        if node is None and "instance" in s.metric:
            host = s.metric["instance"].rsplit(":", 1)[0].strip("[]")
            node = by_address.get(host) or (host if host in names else None)
        try:
            value = float(s.value[1])
        except ValueError:
            continue
        if node in names and math.isfinite(value):
            out[node] = min(max(value, 0.0), 1.0)
    return out


# --- building the scenario --------------------------------------------------------------------


def _cpu_text(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def _memory_text(size: int) -> str | int:
    for unit, factor in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return size


def _tier_name(pcn: str, priority: int) -> str:
    base = pcn or f"priority-{priority}"
    name = re.sub(r"[^a-z0-9.-]+", "-", base.lower()).strip("-.")
    return name[:63].rstrip("-.") or "default"


def _created(meta: _Meta) -> float | None:
    if not meta.creationTimestamp:
        return None
    try:
        return datetime.fromisoformat(meta.creationTimestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class _Tier:
    name: str
    priority: int
    pcn: str
    shapes: Counter[tuple[int, int]] = field(default_factory=Counter)
    recent: int = 0


def build_scenario(
    nodes: list[_Node],
    pods: list[_Pod],
    cpu: dict[str, float],
    memory: dict[str, float],
    *,
    now: float,
    window_s: float,
    duration_s: float,
) -> dict[str, Any]:
    """The scenario document (plain data) for what was read."""
    groups: dict[tuple[int, int, int], list[str]] = {}
    alloc: dict[str, tuple[int, int]] = {}
    for node in nodes:
        a = node.status.allocatable or {}
        shape = (
            round(_qty(a.get("cpu")) * 1000),
            round(_qty(a.get("memory"))),
            int(_qty(a.get("pods")) or 110),
        )
        if shape[0] <= 0 or shape[1] <= 0 or not node.metadata.name:
            continue
        groups.setdefault(shape, []).append(node.metadata.name)
        alloc[node.metadata.name] = shape[:2]

    tiers: dict[tuple[str, int], _Tier] = {}
    pinned: Counter[tuple[tuple[str, int], str, int, int]] = Counter()
    used: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for pod in pods:
        spec = pod.spec
        key = (spec.priorityClassName or "", spec.priority or 0)
        tier = tiers.get(key)
        if tier is None:
            tier = tiers[key] = _Tier(_tier_name(*key), key[1], key[0])
        req = pod_requests(spec)
        tier.shapes[req] += 1
        created = _created(pod.metadata)
        if created is not None and now - window_s <= created <= now:
            tier.recent += 1
        if spec.nodeName in alloc and pod.status.phase not in ("Succeeded", "Failed"):
            pinned[(key, spec.nodeName, *req)] += 1
            used[spec.nodeName][0] += req[0]
            used[spec.nodeName][1] += req[1]
    # Tier names must be unique: two classes that slug alike get the priority appended.
    seen: Counter[str] = Counter(t.name for t in tiers.values())
    for t in tiers.values():
        if seen[t.name] > 1:
            t.name = f"{t.name}-{t.priority}"

    background: dict[str, dict[str, float]] = {}
    for name, (a_cpu, a_mem) in alloc.items():
        load: dict[str, float] = {}
        if name in cpu:
            load["cpu"] = round(min(max(cpu[name] - used[name][0] / a_cpu, -1.0), 1.0), 4)
        if name in memory:
            load["memory"] = round(min(max(memory[name] - used[name][1] / a_mem, -1.0), 1.0), 4)
        if load:
            background[name] = load

    tier_docs = []
    for t in sorted(tiers.values(), key=lambda t: (-t.priority, t.name)):
        doc: dict[str, Any] = {"name": t.name, "priority": t.priority}
        if t.pcn:
            doc["priorityClassName"] = t.pcn
        shapes = [s for s, _ in t.shapes.most_common(MAX_SHAPES) if s[0] > 0 and s[1] > 0]
        if not shapes:
            shapes = [(100, 200 * 2**20)]  # kube-scheduler's non-zero defaults
        doc["requests"] = [
            {"cpu": _cpu_text(c), "memory": _memory_text(m), "weight": t.shapes[(c, m)] or 1}
            for c, m in shapes
        ]
        doc["lifetime"] = "forever"
        if t.recent:
            doc["arrivals"] = [{"perMinute": round(t.recent / (window_s / 60.0), 4)}]
        tier_docs.append(doc)

    names = {t.name for t in tiers.values()}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "description": (
            f"Captured from a live cluster: {len(alloc)} nodes, "
            f"{sum(pinned.values())} running pods, {len(names)} priority classes."
        ),
        "duration": f"{duration_s:g}s",
        "cluster": {
            "nodes": [
                {
                    "name": f"shape-{k}",
                    "names": names_,
                    "cpu": _cpu_text(shape[0]),
                    "memory": _memory_text(shape[1]),
                    "pods": shape[2],
                }
                for k, (shape, names_) in enumerate(groups.items())
            ]
        },
        "background": {"cpu": 0, "memory": 0, "nodes": background},
        "tiers": tier_docs,
        "pods": [
            {
                "tier": tiers[key].name,
                "node": node,
                "cpu": _cpu_text(c),
                "memory": _memory_text(m),
                "count": n,
            }
            for (key, node, c, m), n in sorted(pinned.items())
        ],
    }


HEADER = """\
# Captured by `priority-extender simulate capture`. Before comparing policies, review:
# - tiers[].lifetime: not captured (forever); give batch tiers a lifetime distribution;
# - tiers[].arrivals: rates from the pods created in the capture window; add bursts to test;
# - tiers[].usage: assumed equal to requests; the hidden load per node is in background.nodes.
"""


def render(doc: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)


async def capture_scenario(
    *,
    kubeconfig: str | None,
    context: str | None,
    prometheus: str,
    cpu_query: str,
    memory_query: str,
    node_label: str = "node",
    window_s: float = 3600.0,
    duration_s: float = 3600.0,
    timeout_s: float = 30.0,
    now: float | None = None,
) -> str:
    """Read the cluster and Prometheus; return the scenario YAML text."""
    nodes, pods = await read_cluster(kubeconfig, context, timeout_s)
    if not nodes:
        raise CaptureError("the cluster lists no nodes")
    names = {n.metadata.name for n in nodes}
    by_address = {
        a.address: n.metadata.name for n in nodes for a in n.status.addresses or () if a.address
    }
    async with aiohttp.ClientSession() as session:
        cpu = _per_node(
            await query_prometheus(session, prometheus, cpu_query, timeout_s),
            node_label,
            names,
            by_address,
        )
        mem = _per_node(
            await query_prometheus(session, prometheus, memory_query, timeout_s),
            node_label,
            names,
            by_address,
        )
    doc = build_scenario(
        nodes,
        pods,
        cpu,
        mem,
        now=time.time() if now is None else now,
        window_s=window_s,
        duration_s=duration_s,
    )
    return render(doc)

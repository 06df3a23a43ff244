"""Kubernetes API JSON straight into compact records: Nodes and bound Pods, nothing else.

The ``kubernetes`` client would build a full model object per Pod (every container, env var,
volume and managedFields entry as Python objects): at 150,000 pods that is gigabytes. Here the
raw bytes of a list page or of one watch event line are decoded by typed msgspec structs that name
only the fields decisions use; everything else is skipped by the C decoder without creating Python
objects, and the transient structs are turned at once into one small record per object.

What a record keeps:

* :class:`NodeRecord` -- name, allocatable cpu and memory, labels, addresses (to map Prometheus
  ``instance`` labels to nodes).
* :class:`PodRecord` -- uid, namespace/name, node, priority, the usage estimate
  (:func:`extender.core.estimate_pod` under the policy's estimation settings), the scheduler's
  view of its requests (to sum per node), when it was bound, whether a DaemonSet owns it, and
  its controller's owner key (the siblings a new pod's usage can be estimated from).

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from datetime import datetime

import msgspec

from extender.core import (
    ContainerResources,
    Estimation,
    PodInfo,
    QuantityError,
    estimate_pod,
    parse_quantity,
    pod_requests,
)
from extender.core.podusage import owner_key
from extender.errors import InputError


class DecodeError(InputError):
    """An API response or watch event that is not the JSON the API sends; names the problem."""


# --- records ------------------------------------------------------------------------------------


class NodeRecord(msgspec.Struct, frozen=True, gc=False):
    """What the cache keeps of one Node. ``gc=False``: no reference cycles are possible, so the
    garbage collector need not track thousands of them."""

    name: str
    allocatable_cpu: float | None
    """Cores; None when the Node does not say."""
    allocatable_memory: float | None
    """Bytes."""
    labels: dict[str, str]
    addresses: tuple[str, ...]
    """Every ``status.addresses[].address`` (InternalIP, Hostname, ...), in the Node's order."""


class PodRecord(msgspec.Struct, frozen=True, gc=False):
    """What the cache keeps of one bound, non-terminal Pod: about 600 bytes with its strings and
    its entry in the cache (measured by ``benchmarks/bench_cluster.py``)."""

    uid: str
    namespace: str
    name: str
    node: str
    priority: int
    cpu: float
    """Estimated usage in cores (the policy's estimation settings at decode time)."""
    memory: float
    """Estimated usage in bytes."""
    request_mcpu: int
    """The scheduler's view of the pod's cpu request, in millicores (integers add exactly, so
    per-node totals kept incrementally never drift)."""
    request_memory: int
    """The scheduler's view of the pod's memory request, in bytes."""
    bound_at: float
    """Seconds since the epoch: the ``PodScheduled`` condition's lastTransitionTime, else the
    creation time. The API gives whole seconds."""
    daemonset: bool
    owner: str = ""
    """The :func:`~extender.core.podusage.owner_key` of the pod's controller
    (``metadata.ownerReferences[controller=true]``), "" when it has none. Interned: the pods of
    one controller share one string."""


# --- the fields decoded, nothing else -----------------------------------------------------------

Qty = str | int | float


class _CpuMem(msgspec.Struct, gc=False):
    cpu: Qty | None = None
    memory: Qty | None = None


class _Resources(msgspec.Struct, gc=False):
    requests: _CpuMem | None = None
    limits: _CpuMem | None = None


class _Container(msgspec.Struct, gc=False):
    resources: msgspec.Raw = msgspec.Raw()
    """Left as bytes: pods of one workload repeat the same bytes, and a pod's sizing is looked up
    by them (see :class:`PodDecoder`) instead of being parsed and computed again."""
    restartPolicy: str | None = None
    """``Always`` on an init container makes it a sidecar: it runs beside the app containers."""


class _OwnerRef(msgspec.Struct, gc=False):
    kind: str = ""
    name: str = ""
    controller: bool | None = None


class _PodMeta(msgspec.Struct, gc=False):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    resourceVersion: str = ""
    creationTimestamp: datetime | None = None
    ownerReferences: list[_OwnerRef] | None = None


class _PodSpec(msgspec.Struct, gc=False):
    nodeName: str = ""
    priority: int | None = None
    containers: list[_Container] | None = None
    initContainers: list[_Container] | None = None
    overhead: msgspec.Raw = msgspec.Raw()


class _Condition(msgspec.Struct, gc=False):
    type: str = ""
    status: str = ""
    lastTransitionTime: datetime | None = None


class _PodStatus(msgspec.Struct, gc=False):
    phase: str = ""
    conditions: list[_Condition] | None = None


class _Pod(msgspec.Struct, gc=False):
    metadata: _PodMeta = msgspec.field(default_factory=_PodMeta)
    spec: _PodSpec = msgspec.field(default_factory=_PodSpec)
    status: _PodStatus = msgspec.field(default_factory=_PodStatus)


class _NodeMeta(msgspec.Struct, gc=False):
    name: str = ""
    resourceVersion: str = ""
    labels: dict[str, str] | None = None


class _Address(msgspec.Struct, gc=False):
    type: str = ""
    address: str = ""


class _NodeStatus(msgspec.Struct, gc=False):
    allocatable: _CpuMem | None = None
    addresses: list[_Address] | None = None


class _Node(msgspec.Struct, gc=False):
    metadata: _NodeMeta = msgspec.field(default_factory=_NodeMeta)
    status: _NodeStatus = msgspec.field(default_factory=_NodeStatus)


class _ListMeta(msgspec.Struct, gc=False):
    resourceVersion: str = ""
    continue_: str = msgspec.field(default="", name="continue")


class _List(msgspec.Struct, gc=False):
    """A list page with its items left undecoded: each is decoded on its own, so a large page
    can be processed in slices between which the event loop runs."""

    metadata: _ListMeta = msgspec.field(default_factory=_ListMeta)
    items: list[msgspec.Raw] | None = None


class _Event(msgspec.Struct, gc=False):
    type: str = ""
    object: msgspec.Raw = msgspec.Raw()


class _RvOnly(msgspec.Struct, gc=False):
    resourceVersion: str = ""


class _Bookmark(msgspec.Struct, gc=False):
    metadata: _RvOnly = msgspec.field(default_factory=_RvOnly)


class Status(msgspec.Struct, gc=False):
    """A ``metav1.Status``: how the API reports an error (in a body or an ERROR event)."""

    code: int = 0
    reason: str = ""
    message: str = ""


_list_decoder = msgspec.json.Decoder(_List)
_event_decoder = msgspec.json.Decoder(_Event)
_bookmark_decoder = msgspec.json.Decoder(_Bookmark)
_status_decoder = msgspec.json.Decoder(Status)
_pod_decoder = msgspec.json.Decoder(_Pod)
_resources_decoder = msgspec.json.Decoder(_Resources | None)
_cpu_mem_decoder = msgspec.json.Decoder(_CpuMem | None)
_node_decoder = msgspec.json.Decoder(_Node)


# --- envelopes ----------------------------------------------------------------------------------


class ListPage(msgspec.Struct, frozen=True, gc=False):
    resource_version: str
    continue_token: str
    items: list[msgspec.Raw]
    """Each item's bytes, views into the page's buffer (no copy)."""


class Event(msgspec.Struct, frozen=True, gc=False):
    type: str
    """ADDED, MODIFIED, DELETED, BOOKMARK or ERROR."""
    object: msgspec.Raw


def decode_list(body: bytes) -> ListPage:
    try:
        page = _list_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"list response: {exc}") from None
    return ListPage(page.metadata.resourceVersion, page.metadata.continue_, page.items or [])


def decode_event(line: bytes) -> Event:
    try:
        event = _event_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"watch event: {exc}") from None
    if not event.type or not event.object:
        raise DecodeError("watch event: 'type' or 'object' is missing")
    return Event(event.type, event.object)


def decode_bookmark(raw: msgspec.Raw | bytes) -> str:
    """The resourceVersion a BOOKMARK event carries (empty if it carries none)."""
    try:
        return _bookmark_decoder.decode(raw).metadata.resourceVersion
    except msgspec.DecodeError as exc:
        raise DecodeError(f"bookmark event: {exc}") from None


def decode_status(raw: msgspec.Raw | bytes) -> Status | None:
    """A Status object, or None when the bytes are not one (an error body from a proxy)."""
    try:
        return _status_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


# --- quantities ---------------------------------------------------------------------------------

#: Parsed quantity strings. Pods repeat a handful of values ("100m", "256Mi") thousands of times;
#: the cache turns 150,000 regex parses into dictionary hits and shares the float objects.
_quantities: dict[Qty, float] = {}
#: Bound on the quantity cache; cleared when full (distinct values are few in practice).
QUANTITY_CACHE_SIZE = 4096


def _qty(value: Qty | None) -> float | None:
    if value is None:
        return None
    cached = _quantities.get(value)
    if cached is not None:
        return cached
    parsed = parse_quantity(value)
    if len(_quantities) >= QUANTITY_CACHE_SIZE:
        _quantities.clear()
    _quantities[value] = parsed
    return parsed


def _resources(raw: bytes) -> ContainerResources:
    res = _resources_decoder.decode(raw) if raw else None
    if res is None:
        return _NO_RESOURCES
    req = res.requests
    lim = res.limits
    return ContainerResources(
        cpu_request=None if req is None else _qty(req.cpu),
        cpu_limit=None if lim is None else _qty(lim.cpu),
        memory_request=None if req is None else _qty(req.memory),
        memory_limit=None if lim is None else _qty(lim.memory),
    )


_NO_RESOURCES = ContainerResources()
_SIDECAR_NO_RESOURCES = ContainerResources(restartable=True)


def _millis(cores: float) -> int:
    # The scheduler rounds quantities up; the epsilon keeps 0.1 * 1000 from becoming 101.
    return math.ceil(cores * 1000 - 1e-6)


def _bytes(value: float) -> int:
    return math.ceil(value - 1e-6)


# --- objects ------------------------------------------------------------------------------------

#: Shared copies of strings that repeat across pods (namespaces, node names): one object each
#: instead of one per pod.
_shared: dict[str, str] = {}
SHARED_STRINGS_SIZE = 65536


def share(text: str) -> str:
    got = _shared.get(text)
    if got is not None:
        return got
    if len(_shared) >= SHARED_STRINGS_SIZE:
        _shared.clear()
    _shared[text] = text
    return text


TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
"""Pods in these phases hold no resources: the watch's field selector excludes them too."""


def _timestamp(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


_Shape = tuple[tuple[bytes, ...], tuple[tuple[bytes, str | None], ...], bytes]
"""A pod's resource bytes: its containers', its init containers' (with restartPolicy), its
overhead. Pods of one workload share one shape."""
_Sizing = tuple[float, float, int, int]
"""(estimated cpu, estimated memory, requested millicores, requested bytes)."""


def _size(shape: _Shape, est: Estimation) -> _Sizing:
    """What a pod of this shape is estimated to use and requests; raises QuantityError."""
    init = []
    for raw, restart_policy in shape[1]:
        r = _resources(raw)
        if restart_policy == "Always":
            r = dataclasses.replace(r, restartable=True) if raw else _SIDECAR_NO_RESOURCES
        init.append(r)
    overhead = _cpu_mem_decoder.decode(shape[2]) if shape[2] else None
    pod = PodInfo(
        namespace="",
        name="",
        containers=tuple(_resources(raw) for raw in shape[0]),
        init_containers=tuple(init),
        overhead_cpu=(overhead and _qty(overhead.cpu)) or 0.0,
        overhead_memory=(overhead and _qty(overhead.memory)) or 0.0,
    )
    est_cpu, est_mem = estimate_pod(pod, est)
    req_cpu, req_mem = pod_requests(pod)
    return est_cpu, est_mem, _millis(req_cpu), _bytes(req_mem)


#: Distinct pod shapes remembered; cleared when full. A cluster runs a few thousand workloads.
SIZING_CACHE_SIZE = 8192


class PodDecoder:
    """Pods into records under one set of estimation settings, remembering each distinct
    resource shape's sizing: in a cluster of replicated workloads nearly every pod is a repeat,
    and the repeat costs a dictionary lookup instead of parsing quantities and estimating."""

    def __init__(self, est: Estimation) -> None:
        self.est = est
        self._sizings: dict[_Shape, _Sizing] = {}

    @property
    def shapes(self) -> int:
        """Distinct resource shapes remembered (pods of one workload share one)."""
        return len(self._sizings)

    def decode(self, raw: msgspec.Raw | bytes) -> tuple[str, str, PodRecord | None]:
        """(uid, resourceVersion, record); the record is None for a pod that holds no node
        resources (not bound, or finished). Raises :class:`DecodeError` naming the problem."""
        try:
            pod = _pod_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise DecodeError(f"Pod: {exc}") from None
        meta = pod.metadata
        spec = pod.spec
        if not meta.uid:
            raise DecodeError(f"Pod {meta.namespace}/{meta.name}: metadata.uid is missing")
        if not spec.nodeName or pod.status.phase in TERMINAL_PHASES:
            return meta.uid, meta.resourceVersion, None
        shape: _Shape = (
            tuple(bytes(c.resources) for c in spec.containers or ()),
            tuple((bytes(c.resources), c.restartPolicy) for c in spec.initContainers or ()),
            bytes(spec.overhead),
        )
        sizing = self._sizings.get(shape)
        if sizing is None:
            try:
                sizing = _size(shape, self.est)
            except (QuantityError, msgspec.DecodeError) as exc:
                raise DecodeError(f"Pod {meta.namespace}/{meta.name}: {exc}") from None
            if len(self._sizings) >= SIZING_CACHE_SIZE:
                self._sizings.clear()
            self._sizings[shape] = sizing
        bound_at = None
        for cond in pod.status.conditions or ():
            if cond.type == "PodScheduled" and cond.status == "True":
                bound_at = _timestamp(cond.lastTransitionTime)
                break
        if bound_at is None:
            bound_at = _timestamp(meta.creationTimestamp)
        record = PodRecord(
            uid=meta.uid,
            namespace=share(meta.namespace),
            name=meta.name,
            node=share(spec.nodeName),
            priority=spec.priority or 0,
            cpu=sizing[0],
            memory=sizing[1],
            request_mcpu=sizing[2],
            request_memory=sizing[3],
            bound_at=0.0 if bound_at is None else bound_at,
            daemonset=any(o.kind == "DaemonSet" for o in meta.ownerReferences or ()),
            owner=_owner(meta),
        )
        return meta.uid, meta.resourceVersion, record


def _owner(meta: _PodMeta) -> str:
    """The controller's owner key, interned (siblings share it; a string per pod would cost
    about 80 bytes each at 150,000 pods)."""
    for ref in meta.ownerReferences or ():
        if ref.controller:
            key = owner_key(ref.kind, meta.namespace, ref.name)
            return sys.intern(key) if key else ""
    return ""


def decode_pod(raw: msgspec.Raw | bytes, est: Estimation) -> tuple[str, str, PodRecord | None]:
    """One pod with a fresh :class:`PodDecoder` (no sizing cache across calls)."""
    return PodDecoder(est).decode(raw)


def decode_node(raw: msgspec.Raw | bytes) -> tuple[str, str, NodeRecord]:
    """(name, resourceVersion, record); raises :class:`DecodeError` naming the problem."""
    try:
        node = _node_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"Node: {exc}") from None
    name = node.metadata.name
    if not name:
        raise DecodeError("Node: metadata.name is missing")
    alloc = node.status.allocatable or _CpuMem()
    try:
        cpu = _qty(alloc.cpu)
        mem = _qty(alloc.memory)
    except QuantityError as exc:
        raise DecodeError(f"Node {name}: status.allocatable: {exc}") from None
    record = NodeRecord(
        name=share(name),
        allocatable_cpu=cpu,
        allocatable_memory=mem,
        labels=node.metadata.labels or {},
        addresses=tuple(a.address for a in node.status.addresses or () if a.address),
    )
    return name, node.metadata.resourceVersion, record


# --- PriorityClasses (scheduling.k8s.io/v1) -----------------------------------------------------


class PriorityClassRecord(msgspec.Struct, frozen=True, gc=False):
    """What the cache keeps of one PriorityClass: what admission gives a pod that names it."""

    value: int
    global_default: bool
    """The class admission gives a pod that names none."""


class _PriorityClassMeta(msgspec.Struct, gc=False):
    name: str = ""
    resourceVersion: str = ""


class _PriorityClass(msgspec.Struct, gc=False):
    metadata: _PriorityClassMeta = msgspec.field(default_factory=_PriorityClassMeta)
    value: int = 0
    globalDefault: bool | None = None


_priority_class_decoder = msgspec.json.Decoder(_PriorityClass)


def decode_priority_class(raw: msgspec.Raw | bytes) -> tuple[str, str, PriorityClassRecord]:
    """(name, resourceVersion, record); raises :class:`DecodeError` naming the problem."""
    try:
        pc = _priority_class_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"PriorityClass: {exc}") from None
    if not pc.metadata.name:
        raise DecodeError("PriorityClass: metadata.name is missing")
    record = PriorityClassRecord(pc.value, pc.globalDefault is True)
    return pc.metadata.name, pc.metadata.resourceVersion, record

"""kube-scheduler's extender JSON contract: decode only what decisions need, encode exact replies.

kube-scheduler's Go types carry no JSON tags, so keys are Go field names (``Pod``, ``NodeNames``);
Go decodes case-insensitively, and older clients sent all-lower-case keys, so both spellings are
accepted here. Decoding uses typed msgspec structs that name only the fields used: everything else
in a 15 KB Node object (managedFields, images, conditions) is skipped without building Python
objects. In full-node mode each item is kept as the original bytes (``msgspec.Raw``) so the
filter reply carries the kept Nodes back byte for byte, never decoded and re-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import numpy as np

from extender.core import (
    Candidates,
    ContainerResources,
    Evaluation,
    PodInfo,
    QuantityError,
    parse_quantity,
)
from extender.errors import InputError


class WireError(InputError):
    """A request body that does not follow the contract; the message names the problem."""


# --- decode: the fields used, nothing else ------------------------------------------------------


class _Resources(msgspec.Struct):
    requests: dict[str, str | int | float] | None = None
    limits: dict[str, str | int | float] | None = None


class _Container(msgspec.Struct):
    name: str = ""
    resources: _Resources | None = None
    restartPolicy: str | None = None
    """``Always`` on an init container makes it a native sidecar."""


class _OwnerRef(msgspec.Struct):
    kind: str = ""


class _PodMeta(msgspec.Struct):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    labels: dict[str, str] | None = None
    ownerReferences: list[_OwnerRef] | None = None


class _PodSpec(msgspec.Struct):
    containers: list[_Container] | None = None
    initContainers: list[_Container] | None = None
    overhead: dict[str, str | int | float] | None = None
    priority: int | None = None
    priorityClassName: str | None = None


class _Pod(msgspec.Struct):
    metadata: _PodMeta | None = None
    spec: _PodSpec | None = None


class _NodeMeta(msgspec.Struct):
    name: str = ""


class _NodeStatus(msgspec.Struct):
    allocatable: dict[str, str | int | float] | None = None


class _Node(msgspec.Struct):
    metadata: _NodeMeta | None = None
    status: _NodeStatus | None = None


class _NodeList(msgspec.Struct):
    metadata: msgspec.Raw = msgspec.Raw()
    items: list[msgspec.Raw] | None = None


class _Args(msgspec.Struct):
    """ExtenderArgs in both spellings; the decoder picks whichever is set."""

    Pod: msgspec.Raw = msgspec.Raw()
    pod: msgspec.Raw = msgspec.Raw()
    Nodes: _NodeList | None = None
    nodes: _NodeList | None = None
    NodeNames: list[str] | None = None
    nodenames: list[str] | None = None


_args_decoder = msgspec.json.Decoder(_Args)
_pod_decoder = msgspec.json.Decoder(_Pod)
_node_decoder = msgspec.json.Decoder(_Node)


@dataclass(frozen=True, slots=True)
class FilterArgs:
    """A decoded ``filter`` or ``prioritize`` request."""

    pod: PodInfo
    candidates: Candidates
    full_nodes: list[msgspec.Raw] | None
    """The original Node objects in request order, when sent in full (nodeCacheCapable false)."""
    nodes_metadata: msgspec.Raw | None = None


def _qty(value: str | int | float | None, where: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_quantity(value)
    except QuantityError as exc:
        raise WireError(f"{where}: {exc}") from None


def _container(c: _Container, where: str) -> ContainerResources:
    res = c.resources
    restartable = c.restartPolicy == "Always"
    if res is None:
        return ContainerResources(restartable=restartable)
    req = res.requests or {}
    lim = res.limits or {}
    return ContainerResources(
        cpu_request=_qty(req.get("cpu"), f"{where}.resources.requests.cpu"),
        cpu_limit=_qty(lim.get("cpu"), f"{where}.resources.limits.cpu"),
        memory_request=_qty(req.get("memory"), f"{where}.resources.requests.memory"),
        memory_limit=_qty(lim.get("memory"), f"{where}.resources.limits.memory"),
        restartable=restartable,
    )


def decode_pod(raw: bytes | msgspec.Raw, where: str = "Pod") -> PodInfo:
    """A v1.Pod's decision fields; raises :class:`WireError` on a malformed pod."""
    try:
        pod = _pod_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise WireError(f"{where}: {exc}") from None
    meta = pod.metadata or _PodMeta()
    spec = pod.spec or _PodSpec()
    overhead = spec.overhead or {}
    return PodInfo(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        priority=spec.priority or 0,
        priority_class_name=spec.priorityClassName or "",
        labels=meta.labels or {},
        owner_kinds=tuple(o.kind for o in meta.ownerReferences or ()),
        containers=tuple(
            _container(c, f"{where}.spec.containers[{i}]")
            for i, c in enumerate(spec.containers or ())
        ),
        init_containers=tuple(
            _container(c, f"{where}.spec.initContainers[{i}]")
            for i, c in enumerate(spec.initContainers or ())
        ),
        overhead_cpu=_qty(overhead.get("cpu"), f"{where}.spec.overhead.cpu") or 0.0,
        overhead_memory=_qty(overhead.get("memory"), f"{where}.spec.overhead.memory") or 0.0,
    )


def _present(raw: msgspec.Raw) -> bool:
    """msgspec cannot put Raw in a union with None: an absent or null field is Raw b"" / b"null"."""
    return len(raw) > 0 and bytes(raw) != b"null"


T = TypeVar("T")


def decode_envelope(body: bytes, decoder: msgspec.json.Decoder[T], what: str) -> T:
    """The request's top-level struct; raise :class:`WireError` naming the problem."""
    if not body:
        raise WireError(f"empty request body: expected {what} JSON")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise WireError(f"invalid {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise WireError(f"malformed JSON: {exc}") from None


def pod_field(upper: msgspec.Raw, lower: msgspec.Raw, what: str) -> PodInfo:
    """The pod of a request, from ``Pod`` or the lower-case ``pod``."""
    raw = upper if _present(upper) else lower
    if not _present(raw):
        raise WireError(f"invalid {what}: Pod is missing or null")
    return decode_pod(raw)


def decode_args(body: bytes) -> FilterArgs:
    """Decode ExtenderArgs; raise :class:`WireError` naming the problem."""
    args = decode_envelope(body, _args_decoder, "ExtenderArgs")
    pod = pod_field(args.Pod, args.pod, "ExtenderArgs")
    node_list = args.Nodes if args.Nodes is not None else args.nodes
    names = args.NodeNames if args.NodeNames is not None else args.nodenames
    if names is not None and node_list is not None:
        raise WireError(
            "invalid ExtenderArgs: both Nodes and NodeNames are set; kube-scheduler sends one "
            "(NodeNames with nodeCacheCapable: true, Nodes otherwise)"
        )
    if names is not None:
        return FilterArgs(pod=pod, candidates=Candidates(names=names), full_nodes=None)
    if node_list is None:
        raise WireError("invalid ExtenderArgs: both Nodes and NodeNames are null")
    items = node_list.items or []
    node_names: list[str] = []
    alloc = np.full((2, len(items)), np.nan)
    for i, raw in enumerate(items):
        where = f"Nodes.items[{i}]"
        try:
            node = _node_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise WireError(f"{where}: {exc}") from None
        name = node.metadata.name if node.metadata is not None else ""
        if not name:
            raise WireError(f"{where}: metadata.name is missing")
        node_names.append(name)
        status_alloc = node.status.allocatable if node.status is not None else None
        if status_alloc:
            cpu = _qty(status_alloc.get("cpu"), f"{where}.status.allocatable.cpu")
            mem = _qty(status_alloc.get("memory"), f"{where}.status.allocatable.memory")
            alloc[0, i] = np.nan if cpu is None else cpu
            alloc[1, i] = np.nan if mem is None else mem
    return FilterArgs(
        pod=pod,
        candidates=Candidates(names=node_names, allocatable=alloc),
        full_nodes=items,
        nodes_metadata=node_list.metadata if _present(node_list.metadata) else None,
    )


# --- encode: exact Go field names ---------------------------------------------------------------


class HostPriority(msgspec.Struct, gc=False):
    """One entry of HostPriorityList. ``gc=False``: thousands are built per reply and hold no
    references that could form a cycle, so the garbage collector need not track them."""

    Host: str
    Score: int


class _FilterResultNames(msgspec.Struct):
    NodeNames: list[str] | None
    Nodes: None
    FailedNodes: dict[str, str]
    FailedAndUnresolvableNodes: dict[str, str]
    Error: str


class _NodeListOut(msgspec.Struct, omit_defaults=True):
    items: list[msgspec.Raw]
    metadata: msgspec.Raw | dict[str, Any] = msgspec.field(default_factory=dict)


class _FilterResultNodes(msgspec.Struct):
    Nodes: _NodeListOut
    NodeNames: None
    FailedNodes: dict[str, str]
    FailedAndUnresolvableNodes: dict[str, str]
    Error: str


_encoder = msgspec.json.Encoder()


def encode_filter_result(
    args: FilterArgs,
    kept: list[int],
    failed: dict[str, str],
    unresolvable: dict[str, str],
    error: str = "",
) -> bytes:
    """ExtenderFilterResult in the shape of the request: names back for names, Nodes for Nodes."""
    if args.full_nodes is not None:
        items = args.full_nodes
        node_list = _NodeListOut(
            items=[items[i] for i in kept],
            metadata=args.nodes_metadata if args.nodes_metadata is not None else {},
        )
        return _encoder.encode(_FilterResultNodes(node_list, None, failed, unresolvable, error))
    names = args.candidates.names
    return _encoder.encode(
        _FilterResultNames([names[i] for i in kept], None, failed, unresolvable, error)
    )


def encode_filter(args: FilterArgs, evaluation: Evaluation) -> bytes:
    """The filter reply for an evaluation; every live-load rejection is unresolvable."""
    return encode_filter_result(args, evaluation.kept(), {}, evaluation.failed())


def encode_filter_pass_all(args: FilterArgs) -> bytes:
    """Keep every node: the fail-open answer, and the answer for bypassed pods."""
    return encode_filter_result(args, list(range(len(args.candidates.names))), {}, {})


def encode_error(message: str) -> bytes:
    """A filter-shaped body whose ``Error`` names the problem (used with a 4xx status)."""
    return _encoder.encode(_FilterResultNames(None, None, {}, {}, message))


def encode_priorities(names: list[str] | tuple[str, ...], scores: list[int]) -> bytes:
    """HostPriorityList: ``[{"Host": name, "Score": int}]``, one entry per input node."""
    if len(names) != len(scores):
        raise ValueError(f"{len(names)} names but {len(scores)} scores")
    return _encoder.encode(list(map(HostPriority, names, scores)))

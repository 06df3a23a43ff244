"""kube-scheduler's extender JSON contract: decode only what decisions need, encode exact replies.

kube-scheduler's Go types carry no JSON tags, so keys are Go field names (``Pod``, ``NodeNames``);
Go decodes case-insensitively, and older clients sent all-lower-case keys, so both spellings are
accepted here. Decoding uses typed msgspec structs that name only the fields used: everything else
in a 15 KB Node object (managedFields, images, conditions) is skipped without building Python
objects. In full-node mode each item is kept as the original bytes (``msgspec.Raw``) so the
filter reply carries the kept Nodes back byte for byte, never decoded and re-encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

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
from extender.core.podusage import owner_key
from extender.errors import InputError
from extender.wire.names import LOOKUP_JSON_MIN_NAMES, JsonNames


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
    name: str = ""
    controller: bool | None = None


class _FieldRequirement(msgspec.Struct):
    key: str = ""
    operator: str = ""
    values: list[str] | None = None


class _NodeSelectorTerm(msgspec.Struct):
    matchExpressions: list[msgspec.Raw] | None = None
    """Only whether there are any matters (the DaemonSet controller writes none): kept raw."""
    matchFields: list[_FieldRequirement] | None = None


class _NodeSelector(msgspec.Struct):
    nodeSelectorTerms: list[_NodeSelectorTerm] | None = None


class _NodeAffinity(msgspec.Struct):
    requiredDuringSchedulingIgnoredDuringExecution: _NodeSelector | None = None


class _Affinity(msgspec.Struct):
    nodeAffinity: _NodeAffinity | None = None


#: A Pod's ``spec.priority`` is an int32 in the API; values up to int64 are still answered
#: (a hostile 2**62 gets a correct answer), a 400-digit integer is a 400 naming the field
#: instead of a number that travels into every comparison.
_Priority = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

#: Candidate nodes accepted in one request (names, full Nodes or preemption candidates):
#: 20 times Kubernetes' supported maximum of 5,000 nodes. Each candidate costs ~320 bytes of
#: decision arrays and strings, so this bounds one request's decision near 32 MB (1e6 names
#: used to take 1.1 s and ~300 MB).
MAX_CANDIDATES = 100_000
#: Raw bytes of a names-only ``NodeNames`` list checked before decoding it: 5,000 nodes of the
#: longest legal name (253 characters, quoted, a comma) are 1.3 MB; 8 MiB is six times that.
#: Decoding names holds the GIL (about 4 ns a byte here), so a 128 MiB list of names would
#: stall the event loop even from a worker thread.
MAX_NAMES_BYTES = 8 << 20
#: Raw bytes of one Pod (the preemptor, or a victim) checked before decoding it. etcd stores at
#: most 1.5 MiB a request by default (``--max-request-bytes``), in protobuf; JSON of the same
#: pod is at most about twice that. Decoding a pod holds the GIL while it builds its structs.
MAX_POD_BYTES = 4 << 20


class _PodMeta(msgspec.Struct):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    labels: dict[str, str] | None = None
    ownerReferences: list[_OwnerRef] | None = None


class _PodSpec(msgspec.Struct):
    containers: list[msgspec.Raw] | None = None
    """Raw, decoded one by one: 300,000 containers decoded at once held the GIL for over a
    second; one at a time, a worker thread deciding a large body lets the event loop run."""
    initContainers: list[msgspec.Raw] | None = None
    overhead: dict[str, str | int | float] | None = None
    priority: _Priority | None = None
    priorityClassName: str | None = None
    affinity: _Affinity | None = None
    preemptionPolicy: str | None = None


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
    NodeNames: msgspec.Raw = msgspec.Raw()
    """Raw: its size is checked (:data:`MAX_NAMES_BYTES`) before the names are decoded."""
    nodenames: msgspec.Raw = msgspec.Raw()


_args_decoder = msgspec.json.Decoder(_Args)
_pod_decoder = msgspec.json.Decoder(_Pod)
_container_decoder = msgspec.json.Decoder(_Container)
_names_decoder = msgspec.json.Decoder(list[str] | None)
_node_decoder = msgspec.json.Decoder(_Node)


@dataclass(frozen=True, slots=True)
class FilterArgs:
    """A decoded ``filter`` or ``prioritize`` request."""

    pod: PodInfo
    candidates: Candidates
    full_nodes: list[msgspec.Raw] | None
    """The original Node objects in request order, when sent in full (nodeCacheCapable false)."""
    nodes_metadata: msgspec.Raw | None = None
    names_json: bytes = b""
    """The names-only list as sent (the raw JSON array), for recognising a prioritize call
    whose candidates are exactly the names a filter call just answered."""


def _qty(value: str | int | float | None, where: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_quantity(value)
    except QuantityError as exc:
        raise WireError(f"{where}: {exc}") from None


#: Containers decoded, by their bytes: the replicas of a workload (a backlog is mostly those)
#: carry the very same container specs, so the decode and the quantity parsing run once per
#: spec. Decoding is a function of the bytes alone; the memo is emptied when it fills.
CONTAINERS_KEPT = 256
_containers: dict[bytes, ContainerResources] = {}


def _container(raw: msgspec.Raw, where: str, field: str, i: int) -> ContainerResources:
    """Container ``i`` of ``where``'s ``spec.<field>`` (the path is built only for an error)."""
    key = bytes(raw)
    got = _containers.get(key)
    if got is not None:
        return got
    got = _decode_container(raw, f"{where}.spec.{field}[{i}]")
    if len(_containers) >= CONTAINERS_KEPT:
        _containers.clear()
    _containers[key] = got
    return got


def _decode_container(raw: msgspec.Raw, where: str) -> ContainerResources:
    try:
        c = _container_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise WireError(f"{where}: {exc}") from None
    except RecursionError:
        raise WireError(f"{where}: {TOO_DEEP}") from None
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


#: What a too deeply nested body is told. msgspec recurses on nesting (also to skip an unknown
#: field) and raises RecursionError near Python's recursion limit (about 1,000 levels); no
#: Kubernetes object nests past a few dozen.
TOO_DEEP = "JSON nested too deeply (no Kubernetes object nests more than a few dozen levels)"


def _pinned_node(affinity: _Affinity | None) -> str:
    """The node a pod's required node affinity pins it to by name, written the way the
    DaemonSet controller writes it (``ReplaceDaemonSetPodNodeNameNodeAffinity``: exactly one
    term holding exactly one ``metadata.name In [node]`` field requirement); "" otherwise."""
    node_affinity = affinity.nodeAffinity if affinity is not None else None
    required = (
        node_affinity.requiredDuringSchedulingIgnoredDuringExecution
        if node_affinity is not None
        else None
    )
    terms = required.nodeSelectorTerms if required is not None else None
    if not terms or len(terms) != 1:
        return ""
    term = terms[0]
    if term.matchExpressions or not term.matchFields or len(term.matchFields) != 1:
        return ""
    req = term.matchFields[0]
    if req.key != "metadata.name" or req.operator != "In" or not req.values:
        return ""
    return req.values[0] if len(req.values) == 1 else ""


def _owner(meta: _PodMeta) -> str:
    """The pod's controller owner reference as ``owner_key`` spells it ("" without one)."""
    for ref in meta.ownerReferences or ():
        if ref.controller:
            return owner_key(ref.kind, meta.namespace, ref.name)
    return ""


def decode_pod(raw: bytes | msgspec.Raw, where: str = "Pod") -> PodInfo:
    """A v1.Pod's decision fields; raises :class:`WireError` on a malformed pod."""
    if len(raw) > MAX_POD_BYTES:
        raise WireError(
            f"{where}: {len(raw)} bytes of Pod; the API server stores none larger than "
            f"{MAX_POD_BYTES} bytes of JSON"
        )
    try:
        pod = _pod_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise WireError(f"{where}: {exc}") from None
    except RecursionError:
        raise WireError(f"{where}: {TOO_DEEP}") from None
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
        pinned_node=_pinned_node(spec.affinity),
        owner=_owner(meta),
        preemption_policy=spec.preemptionPolicy or "PreemptLowerPriority",
        containers=tuple(
            [_container(c, where, "containers", i) for i, c in enumerate(spec.containers or ())]
        ),
        init_containers=tuple(
            [
                _container(c, where, "initContainers", i)
                for i, c in enumerate(spec.initContainers or ())
            ]
        ),
        overhead_cpu=_qty(overhead.get("cpu"), f"{where}.spec.overhead.cpu") or 0.0,
        overhead_memory=_qty(overhead.get("memory"), f"{where}.spec.overhead.memory") or 0.0,
    )


def _present(raw: msgspec.Raw) -> bool:
    """msgspec cannot put Raw in a union with None: an absent or null field is Raw b"" / b"null"."""
    size = len(raw)
    return size > 0 and (size != 4 or bytes(raw) != b"null")  # no copy of a large field


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
    except RecursionError:
        raise WireError(f"invalid {what}: {TOO_DEEP}") from None


class _LastPod:
    """The latest pod decoded by :func:`pod_field` and its bytes. kube-scheduler sends the same
    pod to filter and then to prioritize (and again to each retry): the second decode is a
    byte comparison (a real pod's decode was a quarter of a names-only call). One entry,
    replaced whole, so a reader in another thread sees one pair or the other; decoding is a
    function of the bytes alone, so the memo cannot change an answer."""

    __slots__ = ("entry",)

    def __init__(self) -> None:
        self.entry: tuple[bytes, PodInfo] | None = None


_LAST_POD = _LastPod()


def pod_field(upper: msgspec.Raw, lower: msgspec.Raw, what: str) -> PodInfo:
    """The pod of a request, from ``Pod`` or the lower-case ``pod``."""
    raw = upper if _present(upper) else lower
    if not _present(raw):
        raise WireError(f"invalid {what}: Pod is missing or null")
    key = bytes(raw)
    last = _LAST_POD.entry
    if last is not None and last[0] == key:
        return last[1]
    pod = decode_pod(raw)
    _LAST_POD.entry = (key, pod)
    return pod


def check_candidates(count: int, what: str) -> None:
    """Refuse more candidates than :data:`MAX_CANDIDATES`, before deciding any of them."""
    if count > MAX_CANDIDATES:
        raise WireError(
            f"{what}: {count} candidate nodes; at most {MAX_CANDIDATES} are accepted "
            "(Kubernetes supports 5,000 nodes)"
        )


class _LastNames:
    """The names of the latest NodeNames array decoded, or of the one a filter reply just
    sent (:func:`remember_names`): kube-scheduler sends prioritize exactly the names filter
    kept, so that decode is a byte comparison. One entry, replaced whole; the list is never
    mutated by anyone who reads it."""

    __slots__ = ("entry",)

    def __init__(self) -> None:
        self.entry: tuple[bytes, Sequence[str]] | None = None


_LAST_NAMES = _LastNames()


def remembered_names() -> tuple[bytes, Sequence[str]] | None:
    """The NodeNames bytes whose names the next identical request takes without decoding."""
    return _LAST_NAMES.entry


def forget_bytes() -> None:
    """Empty the memos of repeated bytes (the pod, the names, the containers): the state of a
    process that has never seen a request. Tests use it; nothing else needs to."""
    _LAST_POD.entry = None
    _LAST_NAMES.entry = None
    _containers.clear()


def containers_remembered() -> int:
    """How many container specs the decode memo holds (at most :data:`CONTAINERS_KEPT`)."""
    return len(_containers)


def remember_names(raw: bytes, names: Sequence[str]) -> None:
    """``raw`` is the JSON array of ``names`` (the caller encoded it from them): the next
    request whose NodeNames is ``raw`` takes ``names`` instead of decoding it again."""
    _LAST_NAMES.entry = (raw, names)


def _names(raw: bytes, key: str) -> Sequence[str] | None:
    """A names-only candidate list, its size checked before it is decoded. Thousands of
    names in the form kube-scheduler sends are kept as their bytes (:class:`JsonNames`)."""
    last = _LAST_NAMES.entry
    if last is not None and len(last[0]) == len(raw) and last[0] == raw:
        return last[1]
    if len(raw) > MAX_NAMES_BYTES:
        raise WireError(
            f"invalid ExtenderArgs: {key} is {len(raw)} bytes; at most {MAX_NAMES_BYTES} "
            f"are accepted (5,000 names of 253 characters are 1.3 MB)"
        )
    names: Sequence[str] | None = JsonNames.parse(raw, LOOKUP_JSON_MIN_NAMES)
    if names is None:
        try:
            names = _names_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            # The path as if the names were decoded with the envelope: `$.NodeNames[0]`.
            message = str(exc)
            at = f"`$.{key}"
            message = (
                message.replace("`$", at, 1) if " - at `$" in message else f"{message} - at {at}`"
            )
            raise WireError(f"invalid ExtenderArgs: {message}") from None
        if names is None:
            return None
    check_candidates(len(names), key)
    _LAST_NAMES.entry = (raw, names)
    return names


def decode_args(body: bytes) -> FilterArgs:
    """Decode ExtenderArgs; raise :class:`WireError` naming the problem."""
    args = decode_envelope(body, _args_decoder, "ExtenderArgs")
    pod = pod_field(args.Pod, args.pod, "ExtenderArgs")
    node_list = args.Nodes if args.Nodes is not None else args.nodes
    upper = _present(args.NodeNames)
    raw_names = args.NodeNames if upper else args.nodenames
    names_json = bytes(raw_names) if _present(raw_names) else None
    names = (
        None if names_json is None else _names(names_json, "NodeNames" if upper else "nodenames")
    )
    if names is not None and node_list is not None:
        raise WireError(
            "invalid ExtenderArgs: both Nodes and NodeNames are set; kube-scheduler sends one "
            "(NodeNames with nodeCacheCapable: true, Nodes otherwise)"
        )
    if names is not None and names_json is not None:
        return FilterArgs(
            pod=pod, candidates=Candidates(names=names), full_nodes=None, names_json=names_json
        )
    if node_list is None:
        raise WireError("invalid ExtenderArgs: both Nodes and NodeNames are null")
    items = node_list.items or []
    check_candidates(len(items), "Nodes.items")
    node_names: list[str] = []
    alloc = np.full((2, len(items)), np.nan)
    for i, raw in enumerate(items):
        where = f"Nodes.items[{i}]"
        try:
            node = _node_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise WireError(f"{where}: {exc}") from None
        except RecursionError:
            raise WireError(f"{where}: {TOO_DEEP}") from None
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

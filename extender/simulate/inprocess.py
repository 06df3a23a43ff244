"""The extender, unmodified, called in-process through the same entry points as over HTTP.

:class:`InProcessExtender` owns a real :class:`~extender.store.SnapshotStore` and a real
:class:`~extender.server.app.Extender` whose clock is the simulation's. Each verb builds the JSON
body kube-scheduler would send (``nodeCacheCapable: true``: node names only), hands it to the
answer method the aiohttp handler calls after reading the body (decode, decide, encode), and
decodes the JSON reply as kube-scheduler would. Only the HTTP transport is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from extender.core import NodeInfo, PlacedPod, Sample
from extender.core.podusage import Departure, PodUsage
from extender.errors import SimulationError
from extender.policy import LoadedPolicy
from extender.store import SnapshotStore
from extender.verbs import Reply, Verbs

_encode = msgspec.json.Encoder().encode


class _FilterReply(msgspec.Struct):
    NodeNames: list[str] | None = None
    FailedNodes: dict[str, str] | None = None
    FailedAndUnresolvableNodes: dict[str, str] | None = None
    Error: str = ""


class _HostPriority(msgspec.Struct):
    Host: str
    Score: int


class _MetaPod(msgspec.Struct):
    UID: str


class _MetaVictims(msgspec.Struct):
    Pods: list[_MetaPod]
    NumPDBViolations: int = 0


class _PreemptReply(msgspec.Struct):
    NodeNameToMetaVictims: dict[str, _MetaVictims] | None = None


_filter_reply = msgspec.json.Decoder(_FilterReply)
_priorities_reply = msgspec.json.Decoder(list[_HostPriority])
_preempt_reply = msgspec.json.Decoder(_PreemptReply)


class ExtenderReplyError(SimulationError):
    """The extender answered with ``Error`` set: kube-scheduler fails the attempt."""


@dataclass(frozen=True, slots=True)
class FilterResult:
    kept: list[str]
    failed: dict[str, str]
    """Nodes rejected as resolvable (``FailedNodes``)."""
    unresolvable: dict[str, str]
    """Nodes rejected as unresolvable: preemption will not consider them."""


def filter_body(pod: bytes, names: Sequence[str]) -> bytes:
    """ExtenderArgs as kube-scheduler sends them with ``nodeCacheCapable: true``."""
    return b'{"Pod":' + pod + b',"Nodes":null,"NodeNames":' + _encode(list(names)) + b"}"


def preempt_body(pod: bytes, victims: Mapping[str, Sequence[str]]) -> bytes:
    """ExtenderPreemptionArgs with victims by UID (``nodeCacheCapable: true``)."""
    meta = {
        node: {"Pods": [{"UID": uid} for uid in uids], "NumPDBViolations": 0}
        for node, uids in victims.items()
    }
    return (
        b'{"Pod":'
        + pod
        + b',"NodeNameToVictims":null,"NodeNameToMetaVictims":'
        + _encode(meta)
        + b"}"
    )


class InProcessExtender:
    """One extender instance with its own store and decision log."""

    def __init__(
        self,
        policy: LoadedPolicy,
        clock: Callable[[], float],
        victim_lookup: Callable[[str], tuple[float, float] | None],
    ) -> None:
        self.store = SnapshotStore(policy, clock=clock)
        self.verbs = Verbs(self.store, clock=clock, victim_lookup=victim_lookup)
        self.calls: dict[str, int] = {"filter": 0, "prioritize": 0, "preempt": 0}

    # --- what the sources and the cluster cache would hand the store ---------------------------

    def publish(
        self,
        nodes: Sequence[NodeInfo],
        placements: Sequence[PlacedPod],
        samples: Mapping[str, Mapping[str, Sample]] | None,
        source_ok_at: float | None,
        *,
        pod_usage: PodUsage | None = None,
        departures: Sequence[Departure] = (),
    ) -> None:
        """Nodes, recent pods and recent departures (the API cache), and the latest refresh of
        the live source (None: no refresh yet, or ``metrics.source: none``) with its per-pod
        usage, swapped in as the server would. The cluster goes in before the per-pod table:
        deletions reach the cache at once, a refresh later, so the store still finds a departed
        pod's measured usage in the table it had."""
        if samples is not None and source_ok_at is not None:
            self.store.set_samples(samples, source_ok_at)
        self.store.set_cluster(nodes, placements, departures=departures)
        if pod_usage is not None and source_ok_at is not None:
            self.store.set_pod_usage(pod_usage, source_ok_at)

    # --- the verbs ---------------------------------------------------------------------------

    def filter(self, pod: bytes, names: Sequence[str]) -> FilterResult:
        self.calls["filter"] += 1
        reply = _filter_reply.decode(_ok(self.verbs.filter(filter_body(pod, names))))
        if reply.Error:
            raise ExtenderReplyError(reply.Error)
        return FilterResult(
            kept=reply.NodeNames or [],
            failed=reply.FailedNodes or {},
            unresolvable=reply.FailedAndUnresolvableNodes or {},
        )

    def prioritize(self, pod: bytes, names: Sequence[str]) -> dict[str, int]:
        self.calls["prioritize"] += 1
        reply = _priorities_reply.decode(_ok(self.verbs.prioritize(filter_body(pod, names))))
        return {hp.Host: hp.Score for hp in reply}

    def preempt(self, pod: bytes, victims: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """Candidate node to victim UIDs, as offered; the reply keeps some of them."""
        self.calls["preempt"] += 1
        body = preempt_body(pod, victims)
        reply = _preempt_reply.decode(_ok(self.verbs.preempt(body)))
        out = reply.NodeNameToMetaVictims or {}
        return {node: [p.UID for p in mv.Pods] for node, mv in out.items()}


def _ok(reply: Reply) -> bytes:
    """The body of a decided call; a request the verbs could not read is a simulator bug."""
    if reply.status != 200:
        raise ExtenderReplyError(f"HTTP {reply.status}: {reply.body.decode(errors='replace')}")
    return reply.body

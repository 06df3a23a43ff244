"""The snapshot store: the one place where background updates meet the request path.

Sources and the policy loader hand their parts to the store; the store assembles an immutable
:class:`State` (snapshot + policy) and swaps it in with one attribute assignment. A request
handler reads ``store.current`` once and works on that object only, so a swap in the middle of a
request can never give it half of one snapshot and half of another.

Everything here runs on the event loop thread; none of it awaits.

The store also keeps each just-placed pod's **baseline**: the samples its node showed when the
pod was first seen bound (before its usage could reach them). The snapshot uses it as evidence:
whatever the node's sample has risen since is already in it (``core.unseen_usage``).

Per-pod usage (:meth:`SnapshotStore.set_pod_usage`) and recent departures (from
:meth:`SnapshotStore.set_cluster`) go into the snapshot too. The store remembers each departed
pod's last measured usage (from the table current when the departure arrived), since the next
per-pod refresh no longer has its row but its node's sample may still show it for a while.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from extender.core.model import Baseline, NodeInfo, PlacedPod, Sample, Snapshot, build_snapshot
from extender.core.podusage import Departure, PodUsage, empty_pod_usage
from extender.core.rules import Headroom
from extender.policy import LoadedPolicy
from extender.wire.names import NameTable


@dataclass(frozen=True, slots=True)
class State:
    snapshot: Snapshot
    policy: LoadedPolicy
    names: NameTable
    """The snapshot's node names as reply fragments (rebuilt only when the names change)."""


class SnapshotStore:
    def __init__(self, policy: LoadedPolicy, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._policy = policy
        self._nodes: Sequence[NodeInfo] = ()
        self._samples: Mapping[str, Mapping[str, Sample]] = {}
        self._placements: Sequence[PlacedPod] = ()
        self._nodes_from_cluster = False
        self._source_ok_at: float | None = None
        self._names: NameTable | None = None
        self._baselines: dict[str, Baseline] = {}
        """Pod UID to its node's (cpu, memory) samples when the pod was first seen bound."""
        self._pod_usage: PodUsage = empty_pod_usage()
        self._pod_usage_ok_at: float | None = None
        self._departures: Sequence[Departure] = ()
        self._departed_measured: dict[str, tuple[float, float]] = {}
        """Departed pod UID to its last measured (cores, bytes), while it is a departure."""
        self.current: State = self._build()

    def _build(self) -> State:
        rules = self._policy.rules
        previous = getattr(self, "current", None)
        snap = build_snapshot(
            self._nodes,
            self._samples,
            self._placements,
            signals=rules.signals,
            source_ok_at=self._source_ok_at,
            window_s=rules.estimation.window_s,
            now=self._clock(),
            lag_s=rules.estimation.lag_s,
            baselines=self._baselines,
            pod_usage=self._pod_usage,
            pod_usage_ok_at=self._pod_usage_ok_at,
            departures=self._departures,
            departed_measured=self._departed_measured,
            max_age_s=rules.max_age_s,
            headroom_modes=tuple(
                t.headroom
                for t in (*rules.tiers, rules.default_tier)
                if t.headroom is not Headroom.ALL
            ),
            siblings=rules.estimation.siblings,
            previous=None if previous is None else previous.snapshot.pods,
            reuse=None if previous is None else previous.snapshot,
        )
        self._names = NameTable.build(snap.names, self._names)
        return State(snapshot=snap, policy=self._policy, names=self._names)

    def _swap(self) -> None:
        self.current = self._build()

    @property
    def policy(self) -> LoadedPolicy:
        return self._policy

    def set_policy(self, policy: LoadedPolicy) -> None:
        self._policy = policy
        self._swap()

    def set_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        self._nodes = tuple(nodes)
        self._swap()

    def set_samples(self, samples: Mapping[str, Mapping[str, Sample]], ok_at: float) -> None:
        """A successful refresh of the live source, observed as of ``ok_at``."""
        self._samples = samples
        self._source_ok_at = ok_at
        self._stamp_baselines()
        self._swap()

    def set_static(
        self, nodes: Sequence[NodeInfo], samples: Mapping[str, Mapping[str, Sample]], ok_at: float
    ) -> None:
        """Nodes and samples from one read of the static source, in one swap. Once the cluster
        cache publishes, its nodes are the truth and the file only supplies samples."""
        if not self._nodes_from_cluster:
            self._nodes = tuple(nodes)
        self._samples = samples
        self._source_ok_at = ok_at
        self._swap()

    def set_placements(self, placements: Sequence[PlacedPod]) -> None:
        self._placements = tuple(placements)
        self._stamp_baselines()
        self._swap()

    def _stamp_baselines(self) -> None:
        """Record the node's current samples for each newly seen placed pod; forget pods that
        are no longer placed. A pod whose node has no sample yet is stamped at the first one
        (later is the safe side: a later baseline can only hide less)."""
        keep: dict[str, Baseline] = {}
        old = self._baselines
        for pod in self._placements:
            if not pod.uid:
                continue
            got = old.get(pod.uid)
            if got is None:
                per_signal = self._samples.get(pod.node, {})
                cpu, mem = per_signal.get("cpu"), per_signal.get("memory")
                if cpu is None and mem is None:
                    continue
                got = (
                    math.nan if cpu is None else cpu.value,
                    math.nan if mem is None else mem.value,
                )
            keep[pod.uid] = got
        self._baselines = keep

    def _remember_departed(self) -> None:
        """Keep the measured usage of each departure while it is one: taken from the current
        table when the departure first arrives (the next refresh drops its row)."""
        table = self.current.snapshot.pods
        keep: dict[str, tuple[float, float]] = {}
        for dep in self._departures:
            got = self._departed_measured.get(dep.uid)
            if got is None and table is not None:
                got = table.measured(dep.uid)
            if got is not None:
                keep[dep.uid] = got
        self._departed_measured = keep

    def set_pod_usage(self, usage: PodUsage, ok_at: float) -> None:
        """A successful refresh of a per-pod source (rows already matched to the cluster cache),
        observed as of ``ok_at``. An empty table means "no per-pod data": every decision is then
        exactly the node-level one."""
        self._pod_usage = usage
        self._pod_usage_ok_at = ok_at
        self._swap()

    def set_cluster(
        self,
        nodes: Sequence[NodeInfo],
        placements: Sequence[PlacedPod],
        *,
        departures: Sequence[Departure] = (),
    ) -> None:
        """Nodes (request totals filled), recently bound pods and recently departed pods from
        the cluster cache, in one swap: a pod event changes them together, and each swap
        rebuilds the snapshot."""
        self._nodes_from_cluster = True
        self._nodes = tuple(nodes)
        self._placements = tuple(placements)
        self._departures = tuple(departures)
        self._remember_departed()
        self._stamp_baselines()
        self._swap()

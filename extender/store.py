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

The cluster cache publishes on every pod event (at most every 100 ms while kube-scheduler binds
a backlog), each time with hundreds or thousands of recent pods and departures of which one or
two changed. So the store keeps the placed pods and departures as rows
(:class:`~extender.core.model.PlacedRows`, :class:`~extender.core.model.DepartedRows`) and its
baselines and remembered usages from one publication to the next, and works only on the entries
that came or went (:func:`~extender.core.model.align` pairs the old list with the new). The
snapshot is the one the plain lists and mappings give (a property test builds both).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from extender.core.model import (
    Baseline,
    DepartedRows,
    IndexArray,
    NodeInfo,
    PlacedPod,
    PlacedRows,
    Sample,
    Snapshot,
    align,
    build_snapshot,
    departed_rows,
    placed_rows,
)
from extender.core.pods import PodTable
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


def _base(table: PodTable | None) -> PodTable | None:
    """The table as indexed: one with departed pods taken out of its credits differs from it
    in those credits only (the rows, and what :meth:`PodTable.measured` says, are its)."""
    return table if table is None or table.base is None else table.base


class SnapshotStore:
    def __init__(self, policy: LoadedPolicy, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._policy = policy
        self._nodes: Sequence[NodeInfo] = ()
        self._samples: Mapping[str, Mapping[str, Sample]] = {}
        self._placements: tuple[PlacedPod, ...] = ()
        self._nodes_from_cluster = False
        self._source_ok_at: float | None = None
        self._names: NameTable | None = None
        self._baselines: dict[str, Baseline] = {}
        """Pod UID to its node's (cpu, memory) samples when the pod was first seen bound."""
        self._placed_uids: dict[str, int] = {}
        """Pod UID to how many placed pods carry it (one, unless a caller repeats a UID)."""
        self._repeated = 0
        """Placed pods beyond the first with the same UID: while any, the rule runs afresh."""
        self._unstamped: dict[str, str] = {}
        """Placed pods without a baseline (their node had no sample yet): UID to node."""
        self._samples_version = 0
        """Incremented whenever the samples change."""
        self._stamped_at = 0
        """The samples version the unstamped pods were last tried against."""
        self._placed_rows: PlacedRows = placed_rows((), None, {}, ())
        self._pod_usage: PodUsage = empty_pod_usage()
        self._pod_usage_ok_at: float | None = None
        self._departures: tuple[Departure, ...] = ()
        self._departed_measured: dict[str, tuple[float, float]] = {}
        """Departed pod UID to its last measured (cores, bytes), while it is a departure."""
        self._departed_uids: dict[str, int] = {}
        """Departed pod UID to how many departures carry it."""
        self._unmeasured: set[str] = set()
        """Departures without a remembered usage, by UID."""
        self._tables = 0
        """Incremented whenever a build gives the snapshot another per-pod table (a refresh,
        or new node names), so that nothing here holds an old table."""
        self._measured_at = -1
        """The table count the unmeasured departures were last looked up at."""
        self._departed_rows: DepartedRows = departed_rows((), None, {}, ())
        self.current: State = self._build()

    def _build(self) -> State:
        rules = self._policy.rules
        previous = getattr(self, "current", None)
        snap = build_snapshot(
            self._nodes,
            self._samples,
            self._placed_rows,
            signals=rules.signals,
            source_ok_at=self._source_ok_at,
            window_s=rules.estimation.window_s,
            now=self._clock(),
            lag_s=rules.estimation.lag_s,
            pod_usage=self._pod_usage,
            pod_usage_ok_at=self._pod_usage_ok_at,
            departures=self._departed_rows,
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
        if _base(snap.pods) is not _base(None if previous is None else previous.snapshot.pods):
            self._tables += 1
        # The rows' node columns for the next build, when the names changed (rarely: a node
        # came or went).
        self._placed_rows = self._placed_rows.located(snap.index, snap.names)
        self._departed_rows = self._departed_rows.located(snap.index, snap.names)
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
        self._samples_version += 1
        self._source_ok_at = ok_at
        self._place(self._placements)
        self._swap()

    def set_static(
        self, nodes: Sequence[NodeInfo], samples: Mapping[str, Mapping[str, Sample]], ok_at: float
    ) -> None:
        """Nodes and samples from one read of the static source, in one swap. Once the cluster
        cache publishes, its nodes are the truth and the file only supplies samples."""
        if not self._nodes_from_cluster:
            self._nodes = tuple(nodes)
        self._samples = samples
        self._samples_version += 1
        self._source_ok_at = ok_at
        self._swap()

    def set_placements(self, placements: Sequence[PlacedPod]) -> None:
        self._place(tuple(placements))
        self._swap()

    # --- baselines ------------------------------------------------------------------------------

    def _place(self, placements: tuple[PlacedPod, ...]) -> None:
        """Take ``placements`` as the placed pods: what :meth:`_stamp_baselines` (the rule) does,
        at the cost of what changed. Stamp the pods newly seen, and those still without a
        baseline if the samples changed since they were last tried; forget the pods no longer
        placed; bring the rows up to date."""
        old = self._placed_rows.pods
        origin: IndexArray | None = None
        repeated = self._repeated
        if placements == old:  # by identity, in C, when the cache's pods are the same
            placements = old
        else:
            origin = align(old, placements)
            self._count_placed(old, placements, origin)
        self._placements = placements
        if self._repeated:
            self._stamp_baselines()
            return
        if repeated:  # no UID repeats any more: each unstamped pod's node is its own again
            self._unstamped = {
                p.uid: p.node for p in placements if p.uid and p.uid not in self._baselines
            }
        if origin is not None:
            for k in np.flatnonzero(origin < 0).tolist():
                pod = placements[k]
                if pod.uid and pod.uid not in self._baselines:
                    self._stamp(pod.uid, pod.node)
        restamped = False
        if self._unstamped and self._stamped_at != self._samples_version:
            for uid, node in list(self._unstamped.items()):
                restamped |= self._stamp(uid, node)
        self._stamped_at = self._samples_version
        if origin is None and not restamped:
            return
        snap = self.current.snapshot
        self._placed_rows = placed_rows(
            placements,
            self._baselines,
            snap.index,
            snap.names,
            previous=self._placed_rows,
            origin=np.arange(len(placements), dtype=np.intp) if origin is None else origin,
            recheck=restamped,
        )

    def _count_placed(
        self, old: tuple[PlacedPod, ...], new: tuple[PlacedPod, ...], origin: IndexArray
    ) -> None:
        """Count the UIDs of the pods that came (``origin`` -1) and went (old ones unpaired);
        forget the baseline of a UID no pod carries any more."""
        kept = np.zeros(len(old), dtype=bool)
        kept[origin[origin >= 0]] = True
        counts = self._placed_uids
        for k in np.flatnonzero(origin < 0).tolist():  # first: a pod replaced keeps its baseline
            uid = new[k].uid
            if uid:
                n = counts.get(uid, 0)
                counts[uid] = n + 1
                self._repeated += n > 0
        for k in np.flatnonzero(~kept).tolist():
            uid = old[k].uid
            if uid:
                n = counts[uid] - 1
                if n:
                    counts[uid] = n
                    self._repeated -= 1
                else:
                    del counts[uid]
                    self._baselines.pop(uid, None)
                    self._unstamped.pop(uid, None)

    def _stamp(self, uid: str, node: str) -> bool:
        """Stamp the pod's baseline from its node's current samples; False (and the pod left
        unstamped) when the node has none yet."""
        per_signal = self._samples.get(node, {})
        cpu, mem = per_signal.get("cpu"), per_signal.get("memory")
        if cpu is None and mem is None:
            self._unstamped[uid] = node
            return False
        self._baselines[uid] = (
            math.nan if cpu is None else cpu.value,
            math.nan if mem is None else mem.value,
        )
        self._unstamped.pop(uid, None)
        return True

    def _stamp_baselines(self) -> None:
        """Record the node's current samples for each newly seen placed pod; forget pods that
        are no longer placed. A pod whose node has no sample yet is stamped at the first one
        (later is the safe side: a later baseline can only hide less).

        The rule, over every placed pod: :meth:`_place` keeps to it incrementally, and comes
        here while some UID is repeated (a caller's list, never the cluster cache's), where
        the last of the pods newly seen with a UID gives its baseline."""
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
        self._unstamped = {p.uid: p.node for p in self._placements if p.uid and p.uid not in keep}
        self._stamped_at = self._samples_version
        snap = self.current.snapshot
        self._placed_rows = placed_rows(self._placements, keep, snap.index, snap.names)

    # --- departures -----------------------------------------------------------------------------

    def _depart(self, departures: tuple[Departure, ...]) -> None:
        """Keep the measured usage of each departure while it is one: taken from the current
        table when the departure first arrives (the next refresh drops its row), or from a later
        table for one that had none. Works on the departures that came and went (the rows too);
        the rest are looked up again only when the table changed."""
        table = self.current.snapshot.pods
        old = self._departed_rows.departures
        origin: IndexArray | None = None
        measured = self._departed_measured
        if departures == old:
            departures = old
        else:
            origin = align(old, departures)
            kept = np.zeros(len(old), dtype=bool)
            kept[origin[origin >= 0]] = True
            counts = self._departed_uids
            came = [departures[k].uid for k in np.flatnonzero(origin < 0).tolist()]
            for uid in came:  # first: a departure replaced keeps its usage
                counts[uid] = counts.get(uid, 0) + 1
            for k in np.flatnonzero(~kept).tolist():
                uid = old[k].uid
                n = counts[uid] - 1
                if n:
                    counts[uid] = n
                else:
                    del counts[uid]
                    measured.pop(uid, None)
                    self._unmeasured.discard(uid)
            for uid in came:
                if uid not in measured:
                    got = None if table is None else table.measured(uid)
                    if got is None:
                        self._unmeasured.add(uid)
                    else:
                        measured[uid] = got
        self._departures = departures
        found = False
        if table is not None and self._unmeasured and self._measured_at != self._tables:
            for uid in list(self._unmeasured):
                got = table.measured(uid)
                if got is not None:
                    measured[uid] = got
                    self._unmeasured.discard(uid)
                    found = True
        self._measured_at = self._tables
        if origin is None and not found:
            return
        snap = self.current.snapshot
        self._departed_rows = departed_rows(
            departures,
            measured,
            snap.index,
            snap.names,
            previous=self._departed_rows,
            origin=np.arange(len(departures), dtype=np.intp) if origin is None else origin,
            recheck=found,
        )

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
        self._depart(tuple(departures))
        self._place(tuple(placements))
        self._swap()

"""Reply invariants over generated pods, nodes and samples (hypothesis)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core import (
    Candidates,
    ContainerResources,
    NodeInfo,
    OnStale,
    PlacedPod,
    PodInfo,
    Sample,
    Strategy,
    assess_all,
    build_snapshot,
    evaluate,
)
from extender.core.model import unseen_usage, unseen_usage_by_node
from extender.wire import FilterArgs, encode_filter, encode_priorities
from extender.wire.names import NameTable, names_filter_reply, names_priorities_reply
from tests.builders import NOW, rules, tier

names = st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=6)
ratio = st.floats(min_value=0, max_value=1.5, allow_nan=False)
maybe_ratio = st.none() | ratio
quantity = st.none() | st.floats(min_value=0, max_value=64, allow_nan=False)


@st.composite
def scenarios(draw):
    known = draw(st.lists(names, max_size=12, unique=True))
    nodes = [
        NodeInfo(
            n,
            draw(st.none() | st.floats(min_value=0, max_value=64)),
            draw(st.none() | st.floats(min_value=0, max_value=2**36)),
            draw(quantity),
            draw(quantity),
        )
        for n in known
    ]
    samples = {
        n: {
            sig: Sample(v, NOW - draw(st.floats(min_value=-100, max_value=300)))
            for sig in ("cpu", "memory")
            if (v := draw(maybe_ratio)) is not None
        }
        for n in known
    }
    placements = [
        PlacedPod(draw(st.sampled_from(known)), draw(ratio), draw(ratio) * 2**30, NOW - 10)
        for _ in range(draw(st.integers(0, 5)))
        if known
    ]
    snap = build_snapshot(
        nodes,
        samples,
        placements,
        signals=("cpu", "memory"),
        source_ok_at=draw(st.sampled_from([None, NOW, NOW - 30, NOW - 3600])),
        window_s=90,
        now=NOW,
    )
    # candidates: known names, unknown names, in any order, no duplicates
    pick = (st.sampled_from(known) | names) if known else names
    candidates = draw(st.lists(pick, unique=True, max_size=15))
    t = tier(
        "x",
        ceilings=draw(st.dictionaries(st.sampled_from(["cpu", "memory"]), ratio)),
        strategy=draw(st.sampled_from(list(Strategy))),
        weights=draw(
            st.dictionaries(st.sampled_from(["cpu", "memory"]), st.floats(0.1, 5), min_size=1)
        ),
        on_stale=draw(st.sampled_from(list(OnStale))),
        target=draw(st.floats(0.05, 0.95)),
        floor_keep=draw(st.integers(0, 3)),
        observe=draw(st.booleans()),
    )
    pod = PodInfo(
        "ns",
        "p",
        priority=draw(st.integers(-10, 10**9)),
        containers=tuple(
            ContainerResources(draw(quantity), draw(quantity), draw(quantity), draw(quantity))
            for _ in range(draw(st.integers(0, 3)))
        ),
    )
    return pod, snap, candidates, rules(t)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_reply_invariants(scenario):
    pod, snap, candidates, r = scenario
    ev = evaluate(pod, Candidates(candidates), snap, r, NOW)
    args = FilterArgs(pod=pod, candidates=Candidates(candidates), full_nodes=None)
    reply = json.loads(encode_filter(args, ev))
    kept = reply["NodeNames"]
    failed = reply["FailedAndUnresolvableNodes"]
    # filter: kept names are a subset of the input, in input order; nothing both kept and failed;
    # every input node is either kept or failed
    assert set(kept) <= set(candidates)
    assert kept == [n for n in candidates if n in set(kept)]
    assert not set(kept) & set(failed)
    assert set(kept) | set(failed) == set(candidates)
    assert reply["FailedNodes"] == {}
    assert reply["Error"] == ""
    # reasons are short and aggregate: no node names, no digits
    for reason in failed.values():
        assert not any(ch.isdigit() for ch in reason)
        assert len(reason) < 64
    # prioritize: every input node exactly once, integer scores 0..10
    prio = json.loads(encode_priorities(candidates, ev.scores.tolist()))
    assert [e["Host"] for e in prio] == candidates
    assert all(type(e["Score"]) is int and 0 <= e["Score"] <= 10 for e in prio)
    # the explanation agrees with the verdict
    for i in range(len(candidates)):
        x = ev.explain(i)
        assert x["kept"] == (candidates[i] in kept)
        assert x["score"] == prio[i]["Score"]
        json.dumps(x, allow_nan=False)  # explanations are valid JSON


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_fallback_never_rejects_for_load(scenario):
    """A source outage rejects nothing for load; only a tier that never guesses (onStale:
    reject) waits, every node marked stale."""
    pod, snap, candidates, r = scenario
    ev = evaluate(pod, Candidates(candidates), snap, r, NOW)
    if ev.fallback:
        assert not bool(np.any(ev.reason_codes > 0))
        if ev.observed:  # shadow mode answers every node, whatever the verdict
            assert bool(np.all(ev.keep))
        elif ev.tier is not None and ev.tier.on_stale is OnStale.REJECT and r.live_source:
            assert not bool(np.any(ev.keep)) or ev.floor_applied()
        else:
            assert bool(np.all(ev.keep))


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.floats(min_value=-200, max_value=400))
def test_a_decision_gathered_from_the_whole_snapshot_is_the_decision(scenario, later):
    """One pod kind assessed over every column once, then gathered per request (the verbs'
    cache), gives exactly what a per-request evaluation gives, explanations included, for any
    ``now`` the assessment says it is valid at."""
    pod, snap, candidates, r = scenario
    whole = assess_all(pod, snap, r, NOW)
    now = NOW + later
    direct = evaluate(pod, Candidates(candidates), snap, r, now)
    gathered = evaluate(pod, Candidates(candidates), snap, r, now, whole)
    if whole.valid_from <= now < whole.valid_until:
        for i in range(len(candidates)):
            assert json.dumps(gathered.explain(i)) == json.dumps(direct.explain(i))
        assert gathered.failed() == direct.failed()
        assert gathered.scores.tolist() == direct.scores.tolist()
    else:  # outside its span the assessment is not used
        assert gathered.fresh.tolist() == direct.fresh.tolist()


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.randoms(use_true_random=False))
def test_the_whole_snapshot_is_kept_node_by_node_and_gathers_the_same_rows(scenario, rng):
    """assess_all stores its float rows node by node (what gathers fastest); a gather from it
    is the gather from the same rows stored row by row."""
    pod, snap, _, r = scenario
    whole = assess_all(pod, snap, r, NOW)
    assert whole.floats.flags.f_contiguous
    rows = replace(whole, floats=np.ascontiguousarray(whole.floats))
    idx = np.array([rng.randrange(len(whole.cols)) for _ in range(rng.randrange(8))], np.intp)
    a, b = whole.take(idx, whole.cols[idx]), rows.take(idx, whole.cols[idx])
    assert a.floats.tobytes() == b.floats.tobytes()
    assert np.array_equal(a.ints, b.ints)
    assert np.array_equal(a.fresh, b.fresh)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_replies_from_prebuilt_fragments_are_the_bytes_msgspec_writes(scenario):
    """wire/names.py assembles names-only replies from per-node fragments; for any decision,
    known and unknown names alike, they are byte for byte what encoding the reply writes."""
    pod, snap, candidates, r = scenario
    candidates = [*candidates, 'q"uote', "ü", "back\\slash", "</script>"]  # unknown, escaped
    ev = evaluate(pod, Candidates(candidates), snap, r, NOW)
    table = NameTable.build(snap.names)
    args = FilterArgs(pod=pod, candidates=Candidates(candidates), full_nodes=None)
    assert names_filter_reply(ev, table) == encode_filter(args, ev)
    assert names_priorities_reply(ev.columns, candidates, ev.scores, table) == encode_priorities(
        candidates, ev.scores.tolist()
    )


# --- the snapshot's just-placed projection, all nodes at once -------------------------------------


@st.composite
def placed_pods(draw: st.DrawFn) -> tuple[list[tuple[int, float, float, float]], list[float]]:
    """Pods on up to 4 nodes (column, estimate, bind time, baseline or NaN), and per node its
    sample's time, value and allocatable (NaN allowed where the rule allows it)."""
    nodes = draw(st.integers(min_value=1, max_value=4))
    pods = draw(
        st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=nodes - 1),
                st.floats(min_value=0, max_value=4),
                st.sampled_from([900.0, 930.0, 960.0, 990.0, 1000.0]),  # ties on purpose
                st.one_of(st.just(math.nan), st.floats(min_value=0, max_value=1)),
            ),
            max_size=12,
        )
    )
    per_node = draw(
        st.lists(
            st.tuples(
                st.one_of(st.just(math.nan), st.floats(min_value=850, max_value=1200)),
                st.one_of(st.just(math.nan), st.floats(min_value=0, max_value=1.5)),
                st.one_of(st.just(math.nan), st.just(0.0), st.floats(min_value=0.5, max_value=64)),
            ),
            min_size=nodes,
            max_size=nodes,
        )
    )
    return pods, per_node  # type: ignore[return-value]


@given(placed_pods(), st.sampled_from([(30.0, 150.0), (0.0, 60.0), (60.0, 60.0)]))
@settings(max_examples=300, deadline=None)
def test_the_projection_of_every_node_at_once_is_the_per_node_rule(case, timing):
    """``unseen_usage_by_node`` (what a snapshot build runs) equals ``unseen_usage`` (the rule,
    one node at a time, pods in bind order) on every node."""
    pods, per_node = case
    lag, window = timing
    width = len(per_node) + 1
    times = np.array([t for t, _, _ in per_node] + [math.nan])
    sample = np.array([v for _, v, _ in per_node] + [math.nan])
    alloc = np.array([a for _, _, a in per_node] + [math.nan])
    got = unseen_usage_by_node(
        np.array([c for c, *_ in pods], dtype=np.intp),
        np.array([e for _, e, _, _ in pods], dtype=np.float64),
        np.array([t for _, _, t, _ in pods], dtype=np.float64),
        np.array([b for *_, b in pods], dtype=np.float64),
        times,
        sample,
        alloc,
        lag,
        window,
        width,
    )
    for col in range(len(per_node)):
        mine = sorted((p for p in pods if p[0] == col), key=lambda p: p[2])
        want = unseen_usage(
            [e for _, e, _, _ in mine],
            [t for _, _, t, _ in mine],
            [b for *_, b in mine],
            float(times[col]),
            float(sample[col]),
            float(alloc[col]),
            lag,
            window,
        )
        assert got[col] == pytest.approx(want, rel=1e-9, abs=1e-9), (col, mine)
    assert got[-1] == 0.0


def test_a_snapshot_built_on_its_predecessor_equals_one_built_afresh():
    """``reuse`` keeps the sample rows of the same samples mapping and the columns of the same
    node objects, and recomputes everything else: the result equals a fresh build."""
    nodes = [NodeInfo(f"n{i}", 4.0, 8e9, 1.0, 2e9) for i in range(6)]
    samples = {n.name: {"cpu": Sample(0.1 * i, NOW - 5)} for i, n in enumerate(nodes)}
    kw = {"signals": ("cpu", "memory"), "source_ok_at": NOW, "window_s": 150.0, "now": NOW}
    first = build_snapshot(nodes, samples, [], **kw)
    # A pod bound on n2 (its node object is new: its requests changed), the samples the same.
    later = [*nodes[:2], NodeInfo("n2", 4.0, 8e9, 1.5, 3e9), *nodes[3:]]
    placed = [PlacedPod("n2", 0.5, 1e9, NOW - 1, uid="p")]
    for samples_now in (samples, {**samples, "n5": {"cpu": Sample(0.9, NOW - 1)}}):
        reused = build_snapshot(later, samples_now, placed, reuse=first, **kw)
        fresh = build_snapshot(later, samples_now, placed, **kw)
        np.testing.assert_array_equal(reused.table, fresh.table)
        assert reused.names == fresh.names
    assert reused.values[0, 5] == pytest.approx(0.9)  # new samples: not the old rows
    assert build_snapshot(later, samples, placed, reuse=first, **kw).values is first.values


# --- publications: what the store keeps from one to the next changes nothing -------------------
#
# The cluster cache hands out the same PlacedPod and Departure objects while they stay; the
# store pairs each publication's lists with the last ones (core.model.align), keeps the rows of
# the pods that stayed, their baselines and remembered usages, and build_snapshot redoes only the
# node columns whose pods or nodes changed. Here random sequences of binds, changes, deletions,
# relists, node changes, sample refreshes, per-pod refreshes and the passing of time drive a
# ClusterCache and a SnapshotStore as the cluster source does. After every step the store's
# snapshot equals one built afresh from the plain lists, with the baselines and remembered usages
# the rules give (kept here the plain way, over every pod at every step), and its placed and
# departed arrays equal the per-pod rules written out as loops (the code before the rows).

import itertools  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402

from extender.cluster.cache import ClusterCache  # noqa: E402
from extender.cluster.decode import NodeRecord, PodRecord  # noqa: E402
from extender.core import Estimation  # noqa: E402
from extender.core.model import (  # noqa: E402
    Baseline,
    Snapshot,
    align,
    departed_usage,
    placed_rows,
)
from extender.core.pods import PodTable  # noqa: E402
from extender.core.podusage import Departure, PodUsage, empty_pod_usage  # noqa: E402
from extender.core.rules import Headroom  # noqa: E402
from extender.policy import load_text  # noqa: E402
from extender.store import SnapshotStore  # noqa: E402
from tests.builders import GiB  # noqa: E402
from tests.pod_builders import Row  # noqa: E402
from tests.pod_builders import table as usage_table  # noqa: E402

PUBLISH_POLICY = """
apiVersion: priority-extender.io/v1alpha1
kind: PriorityPolicy
metrics: {source: prometheus, maxAge: 60s}
estimation: {window: 150s, lag: 30s}
tiers: [{name: high, match: {minPriority: 1000}, headroom: preemptible}, {name: all}]
"""
HORIZON = 150.0
NODE_NAMES = ("n0", "n1", "n2", "n3")
POD_NODES = (*NODE_NAMES, "ghost")  # a pod on a node the cache has not listed


@dataclass
class _Rules:
    """The store's baselines and remembered usages kept by their plain rules, over every pod."""

    baselines: dict[str, Baseline] = field(default_factory=dict)
    measured: dict[str, tuple[float, float]] = field(default_factory=dict)

    def stamp(self, placements: list[PlacedPod], samples: dict) -> None:
        keep: dict[str, Baseline] = {}
        for pod in placements:
            if not pod.uid:
                continue
            got = self.baselines.get(pod.uid)
            if got is None:
                per = samples.get(pod.node, {})
                cpu, mem = per.get("cpu"), per.get("memory")
                if cpu is None and mem is None:
                    continue
                got = (
                    math.nan if cpu is None else cpu.value,
                    math.nan if mem is None else mem.value,
                )
            keep[pod.uid] = got
        self.baselines = keep

    def remember(self, departures: list[Departure], table: PodTable | None) -> None:
        keep: dict[str, tuple[float, float]] = {}
        for dep in departures:
            got = self.measured.get(dep.uid)
            if got is None and table is not None:
                got = table.measured(dep.uid)
            if got is not None:
                keep[dep.uid] = got
        self.measured = keep


def _placed_by_loops(snap: Snapshot, placements, baselines, lag_s, window_s) -> np.ndarray:
    """``placed`` the way it was computed pod by pod before the rows."""
    width = len(snap.names) + 1
    table = snap.pods if snap.pods is None or snap.pods.base is None else snap.pods.base
    out = np.zeros((2, width))
    located = [(snap.index.get(p.node), p) for p in placements]
    located = [(col, p) for col, p in located if col is not None]
    if not located:
        return out
    rows = {r: snap.signals.index(s) for r, s in enumerate(("cpu", "memory")) if s in snap.signals}
    for r in range(2):
        srow = rows.get(r)
        seen_from = np.full(width, np.nan) if srow is None else snap.sampled_at[srow]
        keep = [
            not (
                table is not None
                and p.uid
                and float(seen_from[col]) >= p.bound_at + lag_s
                and table.sampled_after(p.uid, r, p.bound_at + lag_s)
            )
            for col, p in located
        ]
        mine = [(col, p) for (col, p), k in zip(located, keep, strict=True) if k]
        base = [
            math.nan if not p.uid or (b := baselines.get(p.uid)) is None else b[r] for _, p in mine
        ]
        nan_row = np.full(width, np.nan)
        out[r] = unseen_usage_by_node(
            np.array([c for c, _ in mine], dtype=np.intp),
            np.array([(p.cpu, p.memory)[r] for _, p in mine], dtype=np.float64),
            np.array([p.bound_at for _, p in mine], dtype=np.float64),
            np.array(base, dtype=np.float64),
            nan_row if srow is None else snap.sampled_at[srow],
            nan_row if srow is None else snap.values[srow],
            snap.allocatable[r],
            lag_s,
            window_s,
            width,
        )
    out[:, -1] = 0.0
    return out


def _departed_by_loops(snap: Snapshot, departures, measured, lag_s, window_s) -> np.ndarray:
    """``departed`` as :func:`~extender.core.model.departed_usage` computes it, pod by pod."""
    width = len(snap.names) + 1
    table = snap.pods if snap.pods is None or snap.pods.base is None else snap.pods.base
    got = dict(measured)
    if table is not None:
        for dep in departures:
            m = table.measured(dep.uid)
            if m is not None:
                got[dep.uid] = m
    if not departures or not got:
        return np.zeros((2, width))
    rows = {r: snap.signals.index(s) for r, s in enumerate(("cpu", "memory")) if s in snap.signals}
    times = np.full((2, width), np.nan)
    for r, row in rows.items():
        times[r] = snap.sampled_at[row]
    return departed_usage(departures, snap.index, width, got, times, lag_s, window_s)


def _same(a: Snapshot, b: Snapshot) -> None:
    assert a.names == b.names
    assert dict(a.index) == dict(b.index)
    for name in ("values", "sampled_at", "allocatable", "requested", "placed", "departed"):
        x, y = getattr(a, name), getattr(b, name)
        assert np.array_equal(x, y, equal_nan=True), name
    assert (a.pods is None) == (b.pods is None)
    if a.pods is not None and b.pods is not None:
        assert a.pods.credits.keys() == b.pods.credits.keys()
        for mode, arr in a.pods.credits.items():
            assert np.array_equal(arr, b.pods.credits[mode], equal_nan=True), mode


class _Run:
    """A cluster cache publishing to a store, and the same inputs kept plainly beside them."""

    def __init__(self) -> None:
        self.now = NOW
        self.policy = load_text(PUBLISH_POLICY, "p.yaml")
        self.store = SnapshotStore(self.policy, clock=lambda: self.now)
        self.cache = ClusterCache(Estimation(), HORIZON, clock=lambda: self.now)
        self.rules = _Rules()
        self.nodes: list = []
        self.placements: list[PlacedPod] = []
        self.departures: list[Departure] = []
        self.samples: dict = {}
        self.usage: PodUsage = empty_pod_usage()
        self.usage_at: float | None = None
        self.records: dict[str, PodRecord] = {}  # every pod ever made, by uid
        self.seq = itertools.count()
        for name in NODE_NAMES[:3]:
            self.cache.put_node(name, NodeRecord(name, 4.0, 16.0 * GiB, {}, ()))
        self.cache.set_nodes_listed()
        self.cache.set_pods_listed()

    # what the store is handed, and what the rules make of it

    def publish(self) -> None:
        before = self.store.current.snapshot
        nodes = self.cache.node_infos()
        placements = self.cache.placements(self.now)
        departures = self.cache.departures(self.now)
        self.store.set_cluster(nodes, placements, departures=departures)
        self.nodes, self.placements, self.departures = nodes, placements, departures
        self.rules.remember(departures, before.pods)
        self.rules.stamp(placements, self.samples)
        self.check(before)

    def set_samples(self, samples: dict) -> None:
        before = self.store.current.snapshot
        self.store.set_samples(samples, self.now)
        self.samples = samples
        self.rules.stamp(self.placements, samples)
        self.check(before)

    def set_static(self, samples: dict) -> None:
        before = self.store.current.snapshot
        self.store.set_static([], samples, self.now)  # the cluster's nodes stay the truth
        self.samples = samples  # and no baseline is stamped until the next publication
        self.check(before)

    def set_usage(self, usage: PodUsage) -> None:
        before = self.store.current.snapshot
        self.store.set_pod_usage(usage, self.now)
        self.usage, self.usage_at = usage, self.now
        self.check(before)

    def set_placements(self, placements: list[PlacedPod]) -> None:
        before = self.store.current.snapshot
        self.store.set_placements(placements)
        self.placements = placements
        self.rules.stamp(placements, self.samples)
        self.check(before)

    def check(self, before: Snapshot) -> None:
        r = self.policy.rules
        est = r.estimation
        fresh = build_snapshot(
            self.nodes,
            self.samples,
            list(self.placements),
            signals=r.signals,
            source_ok_at=self.now if self.samples else None,
            window_s=est.window_s,
            now=self.now,
            lag_s=est.lag_s,
            baselines=dict(self.rules.baselines),
            pod_usage=self.usage,
            pod_usage_ok_at=self.usage_at,
            departures=list(self.departures),
            departed_measured=dict(self.rules.measured),
            max_age_s=r.max_age_s,
            headroom_modes=[t.headroom for t in r.tiers if t.headroom is not Headroom.ALL],
            siblings=est.siblings,
            previous=before.pods,  # the table is reused as the store reuses it
        )
        got = self.store.current.snapshot
        _same(got, fresh)
        loops = _placed_by_loops(
            fresh, self.placements, self.rules.baselines, est.lag_s, est.window_s
        )
        assert np.array_equal(got.placed, loops, equal_nan=True)
        assert got.departed is not None
        by_loops = _departed_by_loops(
            fresh, self.departures, self.rules.measured, est.lag_s, est.window_s
        )
        assert np.array_equal(got.departed, by_loops, equal_nan=True)

    # the cluster

    def bind(self, node: str, cpu: float, age: float, priority: int) -> None:
        uid = f"p{next(self.seq)}"
        rec = PodRecord(
            uid,
            "ns",
            uid,
            node,
            priority,
            cpu,
            cpu * GiB,
            int(cpu * 1000),
            int(cpu * GiB),
            float(int(self.now - age)),
            False,
        )
        self.records[uid] = rec
        self.cache.put_pod(uid, rec)

    def change(self, k: int, cpu: float) -> None:
        live = list(self.cache.pods)
        if live:
            uid = live[k % len(live)]
            old = self.cache.pods[uid]
            self.records[uid] = rec = PodRecord(
                uid,
                old.namespace,
                old.name,
                old.node,
                old.priority,
                cpu,
                old.memory,
                old.request_mcpu,
                old.request_memory,
                old.bound_at,
                old.daemonset,
            )
            self.cache.put_pod(uid, rec)

    def delete(self, k: int) -> None:
        live = list(self.cache.pods)
        if live:
            self.cache.put_pod(live[k % len(live)], None)

    def readd(self, k: int) -> None:
        gone = [uid for uid in self.records if uid not in self.cache.pods]
        if gone:
            uid = gone[k % len(gone)]
            self.cache.put_pod(uid, self.records[uid])

    def toggle_node(self, k: int, cpu: float) -> None:
        name = NODE_NAMES[k % len(NODE_NAMES)]
        if name in self.cache.nodes and cpu < 1.0:
            self.cache.put_node(name, None)
        else:
            self.cache.put_node(name, NodeRecord(name, cpu, 16.0 * GiB, {}, ()))


def _sample(draw: st.DrawFn, now: float) -> Sample | None:
    if draw(st.booleans()):
        return None
    return Sample(draw(st.floats(0.0, 1.2)), now - draw(st.sampled_from([0.0, 5.0, 40.0, 200.0])))


def _samples(draw: st.DrawFn, now: float) -> dict:
    out = {}
    for name in (*NODE_NAMES, "ghost", "sampled-only"):
        per = {sig: s for sig in ("cpu", "memory") if (s := _sample(draw, now)) is not None}
        if per or draw(st.booleans()):
            out[name] = per
    return out


def _usage(draw: st.DrawFn, run: _Run) -> PodUsage:
    uids = [*run.cache.pods, *(d.uid for d in run.cache.departures(run.now))]
    rows = []
    for uid in uids:
        if draw(st.booleans()):
            continue
        rec = run.records[uid]
        rows.append(
            Row(
                uid,
                rec.node,
                cpu=draw(st.sampled_from([math.nan, 0.0, 0.3, 1.5])),
                memory=draw(st.sampled_from([math.nan, 0.5 * GiB])),
                priority=rec.priority,
                req_cpu=rec.request_mcpu / 1000,
                req_memory=float(rec.request_memory),
                age=draw(st.sampled_from([0.0, 10.0, 100.0])),
            )
        )
    return usage_table(rows, now=run.now)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_publications_equal_fresh_builds_and_the_per_pod_rules(data):
    draw = data.draw
    run = _Run()
    run.publish()
    for _ in range(draw(st.integers(1, 40))):
        op = draw(
            st.sampled_from(
                [
                    "bind",
                    "bind",
                    "bind",
                    "change",
                    "delete",
                    "readd",
                    "tick",
                    "publish",
                    "publish",
                    "samples",
                    "static",
                    "usage",
                    "node",
                    "repeat",
                ]
            )
        )
        if op == "bind":
            run.bind(
                draw(st.sampled_from(POD_NODES)),
                draw(st.sampled_from([0.0, 0.25, 1.0])),
                draw(st.sampled_from([0.0, 0.0, 20.0, 100.0, 149.0, 400.0])),
                draw(st.sampled_from([0, 1000])),
            )
        elif op == "change":
            run.change(draw(st.integers(0, 50)), draw(st.sampled_from([0.1, 2.0])))
        elif op == "delete":
            run.delete(draw(st.integers(0, 50)))
        elif op == "readd":
            run.readd(draw(st.integers(0, 50)))
        elif op == "tick":
            run.now += draw(st.sampled_from([0.1, 1.0, 31.0, 90.0]))
        elif op == "samples":
            run.set_samples(_samples(draw, run.now))
        elif op == "static":
            run.set_static(_samples(draw, run.now))
        elif op == "usage":
            run.set_usage(_usage(draw, run))
        elif op == "node":
            run.toggle_node(draw(st.integers(0, 3)), draw(st.sampled_from([0.0, 4.0, 8.0])))
        elif op == "repeat" and run.placements:
            # A caller's list with a UID twice, on another node (never the cache's): the store
            # falls back to the rule over every pod, the later pod's baseline winning.
            twin = replace(run.placements[0], node=draw(st.sampled_from(POD_NODES)))
            run.set_placements([*run.placements, twin])
        else:
            run.publish()
    run.publish()


@st.composite
def _lists(draw: st.DrawFn) -> tuple[tuple[PlacedPod, ...], tuple[PlacedPod, ...], set[int]]:
    """A list and its next version as the cache makes it: some entries gone, some changed in
    place (same uid, new values), some new ones at the end. Also which old ones stayed."""
    n = draw(st.integers(0, 300))
    old = tuple(PlacedPod("a", 1.0, 1.0, float(i), f"u{i}") for i in range(n))
    fate = draw(
        st.lists(st.sampled_from(["stay"] * 8 + ["gone", "changed"]), min_size=n, max_size=n)
    )
    new: list[PlacedPod] = []
    stayed = set()
    for i, (p, f) in enumerate(zip(old, fate, strict=True)):
        if f == "stay":
            # the same object, or an equal one (a relist decodes the pod again)
            new.append(p if draw(st.booleans()) else replace(p))
            stayed.add(i)
        elif f == "changed":
            new.append(replace(p, cpu=2.0))
    new += [PlacedPod("b", 1.0, 1.0, 0.0, f"new{k}") for k in range(draw(st.integers(0, 5)))]
    return old, tuple(new), stayed


@settings(max_examples=300, deadline=None)
@given(_lists())
def test_align_pairs_every_entry_that_stayed_and_only_equal_ones(lists):
    old, new, stayed = lists
    origin = align(old, new)
    paired = origin[origin >= 0]
    assert np.all(np.diff(paired) > 0)  # in order, each old entry at most once
    for j, i in enumerate(origin.tolist()):
        if i >= 0:
            assert new[j] == old[i]
    assert set(paired.tolist()) == stayed  # as the cache changes lists: nothing left unpaired


def test_align_gives_up_on_unrelated_lists_and_stays_correct():
    old = tuple(PlacedPod("a", 1.0, 1.0, 0.0, f"u{i}") for i in range(1000))
    new = tuple(PlacedPod("a", 1.0, 1.0, 0.0, f"v{i}") for i in range(1000))
    assert (align(old, new) == -1).all()
    # an entry arriving in the middle leaves later ones unpaired (recomputed), never mispaired
    mid = (*old[:10], new[0], *old[10:])
    origin = align(old, mid)
    assert origin[:10].tolist() == list(range(10))
    assert all(mid[j] == old[i] for j, i in enumerate(origin.tolist()) if i >= 0)


@st.composite
def _node_changes(draw: st.DrawFn):
    n = draw(st.integers(1, 60))
    nodes = [NodeInfo(f"n{i}", 4.0, 8e9, float(i % 3), 1e9) for i in range(n)]
    later = list(nodes)
    for i in draw(st.lists(st.integers(0, n - 1), max_size=6)):
        how = draw(st.sampled_from(["requests", "equal copy", "allocatable", "rename"]))
        old = later[i]
        if how == "requests":
            later[i] = replace(old, requested_cpu=(old.requested_cpu or 0.0) + 0.5)
        elif how == "equal copy":
            later[i] = replace(old)
        elif how == "allocatable":
            later[i] = replace(old, allocatable_cpu=None)
        else:
            later[i] = replace(old, name=f"m{i}")
    if draw(st.booleans()):
        later.append(NodeInfo("extra", 2.0, 4e9, None, None))
    return nodes, later


@settings(max_examples=300, deadline=None)
@given(_node_changes(), st.booleans())
def test_a_build_on_its_predecessor_redoes_only_changed_nodes_and_equals_a_fresh_one(
    changes, same_samples
):
    nodes, later = changes
    samples = {n.name: {"cpu": Sample(0.1, NOW - 5)} for n in nodes[::2]}
    samples["sampled-only"] = {"memory": Sample(0.3, NOW - 5)}
    kw = {"signals": ("cpu", "memory"), "source_ok_at": NOW, "window_s": 150.0, "now": NOW}
    placed = [PlacedPod(n.name, 0.5, 1e9, NOW - 1, f"u{k}") for k, n in enumerate(later[::3])]
    first = build_snapshot(nodes, samples, placed, **kw)
    samples_now = samples if same_samples else dict(samples)
    reused = build_snapshot(later, samples_now, placed, reuse=first, **kw)
    fresh = build_snapshot(later, samples_now, placed, **kw)
    _same(reused, fresh)
    if same_samples and [n.name for n in later] == [n.name for n in nodes]:
        assert reused.index is first.index  # the same names: the same columns, not remade


def test_rows_made_from_earlier_ones_say_which_node_columns_changed():
    names = ("a", "b", "c")
    index = {n: i for i, n in enumerate(names)}
    p1, p2, p3 = (PlacedPod(n, 1.0, 1.0, NOW, f"u{i}") for i, n in enumerate(names))
    first = placed_rows([p1, p2], {"u0": (0.1, 0.2)}, index, names)
    assert first.since == -1
    assert np.isnan(first.baselines[:, 1]).all()  # u1 has none yet
    baselines = {"u0": (0.1, 0.2), "u1": (0.3, 0.4)}
    kept = placed_rows([p2, p3], baselines, index, names, previous=first)
    assert np.isnan(kept.baselines[:, 0]).all()  # a paired pod keeps its row as it was...
    later = placed_rows([p2, p3], baselines, index, names, previous=first, recheck=True)
    assert later.baselines[:, 0].tolist() == [0.3, 0.4]  # ...unless looked up again
    assert later.since == first.serial
    # a: p1 went; b: p2 got its baseline; c: p3 came
    assert sorted(set(later.touched.tolist())) == [0, 1, 2]
    same = placed_rows([p2, p3], baselines, index, names, previous=later)
    assert same.since == later.serial
    assert same.touched.size == 0
    moved = placed_rows([p2, p3], baselines, {"c": 0, "b": 1}, ("c", "b"), previous=same)
    assert moved.since == -1  # other names: nothing to redo by column, the build redoes all
    assert moved.cols.tolist() == [1, 0]

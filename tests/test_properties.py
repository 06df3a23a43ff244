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

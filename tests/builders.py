"""Test builders with sane defaults and a per-test tweak (descheduler's BuildTestPod style)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from extender.core import (
    ContainerResources,
    NodeInfo,
    OnStale,
    PlacedPod,
    PodInfo,
    Rules,
    Sample,
    Snapshot,
    Strategy,
    Tier,
    TierMatch,
    build_snapshot,
)

FIXTURES = Path(__file__).parent / "fixtures" / "kube-scheduler"
GiB = 2**30
NOW = 1_800_000_000.0


class Clock:
    """A settable clock for the code that takes one: ``clock.now`` is what it answers."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture_bytes(name))


def pod(
    name: str = "p",
    *,
    namespace: str = "default",
    priority: int = 0,
    cpu: float | None = 0.5,
    memory: float | None = 1 * GiB,
    apply: Callable[[PodInfo], PodInfo] | None = None,
) -> PodInfo:
    p = PodInfo(
        namespace=namespace,
        name=name,
        uid=f"uid-{name}",
        priority=priority,
        containers=(ContainerResources(cpu_request=cpu, memory_request=memory),),
    )
    return apply(p) if apply else p


def node(name: str, cpu: float = 4.0, memory: float = 16 * GiB, **kw: Any) -> NodeInfo:
    return NodeInfo(name, cpu, memory, kw.get("req_cpu"), kw.get("req_memory"))


def tier(
    name: str = "t",
    *,
    ceilings: Mapping[str, float] | None = None,
    strategy: Strategy = Strategy.LEAST_LOADED,
    weights: Mapping[str, float] | None = None,
    on_stale: OnStale = OnStale.ALLOW,
    target: float = 0.6,
    match: TierMatch | None = None,
    floor_keep: int = 0,
    observe: bool = False,
) -> Tier:
    return Tier(
        name=name,
        match=match or TierMatch(),
        ceilings=dict(ceilings or {}),
        strategy=strategy,
        weights=dict(weights if weights is not None else {"cpu": 1.0, "memory": 1.0}),
        target=target,
        on_stale=on_stale,
        floor_keep=floor_keep,
        observe=observe,
    )


def rules(*tiers: Tier, default: Tier | None = None, **kw: Any) -> Rules:
    ts = tiers or (tier(),)
    r = Rules(signals=("cpu", "memory"), tiers=tuple(ts), default_tier=default or ts[-1])
    return replace(r, **kw)


def snapshot(
    loads: Mapping[str, tuple[float | None, float | None]],
    *,
    now: float = NOW,
    age: float = 5.0,
    nodes: list[NodeInfo] | None = None,
    placements: list[PlacedPod] | None = None,
    source_ok_at: float | None = NOW,
    window_s: float = 90.0,
    lag_s: float = 0.0,
    baselines: Mapping[str, tuple[float, float]] | None = None,
) -> Snapshot:
    """Nodes named in ``loads`` with (cpu, memory) samples observed ``age`` seconds before now."""
    samples = {
        n: {
            sig: Sample(v, now - age)
            for sig, v in zip(("cpu", "memory"), vals, strict=True)
            if v is not None
        }
        for n, vals in loads.items()
    }
    return build_snapshot(
        nodes if nodes is not None else [node(n) for n in loads],
        samples,
        placements or [],
        signals=("cpu", "memory"),
        source_ok_at=source_ok_at,
        window_s=window_s,
        now=now,
        lag_s=lag_s,
        baselines=baselines,
    )


def samples_of(snap: Snapshot) -> dict[str, dict[str, Sample]]:
    """The snapshot's samples back as node -> signal -> Sample (missing ones left out)."""
    out: dict[str, dict[str, Sample]] = {}
    for col, name in enumerate(snap.names):
        per = {
            sig: Sample(float(snap.values[row, col]), float(snap.sampled_at[row, col]))
            for row, sig in enumerate(snap.signals)
            if not math.isnan(snap.values[row, col])
        }
        if per:
            out[name] = per
    return out

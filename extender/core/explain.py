"""Explanations and snapshot files: decisions and their inputs as plain JSON-ready data.

A snapshot file carries everything a decision reads, so a decision taken in production can be
reproduced offline: ``priority-extender explain --snapshot FILE --policy FILE --pod FILE``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from extender.core.decide import Evaluation, tier_for
from extender.core.model import PodInfo, Snapshot
from extender.core.rules import RESOURCES, Rules
from extender.errors import ConfigError

SNAPSHOT_KIND = "Snapshot"
SNAPSHOT_VERSION = "priority-extender.io/v1alpha1"


class SnapshotFileError(ConfigError, ValueError):
    """A snapshot document that cannot be read back; the message says where."""


#: Pods listed per tier behind a node's load: the few that make most of it, which is what an
#: operator asks ("who is using this node?"); the rest are summed.
TOP_PODS_PER_TIER = 5


def load_pods(
    snap: Snapshot, node: str, rules: Rules | None = None, top: int = TOP_PODS_PER_TIER
) -> list[dict[str, Any]] | None:
    """The pods behind ``node``'s load, by tier: per tier the count, the summed measured usage
    and the ``top`` pods by cpu. None without per-pod data. A pod's tier is the one its
    priority and its owner's namespace match (the per-pod table carries no labels or class
    names: a tier matched on those shows as the first tier its priority alone fits)."""
    table = snap.pods
    col = snap.index.get(node)
    if table is None or col is None:
        return None
    rows = np.flatnonzero((table.cols == col) & table.fresh.any(axis=0))
    usage = table.usage
    groups: dict[str, list[int]] = {}
    for row in rows.tolist():
        prio = int(usage.priority[row])
        if rules is None:
            name = f"priority {prio}"
        else:
            parts = usage.owners[row].split("/")
            namespace = parts[1] if len(parts) == 3 else ""
            name = tier_for(PodInfo(namespace=namespace, name="", priority=prio), rules).name
        groups.setdefault(name, []).append(row)
    out: list[dict[str, Any]] = []
    for name, members in groups.items():
        idx = np.array(members, dtype=np.intp)
        vals = np.where(table.fresh[:, idx], usage.usage[:, idx], 0.0)
        order = idx[np.argsort(-vals[0], kind="stable")][:top]
        out.append(
            {
                "tier": name,
                "pods": len(members),
                "usage": {r: _f(vals[k].sum()) for k, r in enumerate(RESOURCES)},
                "top": [
                    {
                        "uid": usage.uids[i],
                        "owner": usage.owners[i],
                        "priority": int(usage.priority[i]),
                        "usage": {
                            r: _f(usage.usage[k, i]) if table.fresh[k, i] else None
                            for k, r in enumerate(RESOURCES)
                        },
                        "requests": {r: _f(usage.requests[k, i]) for k, r in enumerate(RESOURCES)},
                    }
                    for i in order.tolist()
                ],
            }
        )
    out.sort(key=lambda g: -(g["usage"]["cpu"] or 0.0))
    return out


def summarize(
    evaluation: Evaluation,
    top: int | None = 5,
    snap: Snapshot | None = None,
    rules: Rules | None = None,
) -> dict[str, Any]:
    """The ranking of kept nodes, rejected nodes grouped by reason, and the inputs of the top
    ``top`` nodes (every node when None). With ``snap`` (and per-pod data in it), each detailed
    node also lists the pods behind its load by tier (:func:`load_pods`; tiers named by
    ``rules``)."""
    ev = evaluation
    kept = ev.kept()
    # Best score first; ties keep the request order (the scheduler breaks ties itself).
    order = sorted(kept, key=lambda i: -int(ev.scores[i]))
    rejected: dict[str, list[str]] = {}
    for node, reason in ev.failed().items():
        rejected.setdefault(reason, []).append(node)
    chosen = order if top is None else order[:top]
    return {
        "pod": f"{ev.pod.namespace}/{ev.pod.name}",
        "uid": ev.pod.uid,
        "priority": ev.pod.priority,
        "priorityClassName": ev.pod.priority_class_name,
        "tier": None if ev.tier is None else ev.tier.name,
        "bypass": ev.bypass,
        "fallback": ev.fallback,
        "podEstimate": dict(zip(RESOURCES, ev.estimate, strict=True)),
        "candidates": len(ev.names),
        "ranking": [{"node": ev.names[i], "score": int(ev.scores[i])} for i in order],
        "rejected": rejected,
        "floor": _floor_note(ev),
        "observed": _observed(ev) if ev.observed else None,
        "details": [_detail(ev, i, snap, rules) for i in chosen],
    }


def _detail(ev: Evaluation, i: int, snap: Snapshot | None, rules: Rules | None) -> dict[str, Any]:
    out = ev.explain(i)
    if snap is not None:
        pods = load_pods(snap, ev.names[i], rules)
        if pods is not None:
            out["loadPods"] = pods
    return out


def _floor_note(ev: Evaluation) -> dict[str, Any] | None:
    """Set when every candidate was rejected and the tier's floor kept some anyway."""
    if not ev.floor_applied():
        return None
    kept = [int(i) for i in np.flatnonzero(ev.floored)]
    return {
        "reason": "every candidate is rejected for this tier; its floor keeps the least over "
        "their ceilings",
        "kept": {ev.names[i]: ev.reason(i) for i in kept},
    }


def _observed(ev: Evaluation) -> dict[str, Any]:
    """Shadow mode: what the policy would have answered (every node was kept, scores neutral)."""
    would: dict[str, list[str]] = {}
    for i in np.flatnonzero(~ev.verdict_keep).tolist():
        would.setdefault(ev.reason(i) or "", []).append(ev.names[i])
    return {
        "note": "shadow mode (observe): this decision was recorded, not enforced",
        "wouldReject": would,
        "wouldScore": {ev.names[i]: int(ev.verdict_scores[i]) for i in range(len(ev.names))},
    }


def _f(x: float) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def snapshot_to_dict(snap: Snapshot, taken_at: float) -> dict[str, Any]:
    """The snapshot's per-node data as a document. The per-pod table is not written (its uses
    are: ``justPlaced`` after visibility, ``departed``); a decision replayed from the file
    leaves out no lower-priority usage (headroom) and estimates pods by their spec."""
    nodes: dict[str, Any] = {}
    departed = snap.departed if snap.departed is not None else snap.placed * 0.0
    for col, name in enumerate(snap.names):
        samples = {
            sig: {"value": _f(snap.values[row, col]), "timestamp": _f(snap.sampled_at[row, col])}
            for row, sig in enumerate(snap.signals)
            if not math.isnan(snap.values[row, col])
        }
        nodes[name] = {
            "allocatable": {r: _f(snap.allocatable[k, col]) for k, r in enumerate(RESOURCES)},
            "requested": {r: _f(snap.requested[k, col]) for k, r in enumerate(RESOURCES)},
            "justPlaced": {r: _f(snap.placed[k, col]) for k, r in enumerate(RESOURCES)},
            "departed": {r: _f(departed[k, col]) for k, r in enumerate(RESOURCES)},
            "samples": samples,
        }
    return {
        "apiVersion": SNAPSHOT_VERSION,
        "kind": SNAPSHOT_KIND,
        "takenAt": taken_at,
        "builtAt": snap.built_at,
        "sourceOkAt": snap.source_ok_at,
        "signals": list(snap.signals),
        "nodes": nodes,
    }


def _num(data: Mapping[str, Any], key: str, where: str) -> float:
    value = data.get(key)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SnapshotFileError(f"{where}.{key}: expected a number or null, got {value!r}")
    return float(value)


def _map(data: Any, where: str) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SnapshotFileError(f"{where}: expected a mapping")
    return data


def snapshot_from_dict(doc: Any) -> Snapshot:
    """Rebuild a snapshot written by :func:`snapshot_to_dict`."""
    doc = _map(doc, "(document)")
    if doc.get("kind") != SNAPSHOT_KIND:
        raise SnapshotFileError(f"kind: expected {SNAPSHOT_KIND!r}, got {doc.get('kind')!r}")
    signals = doc.get("signals")
    if not isinstance(signals, list) or not all(isinstance(s, str) for s in signals):
        raise SnapshotFileError("signals: expected a list of signal names")
    nodes = _map(doc.get("nodes"), "nodes")
    names = list(nodes)
    width = len(names) + 1
    values = np.full((len(signals), width), np.nan)
    sampled_at = np.full((len(signals), width), np.nan)
    keys = ("alloc", "req", "placed", "departed")
    arrays = {k: np.full((len(RESOURCES), width), np.nan) for k in keys}
    arrays["placed"][:] = 0.0
    arrays["departed"][:] = 0.0
    for col, name in enumerate(names):
        node = _map(nodes[name], f"nodes.{name}")
        for key, field in (
            ("alloc", "allocatable"),
            ("req", "requested"),
            ("placed", "justPlaced"),
            ("departed", "departed"),
        ):
            part = _map(node.get(field), f"nodes.{name}.{field}")
            for k, r in enumerate(RESOURCES):
                if r in part:
                    arrays[key][k, col] = _num(part, r, f"nodes.{name}.{field}")
        samples = _map(node.get("samples"), f"nodes.{name}.samples")
        for row, sig in enumerate(signals):
            if sig in samples:
                s = _map(samples[sig], f"nodes.{name}.samples.{sig}")
                values[row, col] = _num(s, "value", f"nodes.{name}.samples.{sig}")
                sampled_at[row, col] = _num(s, "timestamp", f"nodes.{name}.samples.{sig}")
    for arr in (values, sampled_at, *arrays.values()):
        arr.setflags(write=False)
    ok_at = doc.get("sourceOkAt")
    built = doc.get("builtAt")
    return Snapshot(
        names=tuple(names),
        index={n: i for i, n in enumerate(names)},
        signals=tuple(signals),
        values=values,
        sampled_at=sampled_at,
        allocatable=arrays["alloc"],
        requested=arrays["req"],
        placed=arrays["placed"],
        departed=arrays["departed"],
        source_ok_at=float(ok_at) if isinstance(ok_at, int | float) else None,
        built_at=float(built) if isinstance(built, int | float) else 0.0,
    )

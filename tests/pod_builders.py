"""Builders for per-pod usage tables (``core.podusage.PodUsage``) in tests."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from extender.core.podusage import PodUsage, owner_key
from tests.builders import NOW, GiB


@dataclass(frozen=True)
class Row:
    """One pod of a usage table: bound to ``node``, sampled ``age`` seconds before NOW."""

    uid: str
    node: str
    cpu: float = math.nan
    memory: float = math.nan
    priority: int = 0
    req_cpu: float = 0.0
    req_memory: float = 0.0
    age: float = 5.0
    owner: str = ""


def table(rows: Sequence[Row], now: float = NOW) -> PodUsage:
    n = len(rows)
    return PodUsage(
        uids=tuple(r.uid for r in rows),
        nodes=tuple(r.node for r in rows),
        priority=np.array([r.priority for r in rows], dtype=np.int64),
        requests=np.array([[r.req_cpu for r in rows], [r.req_memory for r in rows]]).reshape(2, n),
        usage=np.array([[r.cpu for r in rows], [r.memory for r in rows]]).reshape(2, n),
        sampled_at=np.array(
            [
                [now - r.age if math.isfinite(r.cpu) else math.nan for r in rows],
                [now - r.age if math.isfinite(r.memory) else math.nan for r in rows],
            ]
        ).reshape(2, n),
        owners=tuple(r.owner for r in rows),
    )


def rs(name: str, namespace: str = "default") -> str:
    """The owner key of a ReplicaSet."""
    return owner_key("ReplicaSet", namespace, name)


__all__ = ["GiB", "Row", "rs", "table"]

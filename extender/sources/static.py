"""The static metrics source: per-node samples from a YAML file, for demos, tests and laptops.

File format (see ``config/static-metrics.yaml``)::

    nodes:
      node-a: {cpu: 0.35, memory: 0.50, allocatable: {cpu: "4", memory: 16Gi},
               requested: {cpu: 1500m, memory: 6Gi}}

Signal values are utilization ratios. The file is read again every ``refreshInterval`` and its
values count as observed at that moment, so they never go stale while the file is readable. A
file that cannot be read or parsed keeps the last good data (which then ages like any sample)
and is logged once per distinct problem.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extender.core import NodeInfo, QuantityError, Sample, parse_quantity
from extender.errors import ConfigError
from extender.store import SnapshotStore

log = logging.getLogger(__name__)

#: Largest static file read (a 5,000-node file is about 600 KB).
MAX_STATIC_BYTES = 16 << 20


class StaticFileError(ConfigError, ValueError):
    """The static metrics file is unreadable or malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class StaticData:
    nodes: list[NodeInfo]
    values: dict[str, dict[str, float]]
    """Node name to signal name to value."""

    def samples(self, at: float) -> dict[str, dict[str, Sample]]:
        return {
            node: {sig: Sample(v, at) for sig, v in per.items()}
            for node, per in self.values.items()
        }


def _resources(node: str, section: str, data: Any) -> tuple[float | None, float | None]:
    if data is None:
        return None, None
    if not isinstance(data, dict):
        raise StaticFileError(f"nodes.{node}.{section}: expected a mapping of cpu and memory")
    out: list[float | None] = []
    for key in ("cpu", "memory"):
        raw = data.get(key)
        try:
            out.append(None if raw is None else parse_quantity(raw))
        except QuantityError as exc:
            raise StaticFileError(f"nodes.{node}.{section}.{key}: {exc}") from None
    return out[0], out[1]


def parse_static(text: str, signals: tuple[str, ...]) -> StaticData:
    """Parse a static metrics document; only the given signals are read as samples."""
    try:
        # libyaml's parser when PyYAML was built with it: ~10x faster on large files.
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise StaticFileError(f"invalid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), dict):
        raise StaticFileError("expected a mapping with a 'nodes' mapping of node name to samples")
    nodes: list[NodeInfo] = []
    values: dict[str, dict[str, float]] = {}
    for name, given in doc["nodes"].items():
        if not isinstance(name, str) or not name:
            raise StaticFileError(f"nodes: node names must be text, got {name!r}")
        entry = given or {}
        if not isinstance(entry, dict):
            raise StaticFileError(f"nodes.{name}: expected a mapping")
        alloc = _resources(name, "allocatable", entry.get("allocatable"))
        req = _resources(name, "requested", entry.get("requested"))
        nodes.append(NodeInfo(name, alloc[0], alloc[1], req[0], req[1]))
        per: dict[str, float] = {}
        for sig in signals:
            if sig not in entry or entry[sig] is None:
                continue
            v = entry[sig]
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or not math.isfinite(v)
                or v < 0
            ):
                raise StaticFileError(f"nodes.{name}.{sig}: expected a ratio >= 0, got {v!r}")
            per[sig] = float(v)
        values[name] = per
    return StaticData(nodes, values)


def read_static(path: Path, signals: tuple[str, ...]) -> StaticData:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_STATIC_BYTES + 1)
    except OSError as exc:
        raise StaticFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_STATIC_BYTES:
        raise StaticFileError(f"{path}: larger than {MAX_STATIC_BYTES} bytes")
    try:
        return parse_static(raw.decode("utf-8"), signals)
    except UnicodeDecodeError:
        raise StaticFileError(f"{path}: not UTF-8 text") from None
    except StaticFileError as exc:
        raise StaticFileError(f"{path}: {exc}") from None


class StaticSource:
    """Reads the static file into the store now and then every ``interval`` seconds."""

    def __init__(
        self,
        store: SnapshotStore,
        path: Path,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.path = path
        self.interval = interval
        self.clock = clock
        self.last_error: str | None = None
        self.reads_ok = 0

    async def refresh(self) -> bool:
        """Read once; True on success. Errors keep the previous data."""
        signals = self.store.policy.rules.signals
        try:
            data = await asyncio.to_thread(read_static, self.path, signals)
        except StaticFileError as exc:
            if str(exc) != self.last_error:
                log.error("static metrics not updated, keeping the last good data: %s", exc)
            self.last_error = str(exc)
            return False
        now = self.clock()
        self.store.set_static(data.nodes, data.samples(now), now)
        if self.last_error is not None:
            log.info("static metrics readable again: %s", self.path)
        self.last_error = None
        self.reads_ok += 1
        return True

    async def run(self) -> None:
        """Refresh every ``interval`` seconds, forever; the first read is the caller's."""
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()


def static_path(file: str, base_dir: Path | None) -> Path:
    p = Path(file)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p


__all__ = [
    "StaticData",
    "StaticFileError",
    "StaticSource",
    "parse_static",
    "read_static",
    "static_path",
]

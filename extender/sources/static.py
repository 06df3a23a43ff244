"""The static metrics source: per-node samples from a YAML file, for demos, tests and laptops.

File format (see ``config/static-metrics.yaml``)::

    nodes:
      node-a: {cpu: 0.35, memory: 0.50, allocatable: {cpu: "4", memory: 16Gi},
               requested: {cpu: 1500m, memory: 6Gi}}

Signal values are utilization ratios. The file is read again every ``refreshInterval`` and its
values count as observed at that moment, so they never go stale while the file is readable. A
file that cannot be read or parsed keeps the last good data (which then ages like any sample)
and is logged once per distinct problem.

Memory: PyYAML's ``yaml.load`` first composes the whole document into a node graph (an object
and two source marks per scalar) and only then builds Python values: about 60 bytes of graph
per byte of text, 950 MB of RSS for a 16 MiB file. :func:`load_yaml` builds the values straight
from libyaml's event stream instead, holding one event at a time, so the peak is the text and
the result (a few times the file's size); and the cap, :data:`MAX_STATIC_BYTES`, fits twice the
largest cluster Kubernetes supports.
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
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from extender.core import NodeInfo, QuantityError, Sample, parse_quantity
from extender.errors import ConfigError
from extender.sources.base import Produces, SourceContext
from extender.store import SnapshotStore

log = logging.getLogger(__name__)

#: Largest static file read: 4 MiB. A node's line is about 120 bytes, so this holds some 35,000
#: nodes, twice Kubernetes' supported maximum of 15,000 (a 5,000-node file is about 600 KB); the
#: peak memory of a read is a few times this (see the module docstring).
MAX_STATIC_BYTES = 4 << 20


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


_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_NON_SPECIFIC = (None, "!")


class _Frame:
    """A mapping or sequence being built, with its pending key and merges (``<<: *base``)."""

    __slots__ = ("has_key", "key", "merges", "value")

    def __init__(self, value: dict[Any, Any] | list[Any]) -> None:
        self.value = value
        self.key: Any = None
        self.has_key = False
        self.merges: list[dict[Any, Any]] = []


def _line(event: yaml.Event) -> str:
    mark = event.start_mark
    return f"line {mark.line + 1}" if mark is not None else "somewhere"


def load_yaml(text: str) -> Any:
    """One YAML document as ``yaml.safe_load`` reads it, built from the event stream.

    The same values (the safe schema's scalars, anchors and aliases, ``<<`` merge keys: earlier
    merged mappings win over later ones, the mapping's own keys over all), without the
    intermediate node graph. Raises ``yaml.YAMLError`` for bad syntax and
    :class:`StaticFileError` for what the safe schema refuses.
    """
    resolver = Resolver()
    constructor = SafeConstructor()
    scalar_tags = SafeConstructor.yaml_constructors
    anchors: dict[str, Any] = {}
    stack: list[_Frame] = []
    documents = 0
    root: Any = None

    def add(value: Any, event: yaml.Event, is_merge: bool = False) -> None:
        nonlocal root
        if not stack:
            root = value
            return
        frame = stack[-1]
        if isinstance(frame.value, list):
            frame.value.append(value)
        elif not frame.has_key:
            if is_merge:
                frame.key, frame.has_key = _MERGE, True
                return
            try:
                hash(value)
            except TypeError:
                raise StaticFileError(f"{_line(event)}: a mapping key must be text") from None
            frame.key, frame.has_key = value, True
        else:
            if frame.key is _MERGE:
                sources = value if isinstance(value, list) else [value]
                if not all(isinstance(m, dict) for m in sources):
                    raise StaticFileError(f"{_line(event)}: '<<' merges mappings only")
                frame.merges.extend(sources)
            else:
                frame.value[frame.key] = value
            frame.key, frame.has_key = None, False

    def end(event: yaml.Event) -> None:
        frame = stack.pop()
        if frame.merges and isinstance(frame.value, dict):
            own = dict(frame.value)
            frame.value.clear()
            for merged in frame.merges:
                for k, v in merged.items():
                    frame.value.setdefault(k, v)
            frame.value.update(own)
        add(frame.value, event)

    parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: ~10x faster
    for event in yaml.parse(text, Loader=parser):
        if isinstance(event, yaml.ScalarEvent):
            tag = event.tag
            if tag in _NON_SPECIFIC:
                tag = resolver.resolve(  # type: ignore[no-untyped-call]
                    yaml.ScalarNode, event.value, event.implicit
                )
            if tag == _MERGE:
                add(None, event, is_merge=True)
                continue
            build = scalar_tags.get(tag) or scalar_tags[None]
            node = yaml.ScalarNode(tag, event.value)  # errors get the line from the event
            try:
                value = build(constructor, node)
            except (yaml.YAMLError, ValueError, TypeError) as exc:
                raise StaticFileError(f"{_line(event)}: {exc}") from None
            if event.anchor is not None:
                anchors[event.anchor] = value
            add(value, event)
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            mapping = isinstance(event, yaml.MappingStartEvent)
            if event.tag not in (*_NON_SPECIFIC, _MAP if mapping else _SEQ):
                raise StaticFileError(f"{_line(event)}: unsupported tag {event.tag!r}")
            container: dict[Any, Any] | list[Any] = {} if mapping else []
            if event.anchor is not None:
                anchors[event.anchor] = container
            stack.append(_Frame(container))
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            end(event)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchors:
                raise StaticFileError(f"{_line(event)}: unknown alias {event.anchor!r}")
            add(anchors[event.anchor], event)
        elif isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise StaticFileError(f"{_line(event)}: expected a single document")
    return root


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
        doc = load_yaml(text)
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

    name = "static"
    produces: frozenset[Produces] = frozenset({"nodes"})

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

    async def start(self) -> None:
        """The first read (a file: no bound needed beyond its size cap)."""
        await self.refresh()

    async def run(self) -> None:
        """Refresh every ``interval`` seconds, forever; the first read is the caller's."""
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()

    async def close(self) -> None:
        """Nothing to release: each read opens and closes the file."""


def static_path(file: str, base_dir: Path | None) -> Path:
    """``file`` relative to the policy's folder unless absolute: the path resolution of
    :func:`extender.policy.loader.static_file`, which ``policy check`` and start-up use to say
    the file is missing before this source ever reads it."""
    p = Path(file)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p


def build(context: SourceContext) -> StaticSource:
    """The ``static`` source: the file the policy names, relative to the policy's folder."""
    settings = context.settings.static
    return StaticSource(
        context.store, static_path(settings.file, context.base_dir), settings.refreshInterval
    )


__all__ = [
    "StaticData",
    "StaticFileError",
    "StaticSource",
    "build",
    "load_yaml",
    "parse_static",
    "read_static",
    "static_path",
]

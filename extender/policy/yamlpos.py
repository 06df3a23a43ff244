"""YAML to plain data, keeping the line and column of every value, rejecting YAML 1.1 surprises.

PyYAML implements YAML 1.1, where ``on``, ``no`` and ``yes`` are booleans and ``1:20`` is a number.
A policy edited by hand should not change meaning on such accidents, so plain scalars are
resolved here with the YAML 1.2 core schema (only ``true``/``false`` are booleans), and the
YAML 1.1 boolean words are rejected outright with a message saying how to write them. Duplicate
keys, which PyYAML silently lets the last one win, are errors too.

Every document read by the extender (policies, scenarios, Pod manifests posted to ``/dry-run``)
goes through here, so the bounds that make hostile input harmless live here too, each refused as
an issue at its line and column while the document is composed, before anything is expanded:
at most :data:`MAX_ALIASES` aliases, at most :data:`MAX_VALUES` values once aliases are expanded
(the "billion laughs" bomb), no alias inside its own anchor, at most :data:`MAX_DEPTH` levels of
nesting; and files are read only when they are regular files (a FIFO or a device would block the
reading thread for good). :func:`manifest_json` is the entry point for a manifest in a request.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

import msgspec
import yaml

from extender.errors import ConfigError

Path = tuple[str | int, ...]

#: Upper bound on values built from one document, aliases expanded, so a few aliases of aliases
#: ("billion laughs": 475 bytes that expand to hundreds of millions of values) cannot exhaust
#: memory. A real policy has a few hundred values; a 1 MiB Pod manifest, the largest accepted,
#: has at most some tens of thousands.
MAX_VALUES = 100_000
#: Upper bound on aliases (``*name``) in one document. A hand-written policy or manifest reuses a
#: block a handful of times; a bomb needs dozens of aliases per level. Counting them is a cheap
#: second line behind :data:`MAX_VALUES`.
MAX_ALIASES = 100
#: Upper bound on nesting (mappings and sequences inside each other). A policy is 7 levels deep
#: and a Pod manifest with managedFields about 20; 64 leaves room for both while keeping the
#: recursive composition and validation far from Python's 1,000-frame recursion limit (a
#: policy nested 500 levels deep used to raise RecursionError, which no caller expected).
MAX_DEPTH = 64

_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n"}
_INT = re.compile(r"^[-+]?[0-9]+$|^0o[0-7]+$|^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL_FLOATS = {
    ".inf": math.inf,
    "+.inf": math.inf,
    "-.inf": -math.inf,
    ".nan": math.nan,
}


@dataclass(frozen=True, slots=True)
class Mark:
    line: int
    """1-based."""
    column: int
    """1-based."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a document: where, which field, what."""

    mark: Mark
    path: Path
    message: str

    def format(self, filename: str) -> str:
        where = f"{filename}:{self.mark.line}:{self.mark.column}"
        return f"{where}: {format_path(self.path)}: {self.message}"


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


class DocumentError(ConfigError):
    """A YAML document that cannot be used; ``issues`` lists every problem, already formatted
    as ``file:line:col: path: message``."""

    def __init__(self, filename: str, issues: Sequence[str]) -> None:
        self.filename = filename
        self.issues = list(issues)
        super().__init__("\n".join(self.issues))


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFile(ConfigError, OSError):
    """The path is a FIFO, device, socket or directory: refused without reading from it. An
    ``OSError`` too, so that callers handling unreadable files handle it with them."""


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_regular(path: str | PathLike[str], limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of a regular file (symlinks followed, as a ConfigMap needs).

    Anything else raises :class:`NotRegularFile` without a blocking open or read: ``stat`` is
    checked first, the file is opened with ``O_NONBLOCK`` (an open of a FIFO with no writer
    would otherwise wait forever) and checked again with ``fstat`` in case it was swapped in
    between. Other failures are the ``OSError`` of the system call.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(f"not a regular file ({_kind(mode)}); refused without reading it")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb", closefd=True) as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"not a regular file ({_kind(mode)}); refused without reading it")
        return fh.read(limit + 1)


def read_text(path: str | PathLike[str], limit: int, error: type[DocumentError]) -> str:
    """A document file's text; an unreadable, non-regular, oversized or non-UTF-8 file raises
    ``error``."""
    name = str(path)
    try:
        raw = read_regular(path, limit)
    except NotRegularFile as exc:
        raise error(name, [f"{name}:0:0: (file): {exc}"]) from exc
    except OSError as exc:
        raise error(name, [f"{name}:0:0: (file): cannot read: {exc.strerror or exc}"]) from exc
    if len(raw) > limit:
        raise error(name, [f"{name}:0:0: (file): larger than {limit} bytes"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(name, [f"{name}:0:0: (file): not UTF-8 text ({exc.reason})"]) from exc


class Document:
    """A parsed YAML document: its data, where each value starts, and the problems found."""

    def __init__(self) -> None:
        self.data: Any = None
        self.positions: dict[Path, Mark] = {}
        self.key_positions: dict[Path, Mark] = {}
        self.scalar_text: dict[Path, str] = {}
        """The source text of plain scalars that were read as numbers (for hints)."""
        self.issues: list[Issue] = []
        self._count = 0

    def mark_of(self, path: Path, *, key: bool = False) -> Mark:
        """Where ``path`` is (its key if asked and known), or its nearest ancestor that exists."""
        probe = path
        while True:
            if key and probe in self.key_positions:
                return self.key_positions[probe]
            if probe in self.positions:
                return self.positions[probe]
            if not probe:
                return Mark(1, 1)
            probe = probe[:-1]


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def _scalar(doc: Document, node: yaml.ScalarNode, path: Path) -> Any:
    text: str = node.value
    if node.style is not None:
        return text  # quoted or block scalar: always a string
    if node.tag not in (
        "tag:yaml.org,2002:str",
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:timestamp",
        "tag:yaml.org,2002:value",
        "tag:yaml.org,2002:merge",
    ):
        doc.issues.append(Issue(_mark(node), path, f"unsupported YAML tag {node.tag!r}"))
        return None
    lowered = text.lower()
    if text in ("", "~") or lowered == "null":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in _YAML11_BOOLS:
        doc.issues.append(
            Issue(
                _mark(node),
                path,
                f"{text!r} is a boolean in YAML 1.1 but a string in YAML 1.2: "
                f"write true or false, or quote it ('{text}') if you mean the text",
            )
        )
        return text
    if _INT.match(text):
        doc.scalar_text[path] = text
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text)
    if _FLOAT.match(text):
        doc.scalar_text[path] = text
        return float(text)
    if lowered in _SPECIAL_FLOATS:
        doc.scalar_text[path] = text
        return _SPECIAL_FLOATS[lowered]
    return text


def _build(doc: Document, node: yaml.Node, path: Path) -> Any:
    doc._count += 1
    if doc._count > MAX_VALUES:
        raise _TooLarge
    doc.positions[path] = _mark(node)
    if isinstance(node, yaml.ScalarNode):
        return _scalar(doc, node, path)
    if isinstance(node, yaml.SequenceNode):
        return [_build(doc, item, (*path, i)) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                doc.issues.append(Issue(_mark(key_node), path, "mapping keys must be plain text"))
                continue
            if key_node.tag == "tag:yaml.org,2002:merge":
                doc.issues.append(
                    Issue(_mark(key_node), path, "merge keys ('<<') are not supported here")
                )
                continue
            key = key_node.value
            if key_node.style is None and key.lower() in _YAML11_BOOLS:
                doc.issues.append(
                    Issue(
                        _mark(key_node),
                        (*path, key),
                        f"key {key!r} is a boolean in YAML 1.1: quote it if you mean the text",
                    )
                )
            child = (*path, key)
            if key in out:
                first = doc.key_positions[child]
                doc.issues.append(
                    Issue(
                        _mark(key_node),
                        child,
                        f"duplicate key {key!r} (first defined at line {first.line})",
                    )
                )
                continue
            doc.key_positions[child] = _mark(key_node)
            out[key] = _build(doc, value_node, child)
        return out
    raise AssertionError(f"unexpected YAML node {node!r}")  # pragma: no cover


class _TooLarge(Exception):
    pass


class _Refused(Exception):
    """A bound of this module was crossed while composing; ``mark`` and ``path`` say where."""

    def __init__(self, mark: Any, path: Path, message: str) -> None:
        super().__init__(message)
        self.mark = Mark(mark.line + 1, mark.column + 1) if mark is not None else Mark(1, 1)
        self.path = path
        self.message = message


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe composer, counting as it goes: depth, aliases, and values once aliases are
    expanded, so that a bound is refused at the node that crosses it, before anything is built.

    Composition itself never expands an alias (it returns the anchored node again); the size of
    every anchored node is recorded so that each alias adds what it would expand to.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._values = 0
        self._sizes: dict[int, int] = {}
        self._open: set[str] = set()
        self._path: list[str | int] = []

    def _refuse(self, event: yaml.Event, message: str) -> _Refused:
        return _Refused(event.start_mark, tuple(self._path), message)

    def _grow(self, count: int, event: yaml.Event, what: str) -> None:
        self._values += count
        if self._values > MAX_VALUES:
            raise self._refuse(event, f"{what} expands the document past {MAX_VALUES} values")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # PyYAML passes the key node as ``index`` for a mapping value, the position for a
        # sequence item, and None for a key or the root.
        part = index.value if isinstance(index, yaml.ScalarNode) else index
        pushed = isinstance(part, str | int)
        if pushed:
            self._path.append(part)
        try:
            return self._compose_counted(parent, index)
        finally:
            if pushed:
                self._path.pop()

    def _compose_counted(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise self._refuse(event, f"more than {MAX_ALIASES} aliases in one document")
            if event.anchor in self._open:
                raise self._refuse(
                    event, f"alias *{event.anchor} is inside its own anchor &{event.anchor}"
                )
            node = super().compose_node(parent, index)
            self._grow(self._sizes.get(id(node), 1), event, f"alias *{event.anchor}")
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._refuse(event, f"nested more than {MAX_DEPTH} levels deep")
        anchor = event.anchor
        before = self._values
        self._grow(1, event, "this value")
        if anchor is not None:
            self._open.add(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.discard(anchor)
        if anchor is not None:
            self._sizes[id(node)] = self._values - before
        return node


def _compose(text: str) -> yaml.Node | None:
    loader = _BoundedLoader(text)
    try:
        node: yaml.Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


def parse(text: str) -> Document:
    """Parse one YAML document; syntax errors, crossed bounds and the issues above end up in
    ``issues``."""
    doc = Document()
    try:
        root = _compose(text)
    except _Refused as exc:
        doc.issues.append(Issue(exc.mark, exc.path, exc.message))
        return doc
    except RecursionError:  # a belt: MAX_DEPTH is reached long before
        doc.issues.append(Issue(Mark(1, 1), (), "the document is nested too deeply"))
        return doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(mark.line + 1, mark.column + 1) if mark is not None else Mark(1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        doc.issues.append(Issue(where, (), f"YAML syntax error: {problem}"))
        return doc
    except yaml.YAMLError as exc:
        doc.issues.append(Issue(Mark(1, 1), (), f"YAML error: {exc}"))
        return doc
    if root is None:
        doc.issues.append(Issue(Mark(1, 1), (), "the document is empty"))
        return doc
    try:
        doc.data = _build(doc, root, ())
    except _TooLarge:
        doc.issues.append(
            Issue(Mark(1, 1), (), f"the document expands to more than {MAX_VALUES} values")
        )
    except RecursionError:
        doc.issues.append(Issue(Mark(1, 1), (), "the document is nested too deeply"))
    return doc


#: Largest Pod manifest accepted by :func:`manifest_json` (the admin ``/dry-run`` body): a real
#: Pod is a few KB, and managedFields with many containers stay well under 1 MiB.
MAX_MANIFEST_BYTES = 1 << 20


#: Issues reported for one manifest: enough to fix a real one, while a hostile body (a key
#: repeated 100,000 times) does not get an answer as large as itself.
MAX_MANIFEST_ISSUES = 20


class ManifestError(DocumentError):
    """A Pod manifest (YAML or JSON) that cannot be read; ``issues`` says where and why."""


def _offset_mark(body: bytes, offset: int) -> Mark:
    offset = max(0, min(offset, len(body)))
    line_start = body.rfind(b"\n", 0, offset) + 1
    return Mark(body.count(b"\n", 0, offset) + 1, offset - line_start + 1)


def _json_too_deep(body: bytes) -> Mark:
    """Where a JSON document first nests deeper than :data:`MAX_DEPTH` (error path only)."""
    depth, in_string, escaped = 0, False, False
    for offset, byte in enumerate(body):
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_DEPTH:
                return _offset_mark(body, offset)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return Mark(1, 1)


def _depth_exceeds(data: Any) -> bool:
    """Whether decoded JSON nests deeper than :data:`MAX_DEPTH`, walked without recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in value if isinstance(child, dict | list))
    return False


_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)")


def manifest_json(body: bytes, name: str = "manifest", limit: int = MAX_MANIFEST_BYTES) -> bytes:
    """A Pod manifest as posted to ``/dry-run`` (JSON, or YAML), as JSON bytes for
    ``extender.wire.decode_pod``; :class:`ManifestError` (``file:line:col: path: message``
    issues, ``name`` as the file) for anything that cannot be read safely.

    A body starting with ``{`` is JSON: decoded once in C to check its nesting, then passed on
    as it is. Anything else is YAML through :func:`parse`, so aliases, expansion and nesting
    are bounded before anything is built, and YAML 1.1 accidents are reported. Pure-Python YAML
    runs at a few MB/s: callers on an event loop should run this in a thread.
    """

    def fail(mark: Mark, message: str, path: Path = ()) -> ManifestError:
        return ManifestError(name, [Issue(mark, path, message).format(name)])

    if len(body) > limit:
        raise ManifestError(name, [f"{name}:0:0: (file): larger than {limit} bytes"])
    if body.lstrip()[:1] == b"{":
        try:
            data = msgspec.json.decode(body)
        except RecursionError:
            raise fail(_json_too_deep(body), f"nested more than {MAX_DEPTH} levels deep") from None
        except msgspec.DecodeError as exc:
            found = _BYTE_OFFSET.search(str(exc))
            mark = _offset_mark(body, int(found[1])) if found else _offset_mark(body, len(body))
            raise fail(mark, f"not valid JSON: {exc}") from None
        if _depth_exceeds(data):
            raise fail(_json_too_deep(body), f"nested more than {MAX_DEPTH} levels deep")
        return body
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(_offset_mark(body, exc.start), f"not UTF-8 text ({exc.reason})") from None
    doc = parse(text)
    if doc.issues:
        doc.issues.sort(key=lambda i: (i.mark.line, i.mark.column))
        shown = [i.format(name) for i in doc.issues[:MAX_MANIFEST_ISSUES]]
        if len(doc.issues) > MAX_MANIFEST_ISSUES:
            shown.append(f"{name}: ... and {len(doc.issues) - MAX_MANIFEST_ISSUES} more")
        raise ManifestError(name, shown)
    try:
        return msgspec.json.encode(doc.data)
    except (msgspec.EncodeError, OverflowError, TypeError) as exc:  # pragma: no cover - plain data
        raise fail(Mark(1, 1), f"cannot be re-encoded as JSON: {exc}") from None

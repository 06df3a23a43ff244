"""YAML to plain data, keeping the line and column of every value, rejecting YAML 1.1 surprises.

PyYAML implements YAML 1.1, where ``on``, ``no`` and ``yes`` are booleans and ``1:20`` is a number.
A policy edited by hand should not change meaning on such accidents, so plain scalars are
resolved here with the YAML 1.2 core schema (only ``true``/``false`` are booleans), and the
YAML 1.1 boolean words are rejected outright with a message saying how to write them. Duplicate
keys, which PyYAML silently lets the last one win, are errors too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

import yaml

from extender.errors import ConfigError

Path = tuple[str | int, ...]

#: Upper bound on values built from one document, so a few aliases of aliases ("billion laughs")
#: cannot exhaust memory. A real policy has a few hundred.
MAX_VALUES = 100_000

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


def read_text(path: str | PathLike[str], limit: int, error: type[DocumentError]) -> str:
    """A document file's text; an unreadable, oversized or non-UTF-8 file raises ``error``."""
    name = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
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


def parse(text: str) -> Document:
    """Parse one YAML document; syntax errors and the issues above end up in ``issues``."""
    doc = Document()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
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

"""Replies for names-only requests, assembled from JSON fragments built once per snapshot.

A filter or prioritize reply for 5,000 candidates is mostly node names. Encoding them per call
(a struct per node, then msgspec) cost about as much as the decision itself. Here each known
node's fragments are encoded once, when the snapshot's node list changes (:class:`NameTable`,
kept by the store), and a reply is a ``bytes.join`` of fragments picked by column. Names the
snapshot does not know (column -1) are encoded from the request's own text. The bytes are the
ones msgspec writes for the same reply (a test compares them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import msgspec
import numpy as np
import numpy.typing as npt

from extender.core import MAX_SCORE, Evaluation
from extender.core.model import IndexArray

_encode = msgspec.json.Encoder().encode

ObjectArray = npt.NDArray[np.object_]

#: ``5}`` ... : the tail of one HostPriority entry after ``"Score":``, by score.
_SCORE_TAIL: ObjectArray = np.array([f"{s}}}".encode() for s in range(MAX_SCORE + 1)], dtype=object)


@dataclass(frozen=True, slots=True)
class NameTable:
    """Per snapshot column: the JSON string of the node name, and ``{"Host":NAME,"Score":``.
    One extra last entry (None) stands for the unknown column."""

    names: tuple[str, ...]
    quoted: ObjectArray
    host: ObjectArray

    @staticmethod
    def build(names: tuple[str, ...], previous: NameTable | None = None) -> NameTable:
        """The table for ``names``; ``previous`` is reused when the names are the same."""
        if previous is not None and previous.names == names:
            return previous
        quoted = np.empty(len(names) + 1, dtype=object)
        quoted[:-1] = [_encode(n) for n in names]
        host = np.empty(len(names) + 1, dtype=object)
        host[:-1] = [b'{"Host":' + q + b',"Score":' for q in quoted[:-1]]
        return NameTable(names, quoted, host)


def _fragments(
    table: ObjectArray, cols: IndexArray, names: Sequence[str], make: bytes, suffix: bytes
) -> list[bytes]:
    """The table's fragments at ``cols``; unknown columns are made from the request's names."""
    out: list[bytes] = table[cols].tolist()
    unknown = np.flatnonzero(cols < 0)
    for i in unknown.tolist():
        out[i] = make + _encode(names[i]) + suffix
    return out


def kept_names_json(evaluation: Evaluation, table: NameTable) -> bytes:
    """The JSON array of the kept names, as the filter reply's NodeNames carries it."""
    cols, names = evaluation.columns, evaluation.names
    kept = np.flatnonzero(evaluation.keep)
    return b"[" + b",".join(_fragments(table.quoted, cols[kept], _at(names, kept), b"", b"")) + b"]"


def names_filter_reply(
    evaluation: Evaluation, table: NameTable, kept: bytes | None = None
) -> bytes:
    """ExtenderFilterResult with NodeNames: the kept names (``kept``, from
    :func:`kept_names_json`, if already built), every rejection unresolvable."""
    cols, names = evaluation.columns, evaluation.names
    out = [b'{"NodeNames":']
    out.append(kept if kept is not None else kept_names_json(evaluation, table))
    out.append(b',"Nodes":null,"FailedNodes":{},"FailedAndUnresolvableNodes":{')
    rejected = np.flatnonzero(~evaluation.keep)
    if len(rejected):
        quoted = _fragments(table.quoted, cols[rejected], _at(names, rejected), b"", b"")
        codes = evaluation.reason_codes[rejected]
        first = int(codes[0])
        if (codes == first).all():  # the common case: one reason (np.unique sorts: slower)
            text = b":" + _encode(evaluation.reason_text(first))
            out.append(b",".join(map(bytes.__add__, quoted, repeat(text))))
        else:
            unique, inverse = np.unique(codes, return_inverse=True)
            texts = np.array(
                [b":" + _encode(evaluation.reason_text(int(c))) for c in unique.tolist()],
                dtype=object,
            )
            out.append(b",".join(map(bytes.__add__, quoted, texts[inverse].tolist())))
    out.append(b'},"Error":""}')
    return b"".join(out)


def names_priorities_reply(
    cols: IndexArray, names: Sequence[str], scores: npt.NDArray[np.int64], table: NameTable
) -> bytes:
    """HostPriorityList ``[{"Host":name,"Score":n}]``, one entry per candidate, in order."""
    hosts = _fragments(table.host, cols, names, b'{"Host":', b',"Score":')
    tails: list[bytes] = _SCORE_TAIL[scores].tolist()
    return b"[" + b",".join(map(bytes.__add__, hosts, tails)) + b"]"


class _Picked(Sequence[str]):
    """A view of ``names`` at positions ``idx`` (only unknown names are ever read)."""

    __slots__ = ("idx", "names")

    def __init__(self, names: Sequence[str], idx: IndexArray) -> None:
        self.names = names
        self.idx = idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        return self.names[int(self.idx[i])]


def _at(names: Sequence[str], idx: IndexArray) -> Sequence[str]:
    return _Picked(names, idx)


__all__ = ["NameTable", "kept_names_json", "names_filter_reply", "names_priorities_reply"]

"""Replies for names-only requests, assembled from JSON fragments built once per snapshot.

A filter or prioritize reply for 5,000 candidates is mostly node names. Encoding them per call
(a struct per node, then msgspec) cost about as much as the decision itself. Here each known
node's fragments are encoded once, when the snapshot's node list changes (:class:`NameTable`,
kept by the store), and a reply is a ``bytes.join`` of fragments picked by column. Names the
snapshot does not know (column -1) are encoded from the request's own text. The bytes are the
ones msgspec writes for the same reply (a test compares them).

The table also finds the request's names in the snapshot straight from the request's bytes
(:meth:`NameTable.lookup_json`): a dictionary lookup of 5,000 freshly decoded names hashes each
string first, and was the largest single cost of a names-only call at that size. Those names
need not be decoded at all, then: :class:`JsonNames` keeps them as the request's bytes and reads
one out only where one is needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import msgspec
import numpy as np
import numpy.typing as npt

from extender.core import MAX_SCORE, Evaluation
from extender.core.model import IndexArray

_encode = msgspec.json.Encoder().encode

ObjectArray = npt.NDArray[np.object_]
WordArray = npt.NDArray[np.uint64]

#: ``5}`` ... : the tail of one HostPriority entry after ``"Score":``, by score.
_SCORE_TAIL: ObjectArray = np.array([f"{s}}}".encode() for s in range(MAX_SCORE + 1)], dtype=object)
#: ``5},`` ... : the same with the comma before the next entry.
_SCORE_TAIL_MORE: ObjectArray = np.array(
    [f"{s}}},".encode() for s in range(MAX_SCORE + 1)], dtype=object
)

#: Below this many names the dictionary lookup of the decoded names is faster: the table's
#: three dozen numpy calls cost 20-40 us together whatever the count, a dictionary lookup of a
#: fresh string 0.1-0.3 us. On a 15,000-node table the two cross between 200 and 300 names.
LOOKUP_JSON_MIN_NAMES = 256


Bounds = tuple[IndexArray, IndexArray]
"""Per name of a JSON array: the offset of its first byte, and its length in bytes."""

_decode_names = msgspec.json.Decoder(list[str]).decode


def _plain(raw: bytes) -> bool:
    """No escape and no byte past ASCII: each string's text is its bytes."""
    return b"\\" not in raw and raw.isascii()


def _bounds(raw: bytes) -> Bounds:
    """Where the strings of ``raw`` (a JSON array without escapes) are: between its quotes."""
    quotes = (np.frombuffer(raw, dtype=np.uint8) == _QUOTE).nonzero()[0]
    first = quotes[0::2] + 1
    return first, quotes[1::2] - first


class JsonNames(Sequence[str]):
    """A names-only candidate list kept as the JSON array it came in: ``NodeNames``.

    When the snapshot knows every name, nothing on the request path needs them as strings:
    their columns are found from the bytes (:meth:`NameTable.lookup_json`) and the replies are
    built from fragments per column. Decoding 5,000 names (a string object each) was about a
    seventh of a filter call at that size, and building the list of the kept ones for the
    prioritize call that follows as much again. So a name is read out where one is asked for
    (an unknown node's, for its reply entry), and all of them are decoded once, the first time
    something iterates (the dictionary lookup, explain). Equal to any sequence of the same
    names."""

    __slots__ = ("_bounds", "_decoded", "_size", "raw")

    def __init__(self, raw: bytes, size: int, bounds: Bounds | None = None) -> None:
        self.raw = raw
        """The array's bytes: ASCII, without escapes, ``size`` strings."""
        self._size = size
        self._bounds = bounds
        self._decoded: list[str] | None = None

    @staticmethod
    def parse(raw: bytes, min_count: int = 0) -> JsonNames | None:
        """``raw`` kept as its bytes when it is what kube-scheduler sends: a compact JSON array
        of at least ``min_count`` strings (Go's encoding/json writes no spaces), ASCII without
        escapes. None for anything else: decode it then.

        ``raw`` must be valid JSON, as a ``msgspec.Raw`` field is once its envelope decoded
        (msgspec checks the syntax of what it skips, control characters in strings
        included). Then the bytes outside the strings, counted, say whether it is an array
        of strings only: a flat array of ``n`` strings has ``n + 1`` (its brackets and the
        commas between), and any other value, or a space, adds at least one."""
        if raw[:1] != b"[" or raw.count(b'"') < 2 * min_count or not _plain(raw):
            return None
        first, length = _bounds(raw)
        count = len(first)
        outside = len(raw) - int(length.sum()) - 2 * count
        if outside != max(count + 1, 2):
            return None
        return JsonNames(raw, count, (first, length))

    @staticmethod
    def encoded(raw: bytes, size: int) -> JsonNames | None:
        """``raw`` kept as its bytes when it is the JSON array of ``size`` names as msgspec
        encodes them (a reply's) and has no escape or byte past ASCII; None otherwise."""
        return JsonNames(raw, size) if _plain(raw) else None

    def bounds(self) -> Bounds:
        """Where each name's bytes are in :attr:`raw`."""
        if self._bounds is None:
            self._bounds = _bounds(self.raw)
        return self._bounds

    def decoded(self) -> list[str]:
        """Every name, decoded once (two threads may both decode: the same list either way)."""
        if self._decoded is None:
            self._decoded = _decode_names(self.raw)
        return self._decoded

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice) or self._decoded is not None:
            return self.decoded()[i]
        first, length = self.bounds()
        start = int(first[i])
        return self.raw[start : start + int(length[i])].decode("ascii")

    def __iter__(self) -> Iterator[str]:
        return iter(self.decoded())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, JsonNames):
            return self.raw == other.raw or self.decoded() == other.decoded()
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return self.decoded() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"JsonNames({self._size} names)"


@dataclass(frozen=True, slots=True)
class NameTable:
    """Per snapshot column: the JSON string of the node name, and ``{"Host":NAME,"Score":``.
    One extra last entry (None) stands for the unknown column."""

    names: tuple[str, ...]
    quoted: ObjectArray
    host: ObjectArray
    _columns: list[_ColumnTable | None] = field(
        default_factory=list, init=False, compare=False, repr=False
    )
    """Empty until :meth:`lookup_json` first needs the table it probes; then that table, or
    None when the names do not allow one (built once: the names never change)."""

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

    def lookup_json(
        self, raw: bytes, names: Sequence[str], *, min_count: int = LOOKUP_JSON_MIN_NAMES
    ) -> IndexArray | None:
        """The snapshot column of each of ``names``, in order, -1 for a name the snapshot
        does not know: what :meth:`~extender.core.model.Snapshot.lookup` answers. None when
        this way cannot be sure (then look the decoded names up).

        ``raw`` is the names-only ``NodeNames`` JSON array exactly as sent, which holds
        ``names`` (as :class:`JsonNames`, or decoded by msgspec: the method relies on that, it
        finds the names by their quotes and does not check the JSON again). None for fewer
        than ``min_count`` names (the dictionary is faster there), for any backslash (an
        escape) or non-ASCII byte in ``raw``, and for a snapshot whose names the probe table
        cannot hold.
        """
        count = len(names)
        if count < min_count:
            return None
        if isinstance(names, JsonNames):
            bounds = names.bounds()  # ASCII without escapes: checked when it was made
        elif _plain(raw):
            bounds = _bounds(raw)
            if len(bounds[0]) != count:
                return None
        else:
            return None
        if not self._columns:  # two threads may both build it: the same table either way
            self._columns[:] = [_ColumnTable.build(self.names)]
        table = self._columns[0]
        return None if table is None else table.lookup(raw, bounds)


# --- finding names by their bytes ----------------------------------------------------------------
#
# Each name is read as 8-byte words (its bytes, zero past its end; names never hold a NUL, which
# JSON cannot carry unescaped) and hashed as a sum of a product per word (:func:`_hash`): zero
# words add nothing, so the hash of a name does not depend on how many words are read. The
# snapshot's names sit sorted by hash; a hash's top bits pick a bucket, whose first position is
# kept, and the few positions from there are compared at once. A hash is only a hint: the name
# found is compared with the one asked for, every word and where it ends, so the answer is
# exact (a snapshot where two names share a hash gets no table at all: the dictionary answers).

#: Words read of a name: 256 bytes hold the longest node name (a DNS-1123 subdomain: 253).
_MAX_WORDS = 32
#: Odd multipliers, fixed: the same names make the same table in every run.
_MULTIPLIERS: WordArray = np.random.default_rng(0x6E6F6465).integers(
    1 << 62, 1 << 63, size=(_MAX_WORDS, 1), dtype=np.uint64
) | np.uint64(1)
_HALF = np.uint64(32)
#: The byte offset of each word in a name.
_OFFSETS: IndexArray = 8 * np.arange(_MAX_WORDS, dtype=np.intp)[:, None]
#: ``_MASKS[j, n]``: the bits of word ``j`` that hold bytes of a name ``n`` bytes long.
_MASKS: WordArray = np.ascontiguousarray(
    (
        (np.arange(8 * _MAX_WORDS)[None, :] < np.arange(8 * _MAX_WORDS + 1)[:, None]).astype(
            np.uint8
        )
        * np.uint8(0xFF)
    )
    .view(np.uint64)
    .T
)
#: Probe positions per bucket beyond which the names are taken to defeat the hash (with one
#: name per bucket on average, the fullest bucket of 15,000 names holds about 8).
_MAX_PROBES = 24
#: Bytes that never appear unescaped inside a JSON string: control characters, '"' and '\'.
_ESCAPED = np.zeros(256, dtype=bool)
_ESCAPED[:0x20] = True
_ESCAPED[[ord('"'), ord("\\")]] = True
_QUOTE = ord('"')


def _words(
    data: bytes, first: IndexArray, length: IndexArray, width: int, longest: int
) -> WordArray:
    """(width, names): the names at ``data[first:first + length]`` as ``width`` words each,
    zero past each name's end (a longer name is cut; ``longest`` is ``length.max()``)."""
    padded = data + bytes(8 * width)
    # The word starting at each byte offset: unaligned reads of the padded bytes (read-only;
    # the constructor costs a microsecond, as_strided five).
    at_byte = np.ndarray((len(padded) - 7,), np.uint64, padded, 0, (1,))
    # take: indexing a slice with an index array (``a[:w, i]``) is several times slower.
    words: WordArray = at_byte.take(first + _OFFSETS[:width])
    cut = length if longest <= 8 * width else np.minimum(length, 8 * width)
    words &= _MASKS[:width].take(cut, axis=1)
    return words


def _hash(words: WordArray) -> WordArray:
    """Per name (a column of ``words``): sum(mix(word[j]) * _MULTIPLIERS[j]) mod 2**64.

    A product's low bits see only the word's low bits: without the mix (the high half folded
    into the low one, a bijection that keeps zero) names that differ only in the last bytes of
    their words would differ only in the hash's top bits."""
    hashes: WordArray = ((words ^ (words >> _HALF)) * _MULTIPLIERS[: len(words)]).sum(
        axis=0, dtype=np.uint64
    )
    return hashes


@dataclass(frozen=True, slots=True)
class _ColumnTable:
    """The snapshot's names as a hash table probed for many names with a few numpy calls."""

    width: int
    """Words per name: enough for the longest name."""
    shift: np.uint64
    """A hash shifted right by this is its bucket."""
    starts: IndexArray
    """Per bucket, the first position in ``hashes`` with a hash of that bucket."""
    probes: IndexArray
    """(probes, 1): 0, 1, ... up to the fullest bucket's size."""
    steps: npt.NDArray[np.uint8]
    """``probes`` as bytes (summing bytes is faster)."""
    hashes: WordArray
    """The names' hashes, sorted, then ``len(probes)`` zeros (never a hash probed there: only
    buckets past the first reach them)."""
    entries: WordArray
    """Per position in ``hashes``: the name's column, then its words (one row is one or two
    cache lines); column -1 and no words for the zeros at the end."""

    @staticmethod
    def build(names: Sequence[str]) -> _ColumnTable | None:
        """The table of ``names`` (None if the names defeat it); a duplicated name is found
        at its last column, as in the snapshot's index."""
        table = _ColumnTable._of(names, np.arange(len(names), dtype=np.intp))
        if table is None and len(set(names)) < len(names):  # two equal hashes: duplicates?
            index = {name: col for col, name in enumerate(names)}
            table = _ColumnTable._of(names, np.fromiter(index.values(), np.intp, len(index)))
        return table

    @staticmethod
    def _of(names: Sequence[str], cols: IndexArray) -> _ColumnTable | None:
        """The table of the names at ``cols``, which name each at most once; None when two
        have the same hash, or a name is too long."""
        picked = [names[col] for col in cols.tolist()] if len(cols) < len(names) else names
        joined = "".join(picked)
        if not joined.isascii():  # a name with other characters is never in an ASCII request
            ascii = [i for i, name in enumerate(picked) if name.isascii()]
            cols, picked = cols[ascii], [picked[i] for i in ascii]
            joined = "".join(picked)
        text = joined.encode("ascii")
        length = np.fromiter(map(len, picked), np.intp, len(picked))
        first = np.cumsum(length) - length
        escaped = np.zeros(len(text) + 1, dtype=np.intp)
        np.cumsum(_ESCAPED[np.frombuffer(text, dtype=np.uint8)], out=escaped[1:])
        # A name no unescaped JSON string can hold is left out: no lookup here can ask for it.
        plain = escaped[first + length] == escaped[first]
        if not plain.all():
            cols, first, length = cols[plain], first[plain], length[plain]
        longest = int(length.max()) if len(length) else 0
        if not len(cols) or longest > 8 * _MAX_WORDS:
            return None
        width = max(1, -(-longest // 8))
        words = _words(text, first, length, width, longest)
        hashes = _hash(words)
        order = np.argsort(hashes)
        hashes = hashes[order]
        if (hashes[1:] == hashes[:-1]).any():
            return None
        bits = max(1, (len(hashes) - 1).bit_length())
        shift = np.uint64(64 - bits)
        starts = np.searchsorted(hashes, np.arange(1 << bits, dtype=np.uint64) << shift)
        probes = int(np.diff(starts, append=len(hashes)).max())
        if probes > _MAX_PROBES:
            return None
        entries = np.zeros((len(hashes) + probes, 1 + width), dtype=np.uint64)
        entries[:, 0] = np.concatenate([cols[order], np.full(probes, -1, dtype=np.intp)]).view(
            np.uint64
        )
        entries[: len(hashes), 1:] = words[:, order].T
        return _ColumnTable(
            width=width,
            shift=shift,
            starts=starts.astype(np.intp),
            probes=np.arange(probes, dtype=np.intp)[:, None],
            steps=np.arange(probes, dtype=np.uint8)[:, None],
            hashes=np.concatenate([hashes, np.zeros(probes, dtype=np.uint64)]),
            entries=entries,
        )

    def lookup(self, raw: bytes, bounds: Bounds) -> IndexArray:
        """The columns of the names of ``raw`` (a JSON array of strings without escapes) that
        ``bounds`` finds."""
        first, length = bounds
        if not len(first):
            return np.empty(0, dtype=np.intp)
        longest = int(length.max())
        width = min(self.width, -(-longest // 8)) or 1
        words = _words(raw, first, length, width, longest)
        hashes = _hash(words)
        at = self.starts.take(hashes >> self.shift)
        # At most one position holds the hash: the hashes are distinct, and zero is not probed.
        hit = self.hashes.take(at + self.probes) == hashes
        at += (hit.view(np.uint8) * self.steps).sum(axis=0, dtype=np.uint8)
        found = self.entries.take(at, axis=0)  # the candidate there, compared in full:
        same = (words == found[:, 1 : 1 + width].T).all(axis=0)
        if width < self.width:  # the candidate's name ends within the words compared
            same &= found[:, 1 + width] == 0
        elif longest > 8 * width:  # a name longer than the longest known is not known
            same &= length <= 8 * width
        return np.where(same, found[:, 0].view(np.intp), -1)


# --- replies --------------------------------------------------------------------------------------


def _encoded_unknown(
    out: ObjectArray, cols: IndexArray, names: Sequence[str], make: bytes, suffix: bytes
) -> None:
    """``out[i]`` for each unknown column ``cols[i]``: made from the request's name."""
    if len(cols) and cols.min() < 0:
        for i in np.flatnonzero(cols < 0).tolist():
            out[i] = make + _encode(names[i]) + suffix


def _joined(table: ObjectArray, cols: IndexArray, names: Sequence[str], sep: bytes) -> bytes:
    """The table's fragments at ``cols`` joined by ``sep``; unknown columns are made from the
    request's names."""
    parts: list[bytes] = table[cols].tolist()
    if len(cols) and cols.min() < 0:
        for i in np.flatnonzero(cols < 0).tolist():
            parts[i] = _encode(names[i])
    return sep.join(parts)


def kept_names_json(
    evaluation: Evaluation, table: NameTable, kept: IndexArray | None = None
) -> bytes:
    """The JSON array of the kept names, as the filter reply's NodeNames carries it; ``kept``,
    their positions (``np.flatnonzero(evaluation.keep)``), when the caller has them already."""
    cols, names = evaluation.columns, evaluation.names
    if kept is None:
        kept = np.flatnonzero(evaluation.keep)
    return b"[" + _joined(table.quoted, cols[kept], _at(names, kept), b",") + b"]"


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
        codes = evaluation.reason_codes[rejected]
        first = int(codes[0])
        if (codes == first).all():  # the common case: one reason (np.unique sorts: slower)
            text = b":" + _encode(evaluation.reason_text(first))
            picked = _at(names, rejected)
            out.append(_joined(table.quoted, cols[rejected], picked, text + b","))
            out.append(text)
        else:
            unique, inverse = np.unique(codes, return_inverse=True)
            texts = np.array(
                [b":" + _encode(evaluation.reason_text(int(c))) + b"," for c in unique.tolist()],
                dtype=object,
            )
            # name, ":reason,", name, ":reason,", ...: the last comma is cut when joined.
            parts = np.empty((len(rejected), 2), dtype=object)
            parts[:, 0] = table.quoted[cols[rejected]]
            parts[:, 1] = texts[inverse]
            _encoded_unknown(parts[:, 0], cols[rejected], _at(names, rejected), b"", b"")
            out.append(b"".join(parts.ravel().tolist())[:-1])
    out.append(b'},"Error":""}')
    return b"".join(out)


def names_priorities_reply(
    cols: IndexArray, names: Sequence[str], scores: npt.NDArray[np.int64], table: NameTable
) -> bytes:
    """HostPriorityList ``[{"Host":name,"Score":n}]``, one entry per candidate, in order."""
    if not len(cols):
        return b"[]"
    # "[" host, "5},", host, "7},", ... host, "3}]": one join, no bytes made per entry.
    parts = np.empty((len(cols), 2), dtype=object)
    parts[:, 0] = table.host[cols]
    parts[:, 1] = _SCORE_TAIL_MORE[scores]
    _encoded_unknown(parts[:, 0], cols, names, b'{"Host":', b',"Score":')
    parts[0, 0] = b"[" + parts[0, 0]
    parts[-1, 1] = _SCORE_TAIL[scores[-1]] + b"]"
    return b"".join(parts.ravel().tolist())


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


__all__ = [
    "LOOKUP_JSON_MIN_NAMES",
    "NameTable",
    "kept_names_json",
    "names_filter_reply",
    "names_priorities_reply",
]

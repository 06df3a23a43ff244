"""NameTable: names found in the snapshot straight from a request's bytes, and replies built
from its fragments, checked against the dictionary lookup and msgspec's encoding."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core import MAX_SCORE, Candidates, empty_snapshot
from extender.wire import FilterArgs, decode_args, encode_filter_result, encode_priorities
from extender.wire import names as names_module
from extender.wire.names import (
    LOOKUP_JSON_MIN_NAMES,
    JsonNames,
    NameTable,
    kept_names_json,
    names_filter_reply,
    names_priorities_reply,
)

_decode_names = msgspec.json.Decoder(list[str]).decode


def dict_lookup(table: NameTable, names: list[str]) -> list[int]:
    """What Snapshot.lookup answers: the index a snapshot builds from its names (the last
    column of a duplicated name), -1 for a name it does not know."""
    index = {name: col for col, name in enumerate(table.names)}
    return [index.get(name, -1) for name in names]


def json_array(
    items: list[str], gaps: list[str] | None = None, ensure_ascii: bool = False
) -> bytes:
    """A JSON array of ``items``; ``gaps`` (JSON whitespace) around and between the tokens."""
    gaps = gaps or [""]
    gap = itertools.cycle(gaps)
    tokens = [json.dumps(item, ensure_ascii=ensure_ascii) for item in items]
    out = "[" + next(gap)
    for i, token in enumerate(tokens):
        if i:
            out += next(gap) + "," + next(gap)
        out += token
    return (out + next(gap) + "]").encode()


def lookup(table: NameTable, raw: bytes) -> list[int] | None:
    """lookup_json for every size, on the names as the codec holds them: decoded by msgspec,
    or kept as their bytes (JsonNames) when the array is what kube-scheduler sends. Both
    answer the same."""
    found = table.lookup_json(raw, _decode_names(raw), min_count=0)
    kept = JsonNames.parse(raw)
    if kept is not None:
        from_bytes = table.lookup_json(raw, kept, min_count=0)
        assert (from_bytes is None) == (found is None)
        assert found is None or from_bytes is None or from_bytes.tolist() == found.tolist()
    return None if found is None else found.tolist()


# --- lookup_json against the dictionary, property-tested -----------------------------------------

dns = "abcdefghijklmnopqrstuvwxyz0123456789-."
#: Node names: short ones from a few letters (so that prefixes and near misses are common),
#: and long ones up to the 253 characters a DNS-1123 subdomain allows.
node_names = (
    st.text(alphabet="ab.-9", min_size=1, max_size=18)
    | st.text(alphabet=dns, min_size=1, max_size=40)
    | st.text(alphabet="ab", min_size=200, max_size=253)
)
#: Names a snapshot may also hold (its names come from the API server or a static file):
#: the empty name, NUL, quotes, backslashes, control and non-ASCII characters, DEL.
odd_names = st.sampled_from(["", "a\x00", "a\x00\x00", 'a"b', "a\\b", "a\tb", "ü", "a\x7f"]) | (
    st.text(min_size=0, max_size=12)
)
whitespace = st.lists(st.sampled_from(["", " ", "  ", "\n", "\t", "\r\n", " \n\t"]), min_size=1)


@st.composite
def near(draw: st.DrawFn, known: list[str]) -> str:
    """A name close to a known one: a prefix, an extension, one character changed."""
    name = draw(st.sampled_from(known))
    cut = draw(st.integers(0, len(name)))
    how = draw(st.sampled_from(["prefix", "extend", "change"]))
    if how == "prefix":
        return name[:cut]
    if how == "extend":
        return name + draw(st.text(alphabet="ab.-9", min_size=1, max_size=9))
    if cut == len(name):
        return name + "a"
    return name[:cut] + ("b" if name[cut] == "a" else "a") + name[cut + 1 :]


@st.composite
def tables_and_requests(draw: st.DrawFn) -> tuple[NameTable, list[str]]:
    known = draw(st.lists(node_names, min_size=1, max_size=40))
    extra = draw(st.lists(odd_names, max_size=3))
    snapshot_names = draw(st.permutations(known + extra + draw(st.lists(st.sampled_from(known)))))
    table = NameTable.build(tuple(snapshot_names))
    pick = st.sampled_from(known) | near(known) | node_names
    request = draw(st.lists(pick, max_size=60))
    if request and draw(st.integers(0, 3)) == 0:  # sometimes one odd name (often escaped)
        request[draw(st.integers(0, len(request) - 1))] = draw(odd_names)
    return table, request


@settings(max_examples=500, deadline=None)
@given(tables_and_requests(), whitespace, st.booleans())
def test_lookup_json_is_the_dictionary_lookup(case, gaps, ensure_ascii):
    """For any snapshot names and any request (known names in any order, duplicates, names
    near known ones, unknown and odd names, whitespace between tokens), the columns found from
    the bytes are the dictionary's, or None exactly when the bytes hold an escape or a
    non-ASCII byte."""
    table, request = case
    raw = json_array(request, gaps, ensure_ascii)
    found = lookup(table, raw)
    if b"\\" in raw or not raw.isascii():
        assert found is None
    else:
        assert found == dict_lookup(table, request)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(node_names, min_size=1, max_size=300, unique=True), st.randoms(use_true_random=False)
)
def test_lookup_json_finds_every_known_name_in_any_order(known, rng):
    table = NameTable.build(tuple(known))
    request = rng.sample(known, rng.randint(0, len(known)))
    assert lookup(table, json_array(request)) == dict_lookup(table, request)


def test_a_table_like_a_cluster():
    """15,000 nodes; 5,000 names asked for in a rotated, shuffled order with a few missing and
    a few unknown, as kube-scheduler sends them; the request's own spacing (``", "``)."""
    snapshot_names = tuple(f"node-{i:05d}" for i in range(15_000))
    table = NameTable.build(snapshot_names)
    rng = np.random.default_rng(7)
    request = [snapshot_names[i] for i in rng.permutation(15_000)[:5_000].tolist()]
    request[::97] = [f"gone-{i}" for i in range(len(request[::97]))]
    raw = json.dumps(request).encode()
    found = table.lookup_json(raw, request)
    assert found is not None
    assert found.dtype == np.intp
    assert found.tolist() == dict_lookup(table, request)


def test_names_of_every_length_up_to_the_longest():
    snapshot_names = tuple("n" * i for i in range(1, 254))
    table = NameTable.build(snapshot_names)
    request = ["n" * i for i in range(0, 260)]  # "" and 254... are unknown
    assert lookup(table, json_array(request)) == dict_lookup(table, request)


def test_names_that_differ_only_in_the_last_byte_of_each_word():
    """A product's low bits see only its word's low bits: the hash mixes each word first, or
    these 8,464 names would share 256 hashes and get no table."""
    chars = [chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"\\']
    snapshot_names = tuple(f"aaaaaaa{a}aaaaaaa{b}" for a in chars for b in chars)
    table = NameTable.build(snapshot_names)
    request = [*snapshot_names[::-7], "aaaaaaa!aaaaaaa", "aaaaaaa!aaaaaaa!!"]
    found = table.lookup_json(json_array(request), request)
    assert found is not None
    assert found.tolist() == dict_lookup(table, request)


def test_a_prefix_or_an_extension_of_a_known_name_is_unknown():
    table = NameTable.build(("node-1", "node-12", "node-123456789", "x" * 200))
    request = ["node-", "node-1", "node-12", "node-123", "node-12345678", "node-1234567890"]
    request += ["x" * 199, "x" * 201, "node-123456789"]
    assert lookup(table, json_array(request)) == [-1, 0, 1, -1, -1, -1, -1, -1, 2]
    # Only short names asked for: the probe reads fewer words than the longest name holds.
    assert lookup(table, json_array(["node-1", "node-12", "x"])) == [0, 1, -1]


def test_names_no_unescaped_string_can_hold_never_match_their_neighbours():
    """A snapshot name with a NUL, quote, backslash or control character is never asked for
    without an escape; the names it contains or that contain it are still exact."""
    table = NameTable.build(("a\x00", "b", 'c"d', "e\\f", "g\th", "b\x00"))
    assert lookup(table, json_array(["a", "b", "c", "e", "g", "d", "f"])) == [
        -1,
        1,
        -1,
        -1,
        -1,
        -1,
        -1,
    ]


def test_a_duplicated_snapshot_name_is_found_at_its_last_column():
    table = NameTable.build(("a", "b", "a", "c", "b", "b"))
    assert lookup(table, json_array(["a", "b", "c", "d"])) == [2, 5, 3, -1]


def test_duplicates_and_the_empty_list_in_a_request():
    table = NameTable.build(("a", "b"))
    assert lookup(table, json_array(["b", "b", "a", "b"])) == [1, 1, 0, 1]
    assert lookup(table, b"[]") == []
    assert lookup(table, b"[ \n ]") == []


def test_lookup_json_on_a_request_decoded_by_the_codec():
    """``FilterArgs.names_json`` is what the method reads; the columns are the snapshot's."""
    snapshot_names = tuple(f"worker-{i}.example.internal" for i in range(300))
    table = NameTable.build(snapshot_names)
    request = [f"worker-{i}.example.internal" for i in range(299, -1, -1)] + ["nope"]
    body = json.dumps({"Pod": {"metadata": {"name": "p"}}, "NodeNames": request}).encode()
    args = decode_args(body)
    found = table.lookup_json(args.names_json, args.candidates.names)
    assert found is not None
    assert found.tolist() == [*range(299, -1, -1), -1]


# --- when the fast path declines ------------------------------------------------------------------


@pytest.fixture
def table() -> NameTable:
    return NameTable.build(tuple(f"node-{i}" for i in range(1_000)))


def test_fewer_names_than_the_minimum_are_left_to_the_dictionary(table):
    raw = json_array([f"node-{i}" for i in range(LOOKUP_JSON_MIN_NAMES - 1)])
    assert table.lookup_json(raw, _decode_names(raw)) is None
    raw = json_array([f"node-{i}" for i in range(LOOKUP_JSON_MIN_NAMES)])
    found = table.lookup_json(raw, _decode_names(raw))
    assert found is not None
    assert found.tolist() == list(range(LOOKUP_JSON_MIN_NAMES))


@pytest.mark.parametrize(
    "raw",
    [
        b'["node-1","node-\\u0032"]',  # an escape, even of a plain character
        b'["node-1","node-2\\/"]',
        b'["node-1","n\xc3\xbc"]',  # non-ASCII
        b'["node-1","node-2"]\xc2\xa0',
    ],
)
def test_escapes_and_non_ascii_are_left_to_the_dictionary(table, raw):
    assert table.lookup_json(raw, ["node-1", "node-2"], min_count=0) is None


def test_a_count_the_quotes_do_not_make_is_left_to_the_dictionary(table):
    raw = b'["node-1","node-2"]'
    assert table.lookup_json(raw, ["node-1", "node-2", "node-3"], min_count=0) is None
    assert table.lookup_json(raw, ["node-1"], min_count=0) is None


def test_snapshots_the_table_cannot_hold_are_left_to_the_dictionary(monkeypatch):
    raw = json_array(["a", "b"])
    assert NameTable.build(()).lookup_json(raw, ["a", "b"], min_count=0) is None
    assert NameTable.build(("ü", 'q"', "\x00")).lookup_json(raw, ["a", "b"], min_count=0) is None
    assert NameTable.build(("a", "b" * 257)).lookup_json(raw, ["a", "b"], min_count=0) is None
    assert NameTable.build(("a", "b" * 256)).lookup_json(raw, ["a", "b"], min_count=0) is not None
    # Two names with the same hash: no table (here every hash is 0).
    monkeypatch.setattr(names_module, "_MULTIPLIERS", np.zeros((32, 1), dtype=np.uint64))
    assert NameTable.build(("a", "b")).lookup_json(raw, ["a", "b"], min_count=0) is None
    found = NameTable.build(("a",)).lookup_json(raw, ["a", "b"], min_count=0)
    assert found is not None
    assert found.tolist() == [0, -1]


def test_a_hash_is_only_a_hint(monkeypatch):
    """With every hash 0 each name probed hits the one known name's row: only the comparison
    of the whole name (its words and where it ends) tells them apart."""
    monkeypatch.setattr(names_module, "_MULTIPLIERS", np.zeros((32, 1), dtype=np.uint64))
    table = NameTable.build(("abcdefghijklmnopq",))  # 17 bytes: three words
    request = ["abcdefgh", "abcdefghijklmnop", "abcdefghijklmnopq", "abcdefghijklmnopqr", "b"]
    assert lookup(table, json_array(request)) == [-1, -1, 0, -1, -1]
    assert lookup(table, json_array(["abcdefgh"])) == [-1]  # one word read of three
    assert lookup(table, json_array(["abcdefghijklmnop"])) == [-1]  # two of three


def test_the_probe_table_is_built_once_and_kept_with_the_names(monkeypatch):
    def no_build(names):
        raise AssertionError(f"probe table built again for {names}")

    table = NameTable.build(("a", "b"))
    assert table.lookup_json(b'["a"]', ["a"], min_count=0).tolist() == [0]  # built on first use
    monkeypatch.setattr("extender.wire.names._ColumnTable.build", no_build)
    assert table.lookup_json(b'["b", "a"]', ["b", "a"], min_count=0).tolist() == [1, 0]
    same = NameTable.build(("a", "b"), previous=table)
    assert same.lookup_json(b'["b"]', ["b"], min_count=0).tolist() == [1]
    other = NameTable.build(("a", "c"), previous=table)  # not built with the table ...
    with pytest.raises(AssertionError, match="built again"):  # ... but for its first lookup
        other.lookup_json(b'["c"]', ["c"], min_count=0)


# --- names kept as their bytes --------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(max_size=12) | node_names, max_size=40), whitespace, st.booleans())
def test_json_names_are_the_decoded_names(names, gaps, ensure_ascii):
    """Any array of names: kept as its bytes exactly when it is compact, ASCII and without
    escapes; then every name read out one by one, and all of them at once, is msgspec's."""
    raw = json_array(names, gaps, ensure_ascii)
    kept = JsonNames.parse(raw)
    if raw != json_array(names) or b"\\" in raw or not raw.isascii():
        assert kept is None
        return
    assert kept is not None
    assert len(kept) == len(names)
    assert [kept[i] for i in range(len(names))] == names  # read out from the bytes
    assert [kept[i] for i in range(-len(names), 0)] == names
    assert list(kept) == names  # decoded at once
    assert kept == names
    assert names == kept
    assert kept[1:3] == names[1:3]


@pytest.mark.parametrize(
    "raw",
    [
        b'[1,"a"]',
        b'["a",1]',
        b'["a",null]',
        b'[["a"]]',
        b'[["a","b"],"c"]',
        b'["a",{"b":"c"}]',
        b'"a"',
        b'{"a":"b"}',
        b'["a", "b"]',
        b'[ "a"]',
        b'["a","\\u0062"]',
        b'["a","\xc3\xbc"]',
        b"null",
    ],
)
def test_anything_but_a_compact_array_of_plain_strings_is_decoded(raw):
    assert JsonNames.parse(raw) is None


def test_json_names_need_enough_names_and_are_counted_from_the_bytes():
    raw = json_array([f"n{i}" for i in range(10)])
    assert JsonNames.parse(raw, min_count=11) is None
    kept = JsonNames.parse(raw, min_count=10)
    assert kept is not None
    assert len(kept) == 10
    empty = JsonNames.parse(b"[]")
    assert empty is not None
    assert len(empty) == 0
    assert list(empty) == []
    with pytest.raises(IndexError):
        kept[10]


def test_a_reply_array_is_kept_as_bytes_unless_it_holds_an_escape():
    kept = JsonNames.encoded(msgspec.json.encode(["a", "bc"]), 2)
    assert kept is not None
    assert (kept[0], kept[1]) == ("a", "bc")
    assert JsonNames.encoded(msgspec.json.encode(["a", 'b"c']), 2) is None
    assert JsonNames.encoded(msgspec.json.encode(["a", "ü"]), 2) is None


def test_the_codec_keeps_thousands_of_names_as_bytes_and_decodes_fewer():
    many = [f"node-{i}" for i in range(LOOKUP_JSON_MIN_NAMES)]
    for names, kept_as_bytes in [(many, True), (many[:-1], False)]:
        body = json.dumps({"Pod": {"metadata": {"name": "p"}}, "NodeNames": names})
        args = decode_args(body.replace(", ", ",").encode())
        assert isinstance(args.candidates.names, JsonNames) == kept_as_bytes
        assert list(args.candidates.names) == names


# --- replies against msgspec's encoding ----------------------------------------------------------

reply_names = st.sampled_from(["", 'q"uote', "ü", "back\\slash", "</script>", "\x00"]) | st.text(
    max_size=8
)


@st.composite
def replies(draw: st.DrawFn) -> tuple[NameTable, list[int], list[str]]:
    """A table, and candidates: columns of its names, or -1 with a name it does not know."""
    known = draw(st.lists(reply_names, max_size=10, unique=True))
    table = NameTable.build(tuple(known))
    unknown = st.tuples(st.just(-1), reply_names.filter(lambda n: n not in known))
    pick = unknown | st.sampled_from(list(enumerate(known))) if known else unknown
    picked = draw(st.lists(pick, max_size=30))
    return table, [c for c, _ in picked], [n for _, n in picked]


@settings(max_examples=400, deadline=None)
@given(replies(), st.data())
def test_priorities_reply_is_what_msgspec_writes(case, data):
    table, cols, names = case
    scores = data.draw(st.lists(st.integers(0, MAX_SCORE), min_size=len(cols), max_size=len(cols)))
    reply = names_priorities_reply(np.array(cols, dtype=np.intp), names, np.array(scores), table)
    assert reply == encode_priorities(names, scores)


def evaluation(cols: list[int], names: list[str], keep: list[bool], codes: list[int]) -> Any:
    """The fields of an Evaluation the filter reply reads; reason texts by code."""
    return SimpleNamespace(
        columns=np.array(cols, dtype=np.intp),
        names=names,
        keep=np.array(keep, dtype=bool),
        reason_codes=np.array(codes, dtype=np.int64),
        reason_text=lambda code: {1: "cpu over", 2: 'memory "over"', 3: "ü"}.get(code, str(code)),
    )


@settings(max_examples=400, deadline=None)
@given(replies(), st.data())
def test_filter_reply_is_what_msgspec_writes(case, data):
    """Kept names, and every rejected one with its reason: one reason for all, or several."""
    table, cols, names = case
    n = len(cols)
    keep = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    reasons = data.draw(st.sampled_from([[1], [2], [1, 2, 3], [-1, 1]]))
    codes = [0 if k else data.draw(st.sampled_from(reasons)) for k in keep]
    ev = evaluation(cols, names, keep, codes)
    kept = [i for i in range(n) if keep[i]]
    failed = [(names[i], ev.reason_text(codes[i])) for i in range(n) if not keep[i]]
    args = FilterArgs(pod=None, candidates=Candidates(names), full_nodes=None)  # type: ignore[arg-type]
    if len({name for name, _ in failed}) == len(failed):
        assert names_filter_reply(ev, table) == encode_filter_result(args, kept, {}, dict(failed))
    # a name rejected twice is written twice, in order (a dict would keep one)
    entries = b",".join(
        msgspec.json.encode(name) + b":" + msgspec.json.encode(t) for name, t in failed
    )
    expected = (
        b'{"NodeNames":' + msgspec.json.encode([names[i] for i in kept]) + b',"Nodes":null,'
        b'"FailedNodes":{},"FailedAndUnresolvableNodes":{' + entries + b'},"Error":""}'
    )
    assert names_filter_reply(ev, table) == expected
    assert kept_names_json(ev, table) == msgspec.json.encode([names[i] for i in kept])
    assert names_filter_reply(ev, table, kept_names_json(ev, table)) == expected


def test_replies_at_thousands_of_names_with_a_few_unknown():
    snapshot_names = tuple(f"node-{i:05d}" for i in range(15_000))
    table = NameTable.build(snapshot_names)
    rng = np.random.default_rng(3)
    cols = rng.permutation(15_000)[:5_000]
    cols[::250] = -1
    names = [snapshot_names[c] if c >= 0 else f"new-{i}" for i, c in enumerate(cols.tolist())]
    scores = rng.integers(0, MAX_SCORE + 1, size=5_000)
    reply = names_priorities_reply(cols, names, scores, table)
    assert reply == encode_priorities(names, scores.tolist())
    keep = (scores > 3).tolist()
    codes = [0 if k else 1 + int(s) % 2 for k, s in zip(keep, scores.tolist(), strict=True)]
    ev = evaluation(cols.tolist(), names, keep, codes)
    failed = {names[i]: ev.reason_text(codes[i]) for i in range(5_000) if not keep[i]}
    args = FilterArgs(pod=None, candidates=Candidates(names), full_nodes=None)  # type: ignore[arg-type]
    kept = [i for i in range(5_000) if keep[i]]
    assert names_filter_reply(ev, table) == encode_filter_result(args, kept, {}, failed)


def test_empty_replies():
    table = NameTable.build(empty_snapshot().names)
    none = np.empty(0, dtype=np.intp)
    assert names_priorities_reply(none, [], np.empty(0, dtype=np.int64), table) == b"[]"
    ev = evaluation([], [], [], [])
    assert names_filter_reply(ev, table) == (
        b'{"NodeNames":[],"Nodes":null,"FailedNodes":{},"FailedAndUnresolvableNodes":{},"Error":""}'
    )

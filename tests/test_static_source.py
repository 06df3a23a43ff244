"""The static metrics source: parsing, clear errors, and keeping the last good data."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import pytest
import yaml

from extender.policy import embedded_default
from extender.sources.static import (
    MAX_STATIC_BYTES,
    StaticFileError,
    StaticSource,
    load_yaml,
    parse_static,
    read_static,
)
from extender.store import SnapshotStore
from tests.builders import NOW

GOOD = """\
nodes:
  a: {cpu: 0.5, memory: 0.25, gpu: 0.9, allocatable: {cpu: "4", memory: 16Gi},
      requested: {cpu: 1500m}}
  b: {}
"""


def test_parse():
    data = parse_static(GOOD, ("cpu", "memory"))
    a, b = data.nodes
    assert (a.name, a.allocatable_cpu, a.allocatable_memory) == ("a", 4.0, 16 * 2**30)
    assert (a.requested_cpu, a.requested_memory) == (1.5, None)
    assert data.values == {"a": {"cpu": 0.5, "memory": 0.25}, "b": {}}  # gpu is not a signal
    assert b.allocatable_cpu is None
    assert data.samples(NOW)["a"]["cpu"].timestamp == NOW


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "expected a mapping with a 'nodes' mapping"),
        ("nodes: {a: [1]}", "nodes.a: expected a mapping"),
        ("nodes: {a: {cpu: -0.1}}", "nodes.a.cpu: expected a ratio >= 0"),
        ("nodes: {a: {cpu: .nan}}", "nodes.a.cpu: expected a ratio >= 0"),
        ("nodes: {a: {cpu: high}}", "nodes.a.cpu: expected a ratio >= 0"),
        ("nodes: {a: {allocatable: {cpu: 4 cores}}}", "nodes.a.allocatable.cpu: invalid quantity"),
        ("nodes: {a: {requested: 5}}", "nodes.a.requested: expected a mapping"),
        ("nodes: {a: {cpu: [}", "invalid YAML"),
    ],
)
def test_errors_name_the_place(text, message):
    with pytest.raises(StaticFileError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_static(text, ("cpu", "memory"))


async def test_bad_file_keeps_last_good_data(tmp_path, caplog):
    path = tmp_path / "m.yaml"
    path.write_text(GOOD)
    clock = iter([NOW, NOW + 15, NOW + 30]).__next__
    store = SnapshotStore(embedded_default(), clock=lambda: NOW)
    source = StaticSource(store, path, 15, clock)
    assert await source.refresh()
    first = store.current
    assert first.snapshot.names == ("a", "b")
    assert first.snapshot.source_ok_at == NOW

    path.write_text("nodes: {a: {cpu: broken}}")
    assert not await source.refresh()
    assert store.current is first  # nothing swapped
    assert "keeping the last good data" in caplog.text
    assert "nodes.a.cpu" in (source.last_error or "")

    path.unlink()
    assert not await source.refresh()
    assert "cannot read" in (source.last_error or "")

    path.write_text(GOOD.replace("0.5", "0.75"))
    assert await source.refresh()
    assert store.current.snapshot.values[0, 0] == 0.75
    assert source.last_error is None


def test_cluster_nodes_win_over_the_static_files_nodes():
    from extender.core import NodeInfo

    store = SnapshotStore(embedded_default(), clock=lambda: NOW)
    data = parse_static(GOOD, ("cpu", "memory"))
    store.set_cluster([NodeInfo("a", 8.0, 32 * 2**30, 1.0, 0.0)], [])
    store.set_static(data.nodes, data.samples(NOW), NOW)
    snap = store.current.snapshot
    assert snap.allocatable[0, snap.index["a"]] == 8.0  # the cluster's, not the file's 4
    assert snap.values[0, snap.index["a"]] == 0.5  # the file's sample still counts


# --- memory: the file is parsed from libyaml's events, not through a node graph ---------------


def node_lines(count: int) -> str:
    """A static file of ``count`` nodes in the shipped file's style (about 120 bytes a node)."""
    line = (
        "  node-{:06d}: {{cpu: 0.25, memory: 0.26, allocatable: {{cpu: '4', memory: 16Gi}}, "
        "requested: {{cpu: 2500m, memory: 2Gi}}}}"
    )
    return "nodes:\n" + "\n".join(line.format(i) for i in range(count)) + "\n"


LOAD_CASES = [
    GOOD,
    "a: &x {b: 1, c: [1, 2.5, null, true, '3', 0x1f, 1e3, .inf, ~, 2001-12-14]}\nd: *x\n",
    "base: &b {cpu: 0.5, allocatable: {cpu: '4'}}\nnodes:\n  n1: {<<: *b, cpu: 0.7}\n"
    "  n2: {<<: [{memory: 0.1}, *b], memory: 0.2}\n",
    "",
    "- 1\n- [a, b]\n- {x: !!str 5, y: !!float '1'}\n",
    "k: 1\nk: 2\n",
    "nodes: {a: {cpu: 0.5}}  # a comment\n",
]


@pytest.mark.parametrize("text", LOAD_CASES)
def test_load_yaml_reads_what_safe_load_reads(text):
    assert load_yaml(text) == yaml.safe_load(text)


def test_load_yaml_reads_the_shipped_files_as_safe_load_does():
    root = Path(__file__).parent.parent
    for path in (
        root / "config" / "static-metrics.yaml",
        root / "extender" / "defaults" / "static-metrics.yaml",
    ):
        if path.is_file():
            text = path.read_text()
            assert load_yaml(text) == yaml.safe_load(text), path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("? [a]\n: 1\n", "line 1: a mapping key must be text"),
        ("a: 1\n---\nb: 2\n", "expected a single document"),
        ("a: !!python/object:os.system {}\n", "unsupported tag"),
        ("a: !!python/name:os.system ''\n", "could not determine a constructor"),
        ("nodes: {a: {<<: 5}}\n", "'<<' merges mappings only"),
    ],
)
def test_load_yaml_refuses_what_the_safe_schema_refuses(text, message):
    with pytest.raises(StaticFileError, match=re.escape(message)):
        load_yaml(text)


def test_parsing_holds_a_few_bytes_per_byte_of_text_not_seventy():
    """Python allocations at the peak of a parse, over the text's size: yaml.load composed a node
    graph first (about 72 bytes per byte of text: 1.27 GB of RSS for a 16 MiB file); from the
    events, what is held is the text and the values (about 13)."""
    text = node_lines(2_000)  # 240 KB: the ratio does not depend on the size
    tracemalloc.start()
    try:
        data = parse_static(text, ("cpu", "memory"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data.nodes) == 2_000
    assert peak < 25 * len(text), peak / len(text)


def test_the_cap_fits_twice_the_largest_cluster_and_refuses_more(tmp_path):
    assert len(node_lines(30_000).encode()) < MAX_STATIC_BYTES  # Kubernetes supports 15,000
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"nodes: {}\n" + b"#" * MAX_STATIC_BYTES)
    with pytest.raises(StaticFileError, match=f"larger than {MAX_STATIC_BYTES} bytes"):
        read_static(path, ("cpu", "memory"))

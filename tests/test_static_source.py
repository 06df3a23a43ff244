"""The static metrics source: parsing, clear errors, and keeping the last good data."""

from __future__ import annotations

import pytest

from extender.policy import embedded_default
from extender.sources.static import StaticFileError, StaticSource, parse_static
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

"""Smoke test of the scheduler-level benchmark (``benchmarks/bench_scheduler.py``) at its
``--quick`` sizes on the session's test bed: both parts run end to end, every backlog pod gets
bound, and the tables have their shape. No figure is asserted (timings are the benchmark's
business, on a quiet machine, never a test's)."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks import bench_scheduler as bench
from tests.e2e.harness import Session


def _table(text: str, header_start: str) -> list[list[str]]:
    """The rows (cells stripped) of the markdown table whose header starts with the given text."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert re.fullmatch(r"[-:|]+", lines[start + 1].replace(" ", "")), lines[start + 1]
    return [rows[0], *rows[2:]]  # header, then the body without the separator


def test_quick_benchmark_binds_every_pod_and_prints_its_tables(
    e2e: Session, tmp_path: Path
) -> None:
    plan = bench.QUICK
    text, throughput, places = bench.run(e2e, plan, log=lambda _m: None)
    assert throughput is not None
    assert places is not None

    # Throughput: one round of the three arms, every pod of the backlog bound in each run.
    assert [(r.pair, r.arm) for r in throughput.runs] == [
        (1, "stock"),
        (1, "floor"),
        (1, "extender"),
    ]
    assert all(r.bound == r.pods == plan.pods for r in throughput.runs), throughput.runs
    assert all(r.attempts >= plan.pods for r in throughput.runs), throughput.runs
    assert throughput.rss > 0

    runs = _table(text, "| pair | arm |")
    assert runs[0][:6] == ["pair", "arm", "pods", "bound", "drain s", "pods/s"]
    assert [row[1] for row in runs[1:]] == ["stock", "floor", "extender"]
    assert all(row[2] == row[3] == str(plan.pods) for row in runs[1:]), runs
    medians = _table(text, "| median over the rounds |")
    assert medians[0] == [
        "median over the rounds",
        "stock",
        "floor",
        "with extender",
        "floor / stock",
        "extender / stock",
    ]
    assert [row[0] for row in medians[1:]] == [
        "pods/s",
        "per-round ratios",
        "attempt p50 ms",
        "attempt p99 ms",
        "algorithm p50 ms",
        "algorithm p99 ms",
        "CPU ms/pod (extender; floor's own in the floor arm)",
        "extender's own handling p50 ms (filter / prioritize)",
        "extender RSS at the end",
    ]
    assert re.fullmatch(r"\d+\.\d\d", medians[1][4]), medians[1]
    assert re.fullmatch(r"\*\*\d+\.\d\d\*\* \(target >= 0\.85\)", medians[1][5]), medians[1]

    # Placement: both arms, every tier, counts that add up.
    rows = _table(text, "| arm | tier |")
    assert rows[0][:4] == ["arm", "tier", "ceiling cpu/mem", "pods"]
    tiers = [tier for tier, _ in bench.BURSTS]
    assert [(row[0], row[1]) for row in rows[1:]] == [
        (arm, tier) for arm in ("stock", "extender") for tier in tiers
    ]
    for p in places:
        for t in p.tiers:
            assert t.pods == plan.burst
            assert t.bound + t.pending == t.pods
            assert 0 <= t.above <= t.bound
            assert t.above_ramped is None or 0 <= t.above_ramped <= t.bound
            assert t.most_in_window <= t.bound
            assert t.nodes_used <= t.bound
    assert "Machine: " in text
    assert "Load average before: " in text

    # --update-results: the marked section replaced, everything else untouched.
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nearlier tables\n")
    bench.update_results(text, results)
    first = results.read_text()
    assert first.startswith("# Benchmark results\n\nearlier tables\n\n" + bench.BEGIN)
    assert first.rstrip().endswith(bench.END)
    results.write_text(first + "\n## After\n\nmore\n")
    bench.update_results("## Scheduler-level benchmark\n\nnew\n", results)
    second = results.read_text()
    assert second == (
        "# Benchmark results\n\nearlier tables\n\n"
        f"{bench.BEGIN}\n## Scheduler-level benchmark\n\nnew\n{bench.END}\n\n## After\n\nmore\n"
    )

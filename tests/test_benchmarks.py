"""Smoke test: the benchmark entry point runs end to end at a tiny size (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def run_module(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` from the checkout, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_benchmark_suite_runs_quick(tmp_path):
    out = tmp_path / "results.md"
    res = run_module("benchmarks.run", "--quick", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    text = out.read_text()
    for heading in (
        "## Names only",
        "## Full Node objects",
        "## CPU per scheduled pod",
        "## Core only",
    ):
        assert heading in text
    # every configured row was measured: 2 names sizes and 1 full size, 2 verbs, 2 concurrencies
    assert text.count("| filter |") + text.count("| prioritize |") == 12


def test_the_comparison_with_a_revision_runs_quick():
    """benchmarks.compare against HEAD: both extenders answer every row (the ratios are not
    asserted: they are timing)."""
    res = run_module("benchmarks.compare", "--quick", "--base", "HEAD")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith(("| filter", "| prio"))]
    assert [row.split("|")[1:3] for row in rows] == [
        [" filter ", " 10 "],
        [" prioritize ", " 10 "],
        [" filter ", " 50 "],
        [" prioritize ", " 50 "],
    ]
    assert all(row.split("|")[5].strip().endswith("x") for row in rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--base", "no-such-revision"], "error: --base no-such-revision: not a revision of"),
        (["--sizes", "0"], "error: --sizes 0: whole numbers from 1 to"),
        (["--rounds", "0"], "error: --rounds 0: at least 1"),
    ],
)
def test_the_comparison_refuses_bad_arguments_in_one_line(args, message):
    res = run_module("benchmarks.compare", *args, timeout=60)
    assert res.returncode == 2
    assert res.stderr.startswith(message)
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr


def test_the_floor_extender_answers_what_kube_scheduler_expects():
    """benchmarks/floor_extender.py keeps every node (filter), scores each 0 (prioritize) and
    agrees with every preemption candidate, on payloads captured from kube-scheduler."""
    import json

    from benchmarks.floor_extender import answer
    from tests.builders import fixture_bytes

    request = json.loads(fixture_bytes("filter-nodecache-true.json"))
    kept = json.loads(answer(b"/filter", fixture_bytes("filter-nodecache-true.json")))
    assert kept == {"NodeNames": request["NodeNames"], "FailedNodes": {}, "Error": ""}
    body = fixture_bytes("prioritize-nodecache-true.json")
    scores = json.loads(answer(b"/prioritize", body))
    assert scores == [{"Host": n, "Score": 0} for n in json.loads(body)["NodeNames"]]
    body = fixture_bytes("preempt-nodecache-true.json")
    victims = json.loads(answer(b"/preempt", body))
    assert victims["NodeNameToMetaVictims"] == json.loads(body)["NodeNameToMetaVictims"]


def test_the_pod_usage_benchmark_runs_small(tmp_path):
    out = tmp_path / "results.md"
    out.write_text("# Benchmark results\n")
    res = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_pod_usage.py",
            "--nodes", "50", "--pods", "2000", "--rounds", "2", "--out", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    text = out.read_text()
    assert "<!-- pod-usage-benchmark:begin -->" in text
    assert "refresh" in text

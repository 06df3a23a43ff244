"""Smoke test: the benchmark entry point runs end to end at a tiny size (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_benchmark_suite_runs_quick(tmp_path):
    out = tmp_path / "results.md"
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
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

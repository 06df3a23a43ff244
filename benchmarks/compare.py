"""This tree's extender against another revision's, side by side in the same run.

    .venv/bin/python -m benchmarks.compare                      # against HEAD (uncommitted work)
    .venv/bin/python -m benchmarks.compare --base v0.3.0        # against any revision git knows
    .venv/bin/python -m benchmarks.compare --sizes 500 --rounds 40
    .venv/bin/python -m benchmarks.compare --quick              # tiny sizes, seconds

The machines these run on are shared, and their speed swings up to threefold from one minute to
the next: two suite runs minutes apart cannot say whether a change made the extender faster.
Here both extenders run at once, as processes of their own on the same policy and the same
static 15,000-node cluster (``git archive`` of the base revision into a temporary directory, run
with this checkout's Python environment), and the client alternates slices of requests between
them, the order swapped every round, so that both see the same machine. Printed: the p50 per
call of each, over loopback HTTP with keep-alive, one call at a time, and each process's CPU
per call, with the ratios this / base. Nothing is written into the checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks.objects import names_body, node_name, write_static_cluster
from benchmarks.run import cpu_seconds, free_port, process, timed, wait_up

ROOT = Path(__file__).resolve().parent.parent
#: Less CPU than this per arm and row is not shown (the counters' resolution is 10 ms).
MIN_CPU_S = 0.2


@dataclass(frozen=True)
class Plan:
    cluster: int
    sizes: tuple[int, ...]
    rounds: int
    per_slice: int
    warm: int


FULL = Plan(15_000, (500, 5_000), 20, 25, 30)
QUICK = Plan(100, (10, 50), 2, 3, 2)


@dataclass
class Row:
    verb: str
    names: int
    base_p50: float
    this_p50: float
    base_cpu: float
    this_cpu: float


class CompareError(Exception):
    """A problem the user can fix (an unknown revision, no git): one ``error:`` line."""


def export_revision(rev: str, into: Path) -> str:
    """The tree of ``rev`` written under ``into``; its full commit id."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        raise CompareError("git is not installed: --base needs it") from None
    if commit.returncode != 0:
        raise CompareError(f"--base {rev}: not a revision of {ROOT}")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit.stdout.strip()],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise CompareError(f"--base {rev}: git archive failed: {archive.stderr.decode()[-300:]}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return commit.stdout.strip()


@contextlib.asynccontextmanager
async def serve(tree: Path, policy: Path) -> AsyncIterator[tuple[str, int]]:
    """The extender of ``tree`` (its own package first on the path), names-only ready."""
    port, admin = free_port(), free_port()
    args = [sys.executable, "-m", "extender", "serve", "--policy", str(policy)]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    args += ["--admin-host", "127.0.0.1", "--admin-port", str(admin)]
    args += ["--log-level", "warning", "--kubernetes", "off"]
    with process(args, cwd=tree, env={"PYTHONPATH": str(tree)}) as proc:
        async with aiohttp.ClientSession() as session:
            await wait_up(session, f"http://127.0.0.1:{admin}/readyz", proc)
        yield f"http://127.0.0.1:{port}", proc.pid


async def measure(
    session: aiohttp.ClientSession,
    arms: dict[str, tuple[str, int]],
    verb: str,
    body: bytes,
    plan: Plan,
) -> dict[str, tuple[float, float]]:
    """Per arm: (p50 seconds per call, CPU seconds per call), slices alternating."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    cpu = dict.fromkeys(arms, 0.0)
    for url, _ in arms.values():
        for _ in range(plan.warm):
            await timed(session, f"{url}/{verb}", body)
    order = list(arms)
    for r in range(plan.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            url, pid = arms[name]
            before = cpu_seconds(pid)
            for _ in range(plan.per_slice):
                times[name].append(await timed(session, f"{url}/{verb}", body))
            cpu[name] += cpu_seconds(pid) - before
    # CPU counters tick every 10 ms: below MIN_CPU_S of it per arm the figure is noise.
    return {
        name: (
            statistics.median(times[name]),
            cpu[name] / len(times[name]) if cpu[name] >= MIN_CPU_S else math.nan,
        )
        for name in arms
    }


async def compare(plan: Plan, tree: Path, tmp: Path) -> list[Row]:
    policy = write_static_cluster(tmp, plan.cluster)
    rng = random.Random(7)
    rows = []
    async with serve(tree, policy) as base, serve(ROOT, policy) as this:
        arms = {"base": base, "this": this}
        async with aiohttp.ClientSession() as session:
            for n in plan.sizes:
                body = names_body([node_name(i) for i in rng.sample(range(plan.cluster), n)])
                for verb in ("filter", "prioritize"):
                    got = await measure(session, arms, verb, body, plan)
                    (base_p50, base_cpu), (this_p50, this_cpu) = got["base"], got["this"]
                    rows.append(Row(verb, n, base_p50, this_p50, base_cpu, this_cpu))
    return rows


def table(rows: list[Row], base: str, commit: str) -> str:
    out = [
        f"This tree against {base} ({commit[:12]}), side by side, slices alternating.",
        "",
        "| verb | names | base p50 ms | this p50 ms | this / base | base CPU ms/call "
        "| this CPU ms/call | this / base |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ms(seconds: float) -> str:
        return "-" if math.isnan(seconds) else f"{seconds * 1e3:.3f}"

    for r in rows:
        cpu_ratio = r.this_cpu / r.base_cpu
        out.append(
            f"| {r.verb} | {r.names:,} | {ms(r.base_p50)} | {ms(r.this_p50)} "
            f"| {r.this_p50 / r.base_p50:.2f}x | {ms(r.base_cpu)} | {ms(r.this_cpu)} "
            f"| {'-' if math.isnan(cpu_ratio) else f'{cpu_ratio:.2f}x'} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="this tree's extender against another revision's, side by side",
    )
    parser.add_argument("--base", default="HEAD", help="the revision to compare with (HEAD)")
    parser.add_argument("--sizes", help="names per request, comma-separated (500,5000)")
    parser.add_argument("--rounds", type=int, help="slices per arm (20)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    ns = parser.parse_args(argv)
    plan = QUICK if ns.quick else FULL
    try:
        if ns.sizes is not None:
            sizes = tuple(int(s) for s in ns.sizes.split(",") if s.strip())
            if not sizes or min(sizes) < 1 or max(sizes) > plan.cluster:
                raise ValueError
            plan = Plan(plan.cluster, sizes, plan.rounds, plan.per_slice, plan.warm)
    except ValueError:
        print(
            f"error: --sizes {ns.sizes}: whole numbers from 1 to {plan.cluster:,}", file=sys.stderr
        )
        return 2
    if ns.rounds is not None:
        if ns.rounds < 1:
            print(f"error: --rounds {ns.rounds}: at least 1", file=sys.stderr)
            return 2
        plan = Plan(plan.cluster, plan.sizes, ns.rounds, plan.per_slice, plan.warm)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compare-") as folder:
        tmp = Path(folder)
        tree = tmp / "base"
        tree.mkdir()
        try:
            commit = export_revision(ns.base, tree)
        except CompareError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        rows = asyncio.run(compare(plan, tree, tmp))
    print(table(rows, ns.base, commit))
    print(f"\n{plan.cluster:,} nodes known; {time.monotonic() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

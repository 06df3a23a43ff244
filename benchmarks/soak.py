"""Soak: a steady request rate for a long, bounded time; is memory flat and p99 stable?

    .venv/bin/python -m benchmarks.soak --minutes 30 --rate 200 --names 5000
    .venv/bin/python -m benchmarks.soak --minutes 30 --out benchmarks/SOAK.md   # the committed one

The extender runs as its own process on a static 5,000-node cluster; the client paces filter
and prioritize calls (alternating, one at a time on a keep-alive connection, as kube-scheduler
does) at ``--rate`` per second and reports, per window, the calls made, p50/p99 latency and the
extender's resident memory. The verdict compares memory at the end with memory after warm-up.
Outside CI: it runs for as long as it is told (and never longer than ``--minutes``). With
``--out`` the report is also written there (``benchmarks/SOAK.md`` is the committed one, which the
README's soak row quotes).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks.objects import names_body, node_name, write_static_cluster
from benchmarks.run import extender, machine, pct, post, rss_mb


async def soak(
    minutes: float, rate: float, names: int, window_s: float, warmup_s: float, out: Path | None
) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    cluster = max(names, 5000)
    policy = write_static_cluster(tmp, cluster)
    body = names_body([node_name(i) for i in random.Random(5).sample(range(cluster), names)])
    rows: list[tuple[float, int, float, float, float]] = []
    async with extender(policy, 1 << 27) as (base, pid), aiohttp.ClientSession() as session:
        start = time.monotonic()
        end = start + minutes * 60
        next_at = start
        window_start, lat = start, []
        i = 0
        while time.monotonic() < end:
            verb = "filter" if i % 2 == 0 else "prioritize"
            t0 = time.perf_counter()
            await post(session, f"{base}/{verb}", body)
            lat.append(time.perf_counter() - t0)
            i += 1
            next_at += 1 / rate
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            if now - window_start >= window_s:
                rows.append(
                    (now - start, len(lat), pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3, rss_mb(pid))
                )
                print(
                    f"{rows[-1][0]:7.0f} s  {rows[-1][1]:6d} calls  p50 {rows[-1][2]:.3f} ms  "
                    f"p99 {rows[-1][3]:.3f} ms  rss {rows[-1][4]:.1f} MB",
                    file=sys.stderr,
                )
                window_start, lat = now, []
    after_warmup = next((r for r in rows if r[0] >= warmup_s), rows[0] if rows else None)
    lines = [
        "# Soak result",
        "",
        f"Machine: {machine()}. Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"(`python -m benchmarks.soak --minutes {minutes:g} --rate {rate:g} --names {names}`).",
        "",
        f"Soak: {minutes:g} min at {rate:g} calls/s, {names:,} names, "
        f"{sum(r[1] for r in rows):,} calls",
        "",
        "| t (s) | calls | p50 ms | p99 ms | RSS MB |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {t:.0f} | {n:,} | {p50:.3f} | {p99:.3f} | {rss:.1f} |" for t, n, p50, p99, rss in rows
    ]
    if after_warmup is not None and rows:
        growth = (rows[-1][4] - after_warmup[4]) / after_warmup[4] * 100
        p99s = [r[3] for r in rows if r[0] >= warmup_s] or [rows[-1][3]]
        lines += [
            "",
            f"RSS after warm-up {after_warmup[4]:.1f} MB, at the end {rows[-1][4]:.1f} MB "
            f"({growth:+.1f}%); p99 per window {min(p99s):.3f}..{max(p99s):.3f} ms",
        ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if out is not None:
        out.write_text(text)
        print(f"written to {out}", file=sys.stderr)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=200.0, help="calls per second")
    p.add_argument("--names", type=int, default=5000)
    p.add_argument("--window", type=float, default=60.0, help="seconds per reported window")
    p.add_argument("--warmup", type=float, default=120.0, help="seconds before the baseline")
    p.add_argument("--out", type=Path, default=None, help="also write the report here")
    ns = p.parse_args()
    return asyncio.run(soak(ns.minutes, ns.rate, ns.names, ns.window, ns.warmup, ns.out))


if __name__ == "__main__":
    sys.exit(main())

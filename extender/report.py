"""Readable text for `priority-extender explain`: ranking, rejections, inputs behind them."""

from __future__ import annotations

from typing import Any

MAX_LISTED = 12
"""Rejected node names listed per reason before the rest is counted."""


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{x * 100:5.1f}%"


def _bytes(n: float) -> str:
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def render(summary: dict[str, Any], verb: str | None = None) -> str:
    lines: list[str] = []
    head = f"pod {summary['pod']}"
    if summary.get("uid"):
        head += f" ({summary['uid']})"
    head += f", priority {summary['priority']}"
    if summary.get("priorityClassName"):
        head += f" ({summary['priorityClassName']})"
    if verb:
        head = f"[{verb}] {head}"
    lines.append(head)
    for warning in summary.get("warnings") or ():
        lines.append(f"  warning: {warning}")
    if summary.get("bypass"):
        lines.append(f"  bypassed ({summary['bypass']}): every node kept with the neutral score")
    else:
        lines.append(f"  tier: {summary['tier']}")
    if summary.get("fallback"):
        lines.append("  live data down or absent: request-based scoring, nothing rejected for load")
    floor = summary.get("floor")
    if floor:
        kept = ", ".join(floor["kept"])
        lines.append(f"  floor: every candidate was rejected; kept the least over: {kept}")
    observed = summary.get("observed")
    if observed:
        would = sum(len(v) for v in observed["wouldReject"].values())
        lines.append(f"  shadow mode (observe): not enforced; would have rejected {would} node(s)")
    est = summary["podEstimate"]
    lines.append(
        f"  pod estimate: cpu {est['cpu']:.3g} cores, memory {_bytes(est['memory'])}; "
        f"{summary['candidates']} candidate node(s)"
    )
    lines.append("")
    ranking = summary["ranking"]
    lines.append(f"Ranking ({len(ranking)} kept, best first):")
    if not ranking:
        lines.append("  (none)")
    for entry in ranking[:20]:
        lines.append(f"  {entry['score']:>3}  {entry['node']}")
    if len(ranking) > 20:
        lines.append(f"  ... and {len(ranking) - 20} more")
    rejected = summary["rejected"]
    if rejected:
        lines.append("")
        lines.append(f"Rejected ({sum(len(v) for v in rejected.values())}):")
        for reason, nodes in sorted(rejected.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(nodes[:MAX_LISTED])
            more = f", ... (+{len(nodes) - MAX_LISTED})" if len(nodes) > MAX_LISTED else ""
            lines.append(f"  {len(nodes):>4}  {reason}: {shown}{more}")
    details = summary["details"]
    if details:
        lines.append("")
        lines.append("Inputs behind the top nodes (projection = sample + just placed + pod):")
        lines.append(
            "  node                 signal   sample   age s   projected  ceiling  weight  score"
        )
        for d in details:
            first = True
            for sig, s in d["signals"].items():
                age = "    -" if s["ageSeconds"] is None else f"{s['ageSeconds']:5.0f}"
                ceiling = "     -" if s["ceiling"] is None else f"{s['ceiling'] * 100:5.1f}%"
                node = d["node"] if first else ""
                score = f"{d['score']:>5}" if first else ""
                fresh = "" if s["fresh"] else " (stale)"
                lines.append(
                    f"  {node:<20} {sig:<8} {_pct(s['sample'])}  {age}   "
                    f"{_pct(s['projected'])}   {ceiling}  {s['weight']:>6.1f}  {score}{fresh}"
                )
                first = False
    return "\n".join(line.rstrip() for line in lines)  # the empty score cells leave spaces

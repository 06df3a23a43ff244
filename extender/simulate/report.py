"""The report of a comparison: ``report.md``, PNG plots and ``results.json`` in one folder.

Plots are drawn on matplotlib ``Figure`` objects with the Agg canvas, never through ``pyplot``:
no display, no global backend state. Every number in the report comes
from :mod:`extender.simulate.results`; the plots read the per-scrape series of each run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from extender.simulate.engine import HOT, SIMPLIFICATIONS, RunResult
from extender.simulate.results import RunSummary, summary_table, tier_table
from extender.simulate.scenario import ScenarioDocument

#: PNG metadata left out so that the same run writes the same bytes.
_PNG_META = {"Software": None}


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "run"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _minutes(times: Sequence[float]) -> npt.NDArray[np.float64]:
    return np.asarray(times, dtype=np.float64) / 60.0


def plot_utilization(runs: Sequence[RunResult], path: Path) -> None:
    """p95 and mean of true node cpu utilization over time, and nodes above 90%, per run."""
    fig = _figure(10, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for run in runs:
        if not run.heat:
            continue
        heat = np.array(run.heat, dtype=np.float64)
        x = _minutes(run.times)
        with np.errstate(all="ignore"):
            ready = ~np.isnan(heat)
            safe = np.where(ready, heat, np.nan)
            p95 = np.array(
                [
                    np.nanpercentile(row, 95) if ready[k].any() else np.nan
                    for k, row in enumerate(safe)
                ]
            )
            mean = np.nanmean(safe, axis=1)
            hot = np.sum(np.where(ready, heat > HOT, False), axis=1)
        (line,) = top.plot(x, p95 * 100, label=f"{run.label} p95")
        top.plot(x, mean * 100, color=line.get_color(), linestyle="--", label=f"{run.label} mean")
        bottom.plot(x, hot, color=line.get_color(), label=run.label)
    top.set_ylabel("node cpu utilization (%)")
    top.set_ylim(0, 105)
    top.grid(alpha=0.3)
    top.legend(fontsize="small", ncol=2)
    top.set_title("True node cpu utilization (p95 solid, mean dashed)")
    bottom.set_ylabel(f"nodes above {HOT:.0%} cpu")
    bottom.set_xlabel("simulated time (minutes)")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata=_PNG_META)


def plot_heatmap(run: RunResult, path: Path) -> None:
    """True cpu utilization of every node (rows) at every scrape (columns)."""
    heat = np.array(run.heat, dtype=np.float64).T if run.heat else np.zeros((0, 0))
    n = heat.shape[0]
    fig = _figure(10, max(3.0, min(12.0, 2.0 + n * 0.03)))
    ax = fig.subplots()
    if heat.size:
        end = run.times[-1] / 60.0 if run.times else 1.0
        img = ax.imshow(
            np.ma.masked_invalid(heat),
            aspect="auto",
            interpolation="nearest",
            cmap="inferno",
            vmin=0.0,
            vmax=1.0,
            extent=(0.0, end, n - 0.5, -0.5),
        )
        fig.colorbar(img, ax=ax, label="cpu utilization")
    ax.set_xlabel("simulated time (minutes)")
    ax.set_ylabel("node (scheduler list order)")
    ax.set_title(f"Per-node cpu utilization: {run.label}")
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata=_PNG_META)


def _fmt_s(x: float) -> str:
    return f"{x:g}s"


def _setup(sc: ScenarioDocument, runs: Sequence[RunResult]) -> str:
    wl = runs[0].workload
    lines = []
    groups = ", ".join(
        f"{g.size} × {g.name} ({g.cpu:g} cpu, {g.memory / 2**30:g} GiB"
        + (f", joins at {g.addAt / 60:g}m)" if g.addAt else ")")
        for g in sc.cluster.nodes
    )
    lines.append(f"- **cluster**: {len(wl.nodes)} nodes: {groups}")
    lines.append(f"- **duration**: {sc.duration / 60:g} minutes of simulated time")
    submitted: dict[int, int] = {}
    start: dict[int, int] = {}
    for p in wl.pods:
        if p.node >= 0:
            start[p.tier] = start.get(p.tier, 0) + 1
        else:
            submitted[p.tier] = submitted.get(p.tier, 0) + 1
    for k, t in enumerate(sc.tiers):
        req = ", ".join(f"{o.cpu:g} cpu / {o.memory / 2**30:g} GiB" for o in t.requests)
        life = "forever" if t.lifetime is None else f"{t.lifetime.dist} lifetime"
        lines.append(
            f"- **tier {t.name}**: priority {t.priority}; {start.get(k, 0)} running at the start, "
            f"{submitted.get(k, 0)} arriving; requests {req}; {life}"
        )
    m = sc.metrics
    refresh = runs[0].interval
    lines.append(
        f"- **metrics pipeline**: scrape every {_fmt_s(m.scrapeInterval)}, rules every "
        f"{_fmt_s(m.ruleInterval)} (cpu over {_fmt_s(m.rateWindow)}), extender refresh every "
        f"{_fmt_s(refresh)}"
    )
    s = sc.scheduler
    lines.append(
        f"- **scheduler**: percentageOfNodesToScore {s.percentageOfNodesToScore or 'adaptive'}, "
        f"extender weight {s.extenderWeight}, {s.cycle * 1000:g} ms a cycle, preemption "
        f"{'on' if s.preemption else 'off'}"
    )
    return "\n".join(lines)


DEFINITIONS = """\
- **placed**: pods bound during the run / pods submitted (arrivals and re-created preemption
  victims; pods running at the start are not counted).
- **above ceiling**: placements after which the node's true utilization (with the new pod) is
  above the cpu or memory ceiling of the pod's policy tier (the baseline is judged against the
  first policy's ceilings).
- **util p50/p95**: true cpu utilization of the chosen node, with the pod, at placement.
- **wait p50/p95**: submission to binding; pods still pending count until the end.
- **herding**: the most pods bound to one node within one metrics interval (the extender's
  refresh interval).
- **time on hot nodes**: share of the tier's pod-time (pods running at the start included) on
  nodes above 90% true cpu: what the tier's pods feel.
- **node-s cpu>90%**: node-seconds spent above 90% true cpu utilization.
- **mean cpu**: mean true cpu utilization over nodes and scrapes.
"""


def write_report(
    out: Path,
    sc: ScenarioDocument,
    command: str,
    seed: int,
    runs: Sequence[RunResult],
    summaries: Sequence[RunSummary],
    title: str,
) -> Path:
    """Write ``report.md``, ``utilization.png``, ``heatmap-<run>.png`` and ``results.json``."""
    out.mkdir(parents=True, exist_ok=True)
    plot_utilization(runs, out / "utilization.png")
    heatmaps = []
    for run in runs:
        name = f"heatmap-{slug(run.label)}.png"
        plot_heatmap(run, out / name)
        heatmaps.append((run.label, name))
    (out / "results.json").write_text(
        json.dumps({"seed": seed, "runs": [asdict(s) for s in summaries]}, indent=1) + "\n"
    )
    parts = [f"# Simulation: {title}", ""]
    if sc.description:
        parts += [sc.description.strip(), ""]
    parts += [
        "Produced by:",
        "",
        "```sh",
        command,
        "```",
        "",
        "## Setup",
        "",
        _setup(sc, runs),
        "",
        "## Summary",
        "",
        summary_table(list(summaries)),
        "",
        "## Per tier",
        "",
        tier_table(list(summaries)),
        "",
        DEFINITIONS,
        "## Utilization over time",
        "",
        "![utilization over time](utilization.png)",
        "",
        "## Per-node heat maps",
        "",
    ]
    for label, name in heatmaps:
        parts += [f"![{label}]({name})", ""]
    parts += [
        "## How this was simulated",
        "",
        "Simulated time is discrete-event; each run replays the same workload (same seed). "
        "The extender's own code decides in the policy runs: every `filter`, `prioritize` and "
        "`preempt` call goes through the server's decode, decision and encode functions with "
        "the JSON bytes kube-scheduler would send, against a snapshot built from the lagged "
        "metrics pipeline and the pods just bound. The baseline is the same scheduler model "
        "without the extender.",
        "",
        "Simplifications:",
        "",
        *(f"- {s}" for s in SIMPLIFICATIONS),
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path

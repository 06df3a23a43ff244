"""The README's walkthrough runs as written and prints what it shows.

The shell blocks of "Why did my pod go there?" and "The policy", and the curl examples of
"Quick start", are run in README order against a real extender (``python -m extender serve``
on the embedded policy, as ``scripts/run.sh`` starts it), with one change to each command: the
ports 8888/8889 become the ports it got. A block's expected output is the ``# `` lines inside
it, or else the text/json block right after it; stdout and stderr are compared together, as a
terminal shows them. ``age s`` (seconds since the demo metrics were read, 0 to 14) is the one
column compared as any number.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import pytest

from tests.support import ROOT, ServeProcess

README = ROOT / "README.md"
#: The sections whose every shell block runs, and the one whose curl examples do.
WALKTHROUGH = ("Why did my pod go there?", "The policy")
QUICK_START = "Quick start"
#: Longest a README command may take (an explain is well under a second).
COMMAND_TIMEOUT_S = 60

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)
#: A row of explain's inputs table: node (or blank), signal, sample %, then the age.
_AGE = re.compile(r"^(  \S*\s+\S+\s+[\d.]+%\s+)\d+(\s)", re.M)


@dataclass
class Block:
    section: str
    script: str
    expected: str


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _blocks(section: str, body: str) -> list[Block]:
    fences = list(_FENCE.finditer(body))
    out = []
    for i, fence in enumerate(fences):
        if fence[1] != "sh":
            continue
        lines = fence[2].splitlines()
        comments = [ln[2:] for ln in lines if ln.startswith("# ")]
        script = "\n".join(ln for ln in lines if not ln.startswith("#"))
        expected = "\n".join(comments)
        following = fences[i + 1] if i + 1 < len(fences) else None
        if (
            not comments
            and following is not None
            and following[1] in ("text", "json")
            and not body[fence.end() : following.start()].strip()
        ):
            expected = following[2].rstrip("\n")
        out.append(Block(section, script, expected))
    return out


def readme_blocks() -> list[Block]:
    sections = _sections(README.read_text())
    blocks = [b for b in _blocks(QUICK_START, sections[QUICK_START]) if "curl " in b.script]
    for name in WALKTHROUGH:
        blocks += _blocks(name, sections[name])
    return blocks


def _normal(text: str) -> str:
    return _AGE.sub(r"\g<1>N\g<2>", text.strip())


def test_the_readme_has_the_blocks_this_test_runs():
    blocks = readme_blocks()
    assert sum(b.section == QUICK_START for b in blocks) == 2
    assert sum(b.section == WALKTHROUGH[0] for b in blocks) == 3
    assert sum(b.section == WALKTHROUGH[1] for b in blocks) == 2
    assert all(b.expected or "> " in b.script for b in blocks), [
        b.script for b in blocks if not b.expected
    ]


@pytest.fixture(scope="module")
def server():
    with ServeProcess("--kubernetes", "off") as proc:
        yield proc


def test_every_walkthrough_command_prints_what_the_readme_shows(server):
    failures = []
    for block in readme_blocks():
        script = block.script.replace("127.0.0.1:8888", f"127.0.0.1:{server.port}")
        script = script.replace("127.0.0.1:8889", f"127.0.0.1:{server.admin}")
        res = subprocess.run(
            ["bash", "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=COMMAND_TIMEOUT_S, check=False,
        )  # fmt: skip
        if _normal(res.stdout) != _normal(block.expected):
            failures.append(
                f"--- {block.section}: {block.script}\n--- README shows:\n{block.expected}\n"
                f"--- it printed:\n{res.stdout}"
            )
    assert not failures, "\n".join(failures)


# --- the performance figures ---------------------------------------------------------------------
#
# The README's "Benchmarks" table is rendered from benchmarks/RESULTS.md (the last full run
# committed) between the markers below; this test fails when the two disagree and shows the
# table to paste. ``python -m tests.test_readme`` writes it into README.md.

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SOAK = ROOT / "benchmarks" / "SOAK.md"
FIGURES_BEGIN = (
    "<!-- figures:begin (python -m tests.test_readme writes this from benchmarks/RESULTS.md) -->"
)
FIGURES_END = "<!-- figures:end -->"


def _results_sections(text: str) -> dict[str, str]:
    parts = re.split(r"^#{2,3} (.+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _rows(body: str) -> list[dict[str, str]]:
    """The first Markdown table of ``body`` as dicts by header (cells stripped of ``**``)."""
    lines = [ln for ln in body.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(
            zip(
                header, (c.strip().replace("**", "") for c in ln.strip("|").split("|")), strict=True
            )
        )
        for ln in lines[2:]
    ]


def _num(cell: str) -> float:
    return float(cell.rstrip("x%").replace(",", ""))


def _span(values: list[float], fmt: str = "{:.1f}") -> str:
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}–{high}"


def soak_row(soak: str) -> tuple[str, str]:
    """The soak's row, read from ``soak`` (benchmarks/SOAK.md, ``benchmarks.soak --out``)."""
    run = re.search(r"^Soak: (.+?), ([\d,]+) calls$", soak, re.M)
    verdict = re.search(
        r"^RSS after warm-up ([\d.]+) MB, at the end ([\d.]+) MB \(([-+\d.]+%)\); "
        r"p99 per window ([\d.]+)\.\.([\d.]+) ms$",
        soak,
        re.M,
    )
    assert run is not None, "SOAK.md: its summary line changed"
    assert verdict is not None, "SOAK.md: its verdict line changed"
    return (
        f"soak (`benchmarks/SOAK.md`): {run[1]}, {run[2]} calls",
        f"RSS {verdict[1]} MB after warm-up, {verdict[2]} MB at the end ({verdict[3]}); "
        f"p99 per window {verdict[4]}–{verdict[5]} ms",
    )


def figures_table(results: str, soak: str | None = None) -> str:
    """The README's figures, every one read from ``results`` (benchmarks/RESULTS.md) and
    ``soak`` (benchmarks/SOAK.md)."""
    sec = _results_sections(results)
    names = _rows(sec["Names only (`nodeCacheCapable: true`)"])
    full = _rows(next(v for k, v in sec.items() if k.startswith("Full Node objects")))

    def pick(
        rows: list[dict[str, str]], nodes: str, verbs: tuple[str, ...] = ("filter", "prioritize")
    ) -> list[dict[str, str]]:
        return [r for r in rows if r["nodes"] == nodes and r["conc."] == "1" and r["verb"] in verbs]

    n500, n5000, f500 = pick(names, "500"), pick(names, "5,000"), pick(full, "500", ("filter",))
    cpu = {r["server"]: r for r in _rows(sec["CPU per scheduled pod"])}
    rate = re.search(
        r"one core sustains about \*\*([\d,]+) pods/s\*\*", sec["CPU per scheduled pod"]
    )
    assert rate is not None, "RESULTS.md: the CPU per pod sentence changed"
    core = {
        r["nodes"]: r for r in _rows(next(v for k, v in sec.items() if k.startswith("Core only")))
    }
    throughput = sec["Throughput: a backlog of 500 pods on 200 nodes"]
    median_table = throughput[throughput.index("| median over the rounds") :]
    medians = {r["median over the rounds"]: r for r in _rows(median_table)}
    pods = medians["pods/s"]
    placement = _rows(
        sec["Placement quality: hidden load, one burst per tier"]
        .split("| arm |", 1)[1]
        .join(["| arm |", ""])
    )
    share = {
        arm: [_num(r["share above"]) for r in placement if r["arm"] == arm]
        for arm in ("stock", "extender")
    }
    rows = [
        (
            "`filter` / `prioritize`, 500 names, one at a time",
            f"p50 {_span([_num(r['p50 ms']) for r in n500])} ms, p99 {_span([_num(r['p99 ms']) for r in n500])} ms "
            f"({_span([_num(r['p50 ratio']) for r in n500])}× the bare-handler floor at p50)",
        ),
        (
            "`filter` / `prioritize`, 5,000 names, one at a time",
            f"p50 {_span([_num(r['p50 ms']) for r in n5000])} ms, p99 {_span([_num(r['p99 ms']) for r in n5000])} ms",
        ),
        (
            f"full Node objects, 500 nodes ({f500[0]['request']} requests)",
            f"p50 {_span([_num(r['p50 ms']) for r in f500])} ms: {_span([_num(r['p50 ratio']) for r in f500])}× the floor, "
            f"which already spends {_span([_num(r['floor p50']) for r in f500])} ms reading the body",
        ),
        (
            "extender CPU per scheduled pod (filter + prioritize, 500 names)",
            f"{cpu['extender']['CPU ms per pod']} ms: about {rate[1]} pods/s per core; "
            f"{_num(cpu['raw floor']['extender / this']):.1f}× an extender that decides nothing "
            f"on the same HTTP stack, {_num(cpu['floor (aiohttp)']['extender / this']):.1f}× the "
            "aiohttp floor",
        ),
        (
            "the decision alone, 500 / 5,000 / 15,000 names (p50)",
            " / ".join(f"{_num(core[n]['decide p50 ms']):.2f}" for n in ("500", "5,000", "15,000"))
            + " ms",
        ),
        (
            "the real kube-scheduler draining 500 pods on 200 nodes (`bench_scheduler`, median of the rounds)",
            f"{pods['with extender']} pods/s with the extender against {pods['stock']} alone: "
            f"{pods['extender / stock'].split()[0]} of its speed (the target is 0.85); "
            f"an extender that decides nothing (`benchmarks/floor_extender.py`) gets "
            f"{pods['floor / stock']}",
        ),
        (
            "placement: pods bound above their tier's ceiling by true load, at the bind instant",
            f"stock {_span(share['stock'], '{:.0f}')}% per tier, with the extender {_span(share['extender'], '{:.0f}')}%",
        ),
    ]
    if soak is not None:
        rows.append(soak_row(soak))
    lines = ["| what | figure |", "|---|---|", *(f"| {what} | {figure} |" for what, figure in rows)]
    return "\n".join(lines) + "\n"


def _readme_figures(readme: str) -> str:
    start = readme.index(FIGURES_BEGIN) + len(FIGURES_BEGIN) + 1
    return readme[start : readme.index(FIGURES_END)]


def test_the_readme_figures_come_from_the_committed_results():
    expected = figures_table(RESULTS.read_text(), SOAK.read_text())
    readme = README.read_text()
    assert FIGURES_BEGIN in readme
    assert FIGURES_END in readme
    assert _readme_figures(readme) == expected, (
        "README.md's figures differ from benchmarks/RESULTS.md: run `python -m tests.test_readme`"
        f" to write them:\n{expected}"
    )


def test_no_figure_without_a_source():
    """The soak has no committed result (benchmarks/soak.py prints its table only): the README
    quotes none of it, and says how to run it."""
    benchmarks = _sections(README.read_text())["Benchmarks"]
    assert "RSS flat" not in benchmarks
    assert "python -m benchmarks.soak" in benchmarks


if __name__ == "__main__":
    text = README.read_text()
    if FIGURES_BEGIN not in text or FIGURES_END not in text:
        raise SystemExit(f"error: {README}: the figures markers are missing")
    head, _, rest = text.partition(FIGURES_BEGIN + "\n")
    _, _, tail = rest.partition(FIGURES_END)
    README.write_text(
        head
        + FIGURES_BEGIN
        + "\n"
        + figures_table(RESULTS.read_text(), SOAK.read_text())
        + FIGURES_END
        + tail
    )
    print(f"{README}: figures written from {RESULTS}")

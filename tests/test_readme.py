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

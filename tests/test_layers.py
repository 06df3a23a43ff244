"""The decision core stays pure: no I/O, clock, asyncio or logging (import-linter checks layers)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).parent.parent / "extender" / "core"
FORBIDDEN = {
    "aiohttp",
    "asyncio",
    "datetime",
    "kubernetes",
    "logging",
    "msgspec",
    "os",
    "prometheus_client",
    "pydantic",
    "random",
    "socket",
    "subprocess",
    "threading",
    "time",
    "yaml",
}


def test_core_imports_nothing_impure():
    offenders = []
    for path in sorted(CORE.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            else:
                continue
            offenders += [f"{path.name}: {m}" for m in mods if m.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_core_has_no_open_or_print_calls():
    calls = []
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"open", "print", "input", "__import__"}
            ):
                calls.append(f"{path.name}:{node.lineno}: {node.func.id}")
    assert calls == []

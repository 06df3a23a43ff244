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


ROOT = Path(__file__).parent.parent
#: Private attributes of the standard library and libraries that are their documented API.
LIBRARY_PRIVATES = {"_replace", "_asdict", "_fields", "_make", "_exit", "_getframe"}


def _defined_privates(tree: ast.Module) -> set[str]:
    """Private names a file defines itself: functions, classes and ``x._name = ...`` targets."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign | ast.Assign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {n for n in names if n.startswith("_")}


def _private_reaches(path: Path) -> list[str]:
    """``from m import _x``, and ``obj._x`` where the file does not define ``_x`` itself."""
    out = []
    tree = ast.parse(path.read_text(), str(path))
    local = _defined_privates(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out += [
                f"{node.lineno}: from {node.module} import {a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in LIBRARY_PRIVATES
            and node.attr not in local
        ):
            out.append(f"{node.lineno}: ._{node.attr[1:]}")
    return out


def test_no_module_reaches_into_another_modules_private_names():
    """Each idea has one home: a private name is used only where it is defined."""
    offenders = []
    for folder in ("extender", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            offenders += [f"{path.relative_to(ROOT)}:{r}" for r in _private_reaches(path)]
    assert offenders == []

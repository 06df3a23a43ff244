"""What each command imports: ``--version`` and ``policy check`` answer without loading the
server (aiohttp), the cluster client (kubernetes) or the simulator, which cost over a second of
start-up between them. Checked in a child process, by what is in ``sys.modules`` once the command
ran, never by timing it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT

#: Modules that only ``serve``, ``explain --admin`` or ``simulate`` need.
HEAVY = ("kubernetes", "aiohttp", "prometheus_client", "extender.server", "extender.simulate")

_CHILD = """\
import contextlib, io, json, sys
from extender.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "out": out.getvalue(), "loaded": sorted(sys.modules)}))
"""


def _run(*args: str) -> dict[str, object]:
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(res.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["policy", "check", "config/policy.yaml"],
        ["policy", "check", "config/policy-static.yaml", "config/policy-headroom.yaml"],
        ["policy", "schema"],
    ],
)
def test_light_commands_do_not_load_the_server_or_the_cluster_client(args):
    result = _run(*args)
    assert result["code"] in (0, None), result["out"]
    loaded = result["loaded"]
    assert isinstance(loaded, list)
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]
    assert heavy == [], f"{' '.join(args)} loaded {heavy[:10]}"


def test_serve_still_loads_what_it_needs():
    result = _run("serve", "--help")
    assert "--cluster-page-size" in str(result["out"])
    assert "aiohttp" in result["loaded"]  # type: ignore[operator]


def test_the_stubs_list_the_same_commands_as_the_full_parser():
    from extender.cli import build_parser

    full = build_parser().format_help()
    assert build_parser("").format_help() == full
    for command in ("serve", "explain", "policy", "simulate"):
        assert build_parser(command).format_help() == full
    assert "replay a workload" in full


def test_a_mistake_before_the_command_is_still_one_argparse_error():
    res = subprocess.run(
        [sys.executable, "-m", "extender", "nope"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 2
    assert "invalid choice: 'nope'" in res.stderr


#: The array modules of the decision core: what deciding needs, and policy loading does not.
CORE_ARRAYS = ("extender.core.decide", "extender.core.explain", "extender.core.model",
               "extender.core.preempt")  # fmt: skip


@pytest.mark.parametrize(
    "args", [["--version"], ["policy", "check", "config/policy.yaml"], ["policy", "schema"]]
)
def test_light_commands_do_not_load_the_decision_arrays(args):
    result = _run(*args)
    assert result["code"] in (0, None), result["out"]
    loaded = result["loaded"]
    assert isinstance(loaded, list)
    assert [m for m in CORE_ARRAYS if m in loaded] == []


def test_the_core_package_loads_its_names_when_first_used():
    code = (
        "import sys, extender.core as core\n"
        "from extender.core import Rules, parse_quantity\n"
        "assert 'extender.core.decide' not in sys.modules, 'eager'\n"
        "assert core.evaluate.__module__ == 'extender.core.decide'\n"
        "assert set(core.__all__) <= set(dir(core))\n"
        "try:\n    core.nope\nexcept AttributeError as e:\n    print(e)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
        check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "module 'extender.core' has no attribute 'nope'"


def test_policy_check_does_not_load_numpy():
    result = _run("policy", "check", "config/policy.yaml")
    assert result["code"] in (0, None), result["out"]
    assert "numpy" not in result["loaded"]  # type: ignore[operator]

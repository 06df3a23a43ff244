"""The real process: `priority-extender serve` and `policy check` as subprocesses."""

from __future__ import annotations

import json

import pytest

from tests.builders import fixture_bytes
from tests.support import ServeProcess, cli


def test_policy_check_ok_and_errors(tmp_path):
    ok = cli("policy", "check", "config/policy.yaml", "config/policy-static.yaml")
    assert ok.returncode == 0, ok.stderr
    assert (
        "config/policy.yaml: ok (tiers: system-critical, production, batch, standard" in ok.stdout
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: priority-extender.io/v1alpha1\nkind: PriorityPolicy\ntiers: []\n")
    res = cli("policy", "check", "config/policy.yaml", str(bad))
    assert res.returncode == 1
    assert f"{bad}:3:8: tiers: List should have at least 1 item after validation" in res.stderr
    assert f"{bad}: 1 error(s)" in res.stderr


def test_policy_schema_prints_json():
    res = cli("policy", "schema")
    assert res.returncode == 0
    assert json.loads(res.stdout)["title"] == "PriorityPolicy"


def test_serve_refuses_an_invalid_policy(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: PriorityPolicy\n")
    res = cli("serve", "--policy", str(bad), "--port", "0", "--admin-port", "0")
    assert res.returncode == 1
    assert "required field 'apiVersion' is missing" in res.stderr


def test_serve_embedded_default_end_to_end():
    with ServeProcess(
        # flags can come from the environment
        env={"PRIORITY_EXTENDER_ADMIN_HOST": "127.0.0.1", "PRIORITY_EXTENDER_HOST": "127.0.0.1"}
    ) as server:
        reply = server.post("filter", fixture_bytes("filter-nodecache-true-20nodes.json"))
        assert isinstance(reply["NodeNames"], list)
        assert len(reply["NodeNames"]) == 14
        assert isinstance(reply["FailedAndUnresolvableNodes"], dict)
        assert len(reply["FailedAndUnresolvableNodes"]) == 6
        assert server.terminate() == 0, server.output()
        assert "shutting down" in server.output()


@pytest.mark.parametrize(
    ("args", "loop"),
    [
        ([], "uvloop"),
        (["--event-loop", "uvloop"], "uvloop"),
        (["--event-loop", "asyncio"], "asyncio"),
    ],
)
def test_serve_runs_on_the_event_loop_asked_for(args, loop):
    """auto picks uvloop where it is installed (it is a dependency here); either loop answers."""
    with ServeProcess(*args) as server:
        reply = server.post("filter", fixture_bytes("filter-nodecache-true-20nodes.json"))
        assert len(reply["NodeNames"]) == 14
        assert server.terminate() == 0, server.output()
        assert f"event loop {loop}" in server.output()


def test_event_loop_uvloop_without_uvloop_is_one_error_line(monkeypatch):
    import sys

    from extender.cli import event_loop_factory

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert event_loop_factory("auto") is None  # asyncio's own loop
    with pytest.raises(SystemExit, match=r"^error: --event-loop uvloop: uvloop is not installed"):
        event_loop_factory("uvloop")


# --- the settings tree and its flags -------------------------------------------------------------


def test_every_setting_has_a_flag_and_a_variable_with_its_default_in_the_help():
    import dataclasses

    from extender.cluster.settings import ClusterSettings
    from extender.flags import SKIPPED, ServeOptions, serve_flags
    from extender.server.app import ServerSettings

    flags = {f.dest: f for f in serve_flags()}
    for group, cls in (
        ("serve", ServeOptions),
        ("server", ServerSettings),
        ("cluster", ClusterSettings),
    ):
        for field in dataclasses.fields(cls):
            dest = f"{group}.{field.name}"
            if dest not in SKIPPED:
                assert dest in flags, f"{dest} has no flag"
    helptext = cli("serve", "--help").stdout
    assert "--cluster-page-size N" in helptext
    for flag in flags.values():
        assert flag.option in helptext
        assert flag.env in helptext
    assert "(default: 8888; env PRIORITY_EXTENDER_PORT)" in " ".join(helptext.split())


def test_a_flag_wins_over_its_variable_and_the_variable_over_the_default():
    from extender.cli import build_parser
    from extender.flags import resolve, serve_flags

    flags = serve_flags()
    env = {"PRIORITY_EXTENDER_PORT": "9000", "PRIORITY_EXTENDER_CLUSTER_PAGE_SIZE": "50"}
    values = resolve(build_parser().parse_args(["serve"]), flags, env)
    assert values["server"]["port"] == 9000
    assert values["cluster"]["page_size"] == 50
    assert values["server"]["kubernetes"] == "auto"  # serve's default, not the dataclass's
    values = resolve(build_parser().parse_args(["serve", "--port", "9100"]), flags, env)
    assert values["server"]["port"] == 9100
    assert resolve(build_parser().parse_args(["serve"]), flags, {})["server"]["port"] == 8888


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "70000"], {}, "error: --port='70000' is not a port (0 to 65535)"),
        (
            [],
            {"PRIORITY_EXTENDER_PORT": "abc"},
            "error: PRIORITY_EXTENDER_PORT='abc' is not a whole number",
        ),
        (
            ["--log-level", "loud"],
            {},
            "error: --log-level='loud' is not one of: debug, info, warning, error",
        ),
        (["--drain-seconds", "-1"], {}, "error: --drain-seconds='-1' must not be negative"),
        (
            ["--cluster-freeze-gc-after-sync", "maybe"],
            {},
            "error: --cluster-freeze-gc-after-sync='maybe' is not true or false",
        ),
    ],
)
def test_a_bad_setting_is_one_error_line(args, env, message):
    res = cli("serve", *args, env=env)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [message]


def test_a_bad_variable_does_not_break_other_commands():
    res = cli("policy", "check", "config/policy.yaml", env={"PRIORITY_EXTENDER_PORT": "abc"})
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["explain", "--admin", "http://127.0.0.1:9", "--pod-file", "missing.yaml"],
         "error: missing.yaml: No such file or directory"),
        (["explain", "--admin", "http://127.0.0.1:9", "--pod", "a/b", "--top", "abc"],
         "error: --top 'abc': give a whole number or 'all'"),
        (["explain", "--snapshot", "missing.json", "--pod-file", "pod.yaml"],
         "error: missing.json: [Errno 2] No such file or directory: 'missing.json'"),
    ],
)  # fmt: skip
def test_explain_mistakes_are_one_error_line(args, message):
    res = cli(*args)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [message]


# --- start-up mistakes: one error line each ----------------------------------------------------


def test_a_policy_file_that_cannot_be_read_is_one_error_line(tmp_path):
    for target, why in (
        ("nope.yaml", "cannot read: No such file or directory"),
        (str(tmp_path), "not a regular file (a directory); refused without reading it"),
    ):
        res = cli("serve", "--policy", target, "--port", "0", "--admin-port", "0")
        assert res.returncode == 1
        assert res.stderr.splitlines() == [f"error: {target}: {why}"]


def test_an_invalid_policy_ends_with_one_error_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: PriorityPolicy\n")
    res = cli("serve", "--policy", str(bad), "--port", "0", "--admin-port", "0")
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert all(line.startswith(f"{bad}:1:1: ") for line in lines[:-1]), lines
    assert lines[-1] == f"error: cannot start: {bad}: 2 error(s)"


@pytest.mark.parametrize(("flag", "variable"), [("port", "PORT"), ("admin-port", "ADMIN_PORT")])
def test_a_port_in_use_names_its_flag_and_variable(flag, variable):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"port": "0", "admin-port": "0", flag: str(port)}
        res = cli(
            "serve", "--kubernetes", "off", "--host", "127.0.0.1", "--admin-host", "127.0.0.1",
            "--port", ports["port"], "--admin-port", ports["admin-port"], "--log-level", "error",
        )  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        f"error: cannot start: 127.0.0.1:{port} is already in use: choose another with "
        f"--{flag} (or PRIORITY_EXTENDER_{variable}), or stop what listens there"
    ]


def test_a_configmap_policy_reads_its_relative_files_through_the_mount(tmp_path):
    """A ConfigMap volume: ``policy.yaml -> ..data/policy.yaml``, ``..data -> ..v1/``. The
    static source's relative file is read through the path as given, so after the kubelet swaps
    ``..data`` to ``..v2/`` the new one is read, never the folder of the old version."""
    from extender.policy import load_file

    text = (
        "apiVersion: priority-extender.io/v1alpha1\nkind: PriorityPolicy\n"
        "metrics: {source: static, static: {file: metrics.yaml}}\ntiers:\n- name: all\n"
    )
    for version in ("..v1", "..v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "policy.yaml").write_text(text)
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "policy.yaml").symlink_to("..data/policy.yaml")
    first = load_file(tmp_path / "policy.yaml")
    (tmp_path / "..data_tmp").symlink_to("..v2")
    (tmp_path / "..data_tmp").replace(tmp_path / "..data")
    second = load_file(tmp_path / "policy.yaml")
    assert first.base_dir == second.base_dir == tmp_path
    res = cli("policy", "check", str(tmp_path / "policy.yaml"))
    assert res.returncode == 1  # metrics.yaml is in neither version: named via the mount
    assert f"{tmp_path / 'metrics.yaml'}" in res.stderr, res.stderr

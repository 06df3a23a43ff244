"""The real process: `priority-extender serve` and `policy check` as subprocesses."""

from __future__ import annotations

import json

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

"""``policy check`` catches what ``serve`` refuses to start on: a static metrics source (the
default ``metrics.source``) whose file is not there. Both ask extender.policy.loader's
``missing_files``, so they report the same line."""

from __future__ import annotations

from tests.support import ROOT, cli

MINIMAL = """\
apiVersion: priority-extender.io/v1alpha1
kind: PriorityPolicy
tiers:
- name: all
  match: {minPriority: 0}
"""


def test_a_minimal_policy_without_the_default_static_file_fails_the_check(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(MINIMAL)
    res = cli("policy", "check", str(policy))
    assert res.returncode == 1
    missing = tmp_path / "static-metrics.yaml"
    assert res.stderr.splitlines() == [
        f"{policy}:1:1: metrics.static.file: {missing} does not exist (the default): the static "
        "source (metrics.source, static by default) reads it, relative to the policy's folder; "
        "create it or choose another metrics.source",
        f"{policy}: 1 error(s)",
    ]
    # serve refuses on the same line instead of serving with no node data
    served = cli("serve", "--policy", str(policy), "--kubernetes", "off", "--port", "0",
                 "--admin-port", "0")  # fmt: skip
    assert served.returncode == 1
    assert served.stderr.splitlines() == [
        res.stderr.splitlines()[0],
        "error: cannot start: a file the policy names is missing",
    ]


def test_a_named_static_file_that_is_missing_is_reported_at_its_line(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(MINIMAL + "metrics:\n  static: {file: data/nodes.yaml}\n")
    res = cli("policy", "check", str(policy))
    assert res.returncode == 1
    assert res.stderr.startswith(
        f"{policy}:7:18: metrics.static.file: {tmp_path / 'data/nodes.yaml'} does not exist: "
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data/nodes.yaml").write_text((ROOT / "config/static-metrics.yaml").read_text())
    ok = cli("policy", "check", str(policy))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"{policy}: ok (tiers: all; default: default)\n"


def test_other_sources_need_no_file(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(MINIMAL + "metrics: {source: none}\n")
    res = cli("policy", "check", str(policy))
    assert res.returncode == 0, res.stderr

"""Explain of a manifest that leaves ``spec.priority`` to admission (it names a PriorityClass,
or none): offline explain resolves the class from the snapshot's ``priorityClasses`` when the
snapshot carries them, and otherwise says it judged the pod as priority 0; a dry run through a
running extender says so too. A manifest that is not a Pod is an error line."""

from __future__ import annotations

import json

import pytest

from tests.support import ServeProcess, cli

POD = """\
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop}
spec:
  priorityClassName: production-high
  containers:
  - name: web
    image: nginx
    resources: {requests: {cpu: 500m, memory: 512Mi}}
"""


@pytest.fixture(scope="module")
def server():
    with ServeProcess("--kubernetes", "off") as proc:
        yield proc


@pytest.fixture
def files(tmp_path, server):
    pod = tmp_path / "pod.yaml"
    pod.write_text(POD)
    snap = tmp_path / "snap.json"
    snap.write_bytes(server.get("/snapshot"))
    return pod, snap


def _explain(*args: str) -> dict[str, object]:
    res = cli("explain", *args, "--json")
    assert res.returncode == 0, res.stderr
    (result,) = json.loads(res.stdout)
    assert isinstance(result, dict)
    return result


def test_offline_without_priority_classes_says_it_judged_priority_0(files):
    pod, snap = files
    result = _explain("--snapshot", str(snap), "--pod-file", str(pod))
    assert result["priority"] == 0
    assert result["warnings"] == [
        "spec.priority is not set and PriorityClass 'production-high' was not resolved here: "
        "judged as priority 0; set spec.priority to its value "
        "(kubectl get priorityclass production-high) for a true answer"
    ]
    text = cli("explain", "--snapshot", str(snap), "--pod-file", str(pod)).stdout
    assert text.splitlines()[1].startswith("  warning: spec.priority is not set and ")


def test_offline_resolves_the_class_from_the_snapshot(files, tmp_path):
    pod, snap = files
    doc = json.loads(snap.read_text())
    doc["priorityClasses"] = {
        "production-high": {"value": 1000000},
        "low": {"value": 10, "globalDefault": True},
    }
    snap.write_text(json.dumps(doc))
    result = _explain("--snapshot", str(snap), "--pod-file", str(pod))
    assert result["priority"] == 1000000
    assert result["tier"] == "production"
    assert "warnings" not in result
    # no class named: the globalDefault one, as admission does
    unnamed = tmp_path / "unnamed.yaml"
    unnamed.write_text(POD.replace("  priorityClassName: production-high\n", ""))
    result = _explain("--snapshot", str(snap), "--pod-file", str(unnamed))
    assert (result["priority"], result["priorityClassName"]) == (10, "low")
    # spec.priority given: taken as it is
    given = tmp_path / "given.yaml"
    given.write_text(POD.replace("spec:\n", "spec:\n  priority: 50\n"))
    result = _explain("--snapshot", str(snap), "--pod-file", str(given))
    assert result["priority"] == 50
    assert "warnings" not in result


def test_dry_run_through_the_extender_says_it_too(files, server):
    pod, _ = files
    result = _explain("--admin", f"http://127.0.0.1:{server.admin}", "--pod-file", str(pod))
    assert result["priority"] == 0
    assert result["warnings"][0].startswith("spec.priority is not set and PriorityClass")


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("apiVersion: apps/v1\nkind: Deployment\nspec: {replicas: 2}\n",
         "not a Pod manifest: kind is 'Deployment' (give the pod template as a Pod)"),
        ("- a\n- b\n", "not a Pod manifest: expected a mapping (kind: Pod)"),
    ],
)  # fmt: skip
def test_a_manifest_that_is_not_a_pod_is_one_error_line(files, tmp_path, server, manifest, message):
    _, snap = files
    bad = tmp_path / "deploy.yaml"
    bad.write_text(manifest)
    for where in (["--snapshot", str(snap)], ["--admin", f"http://127.0.0.1:{server.admin}"]):
        res = cli("explain", *where, "--pod-file", str(bad))
        assert res.returncode == 1
        assert res.stderr.splitlines() == [f"error: {bad}: {message}"]

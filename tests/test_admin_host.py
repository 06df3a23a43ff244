"""The admin port (which serves /snapshot and /dry-run) binds 127.0.0.1 by default; the deploy
manifests open it on 0.0.0.0 where the kubelet's probes and Prometheus reach it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT

DEPLOY = ROOT / "deploy"
OVERLAYS = ("main-scheduler", "second-scheduler")


def _kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    if found is None:
        pytest.fail("kubectl missing: run scripts/setup.sh --test")
    return found


def _extenders(overlay: str) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [_kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    out = []
    for obj in yaml.safe_load_all(rendered):
        if obj and obj.get("kind") == "Deployment":
            spec = obj["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                if c["name"] == "extender":
                    out.append(c)
    return out


def test_the_admin_port_binds_loopback_by_default():
    from extender.server.app import ServerSettings

    assert ServerSettings().admin_host == "127.0.0.1"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_deployment_opens_the_admin_port_for_probes_and_prometheus(overlay):
    (extender,) = _extenders(overlay)
    env = {e["name"]: e.get("value") for e in extender.get("env", [])}
    assert env["PRIORITY_EXTENDER_ADMIN_HOST"] == "0.0.0.0"
    probes = [extender.get(p) for p in ("startupProbe", "livenessProbe", "readinessProbe")]
    assert any(p and p.get("httpGet", {}).get("port") == "admin" for p in probes)

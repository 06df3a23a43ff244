"""Where the control plane's binaries come from (envtest's convention) and what to say without.

``KUBE_ASSETS`` names a folder holding ``etcd``, ``kube-apiserver`` and ``kube-scheduler``, so
that the suite can run against the binaries of any Kubernetes version; by default it is the cache
that ``scripts/setup.sh --test`` fills from ``../shared/kube`` (with ``etcd`` linked to Debian's).

``E2E_EXTENDER_TREE`` names another source tree of the extender (e.g. ``git archive HEAD`` unpacked
somewhere) to run instead of the installed one, with that tree's ``config/policy.yaml``: how a
test is shown to fail on committed code while the working tree moves on.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = "v1.28.7"
"""The release tree of the binaries in ../shared/kube, which the cache holds."""
DEFAULT_ASSETS = ROOT / ".cache" / "kube-assets" / KUBE_VERSION
BINARIES = ("etcd", "kube-apiserver", "kube-scheduler")
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
EXTENDER = ROOT / ".venv" / "bin" / "priority-extender"
PYTHON = ROOT / ".venv" / "bin" / "python"

HOW_TO_GET = (
    "run scripts/setup.sh --test (Debian's etcd-server and prometheus, and the kube binaries of "
    "../shared/kube into .cache/kube-assets/), or set KUBE_ASSETS to a folder with etcd, "
    "kube-apiserver and kube-scheduler: the official release binaries from "
    "https://dl.k8s.io/release/vX.Y.Z/bin/linux/amd64/kube-apiserver (and .../kube-scheduler), "
    "and etcd from https://github.com/etcd-io/etcd/releases or `apt-get install etcd-server`"
)


def assets_dir() -> Path:
    return Path(os.environ.get("KUBE_ASSETS") or DEFAULT_ASSETS)


def binary(name: str) -> Path:
    return assets_dir() / name


def missing() -> str | None:
    """Why the end-to-end tests cannot run here (with how to fix it), or None."""
    absent = [str(binary(b)) for b in BINARIES if not os.access(binary(b), os.X_OK)]
    absent += [p for p in (PROMETHEUS, OPENSSL, str(EXTENDER)) if not os.access(p, os.X_OK)]
    if not absent:
        return None
    return f"end-to-end binaries missing: {', '.join(absent)}; {HOW_TO_GET}"


def in_ci() -> bool:
    """Under CI a missing binary fails the run instead of skipping the tests."""
    return os.environ.get("CI", "").lower() == "true"


def extender_tree() -> Path | None:
    tree = os.environ.get("E2E_EXTENDER_TREE")
    return Path(tree).resolve() if tree else None


def extender_command() -> tuple[list[str], dict[str, str]]:
    """argv prefix of ``priority-extender`` and extra environment to run it with."""
    tree = extender_tree()
    if tree is None:
        return [str(EXTENDER)], {}
    return [str(PYTHON), "-m", "extender"], {"PYTHONPATH": str(tree)}


def config_file(name: str) -> Path:
    """A file of config/ from the extender tree under test."""
    return (extender_tree() or ROOT) / "config" / name

